"""``convsv analyze``'s output: the rows as a table, CSV, and the paper's figures."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import Any

from ._analysis import EXACT_STATISTICS_ENTRIES, TWIN
from ._layout import LAYOUTS
from ._lib import to_host
from ._models import Model, ModelError


def _dims(values: Sequence[Any]) -> str:
    return "x".join(str(v) for v in values)


def _padding_text(padding: Any) -> str:
    if padding == "circular":
        return "circular"
    if all(a == b == padding[0][0] for a, b in padding):
        return str(padding[0][0])
    return " ".join(f"({a},{b})" for a, b in padding)


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(model: Model, rows: list[dict[str, Any]], header: str) -> str:
    """A readable fixed-width table with notes and the norm product underneath."""
    titles = ["layer", "kernel", "stride", "groups", "padding", "map", "norm", "bounds", "circular",
              "s_min", "cond", "stable rank", "#s>=1"]  # fmt: skip
    lines = [
        [
            r["name"] + (" ?" if r["assumed_options"] else ""),
            f"{_dims(r['kernel_shape'])} {r['layout']}",
            _dims(r["stride"]),
            str(r["groups"]),
            _padding_text(r["padding"]) + (" T" if r["transposed"] else ""),
            _dims(r["input_shape"]),
            _number(r["operator_norm"]),
            "-" if r["norm_bounds"] is None else f"[{r['norm_bounds'][0]:.4g}, {r['norm_bounds'][1]:.4g}]",
            _number(r["circular_norm"]),
            _number(r["smallest_singular_value"]) + (" *" if r["statistics_of"] == TWIN else ""),
            _number(r["condition_number"]),
            _number(r["stable_rank"]),
            str(r["singular_values_at_least_one"]),
        ]
        for r in rows
    ]
    widths = [max(len(t), *(len(line[i]) for line in lines)) for i, t in enumerate(titles)]
    right = {2, 3, 6, 8, 9, 10, 11, 12}

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=False))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs)

    out = [header, "", fmt(titles), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines), ""]
    out += [
        "norm: the operator norm of the layer as it computes (zero padding: by Lanczos, from below, within",
        "  1e-5 of a singular value in float32, 1e-6 in float64; circular padding: exact).",
        "bounds: zero-padded layers only, certified [lower, upper]: the layer attains the lower (its norm);",
        "  the circular layer on the zero-padded map bounds it from above.",
        "circular: exact norm of the circular layer on the map (zero padding: on the map zero-padded and",
        "  rounded up to a multiple of the stride; the bounds' upper end).",
        "s_min, cond, stable rank, #s>=1: the layer's own singular values, exact (zero padding: by a dense",
        "  SVD); --plot draws the same values.",
    ]
    if any(r["assumed_options"] for r in rows):
        out.append(
            "  ? options not stored in the file: assumed (see the note below), so these numbers are those "
            "of the assumed layer."
        )
    if any(r["statistics_of"] == TWIN for r in rows):
        out.append(
            f"  * a zero-padded layer of over {EXACT_STATISTICS_ENTRIES} matrix entries: these describe "
            "the circular layer on the padded map instead."
        )
    if len(rows) > 1:
        out += [
            f"Product of the layers' norms (upper bounds where zero-padded): {rows[-1]['norm_product']:.6g}",
            "  an upper bound on the Lipschitz constant of these convolutions applied in sequence; it bounds",
            "  the network only where everything between them is 1-Lipschitz and nothing skips a layer",
            "  (--network certifies a whole PyTorch module or ONNX graph).",
        ]
    notes = list(model.notes) + [f"{r['name']}: {r['note']}" for r in rows if r["note"]]
    out += [f"note: {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


CSV_FIELDS = [
    "name", "kernel_shape", "layout", "stride", "dilation", "groups", "padding", "transposed",
    "input_shape", "output_shape", "operator_norm", "lower_bound", "upper_bound", "circular_norm",
    "statistics_of", "smallest_singular_value",
    "condition_number", "stable_rank", "singular_value_count", "singular_values_at_least_one",
    "reshaped_kernel_norm", "norm_product", "assumed_options", "note",
]  # fmt: skip


def format_csv(rows: list[dict[str, Any]]) -> str:
    """One line per layer; shapes as ``16x3x3x3``, paddings as ``(1,1) (1,1)``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {key: r.get(key) for key in CSV_FIELDS}
        for key in ("kernel_shape", "stride", "dilation", "input_shape", "output_shape"):
            flat[key] = _dims(r[key])
        flat["padding"] = (
            "circular" if r["padding"] == "circular" else " ".join(f"({a},{b})" for a, b in r["padding"])
        )
        flat["lower_bound"], flat["upper_bound"] = r["norm_bounds"] or (None, None)
        flat["note"] = r["note"] or ""
        writer.writerow(flat)
    return buffer.getvalue()


