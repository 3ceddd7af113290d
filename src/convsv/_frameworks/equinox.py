"""Equinox convolutions (``equinox.nn.Conv``, ``Conv1d/2d/3d``) in convsv's terms.

Equinox is imported by the calls that need it, never by importing this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .._layout import dilated_spans, why_not_circulant
from .jax import Path, at_kernels, padtype_pads, plain, read_called

#: Equinox's kernel layout, by number of spatial axes.
LAYOUTS = {1: "OIW", 2: "OIHW", 3: "OIDHW"}


def conv_types() -> tuple[type, ...]:
    """Equinox's Conv class, if equinox is imported (a layer to read implies it is)."""
    eqx = sys.modules.get("equinox")
    return (eqx.nn.Conv,) if eqx is not None else ()


def spatial_rank(layer: Any) -> int:
    """How many spatial axes the layer has."""
    return int(layer.num_spatial_dims)


def kernel_shape(layer: Any) -> tuple[int, ...]:
    """The shape of the layer's ``weight``."""
    return tuple(layer.weight.shape)


def explicit_pads(layer: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The Conv's padding on an ``input_shape`` map as ``(before, after)`` per axis (zeros or wrapped).

    ``"SAME"``, ``"SAME_LOWER"`` and ``"VALID"`` are worked out as ``jax.lax`` does.
    """
    if isinstance(layer.padding, str):
        spans = dilated_spans(layer.kernel_size, layer.dilation)
        return tuple(padtype_pads(input_shape, spans, layer.stride, layer.padding))
    return tuple((int(a), int(b)) for a, b in layer.padding)


def conv_options(layer: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Equinox Conv on an ``input_shape`` map: ``layout``, ``stride``, ``dilation``, ``groups``, ``padding``.

    With ``padding_mode="ZEROS"`` the padding comes back as explicit
    ``(before, after)`` pairs (``"SAME"``, ``"SAME_LOWER"`` and ``"VALID"``
    worked out for the map); with ``"CIRCULAR"`` as ``"circular"`` when the
    wrapped positions make a circulant layer
    (:func:`~convsv._layout.why_not_circulant`).

    Raises
    ------
    ValueError
        For another ``padding_mode`` (``"REFLECT"``...) or circular padding
        that is not a circulant map.
    """
    stride, dilation = tuple(layer.stride), tuple(layer.dilation)
    spans = dilated_spans(layer.kernel_size, dilation)
    pads = explicit_pads(layer, input_shape)
    options = {
        "layout": LAYOUTS[layer.num_spatial_dims],
        "stride": stride,
        "dilation": dilation,
        "groups": layer.groups,
    }
    if layer.padding_mode == "CIRCULAR":
        reason = why_not_circulant(pads, spans, stride, input_shape)
        if reason is not None:
            raise ValueError(reason)
        return {**options, "padding": "circular"}
    if layer.padding_mode != "ZEROS":
        msg = f"padding_mode={layer.padding_mode!r} is not modelled: convsv handles zero and circular padding"
        raise ValueError(msg)
    return {**options, "padding": tuple(pads)}


def input_shapes(
    model: Any, example_input: Any, params: Any, read: Callable[[Any, tuple[int, ...], str], Any]
) -> Any:
    """``params``' tree with ``read(layer, input shape, name)`` at each ``eqx.nn.Conv``'s weight.

    Runs ``model(example_input)`` under ``eqx.filter_eval_shape`` (no FLOPs)
    and records each Conv's input spatial shape (the input is unbatched:
    ``(channels, *spatial)``); other arrays get ``None``. ``params`` ``None``
    means ``eqx.filter(model, eqx.is_array)``.
    """
    import equinox as eqx
    import jax

    found: dict[Path, Any] = {}

    def is_conv(node: Any) -> bool:
        return isinstance(node, eqx.nn.Conv)

    def spatial(_: Any, inputs: Any) -> tuple[int, ...]:
        return tuple(inputs.shape[1:])  # (channels, *spatial)

    def forward(module: Any, inputs: Any) -> None:
        nodes = jax.tree_util.tree_flatten_with_path(module, is_leaf=is_conv)[0]
        layers = {id(node): plain(path) for path, node in nodes if is_conv(node)}
        found.update(read_called(eqx.nn.Conv, spatial, lambda: module(inputs), layers, ".", read))

    eqx.filter_eval_shape(forward, model, example_input)
    params = eqx.filter(model, eqx.is_array) if params is None else params
    return at_kernels(params, {(*path, "weight"): value for path, value in found.items()})
