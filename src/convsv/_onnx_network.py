"""An ONNX graph as a ``torch.fx`` graph of ``torch.nn`` layers, for ``convsv analyze --network``.

The network certificate (:mod:`convsv._lipschitz`) reads fx graphs. Rather
than a second reader, each ONNX node becomes the ``torch.nn`` module or torch
function that computes the same thing, so the one walk certifies PyTorch
modules and ONNX files alike, with the same folds. Convolutions come through
the ONNX reader of ``convsv analyze`` (:func:`convsv._onnx._conv_layer`, the
same strides, pads and ``auto_pad`` resolution); tensors stored in the file
become buffers. Values that do not depend on the model's input (``Shape``,
the shape arithmetic around ``Reshape``) are not translated: a reshape takes
its output's shape from ONNX shape inference.

An operator without a translation is an error naming the node, as is a
translated one used in a way the certificate does not model (a product of two
values that depend on the input, a computed weight, a training-mode dropout).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from ._models import ModelError
from ._onnx import _constants, _conv_layer, _graph_shapes, _subgraphs, load_inferred

_BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}
_UNARY: dict[str, Callable[..., Any]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Neg": operator.neg,
    "HardSwish": F.hardswish,
}
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class _Unsupported(Exception):
    """A node the translation cannot express; the caller names the node."""


class _Translation:
    """Builds the fx graph node by node; ``env`` maps ONNX value names to fx nodes."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        self.onnx = onnx
        self.constants: dict[str, Any] = _constants(graph, {})
        self.shapes: dict[str, Any] = _graph_shapes(graph, {})
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.names: set[str] = set()

    # --- the graph's values ---------------------------------------------------------------------------

    def name(self, text: str) -> str:
        """A unique Python identifier for ``text`` (``/layer1/conv1/Conv`` -> ``layer1_conv1_Conv``)."""
        base = re.sub(r"\W+", "_", text).strip("_") or "node"
        base = f"n_{base}" if base[0].isdigit() else base
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def live(self, value: str) -> fx.Node | None:
        return self.env.get(value)

    def constant(self, value: str, what: str) -> np.ndarray:
        if value not in self.constants:
            msg = f"its {what} ({value!r}) is computed in the graph, not stored in the file"
            raise _Unsupported(msg)
        return np.asarray(self.constants[value])

    def operand(self, value: str) -> fx.Node:
        """A live value, or a stored tensor as a buffer of the module."""
        node = self.live(value)
        if node is not None:
            return node
        return self.buffer(f"const_{value}", self.constant(value, "operand"))

    def buffer(self, label: str, array: np.ndarray) -> fx.Node:
        """A stored tensor, in its stored dtype, as a buffer of the module."""
        name = self.name(label)
        self.root.register_buffer(name, torch.from_numpy(np.array(array)))
        return self.graph.get_attr(name)

    def shape(self, value: str) -> tuple[int, ...]:
        dims = self.shapes.get(value)
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            msg = f"the shape of {value!r} is not fixed (give --input-size, or export with static shapes)"
            raise _Unsupported(msg)
        return tuple(dims)

    def module(self, label: str, module: nn.Module, x: fx.Node) -> fx.Node:
        name = self.name(label)
        self.root.add_module(name, module)
        return self.graph.call_module(name, (x,))

    def function(self, label: str, target: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.create_node("call_function", target, args, kwargs, name=self.name(label))

    # --- the nodes ------------------------------------------------------------------------------------

    def visit(self, node: Any, label: str) -> list[fx.Node | None]:
        """The fx values of ``node``'s outputs (``None`` for one that does not depend on the input)."""
        if _subgraphs(self.onnx, node):
            msg = "control flow (If/Loop/Scan) has no single graph to certify"
            raise _Unsupported(msg)
        live = [self.env[name] for name in node.input if name in self.env]
        if not live or node.op_type in ("Shape", "Size"):
            return [None] * len(node.output)  # a constant, or a shape: the same for every input
        if node.domain not in ("", "ai.onnx"):
            msg = f"operator domain {node.domain!r} is not ONNX's own"
            raise _Unsupported(msg)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op in ("Identity", "Dropout"):
            return self._identity(node)
        x = self.env.get(node.input[0])
        if x is None and op not in (*_BINARY, "Concat"):
            msg = "only its first input may depend on the model's input"
            raise _Unsupported(msg)
        if op in _BINARY:
            return [
                self.function(label, _BINARY[op], self.operand(node.input[0]), self.operand(node.input[1]))
            ]
        if op == "Concat":
            parts = [self.operand(name) for name in node.input]
            return [self.function(label, torch.cat, parts, dim=int(attrs["axis"]))]
        assert x is not None
        if op in _UNARY:
            return [self.function(label, _UNARY[op], x)]
        method = getattr(self, f"_{op.lower()}", None)
        if method is None:
            msg = f"no translation of ONNX's {op} (see the supported operators in docs/network-lipschitz.md)"
            raise _Unsupported(msg)
        return [method(node, label, x, attrs)]

    def _identity(self, node: Any) -> list[fx.Node | None]:
        if node.op_type == "Dropout":
            if len(node.input) > 2 and node.input[2] and self.constant(node.input[2], "training_mode").any():
                msg = "dropout in training mode is random, not a function of the input"
                raise _Unsupported(msg)
            if len(node.output) > 1 and node.output[1]:
                msg = "dropout's mask output"
                raise _Unsupported(msg)
        return [self.env[node.input[0]]]

    def _conv(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        self.constant(node.input[1], "weight")
        layer = _conv_layer(self.onnx, node, label, self.constants, self.shapes)
        kernel, options = layer.kernel, layer.options
        if options["padding"] == "same":
            self.shape(node.input[0])  # SAME pads need the map size: says so
        d, groups = kernel.ndim - 2, options["groups"]
        pads = options["padding"]
        transposed = options["transposed"]
        even = all(a == b for a, b in pads)
        if not even and not transposed:  # PyTorch convolutions pad evenly: the rest as a zero pad first
            flat = [p for a, b in reversed(pads) for p in (a, b)]
            x = self.function(f"{label}_pad", F.pad, x, flat)
            pads = [(0, 0)] * d
        elif not even:
            msg = f"uneven pads {pads} of a transposed convolution"
            raise _Unsupported(msg)
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if transposed else _CONVS
        c_in, c_out = (
            (kernel.shape[0], kernel.shape[1] * groups)
            if transposed
            else (kernel.shape[1] * groups, kernel.shape[0])
        )
        extra = {"output_padding": options["output_padding"]} if transposed else {}
        bias = len(node.input) > 2 and bool(node.input[2])
        module = cls[d - 1](
            c_in,
            c_out,
            kernel.shape[2:],
            stride=options["stride"],
            padding=tuple(a for a, _ in pads),
            dilation=options["dilation"],
            groups=groups,
            bias=bias,
            **extra,
        )
        _set(module, weight=kernel, bias=self.constant(node.input[2], "bias") if bias else None)
        return self.module(label, module, x)

    _convtranspose = _conv

    def _batchnormalization(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        if attrs.get("training_mode", 0):
            msg = "batch norm in training mode normalises by the batch's statistics, which is not Lipschitz"
            raise _Unsupported(msg)
        scale, shift, mean, var = (self.constant(node.input[i], what) for i, what in enumerate(_BN_INPUTS, 1))
        rank = len(self.shape(node.input[0]))
        cls = nn.BatchNorm1d if rank <= 3 else nn.BatchNorm2d if rank == 4 else nn.BatchNorm3d
        module = cls(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)))
        _set(module, weight=scale, bias=shift, running_mean=mean, running_var=var)
        return self.module(label, module, x)

    def _gemm(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        if attrs.get("transA", 0):
            msg = "Gemm with transA=1 (the input transposed)"
            raise _Unsupported(msg)
        b = self.constant(node.input[1], "weight")
        weight = float(attrs.get("alpha", 1.0)) * (b if attrs.get("transB", 0) else b.T)
        c = np.zeros(())
        if len(node.input) > 2 and node.input[2]:
            c = float(attrs.get("beta", 1.0)) * self.constant(node.input[2], "bias")
        if c.size in (1, weight.shape[0]) and c.ndim <= 2 and c.shape[-1:] in ((), (1,), weight.shape[:1]):
            return self.module(label, _linear(weight, np.broadcast_to(c.reshape(-1), weight.shape[:1])), x)
        y = self.module(label, _linear(weight, None), x)  # a bias per row of the batch: added as stored
        return self.function(f"{label}_bias", operator.add, y, self.buffer(f"{label}_bias", c))

    def _matmul(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        b = self.constant(node.input[1], "second operand")
        if b.ndim != 2:
            msg = f"MatMul by a stored {b.ndim}-D array (a 2-D matrix is modelled)"
            raise _Unsupported(msg)
        return self.module(label, _linear(b.T, None), x)

    def _leakyrelu(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self.function(label, F.leaky_relu, x, negative_slope=float(attrs.get("alpha", 0.01)))

    def _elu(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self.function(label, F.elu, x, alpha=float(attrs.get("alpha", 1.0)))

    def _gelu(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self.function(label, F.gelu, x, approximate=_text(attrs.get("approximate", "none")))

    def _clip(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        bounds = [attrs.get("min"), attrs.get("max")]  # opset < 11: attributes; later: inputs
        for i, name in enumerate(node.input[1:3]):
            if name:
                bounds[i] = float(self.constant(name, ("min", "max")[i]))
        return self.function(label, torch.clamp, x, min=bounds[0], max=bounds[1])

    def _pool(
        self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any], classes: Sequence[Any]
    ) -> fx.Node:
        kernel = tuple(attrs["kernel_shape"])
        d = len(kernel)
        pads = list(attrs.get("pads", [0] * 2 * d))
        auto = _text(attrs.get("auto_pad", "NOTSET"))
        if pads[:d] != pads[d:] or auto not in ("NOTSET", "VALID"):
            msg = f"uneven or automatic pooling pads ({pads}, auto_pad {auto!r})"
            raise _Unsupported(msg)
        options: dict[str, Any] = {
            "stride": tuple(attrs.get("strides", [1] * d)),
            "padding": tuple(pads[:d]),
            "ceil_mode": bool(attrs.get("ceil_mode", 0)),
        }
        dilations = tuple(attrs.get("dilations", [1] * d))
        if node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                msg = "max pooling that returns indices"
                raise _Unsupported(msg)
            options["dilation"] = dilations
        else:
            if any(e != 1 for e in dilations):
                msg = "dilated average pooling"
                raise _Unsupported(msg)
            options["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        return self.module(label, classes[d - 1](kernel, **options), x)

    def _maxpool(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self._pool(node, label, x, attrs, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))

    def _averagepool(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self._pool(node, label, x, attrs, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))

    def _globalaveragepool(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        d = len(self.shape(node.input[0])) - 2
        return self.module(
            label, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[d - 1](1), x
        )

    def _globalmaxpool(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        d = len(self.shape(node.input[0])) - 2
        return self.module(
            label, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)[d - 1](1), x
        )

    def _reshape(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        return self.function(label, torch.reshape, x, self.shape(node.output[0]))

    _flatten = _squeeze = _unsqueeze = _reshape

    def _transpose(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        rank = len(self.shape(node.input[0]))
        return self.function(label, torch.permute, x, tuple(attrs.get("perm", range(rank - 1, -1, -1))))

    def _reducemean(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        rank = len(self.shape(node.input[0]))
        axes = attrs.get("axes")
        if len(node.input) > 1 and node.input[1]:  # opset 18: the axes are an input
            axes = self.constant(node.input[1], "axes").tolist()
        dims = tuple(range(rank)) if not axes else tuple(int(a) for a in axes)
        return self.function(label, torch.mean, x, dim=dims, keepdim=bool(attrs.get("keepdims", 1)))

    def _resize(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        """``Resize`` as ``nn.Upsample`` where their index rules agree (tested against ONNX's reference)."""
        mode, coordinates, rounding = (
            _text(attrs.get(key, default))
            for key, default in (
                ("mode", "nearest"),
                ("coordinate_transformation_mode", "half_pixel"),
                ("nearest_mode", "round_prefer_floor"),
            )
        )
        before, after = self.shape(node.input[0]), self.shape(node.output[0])
        d = len(before) - 2
        if before[:2] != after[:2] or attrs.get("antialias", 0) or d not in (1, 2, 3):
            msg = "resizing the batch or channel axes, or antialiased"
            raise _Unsupported(msg)
        if mode == "nearest" and coordinates == "asymmetric" and rounding == "floor":
            options: dict[str, Any] = {"mode": "nearest"}
        elif mode == "linear" and coordinates in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            options = {"mode": ("linear", "bilinear", "trilinear")[d - 1]}
            options["align_corners"] = coordinates == "align_corners"
        else:
            msg = f"Resize mode {mode!r} with {coordinates!r} coordinates (and nearest_mode {rounding!r})"
            raise _Unsupported(msg)
        scales = node.input[2] if len(node.input) > 2 else ""
        if scales and self.constant(scales, "scales").size:
            options["scale_factor"] = tuple(float(s) for s in self.constant(scales, "scales")[2:])
        else:
            options["size"] = after[2:]
        return self.module(label, nn.Upsample(**options), x)

    def _pad(self, node: Any, label: str, x: fx.Node, attrs: dict[str, Any]) -> fx.Node:
        mode = _text(attrs.get("mode", "constant"))
        if mode != "constant":
            msg = f"padding mode {mode!r} repeats entries; constant padding is modelled"
            raise _Unsupported(msg)
        pads = [int(p) for p in (attrs["pads"] if "pads" in attrs else self.constant(node.input[1], "pads"))]
        if len(node.input) > 3 and node.input[3]:
            msg = "padding of chosen axes (the axes input)"
            raise _Unsupported(msg)
        value = float(self.constant(node.input[2], "value")) if len(node.input) > 2 and node.input[2] else 0.0
        rank = len(pads) // 2
        flat = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]
        return self.function(label, F.pad, x, flat, value=value)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_INPUTS = ("scale", "bias", "mean", "variance")


def _text(value: Any) -> str:
    """An ONNX string attribute as ``str`` (the helper returns ``bytes``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    _set(module, weight=weight, bias=bias)
    return module


def _set(module: nn.Module, **arrays: Any) -> None:
    """Copy stored arrays into ``module``'s parameters and buffers, in its dtype."""
    with torch.no_grad():
        for name, array in arrays.items():
            if array is not None:
                target = getattr(module, name)
                target.copy_(torch.from_numpy(np.array(array)).reshape(target.shape))


def onnx_network(
    path: Path, input_size: Sequence[int] | None
) -> tuple[fx.GraphModule, tuple[int, ...], list[str]]:
    """The ONNX model at ``path`` as an fx graph module, the shape of its input, and notes."""
    onnx, model, note = load_inferred(path, input_size)
    translation = _Translation(onnx, model.graph)
    inputs = [value.name for value in model.graph.input if value.name not in translation.constants]
    if len(inputs) != 1:
        msg = (
            f"{path}: the network certificate takes models of one input; this one has {len(inputs)}: {inputs}"
        )
        raise ModelError(msg)
    try:
        shape = translation.shape(inputs[0])
    except _Unsupported as err:
        msg = f"{path}: the model's input {inputs[0]!r}: {err}"
        raise ModelError(msg) from None
    translation.env[inputs[0]] = translation.graph.placeholder(translation.name(inputs[0]))
    for index, node in enumerate(model.graph.node):
        label = node.name.removeprefix("/") or f"{node.op_type}_{index}"
        try:
            outputs = translation.visit(node, label)
        except _Unsupported as err:
            msg = f"{path}: ONNX node {label!r} ({node.op_type}): {err}"
            raise ModelError(msg) from None
        for name, value in zip(node.output, outputs, strict=True):
            if value is not None:
                translation.env[name] = value
    results = [translation.env.get(value.name) for value in model.graph.output]
    if any(result is None for result in results):
        msg = f"{path}: an output of the model does not depend on its input"
        raise ModelError(msg)
    translation.graph.output(results[0] if len(results) == 1 else tuple(results))
    graph_module = fx.GraphModule(
        translation.root, translation.graph
    ).eval()  # batch norm's stored statistics
    return graph_module, shape, [note] if note else []
