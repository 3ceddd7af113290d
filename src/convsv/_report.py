"""``convsv analyze``: per-layer spectra of a model, as a table, JSON, CSV and the paper's figures.

The maths is the library's (:func:`convsv.singular_values`,
:func:`convsv.operator_norm_bounds`); this module decides what to compute for
each :class:`~convsv._models.ConvLayer`, on which backend and device, and
how to show it.
"""

from __future__ import annotations

import csv
import importlib
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import array_api_compat

from . import _values
from ._layout import LAYOUTS, ConvSpec, conv_spec
from ._lib import to_host
from ._models import ConvLayer, Model, ModelError, expand_size
from ._options import NormOptions

BACKENDS = ("numpy", "torch", "jax", "cupy")


def summarize(values: Any) -> dict[str, Any]:
    """Summary statistics of a layer's singular values (a NumPy array in, plain numbers out)."""
    import numpy as np

    s = np.sort(np.ravel(values))[::-1]
    largest, smallest = float(s[0]), float(s[-1])
    return {
        "count": int(s.size),
        "operator_norm": largest,
        "smallest": smallest,
        "condition_number": largest / smallest if smallest > 0 else float("inf"),
        "stable_rank": float(np.sum(s**2) / largest**2) if largest > 0 else 0.0,
        "at_least_one": int(np.sum(s >= 1.0)),
    }


def reshaped_norm(kernel: Any, layout: str) -> float:
    """What reshape-based ``spectral_norm`` wrappers compute: the ``(k^d c_in) x c_out`` matrix's norm."""
    import numpy as np

    _ndim, channels_last = LAYOUTS[layout]
    spatial_first = kernel if channels_last else np.moveaxis(kernel, (0, 1), (-1, -2))
    return float(np.linalg.norm(np.reshape(spatial_first, (-1, spatial_first.shape[-1])), 2))


# --- backend and device -------------------------------------------------------------------------------


def _parse_device(device: str) -> tuple[bool, int]:
    """``--device`` as (on a GPU?, device index)."""
    kind, _, index = device.partition(":")
    if device == "cpu" or (kind in ("cuda", "gpu") and (not index or index.isdigit())):
        return device != "cpu", int(index or 0)
    msg = f"--device {device!r}: expected cpu, cuda, cuda:N, gpu or gpu:N"
    raise ModelError(msg)


