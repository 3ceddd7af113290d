"""Flax convolutions (``flax.nnx.Conv``, ``flax.linen.Conv``) in convsv's terms.

Flax is imported by the calls that need it, never by importing this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .._layout import dilated_spans, why_not_circulant
from .jax import Path, at_kernels, padtype_pads, plain, read_called

#: Flax's kernel layout, by number of spatial axes.
LAYOUTS = {1: "WIO", 2: "HWIO", 3: "DHWIO"}


def conv_types() -> tuple[type, ...]:
    """Flax's Conv classes (NNX, Linen) among those imported: a layer to read implies its module is."""
    modules = (sys.modules.get("flax.nnx"), sys.modules.get("flax.linen"))
    return tuple(module.Conv for module in modules if module is not None)


def kernel_size(layer: Any) -> tuple[int, ...]:
    """The layer's kernel size, one int per spatial axis (Flax also takes a bare int)."""
    size = layer.kernel_size
    return (size,) if isinstance(size, int) else tuple(size)


def _per_axis(value: Any, ndim: int) -> tuple[int, ...]:
    """A Flax stride or dilation (``None``, an int or one per axis) as one int per axis."""
    if value is None:
        return (1,) * ndim
    if isinstance(value, int):
        return (value,) * ndim
    return tuple(int(v) for v in value)


def spatial_rank(layer: Any) -> int:
    """How many spatial axes the layer has."""
    return len(kernel_size(layer))


def kernel_shape(layer: Any) -> tuple[int, ...] | None:
    """The shape of the layer's ``kernel``; ``None`` for a Linen layer, which holds none until bound."""
    kernel: Any = getattr(layer, "kernel", None)
    return tuple(kernel.shape) if hasattr(kernel, "shape") else None


def conv_options(layer: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """A Flax Conv on an ``input_shape`` map: ``layout``, ``stride``, ``dilation``, ``groups``, ``padding``.

    Zero padding comes back as explicit ``(before, after)`` pairs (``"SAME"``,
    ``"SAME_LOWER"``, ``"VALID"`` and ``"CAUSAL"`` worked out for the map);
    ``"CIRCULAR"`` as ``"circular"`` when it makes a circulant layer
    (:func:`~convsv._layout.why_not_circulant`).

    Raises
    ------
    ValueError
        For what convsv does not model: a ``mask``, ``input_dilation``, other
        padding (``"REFLECT"``...), circular padding that is not a circulant map.
    """
    size = kernel_size(layer)
    d = len(size)
    if getattr(layer, "mask", None) is not None:
        msg = "a masked Conv (mask=...) is not modelled; the projection would ignore the mask"
        raise ValueError(msg)
    if _per_axis(layer.input_dilation, d) != (1,) * d:
        msg = f"input_dilation={layer.input_dilation} is not modelled (use a ConvTranspose layout)"
        raise ValueError(msg)
    stride = _per_axis(layer.strides, d)
    dilation = _per_axis(layer.kernel_dilation, d)
    spans = dilated_spans(size, dilation)
    return {
        "layout": LAYOUTS[d],
        "stride": stride,
        "dilation": dilation,
        "groups": layer.feature_group_count,
        "padding": _padding(layer.padding, input_shape, spans, stride),
    }


def _padding(
    padding: Any, shape: tuple[int, ...], spans: tuple[int, ...], stride: tuple[int, ...]
) -> str | tuple[tuple[int, int], ...]:
    """A Flax ``padding`` as convsv's: ``"circular"`` or ``(before, after)`` zeros per axis."""
    if not isinstance(padding, str):
        per_axis = [padding] * len(spans) if isinstance(padding, int) else padding
        pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in per_axis]
        return tuple((int(a), int(b)) for a, b in pairs)
    mode = padding.upper()
    if mode == "CIRCULAR":
        reason = why_not_circulant(_wrapped(spans), spans, stride, shape)
        if reason is not None:
            raise ValueError(reason)
        return "circular"
    if mode == "CAUSAL":
        if len(spans) != 1:
            msg = "CAUSAL padding is only defined for 1-D convolutions"
            raise ValueError(msg)
        return ((spans[0] - 1, 0),)
    if mode not in ("SAME", "SAME_LOWER", "VALID"):
        msg = f"padding={padding!r} is not modelled: convsv handles zero and circular padding"
        raise ValueError(msg)
    return tuple(padtype_pads(shape, spans, stride, mode))


def _wrapped(spans: tuple[int, ...]) -> list[tuple[int, int]]:
    """Flax's circular padding: ``(span - 1) // 2`` positions wrapped around before, ``span // 2`` after."""
    return [((w - 1) // 2, w // 2) for w in spans]


def explicit_pads(layer: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The Conv's padding on an ``input_shape`` map as ``(before, after)`` per axis (zeros or wrapped).

    Checked as :func:`conv_options` checks it (its errors are this call's).
    """
    options = conv_options(layer, input_shape)
    if options["padding"] != "circular":
        return tuple(options["padding"])
    return tuple(_wrapped(dilated_spans(kernel_size(layer), options["dilation"])))


def input_shapes(
    model: Any, example_input: Any, wrt: Any, read: Callable[[Any, tuple[int, ...], str], Any]
) -> Any:
    """``nnx.state(model, wrt)``'s tree with ``read(layer, input shape, name)`` at each ``nnx.Conv``'s kernel.

    Runs ``model(example_input)`` under ``nnx.eval_shape`` (no FLOPs, the
    model untouched) and records each ``nnx.Conv``'s input spatial shape;
    other arrays get ``None``. ``wrt`` ``None`` means ``nnx.Param``.
    """
    from flax import nnx

    found: dict[Path, Any] = {}

    def spatial(layer: Any, inputs: Any) -> tuple[int, ...]:
        return tuple(inputs.shape[-len(layer.kernel_size) - 1 : -1])  # (batch..., *spatial, channels)

    def forward(module: Any, inputs: Any) -> None:
        layers = {
            id(node): plain(path) for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Conv)
        }
        found.update(read_called(nnx.Conv, spatial, lambda: module(inputs), layers, "/", read))

    nnx.eval_shape(forward, model, example_input)
    params = nnx.as_pure(nnx.state(model, nnx.Param if wrt is None else wrt))
    return at_kernels(params, {(*path, "kernel"): value for path, value in found.items()})
