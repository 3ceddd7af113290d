"""The ONNX reader behind ``convsv analyze``: every ``Conv`` and ``ConvTranspose`` node of the graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._layout import _same_pads, dilated_spans
from ._models import ConvLayer, Model, ModelError, _need, _unreadable, expand_size, layout_for


def _onnx_constants(graph: Any) -> dict[str, Any]:
    """Initializers and ``Constant`` outputs by name, following ``Identity`` nodes."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _resize_input(model: Any, input_size: Sequence[int]) -> str:
    """Give the model's first input the spatial size ``input_size``; a note where it has no spatial axes.

    The input is taken as ``(batch, channels, *spatial)``, PyTorch's order. Other inputs (a
    recurrent state, a sample rate) keep their stored shapes.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if not inputs:
        return ""
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    if len(dims) < 3:
        return (
            f"--input-size does not resize the model's input {value.name!r} ({len(dims)} axes, not "
            "(batch, channels, *spatial)): it is the map of the layers whose size shape inference leaves open"
        )
    what = f"the model's input {value.name!r} (batch, channels, spatial axes)"
    for dim, size in zip(dims[2:], expand_size(input_size, len(dims) - 2, what), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    if not dims[0].dim_value:
        dims[0].dim_value = 1
    # The sizes the model was exported with are stale now.
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return ""


def _onnx_shapes(onnx: Any, model: Any, path: Path) -> dict[str, Any]:
    """Every value's shape from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:
        msg = f"{path}: ONNX shape inference failed: {err}"
        raise ModelError(msg) from None
    shapes = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _onnx_pads(
    attrs: dict[str, Any], spans: Sequence[int], strides: list[int], size: Any, transposed: bool
) -> Any:
    ndim = len(spans)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * 2 * ndim))
        return [(pads[i], pads[i + ndim]) for i in range(ndim)]
    if auto == "VALID":
        return [(0, 0)] * ndim
    if size is None:
        return None  # SAME needs the map size; the caller reports it
    if transposed:
        out = attrs.get("output_shape") or [n * s for n, s in zip(size, strides, strict=True)]
        extra = attrs.get("output_padding", [0] * ndim)
        totals = [
            s * (n - 1) + e + w - o
            for n, s, e, w, o in zip(size, strides, extra, spans, out[-ndim:], strict=True)
        ]
        halves = [(t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals]
        return halves
    pairs = [_same_pads(n, w, s) for n, w, s in zip(size, spans, strides, strict=True)]
    return pairs if auto == "SAME_UPPER" else [(b, a) for a, b in pairs]


def read_onnx(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    onnx = _need("onnx", "ONNX models")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError and friends
        raise _unreadable(path, "ONNX", err) from None
    if not model.graph.node:
        raise _unreadable(path, "ONNX", ValueError("the graph has no nodes"))
    constants = _onnx_constants(model.graph)
    note = _resize_input(model, input_size) if input_size is not None else ""
    shapes = _onnx_shapes(onnx, model, path)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        if node.input[1] not in constants:
            msg = f"{path}: the weights of {node.op_type} node {name!r} are computed, not stored"
            raise ModelError(msg)
        kernel = constants[node.input[1]]
        ndim = kernel.ndim - 2
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        strides = list(attrs.get("strides", [1] * ndim))
        dilations = list(attrs.get("dilations", [1] * ndim))
        spans = dilated_spans(kernel.shape[2:], dilations)
        shape = shapes.get(node.input[0])
        size = tuple(shape[2:]) if shape and all(isinstance(n, int) and n > 0 for n in shape[2:]) else None
        transposed = node.op_type == "ConvTranspose"
        pads = _onnx_pads(attrs, spans, strides, size, transposed)
        extra: Any = 0
        if transposed:
            out = shapes.get(node.output[0])
            if size is not None and pads is not None and out and all(out[2:]):
                base = [
                    (m - 1) * s - a - b + w
                    for m, s, (a, b), w in zip(size, strides, pads, spans, strict=True)
                ]
                extra = tuple(o - b for o, b in zip(out[2:], base, strict=True))
            else:
                extra = tuple(attrs.get("output_padding", [0] * ndim))
        options = {
            "stride": tuple(strides),
            "dilation": tuple(dilations),
            "groups": int(attrs.get("group", 1)),
            "padding": pads if pads is not None else "same",
            "transposed": transposed,
            "output_padding": extra,
        }
        layers.append(ConvLayer(name, kernel, layout_for(ndim, False), options, size))
    return Model(str(path), "ONNX", layers, [note] if note else [])
