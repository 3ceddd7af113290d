"""``convsv analyze``'s analysis: per-layer spectra of a model, through the spec level.

The maths is the library's (:func:`convsv._values.spectrum`,
:func:`convsv._values.norm`); this module decides what to compute for each
:class:`~convsv._models.ConvLayer` and gathers the rows that
:mod:`convsv._output` shows.
"""

from __future__ import annotations

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


def summarize(values: Any) -> dict[str, Any]:
    """The statistics ``convsv analyze`` reports for one layer's singular values.

    Parameters
    ----------
    values : array_like
        Singular values, any shape and order, of any array library and
        device (as :func:`convsv.singular_values` returns them).

    Returns
    -------
    dict
        Plain Python numbers: ``singular_value_count``,
        ``largest_singular_value``, ``smallest_singular_value``,
        ``condition_number`` (largest / smallest; ``inf`` for a singular
        layer), ``stable_rank`` (sum of squares / largest squared) and
        ``singular_values_at_least_one``. The keys are those of the
        command's JSON rows.

    Raises
    ------
    ValueError
        If ``values`` is empty.

    Examples
    --------
    >>> import numpy as np, convsv
    >>> from convsv.analysis import summarize
    >>> stats = summarize(convsv.singular_values(np.full((3, 3, 1, 1), 0.5), 4))  # 4.5, 1.5 (6), 0.5 (9)
    >>> stats["singular_value_count"], stats["largest_singular_value"], stats["singular_values_at_least_one"]
    (16, 4.5, 7)
    """
    import numpy as np

    s = np.sort(np.ravel(to_host(values)))[::-1]
    if s.size == 0:
        msg = "`values` is empty: a layer has at least one singular value"
        raise ValueError(msg)
    largest, smallest = float(s[0]), float(s[-1])
    return {
        "singular_value_count": int(s.size),
        "largest_singular_value": largest,
        "smallest_singular_value": smallest,
        "condition_number": largest / smallest if smallest > 0 else float("inf"),
        "stable_rank": float(np.sum(s**2) / largest**2) if largest > 0 else 0.0,
        "singular_values_at_least_one": int(np.sum(s >= 1.0)),
    }


def reshaped_norm(kernel: Any, layout: str) -> float:
    """What reshape-based ``spectral_norm`` wrappers compute: the ``(k^d c_in) x c_out`` matrix's norm."""
    import numpy as np

    _ndim, channels_last = LAYOUTS[layout]
    spatial_first = kernel if channels_last else np.moveaxis(kernel, (0, 1), (-1, -2))
    return float(np.linalg.norm(np.reshape(spatial_first, (-1, spatial_first.shape[-1])), 2))


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


#: Zero padding: a layer whose dense matrix has at most this many entries (2048 x 2048, a second's
#: SVD) is described by its own spectrum; a larger one by that of its circular twin.
EXACT_STATISTICS_ENTRIES = 2**22
#: What a row's statistics describe: the layer itself, or the circular layer on its zero-padded map.
OWN, TWIN = "layer", "circular layer on the padded map"


def layer_values(kernel: Any, spec: ConvSpec, xp: Any) -> tuple[Any, str]:
    """The singular values that describe the layer, and whose they are (:data:`OWN` or :data:`TWIN`).

    Exact: circular layers by frequency, small zero-padded ones by a dense SVD; a larger zero-padded
    layer by its circular twin (the circular layer that contains it, whose norm bounds its own).
    """
    own = spec.circular or math.prod(spec.matrix_shape) <= EXACT_STATISTICS_ENTRIES
    values = _values.spectrum(kernel, spec if own else spec.circular_twin(), xp, None, NormOptions())
    return to_host(values), OWN if own else TWIN  # on the host: the report keeps every layer's


def layer_row(layer: ConvLayer, spec: ConvSpec, kernel: Any) -> tuple[dict[str, Any], Any]:
    """One layer's report row (without the running product), and the singular values it describes."""
    xp = array_api_compat.array_namespace(kernel)
    values, whose = layer_values(kernel, spec, xp)
    stats = summarize(values)
    if spec.circular:
        norm, bounds, circular = stats["largest_singular_value"], None, stats["largest_singular_value"]
    else:  # the layer's own norm (Lanczos, certified within tol) and the circular twin's, above it
        if whose == TWIN:  # the twin's spectrum is at hand: its largest value is the upper bound
            lower = float(to_host(_values.norm(kernel, spec, xp, NormOptions())))
            upper = stats["largest_singular_value"]
        else:
            lower, upper = (float(to_host(b)) for b in _values.norm_bounds(kernel, spec, xp, NormOptions()))
        norm, bounds, circular = lower, [lower, upper], upper
    # A singular layer's condition number is infinite, which JSON cannot hold: null ("-" in tables).
    condition = stats["condition_number"]
    row = {
        "name": layer.name,
        "kernel_shape": list(layer.kernel.shape),
        "layout": layer.layout,
        "stride": list(spec.stride),
        "dilation": list(spec.dilation),
        "groups": spec.groups,
        "padding": "circular" if spec.circular else [list(p) for p in spec.pads or ()],
        "transposed": spec.transposed,
        "input_shape": list(spec.layer_input),
        "output_shape": list(spec.layer_output),
        "operator_norm": norm,
        "norm_bounds": bounds,
        "circular_norm": circular,
        "statistics_of": whose,
        "singular_value_count": stats["singular_value_count"],
        "smallest_singular_value": stats["smallest_singular_value"],
        "condition_number": condition if math.isfinite(condition) else None,
        "stable_rank": stats["stable_rank"],
        "singular_values_at_least_one": stats["singular_values_at_least_one"],
        "reshaped_kernel_norm": reshaped_norm(layer.kernel, layer.layout),
        "assumed_options": layer.assumed,
        "note": layer.note or None,
    }
    return row, values


def analyze(
    model: Model,
    to_backend: Callable[[Any], Any],
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One report row and the singular values it describes per layer, in order.

    Each row carries the running product of the layers' norms (upper bounds where zero-padded).
    """
    specs = [layer_spec(layer) for layer in model.layers]  # every error before any work
    rows, spectra = [], []
    product = 1.0
    for done, (layer, spec) in enumerate(zip(model.layers, specs, strict=True)):
        progress.show(done, layer.name)
        row, values = layer_row(layer, spec, to_backend(layer.kernel))
        product *= row["circular_norm"]
        rows.append({**row, "norm_product": product})
        spectra.append(values)
    progress.show(len(model.layers), "done")
    progress.close()
    return rows, spectra