def plot_spectra(
    spectra: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Draw the paper's Figures 5-7 for several layers, side by side, into an image file.

    Sedghi, Gupta & Long (ICLR 2019, Appendix C) plot each layer's singular
    values sorted in decreasing order (Figure 5), as ratios to the layer's
    largest (Figure 6), and against the rank divided by the number of values
    (Figure 7). The layers are coloured from red (the first, near the input)
    to green (the last).

    Parameters
    ----------
    spectra : sequence of array_like
        Each layer's singular values, any shape and order, of any array
        library and device (as :func:`convsv.singular_values` returns them).
    path : str or path-like
        The image file; its suffix picks the format (``.png``, ``.pdf``,
        ``.svg``...).
    names : sequence of str, optional
        The layers' names, for the legend (shown for at most 12 layers).
    title : str, optional
        The figure's title.

    Raises
    ------
    ModuleNotFoundError
        If matplotlib is not installed.
    ValueError
        If ``names`` does not match ``spectra``, or the file cannot be written.

    Examples
    --------
    >>> import numpy as np, convsv
    >>> from convsv.analysis import plot_spectra
    >>> kernels = [np.ones((3, 3, 2, 2)), np.eye(2)[None, None] * np.ones((3, 3, 1, 1))]
    >>> spectra = [convsv.singular_values(k, 8) for k in kernels]
    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "spectra.png"
    ...     plot_spectra(spectra, path, names=["box", "diagonal"], title="two layers")
    ...     print(path.stat().st_size > 0)
    True
    """
    import numpy as np

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        msg = "plotting needs matplotlib: pip install matplotlib (in a checkout: pip install '.[cli]')"
        raise ModuleNotFoundError(msg, name="matplotlib") from None
    if names is not None and len(names) != len(spectra):
        msg = f"`names` has {len(names)} entries for {len(spectra)} spectra"
        raise ValueError(msg)
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for i, values in enumerate(spectra):
        t = i / max(len(spectra) - 1, 1)
        color = (1.0 - t, 0.75 * t, 0.0)
        s = np.sort(np.ravel(to_host(values)))[::-1]
        rank = np.arange(1, s.size + 1)
        ratio = s / s[0] if s[0] > 0 else np.zeros_like(s)
        axes[0].plot(rank, s, color=color, lw=1.2, label=None if names is None else names[i])
        axes[1].plot(rank, ratio, color=color, lw=1.2)
        axes[2].plot(rank / s.size, ratio, color=color, lw=1.2)
    axes[0].set(xscale="log", xlabel="rank", ylabel="singular value", title="Singular values (Fig. 5)")
    axes[1].set(xscale="log", yscale="log", xlabel="rank", ylabel=r"$\sigma / \sigma_{max}$",
                title="Ratio to the layer's largest (Fig. 6)")  # fmt: skip
    axes[2].set(yscale="log", xlabel="rank / number of singular values", ylabel=r"$\sigma / \sigma_{max}$",
                title="Against normalised rank (Fig. 7)")  # fmt: skip
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    if names is not None and 0 < len(spectra) <= 12:
        axes[0].legend(fontsize="small", title="near input: red", title_fontsize="small")
    figure.suptitle(title)
    try:
        figure.savefig(path, dpi=110)
    except (OSError, ValueError) as err:
        msg = f"cannot write the figure to {os.fspath(path)!r}: {err}"
        raise ValueError(msg) from None


def plot_model(rows: list[dict[str, Any]], spectra: list[Any], path: str, title: str) -> None:
    """``--plot``: as in the paper's Appendix C, kernels larger than 1x1 (all, if none is), the rest named."""
    drawn = [i for i, r in enumerate(rows) if math.prod(_spatial_size(r)) > 1] or list(range(len(rows)))
    left_out = [r["name"] for i, r in enumerate(rows) if i not in drawn]
    if left_out:
        names = ", ".join(left_out[:6]) + (", ..." if len(left_out) > 6 else "")
        title += f" ({len(drawn)} drawn; 1x1 left out: {names})"
    try:
        plot_spectra([spectra[i] for i in drawn], path, names=[rows[i]["name"] for i in drawn], title=title)
    except (ModuleNotFoundError, ValueError) as err:
        msg = f"--plot {path}: {err}"
        raise ModelError(msg) from None


def _spatial_size(row: dict[str, Any]) -> list[int]:
    ndim = LAYOUTS[row["layout"]][0]
    shape = row["kernel_shape"]
    return list(shape[:ndim] if LAYOUTS[row["layout"]][1] else shape[2:])
