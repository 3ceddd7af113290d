"""The ONNX reader behind ``convsv analyze``: every ``Conv`` and ``ConvTranspose``, subgraphs included.

A node's graph-valued attributes -- ``If``'s ``then_branch`` and
``else_branch``, the ``body`` of ``Loop`` and ``Scan``, to any depth -- are
graphs of their own, and their convolutions are layers like the main graph's.
ONNX scopes names lexically: a subgraph sees the values, initializers and
``Constant`` outputs of the graphs around it, so a kernel stored in the main
graph may be used inside a branch. A layer in a subgraph is named by the path
to it, ``OUTER/ATTRIBUTE/NODE`` (``gate/then_branch/conv1``,
``If_0/else_branch/Loop_2/body/Conv_0``), each node named as in the main
graph: its ``name`` (without the leading ``/`` of PyTorch's exporter's names:
``/If/then_branch/stft/Conv``), or ``OpType_INDEX`` (its position in its own
graph) when it has none. A convolution in both branches of an ``If`` is two
layers; one in a ``Loop`` or ``Scan`` body is one layer, however often the
body runs.

Feature-map sizes come from ONNX shape inference, which annotates values
inside subgraphs too (checked with onnx 1.23): from outer values, ``Scan``
slices and each branch's own values. A ``Loop``'s loop-carried values have no
fixed shape; a convolution on one takes ``--input-size``, as layers of files
without sizes do, and says so in its note.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._layout import _same_pads, dilated_spans
from ._models import ConvLayer, Model, ModelError, _need, _unreadable, expand_size, layout_for

CONV_OPS = ("Conv", "ConvTranspose")
SUBGRAPH_NOTE = (
    "{count} of these layers are inside If/Loop/Scan subgraphs (named OUTER/ATTRIBUTE/NODE): both "
    "branches of an If are listed though one runs, and a Loop or Scan body once however often it runs, "
    "so the norm product follows no single path through the model"
)


def _subgraphs(onnx: Any, node: Any) -> list[tuple[str, Any]]:
    """A node's graph-valued attributes as ``(label, graph)``, an ``If``'s then-branch first."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found += [(f"{attr.name}.{i}", graph) for i, graph in enumerate(attr.graphs)]
    return sorted(found, key=lambda item: item[0] != "then_branch")