def _available(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def converter(backend: str | None, device: str) -> tuple[str, Callable[[Any], Any]]:
    """The backend to compute with and a function moving a NumPy kernel onto ``device`` there."""
    gpu, index = _parse_device(device)
    if backend is None:
        candidates = ("torch", "cupy", "jax") if gpu else ("numpy",)
        backend = next((b for b in candidates if _available(b)), None)
        if backend is None:
            msg = f"--device {device}: no GPU array library is installed (torch, cupy or jax)"
            raise ModelError(msg)
    if not _available(backend):
        msg = f"--backend {backend}: the {backend!r} package is not installed"
        raise ModelError(msg)
    if backend == "numpy":
        if gpu:
            msg = f"--device {device}: NumPy computes on the CPU only; use --backend torch, cupy or jax"
            raise ModelError(msg)
        return backend, lambda k: k
    if backend == "torch":
        import torch

        if gpu and index >= torch.cuda.device_count():
            msg = f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            raise ModelError(msg)
        where = torch.device(f"cuda:{index}" if gpu else "cpu")
        return backend, lambda k: torch.asarray(k, device=where)
    if backend == "jax":
        import jax

        try:
            where = jax.devices("gpu" if gpu else "cpu")[index]
        except (RuntimeError, IndexError) as err:
            msg = f"--device {device}: JAX has no such device ({err})"
            raise ModelError(msg) from None
        return backend, lambda k: jax.device_put(k, where)
    import cupy  # backend == "cupy"

    if not gpu:
        msg = "--backend cupy computes on a GPU: use --device cuda"
        raise ModelError(msg)
    if index >= cupy.cuda.runtime.getDeviceCount():
        msg = f"--device {device}: CuPy sees {cupy.cuda.runtime.getDeviceCount()} CUDA device(s)"
        raise ModelError(msg)

    def to_cupy(k: Any) -> Any:
        with cupy.cuda.Device(index):
            return cupy.asarray(k)

    return backend, to_cupy


# --- the analysis -------------------------------------------------------------------------------------


def resolve_sizes(model: Model, input_size: Sequence[int] | None) -> None:
    """Give every layer whose map size the file does not fix the ``--input-size``."""
    for layer in model.layers:
        if layer.input_shape is not None:
            continue
        if input_size is None:
            msg = (
                f"{model.source}: the feature-map size of layer {layer.name!r} is not fixed by this "
                f"{model.format} file ({model.unsized}): give --input-size"
            )
            raise ModelError(msg)
        layer.input_shape = expand_size(input_size, layer.ndim, f"layer {layer.name!r}")


def layer_spec(layer: ConvLayer) -> ConvSpec:
    """The layer as stored, validated (every error before any work)."""
    size = "x".join(map(str, layer.input_shape or ()))
    if layer.unmodelled:  # refused as the adapters refuse it; the other layers can still be analysed
        msg = f"layer {layer.name!r} on a {size} map: {layer.unmodelled} (--layers can leave it out)"
        raise ModelError(msg)
    try:
        return conv_spec(tuple(layer.kernel.shape), layer.input_shape, layer.layout, **layer.options)
    except (TypeError, ValueError) as err:
        msg = f"layer {layer.name!r} on a {size} map: {err}"
        raise ModelError(msg) from None


class Progress:
    """A one-line progress bar on a terminal's stderr (silent when disabled)."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.start = time.perf_counter()

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        width = 24
        filled = width * done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {elapsed:5.1f} s  {label}"
        self.stream.write(f"\r{line[:100]:<100}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def analyze(
    model: Model,
    to_backend: Callable[[Any], Any],
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One report row and the circular twin's singular values per layer, in order."""
    specs = [layer_spec(layer) for layer in model.layers]  # every error before any work
    rows, spectra = [], []
    product = 1.0
    for done, (layer, spec) in enumerate(zip(model.layers, specs, strict=True)):
        progress.show(done, layer.name)
        kernel = to_backend(layer.kernel)
        xp = array_api_compat.array_namespace(kernel)
        # The circular layer that contains this one: itself for circular padding, the circular layer on
        # the zero-padded map (a multiple of the stride) for zeros. Its exact spectrum is reported, and
        # its norm bounds the zero-padded layer's from above.
        s = to_host(_values.spectrum(kernel, spec.circular_twin(), xp, None, NormOptions()))
        stats = summarize(s)
        bounds = None
        norm = stats["operator_norm"]
        pads = [list(p) for p in spec.pads or ()]
        if not spec.circular:
            lower = _values.norm(kernel, spec, xp, NormOptions())
            bounds = [float(to_host(lower)), stats["operator_norm"]]
            norm = bounds[0]  # the zero-padded layer's own norm (Lanczos, certified within tol)
        product *= bounds[1] if bounds else norm
        # A singular layer's condition number is infinite, which JSON cannot hold: null ("-" in tables).
        condition = stats["condition_number"]
        rows.append(
            {
                "name": layer.name,
                "kernel_shape": list(layer.kernel.shape),
                "layout": layer.layout,
                "stride": list(spec.stride),
                "dilation": list(spec.dilation),
                "groups": spec.groups,
                "padding": "circular" if spec.circular else pads,
                "transposed": spec.transposed,
                "input_shape": list(spec.layer_input),
                "output_shape": list(spec.layer_output),
                "operator_norm": norm,
                "circular_norm": stats["operator_norm"],
                "norm_bounds": bounds,
                "smallest_singular_value": stats["smallest"],
                "condition_number": condition if math.isfinite(condition) else None,
                "stable_rank": stats["stable_rank"],
                "singular_values": stats["count"],
                "singular_values_at_least_one": stats["at_least_one"],
                "reshaped_kernel_norm": reshaped_norm(layer.kernel, layer.layout),
                "norm_product": product,
                "assumed_options": layer.assumed,
                "note": layer.note or None,
            }
        )
        spectra.append(s)
    progress.show(len(model.layers), "done")
    progress.close()
    return rows, spectra


# --- output -------------------------------------------------------------------------------------------


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
            r["name"],
            f"{_dims(r['kernel_shape'])} {r['layout']}",
            _dims(r["stride"]),
            str(r["groups"]),
            _padding_text(r["padding"]) + (" T" if r["transposed"] else ""),
            _dims(r["input_shape"]),
            _number(r["operator_norm"]),
            "-" if r["norm_bounds"] is None else f"[{r['norm_bounds'][0]:.4g}, {r['norm_bounds'][1]:.4g}]",
            _number(r["circular_norm"]),
            _number(r["smallest_singular_value"]),
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
        "circular: exact norm of the circular layer on the map, zero-padded and rounded up to a multiple",
        "  of the stride for zero padding (the bounds' upper end); s_min, cond, stable rank and #s>=1",
        "  describe its spectrum, and the plots draw it.",
        f"Product of the layers' norms (upper bounds where zero-padded): {rows[-1]['norm_product']:.6g}",
        "  an upper bound on the Lipschitz constant of these convolutions applied in sequence; it bounds",
        "  the network only where everything between them is 1-Lipschitz and nothing skips a layer.",
    ]
    notes = list(model.notes) + [f"{r['name']}: {r['note']}" for r in rows if r["note"]]
    out += [f"note: {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


CSV_FIELDS = [
    "name", "kernel_shape", "layout", "stride", "dilation", "groups", "padding", "transposed",
    "input_shape", "output_shape", "operator_norm", "lower_bound", "upper_bound", "circular_norm",
    "smallest_singular_value",
    "condition_number", "stable_rank", "singular_values", "singular_values_at_least_one",
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


def plot_spectra(rows: list[dict[str, Any]], spectra: list[Any], path: str, title: str) -> None:
    """The paper's Figures 5-7 side by side: singular values, ratios to the largest, against normalised rank.

    As in the paper's Appendix C only kernels larger than 1x1 are drawn (all of them if
    none is), coloured from red (near the input) to green (near the output).
    """
    import numpy as np

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        msg = "--plot needs matplotlib: pip install 'convsv[cli]'"
        raise ModelError(msg) from None
    shown = [i for i, r in enumerate(rows) if math.prod(_spatial_size(r)) > 1] or list(range(len(rows)))
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for order, i in enumerate(shown):
        t = order / max(len(shown) - 1, 1)
        color = (1.0 - t, 0.75 * t, 0.0)
        s = np.sort(np.ravel(spectra[i]))[::-1]
        rank = np.arange(1, s.size + 1)
        ratio = s / s[0] if s[0] > 0 else np.zeros_like(s)
        label = rows[i]["name"]
        axes[0].plot(rank, s, color=color, lw=1.2, label=label)
        axes[1].plot(rank, ratio, color=color, lw=1.2)
        axes[2].plot(rank / s.size, ratio, color=color, lw=1.2)
    axes[0].set(xscale="log", xlabel="rank", ylabel="singular value", title="Singular values (Fig. 5)")
    axes[1].set(xscale="log", yscale="log", xlabel="rank", ylabel=r"$\sigma / \sigma_{max}$",
                title="Ratio to the layer's largest (Fig. 6)")  # fmt: skip
    axes[2].set(yscale="log", xlabel="rank / number of singular values", ylabel=r"$\sigma / \sigma_{max}$",
                title="Against normalised rank (Fig. 7)")  # fmt: skip
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    if not shown:
        axes[0].text(
            0.5, 0.5, "no layer has a circular twin on its map", ha="center", transform=axes[0].transAxes
        )
    elif len(shown) <= 12:
        axes[0].legend(fontsize="small", title="near input: red", title_fontsize="small")
    figure.suptitle(title)
    try:
        figure.savefig(path, dpi=110)
    except (OSError, ValueError) as err:
        msg = f"--plot {path}: cannot write the figure: {err}"
        raise ModelError(msg) from None


def _spatial_size(row: dict[str, Any]) -> list[int]:
    ndim = LAYOUTS[row["layout"]][0]
    shape = row["kernel_shape"]
    return list(shape[:ndim] if LAYOUTS[row["layout"]][1] else shape[2:])
