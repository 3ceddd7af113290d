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