def _constants(graph: Any, outer: dict[str, Any]) -> dict[str, Any]:
    """The values known in ``graph``: the outer scopes', then its initializers and ``Constant`` outputs.

    ``Identity`` nodes are followed.
    """
    from onnx import numpy_helper

    values = {**outer, **{init.name: numpy_helper.to_array(init) for init in graph.initializer}}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _graph_shapes(graph: Any, outer: dict[str, Any]) -> dict[str, Any]:
    """Every shape ``graph`` declares or shape inference gave it, over the outer scopes' shapes."""
    shapes = dict(outer)
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _all_graphs(onnx: Any, graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for _, sub in _subgraphs(onnx, node):
            yield from _all_graphs(onnx, sub)


def _resize_input(onnx: Any, model: Any, input_size: Sequence[int]) -> str:
    """Give the model's first input the spatial size ``input_size``; returns a note, or ``""``.

    The input is taken as ``(batch, channels, *spatial)``, PyTorch's order, or
    with two axes and one size as ``(batch, samples)`` (audio). Other inputs (a
    recurrent state, a sample rate) keep their stored shapes.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if not inputs:
        return ""
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    note = ""
    if len(dims) == 2 and len(input_size) == 1:
        note = (
            f"the model's input {value.name!r} has 2 axes, taken as (batch, samples): "
            "--input-size is the number of samples"
        )
        spatial = dims[1:]
    elif len(dims) >= 3:
        what = f"the model's input {value.name!r} (batch, channels, spatial axes)"
        spatial, input_size = dims[2:], expand_size(input_size, len(dims) - 2, what)
    else:
        return (
            f"--input-size does not resize the model's input {value.name!r} ({len(dims)} axes, not "
            "(batch, channels, *spatial)): it is the map of the layers whose size shape inference leaves open"
        )
    for dim, size in zip(spatial, input_size, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    if not dims[0].dim_value:
        dims[0].dim_value = 1
    # The sizes the model was exported with are stale now, inside subgraphs too.
    for index, graph in enumerate(_all_graphs(onnx, model.graph)):
        del graph.value_info[:]
        for stale in graph.output if index == 0 else [*graph.input, *graph.output]:
            stale.type.tensor_type.ClearField("shape")
    return note


def _infer_shapes(onnx: Any, model: Any, path: Path) -> Any:
    """The model with every value's shape from ONNX shape inference, in subgraphs too."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as err:
        msg = f"{path}: ONNX shape inference failed: {err}"
        raise ModelError(msg) from None


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


def _conv_layer(
    onnx: Any, node: Any, name: str, constants: dict[str, Any], shapes: dict[str, Any]
) -> ConvLayer:
    """One ``Conv``/``ConvTranspose`` node whose kernel is among ``constants``."""
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
                (m - 1) * s - a - b + w for m, s, (a, b), w in zip(size, strides, pads, spans, strict=True)
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
    return ConvLayer(name, kernel, layout_for(ndim, False), options, size)


def _graph_layers(
    onnx: Any,
    graph: Any,
    prefix: str,
    constants: dict[str, Any],
    shapes: dict[str, Any],
    path: Path,
    depth: int,
) -> Iterator[tuple[ConvLayer, int]]:
    """The convolutions of ``graph`` and of its nodes' subgraphs in node order, named after ``prefix``.

    Each comes with the depth of the graph it is in (0: the main graph).
    """
    constants = _constants(graph, constants)
    shapes = _graph_shapes(graph, shapes)
    for index, node in enumerate(graph.node):
        own = node.name or f"{node.op_type}_{index}"
        name = prefix + own.removeprefix("/") if prefix else own  # PyTorch's names begin with "/"
        if node.op_type in CONV_OPS and node.domain in ("", "ai.onnx"):
            if node.input[1] not in constants:
                msg = (
                    f"{path}: the weights of {node.op_type} node {name!r} are computed, not stored "
                    "(in an initializer or Constant of its graph or of a graph around it)"
                )
                raise ModelError(msg)
            yield _conv_layer(onnx, node, name, constants, shapes), depth
        for label, sub in _subgraphs(onnx, node):
            yield from _graph_layers(onnx, sub, f"{name}/{label}/", constants, shapes, path, depth + 1)


def load_inferred(path: Path, input_size: Sequence[int] | None) -> tuple[Any, Any, str]:
    """``(onnx, model, note)``: the file's model, resized to ``input_size`` if given, its shapes inferred."""
    onnx = _need("onnx", "ONNX models")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError and friends
        raise _unreadable(path, "ONNX", err) from None
    if not model.graph.node:
        raise _unreadable(path, "ONNX", ValueError("the graph has no nodes"))
    note = _resize_input(onnx, model, input_size) if input_size is not None else ""
    return onnx, _infer_shapes(onnx, model, path), note


def read_onnx(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    """The convolutions of an ONNX model, its subgraphs' included (see the module's docstring)."""
    onnx, inferred, note = load_inferred(path, input_size)
    found = list(_graph_layers(onnx, inferred.graph, "", {}, {}, path, depth=0))
    result = Model(str(path), "ONNX", [layer for layer, _ in found], [note] if note else [])
    inner = [layer for layer, depth in found if depth > 0]
    if inner:
        result.notes.append(SUBGRAPH_NOTE.format(count=len(inner)))
    if any(layer.input_shape is None for layer in inner):
        result.unsized = "a dynamic input size, or a value a Loop carries from one iteration to the next"
    for layer in inner:
        if layer.input_shape is None and input_size is not None:
            layer.note = "its feature-map size is not fixed in its subgraph: analysed on --input-size"
    return result
