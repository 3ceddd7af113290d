"""The pieces of :mod:`convsv._lipschitz`: linear maps, their folds and norms, and layers' constants.

A linear node of the graph becomes a :class:`Map`; :func:`compose` folds two
maps into one where their product is again a single convolution or matrix,
:func:`plus_identity` folds a residual's identity, and :func:`norm_of` takes
the one norm at the end. The Lipschitz constants of the nonlinear layers are
in :data:`MODULE_RULES` and :data:`FUNCTION_RULES`, each with its reason.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from ._frameworks.torch import conv_options
from ._layout import parse
from ._options import NormOptions
from ._values import norm_upper

#: GELU's constant: ``d/dx x Phi(x) = Phi(x) + x phi(x)`` peaks where ``phi(x) (2 - x^2) = 0``, at
#: ``x = sqrt(2)``: ``Phi(sqrt 2) + sqrt(2) phi(sqrt 2) = (1 + erf 1) / 2 + exp(-1) / sqrt(pi)`` (1.1289).
GELU_LIPSCHITZ = 0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)


@dataclass(frozen=True)
class Map:
    """A linear map awaiting its norm; the folds compose these.

    ``kind`` is ``"conv"`` (``weight`` a PyTorch kernel, ``options`` convsv's,
    ``shape`` the input's spatial shape, ``pads`` PyTorch's ``(before, after)``
    zeros per axis, ``centre`` the tap reading the output's own position when
    there is one), ``"matrix"`` (``weight`` is ``(out, in)``), ``"scale"``
    (per-channel factors on axis 1) or ``"pool"`` (a separable map of pooling
    or interpolation, ``norm`` given, ``basis`` naming its per-axis matrices;
    ``window`` set when it is a non-overlapping average that a following
    convolution can absorb). All in float64.
    """

    kind: str
    weight: torch.Tensor
    names: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    pads: tuple[tuple[int, int], ...] = ()
    centre: tuple[int, ...] | None = None
    norm: float | None = None
    window: tuple[int, ...] | None = None
    basis: str = "averaging"


# --- norms and folds of linear maps ----------------------------------------------------------------


def norm_of(linear: Map, tol: float | None, method: str) -> tuple[float, str]:
    """``linear``'s operator norm (certified from above) and how it was found."""
    label = " + ".join(linear.names)
    if linear.kind == "conv":
        # The upper end of operator_norm_bounds alone: its Lanczos lower end would be thrown away.
        layer = dict(linear.options)
        array, spec, xp = parse(linear.weight, linear.shape, layer.pop("layout"), None, **layer)
        upper = norm_upper(array, spec, xp, NormOptions(method, tol))
        exact = linear.options.get("padding") == "circular"
        how = "exact norm" if exact else "certified upper bound (circular layer on the padded map)"
        return float(upper), f"{how} of {label}"
    if linear.kind == "matrix":
        return float(torch.linalg.matrix_norm(linear.weight, 2)), f"exact norm of {label}"
    if linear.kind == "scale":
        return float(linear.weight.abs().max()), f"exact norm (largest |scale|) of {label}"
    assert linear.norm is not None
    return linear.norm, f"exact norm (per-axis {linear.basis} matrices) of {label}"


def _groups(conv: Map) -> tuple[int, int, int]:
    """``(groups, in_channels, out_channels)`` of a conv map."""
    g, w = int(conv.options["groups"]), conv.weight
    if conv.options["transposed"]:  # PyTorch stores (in, out / groups, ...)
        return g, w.shape[0], w.shape[1] * g
    return g, w.shape[1] * g, w.shape[0]


def _scale_conv(conv: Map, scale: torch.Tensor, outputs: bool) -> torch.Tensor:
    """``conv``'s kernel with its output (or input) channels multiplied by ``scale``."""
    g, c_in, c_out = _groups(conv)
    w, tail = conv.weight, [1] * (conv.weight.ndim - 2)
    if outputs == bool(conv.options["transposed"]):  # the channel on a grouped axis 1
        count = c_out if outputs else c_in
        blocks = w.reshape(g, w.shape[0] // g, count // g, *w.shape[2:])
        return (blocks * scale.reshape(g, 1, count // g, *tail)).reshape(w.shape)
    return w * scale.reshape(-1, 1, *tail)  # the channel on axis 0


def _scale_inputs(conv: Map, scale: torch.Tensor) -> torch.Tensor:
    """A non-transposed ``conv``'s kernel with input channel ``c`` multiplied by ``scale[c]``."""
    g, c_in, c_out = _groups(conv)
    per_output = scale.reshape(g, c_in // g).repeat_interleave(c_out // g, dim=0)  # (out, in / groups)
    return conv.weight * per_output.reshape(*per_output.shape, *[1] * (conv.weight.ndim - 2))


def compose(first: Map, second: Map) -> Map | None:
    """One map for ``second`` after ``first`` (their product, exactly), or None."""
    names = first.names + second.names
    kinds = (first.kind, second.kind)
    if kinds == ("scale", "scale"):
        return Map("scale", first.weight * second.weight, names)
    if kinds == ("matrix", "matrix"):  # two linear layers on the same (last) axis
        return Map("matrix", second.weight @ first.weight, names)
    if kinds == ("matrix", "scale"):
        return Map("matrix", first.weight * second.weight[:, None], names)
    if kinds == ("scale", "matrix"):
        return Map("matrix", second.weight * first.weight[None, :], names)
    if kinds == ("conv", "scale"):  # batch norm after a convolution: a per-output-channel factor
        return _replace(first, _scale_conv(first, second.weight, outputs=True), names)
    if kinds == ("scale", "conv"):  # scaling zeros gives zeros: it commutes with zero padding
        weight = (
            _scale_conv(second, first.weight, outputs=False)
            if second.options["transposed"]
            else _scale_inputs(second, first.weight)
        )
        return _replace(second, weight, names)
    if kinds == ("pool", "conv") and first.window is not None:
        return _pool_then_conv(first, second, names)
    return None


def _replace(conv: Map, weight: torch.Tensor, names: tuple[str, ...]) -> Map:
    return Map("conv", weight, names, conv.options, conv.shape, conv.pads, conv.centre)


def _pool_then_conv(pool: Map, conv: Map, names: tuple[str, ...]) -> Map | None:
    """A convolution after a non-overlapping average pool: one convolution on the pool's input.

    The pool (window ``s`` = stride, no padding, ``s`` dividing the map) takes
    pooled pixel ``t`` to the mean of input block ``t``; the convolution's tap
    ``j`` then reads block ``stride * r - before + j``, so the composite has
    each tap repeated ``s`` times per axis, divided by ``prod(s)``, stride
    ``s * stride`` and padding ``s * pads``. A pooled pixel in the padding is
    a block in the scaled padding, so zero and circular padding carry over.
    """
    options = conv.options
    if options["transposed"] or any(d != 1 for d in options["dilation"]) or pool.window is None:
        return None
    weight = conv.weight
    for axis, s in enumerate(pool.window):
        weight = weight.repeat_interleave(s, dim=2 + axis)
    weight = weight / math.prod(pool.window)
    stride = tuple(s * t for s, t in zip(pool.window, options["stride"], strict=True))
    circular = options["padding"] == "circular"
    pads = tuple((s * a, s * b) for s, (a, b) in zip(pool.window, conv.pads, strict=True))
    composite = {**options, "stride": stride, "padding": "circular" if circular else pads}
    return Map("conv", weight, names, composite, pool.shape, pads)


def plus_identity(linear: Map, sign: float) -> Map | None:
    """The map ``I + sign * linear`` when ``linear`` is square and the identity fits in it, else None."""
    names = (*linear.names, "identity")
    if linear.kind == "scale":
        return Map("scale", 1.0 + sign * linear.weight, names)
    if linear.kind == "matrix" and linear.weight.shape[0] == linear.weight.shape[1]:
        eye = torch.eye(linear.weight.shape[0], dtype=torch.float64, device=linear.weight.device)
        return Map("matrix", eye + sign * linear.weight, names)
    if linear.kind != "conv" or linear.centre is None:
        return None
    _, c_in, c_out = _groups(linear)
    if c_in != c_out:
        return None
    weight = sign * linear.weight.clone()
    out = torch.arange(c_out, device=weight.device)
    index: tuple[Any, ...] = (out, out % weight.shape[1], *linear.centre)
    weight[index] += 1.0  # output o reads input o at the centre tap
    return Map("conv", weight, names, linear.options, linear.shape, linear.pads, linear.centre)


# --- layers as maps ---------------------------------------------------------------------------------


def _pads(module: Any, d: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's zeros (or wrapped pixels) before and after, per spatial axis, first axis first."""
    flat = module._reversed_padding_repeated_twice  # stored last axis first
    return tuple((int(flat[2 * (d - 1 - a)]), int(flat[2 * (d - 1 - a) + 1])) for a in range(d))


def conv_map(name: str, module: Any, spatial: tuple[int, ...], out: tuple[int, ...]) -> Map:
    d = module.weight.ndim - 2
    pads = _pads(module, d)
    centre: tuple[int, ...] | None = None
    stride_one = all(s == 1 for s in module.stride) and not module.transposed
    if (
        stride_one
        and out == spatial
        and all(b % e == 0 for (b, _), e in zip(pads, module.dilation, strict=True))
    ):
        taps = tuple(b // e for (b, _), e in zip(pads, module.dilation, strict=True))
        # Tap j reads pixel r - before + j * dilation: the one with j * dilation = before reads r.
        centre = taps if all(t < k for t, k in zip(taps, module.kernel_size, strict=True)) else None
    options = conv_options(module, spatial)
    return Map("conv", module.weight.detach().double(), (name,), options, spatial, pads, centre)


def bn_scale(module: Any) -> torch.Tensor:
    """Eval batch norm's per-channel factor ``gamma / sqrt(running_var + eps)``."""
    if module.running_var is None:
        msg = "batch norm without running statistics normalises by the batch's, which is not Lipschitz"
        raise ValueError(msg)
    scale = 1.0 / torch.sqrt(module.running_var.detach().double() + module.eps)
    return scale if module.weight is None else scale * module.weight.detach().double()


def _axis_matrix(n: int, pool: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The ``(n_out, n)`` matrix of a 1-D ``pool``, from its output on the ``n`` unit inputs."""
    return pool(torch.eye(n, dtype=torch.float64).unsqueeze(1))[:, 0, :].T


def avg_pool_map(name: str, module: Any, spatial: tuple[int, ...]) -> Map:
    """An average pool: separable, so its norm is the product of its per-axis matrices' norms.

    PyTorch divides each window by the product of its per-axis lengths (as
    counted by ``count_include_pad`` and ``ceil_mode``), so the d-D pool is the
    Kronecker product of the 1-D pools with the same options per axis.
    """
    d, adaptive = len(spatial), isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd)
    norm, window = 1.0, []
    for axis, n in enumerate(spatial):
        if adaptive:
            size = _per_axis(module.output_size, d)[axis]
            size = n if size is None else size
            matrix = _axis_matrix(n, partial(F.adaptive_avg_pool1d, output_size=size))
            window.append(n // size if n % size == 0 else 0)
        else:
            k, s, p = (_per_axis(v, d)[axis] for v in (module.kernel_size, module.stride, module.padding))
            ceil, include = module.ceil_mode, module.count_include_pad
            pool = partial(
                F.avg_pool1d, kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include
            )
            matrix = _axis_matrix(n, pool)
            if module.divisor_override:  # one divisor for every window: the windows' indicator, scaled
                matrix = (matrix != 0).double()
            clean = k == s and p == 0 and n % s == 0 and not module.divisor_override
            window.append(s if clean else 0)
        norm *= float(torch.linalg.matrix_norm(matrix, 2))
    if not adaptive and module.divisor_override:
        norm /= module.divisor_override
    foldable = tuple(window) if all(window) else None
    return Map("pool", torch.ones(()), (name,), shape=spatial, norm=norm, window=foldable)


def upsample_map(name: str, module: Any, spatial: tuple[int, ...], out: tuple[int, ...]) -> Map:
    """Upsampling: nearest and (bi/tri)linear interpolation are separable, like average pooling.

    Each axis's index map (nearest) or weights (linear) depend on that axis
    alone, so the d-D map is the Kronecker product of the 1-D ones, computed
    with the same scale factor (or output size) per axis.
    """
    mode = module.mode
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear"):
        msg = f"upsampling mode {mode!r} (nearest and (bi/tri)linear are modelled)"
        raise ValueError(msg)
    linear = mode not in ("nearest", "nearest-exact")
    norm, d = 1.0, len(spatial)
    for axis, n in enumerate(spatial):
        if module.scale_factor is not None and not module.recompute_scale_factor:
            size: dict[str, Any] = {"scale_factor": float(_per_axis(module.scale_factor, d)[axis])}
        else:
            size = {"size": out[axis]}
        options = {"mode": "linear", "align_corners": module.align_corners} if linear else {"mode": mode}
        matrix = _axis_matrix(n, partial(F.interpolate, **size, **options))
        norm *= float(torch.linalg.matrix_norm(matrix, 2))
    return Map("pool", torch.ones(()), (name,), shape=spatial, norm=norm, basis="interpolation")


#: Functions that are a torch.nn layer called with its weights as arguments: the layer, and the
#: names of the function's arguments after the input, in order (PyTorch's builtins have no signature).
_CONV_ARGS = ("weight", "bias", "stride", "padding", "dilation", "groups")
_TRANSPOSED_ARGS = ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
FUNCTIONAL_LAYERS: dict[Any, tuple[type, tuple[str, ...]]] = {
    F.linear: (nn.Linear, ("weight", "bias")),
    F.conv1d: (nn.Conv1d, _CONV_ARGS),
    F.conv2d: (nn.Conv2d, _CONV_ARGS),
    F.conv3d: (nn.Conv3d, _CONV_ARGS),
    F.conv_transpose1d: (nn.ConvTranspose1d, _TRANSPOSED_ARGS),
    F.conv_transpose2d: (nn.ConvTranspose2d, _TRANSPOSED_ARGS),
    F.conv_transpose3d: (nn.ConvTranspose3d, _TRANSPOSED_ARGS),
    F.avg_pool1d: (nn.AvgPool1d, _AVG_ARGS[:5]),
    F.avg_pool2d: (nn.AvgPool2d, _AVG_ARGS),
    F.avg_pool3d: (nn.AvgPool3d, _AVG_ARGS),
    F.max_pool1d: (nn.MaxPool1d, _MAX_ARGS),
    F.max_pool2d: (nn.MaxPool2d, _MAX_ARGS),
    F.max_pool3d: (nn.MaxPool3d, _MAX_ARGS),
    F.adaptive_avg_pool1d: (nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    F.adaptive_avg_pool3d: (nn.AdaptiveAvgPool3d, ("output_size",)),
    F.adaptive_max_pool1d: (nn.AdaptiveMaxPool1d, ("output_size", "return_indices")),
    F.adaptive_max_pool2d: (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
    F.adaptive_max_pool3d: (nn.AdaptiveMaxPool3d, ("output_size", "return_indices")),
    F.interpolate: (
        nn.Upsample,
        ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
    ),
}


def functional_layer(node: fx.Node, constant: Callable[[Any], torch.Tensor | None]) -> nn.Module:
    """The ``torch.nn`` layer a functional call computes; ``constant`` reads a stored tensor argument."""
    cls, names = FUNCTIONAL_LAYERS[node.target]
    given: dict[str, Any] = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    if given.pop("antialias", False):
        msg = "antialiased interpolation"
        raise ValueError(msg)
    if "weight" not in given:
        pool: nn.Module = cls(**{k: v for k, v in given.items() if v is not None or k == "stride"})
        return pool
    weight = constant(given.pop("weight"))
    if weight is None:
        msg = "its weight is computed in the forward pass; only weights stored in the model are modelled"
        raise TypeError(msg)
    given.pop("bias", None)  # a shift: no part of the Lipschitz constant
    if cls is nn.Linear:
        layer: Any = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    else:
        groups = int(given.get("groups", 1))
        transposed = "output_padding" in names
        channels = (
            (weight.shape[0], weight.shape[1] * groups)
            if transposed
            else (weight.shape[1] * groups, weight.shape[0])
        )
        layer = cls(*channels, weight.shape[2:], bias=False, dtype=weight.dtype, **given)
    layer.weight.data = weight
    module: nn.Module = layer
    return module


def pool_dims(module: nn.Module) -> int:
    """How many spatial axes a pooling layer pools (1, 2 or 3)."""
    for d, kinds in enumerate(_POOLS, start=1):
        if isinstance(module, kinds):
            return d
    msg = f"{type(module).__name__} is not a 1-D, 2-D or 3-D pooling layer"
    raise TypeError(msg)


_POOLS = [
    (nn.AvgPool1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
    (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
    (nn.AvgPool3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
]


def _per_axis(value: Any, d: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * d


def max_pool_constant(module: Any, spatial: tuple[int, ...], out: tuple[int, ...]) -> float:
    """``sqrt`` of the most windows any one pixel falls in.

    ``|max(a) - max(b)| <= max |a - b| <= ||a - b||`` on each window, and
    summing the squares over windows counts each pixel once per window it is
    in. A window is a product of per-axis intervals, so that count is the
    product of the per-axis counts.
    """
    d, worst = len(spatial), 1
    for axis, (n, m) in enumerate(zip(spatial, out, strict=True)):
        counts = torch.zeros(n, dtype=torch.int64)
        for o in range(m):
            if isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd):
                taps = range(o * n // m, -(-(o + 1) * n // m))
            else:
                k, s, p, e = (
                    _per_axis(v, d)[axis]
                    for v in (module.kernel_size, module.stride, module.padding, module.dilation)
                )
                taps = range(o * s - p, o * s - p + e * (k - 1) + 1, e)
            for i in taps:
                if 0 <= i < n:
                    counts[i] += 1
        worst *= int(counts.max())
    return math.sqrt(worst)


# --- elementwise functions ---------------------------------------------------------------------------


@cache
def _peak_slope(name: str) -> float:
    """The largest ``|f'|`` of a smooth activation, on a grid of step 1e-4 over [-20, 20], plus 1e-6.

    At the peak ``f'' = 0``, so the grid misses it by at most ``h^2 / 8 max |f'''|``
    (below 1e-8 here); beyond 20 the slopes are within ``1e-8`` of 0 or 1.
    """
    x = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64, requires_grad=True)
    f: Callable[[torch.Tensor], torch.Tensor] = (
        partial(F.gelu, approximate="tanh") if name == "gelu" else F.silu
    )
    (slope,) = torch.autograd.grad(f(x).sum(), x)
    return float(slope.abs().max()) + 1e-6


def _gelu(approximate: str) -> tuple[float, str]:
    if approximate == "tanh":
        return _peak_slope("gelu"), "largest slope of tanh-GELU (fine grid)"
    return GELU_LIPSCHITZ, "largest slope of GELU, Phi(sqrt 2) + sqrt(2) phi(sqrt 2)"


def arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


_ONE = (1.0, "slopes in [0, 1]")
_COPY = (1.0, "moves entries, an isometry")
MODULE_RULES: dict[type, Callable[[Any], tuple[float, str]]] = {
    **dict.fromkeys((nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh), lambda m: _ONE),
    **dict.fromkeys((nn.Flatten, nn.Unflatten), lambda m: _COPY),
    nn.LeakyReLU: lambda m: (max(1.0, abs(m.negative_slope)), "slopes 1 and negative_slope"),
    nn.ELU: lambda m: (max(1.0, abs(m.alpha)), "slopes 1 and alpha exp(x), x < 0"),
    nn.Sigmoid: lambda m: (0.25, "sigma (1 - sigma) <= 1/4"),
    nn.Hardsigmoid: lambda m: (1 / 6, "slopes 0 and 1/6"),
    nn.Hardswish: lambda m: (1.5, "slope (2x + 3) / 6 on [-3, 3], at most 3/2"),
    nn.SiLU: lambda m: (_peak_slope("silu"), "largest slope of SiLU (fine grid)"),
    nn.GELU: lambda m: _gelu(m.approximate),
}


#: Layers that return their input's values (in eval mode): the walk treats them as the same value.
IDENTITY_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
IDENTITY_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, "contiguous")


def is_identity(node: fx.Node) -> bool:
    """Whether a function node returns its input's values; a ValueError for dropout in training mode."""
    if node.target not in IDENTITY_FUNCTIONS:
        return False
    if node.target != "contiguous" and arg(node, 2, "training", True):  # F.dropout's default is True
        msg = "dropout in training mode is random, not a function of the input"
        raise ValueError(msg)
    return True


def _pad(node: fx.Node) -> tuple[float, str]:
    mode = arg(node, 2, "mode", "constant")
    if mode != "constant":
        msg = f"F.pad with mode {mode!r} repeats entries; constant padding is modelled"
        raise ValueError(msg)
    return 1.0, "pads with a constant (or crops): copies entries"


FUNCTION_RULES: dict[Any, Callable[[fx.Node], tuple[float, str]]] = {
    **dict.fromkeys(
        (F.relu, torch.relu, "relu", F.relu6, F.hardtanh, torch.tanh, F.tanh, "tanh", torch.clamp, "clamp"),
        lambda n: _ONE,
    ),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, "sigmoid"), lambda n: (0.25, "sigma (1 - sigma) <= 1/4")),
    **dict.fromkeys(
        (
            torch.flatten,
            "flatten",
            "view",
            "reshape",
            torch.reshape,
            "permute",
            torch.permute,
            "transpose",
            torch.transpose,
            "squeeze",
            "unsqueeze",
            torch.squeeze,
            torch.unsqueeze,
        ),
        lambda n: _COPY,
    ),
    **dict.fromkeys((operator.neg, torch.neg, "neg"), lambda n: (1.0, "negation")),
    F.leaky_relu: lambda n: (
        max(1.0, abs(arg(n, 1, "negative_slope", 0.01))),
        "slopes 1 and negative_slope",
    ),
    F.elu: lambda n: (max(1.0, abs(arg(n, 1, "alpha", 1.0))), "slopes 1 and alpha exp(x), x < 0"),
    F.gelu: lambda n: _gelu(str(n.kwargs.get("approximate", "none"))),
    F.silu: lambda n: (_peak_slope("silu"), "largest slope of SiLU (fine grid)"),
    F.hardswish: lambda n: (1.5, "slope (2x + 3) / 6 on [-3, 3], at most 3/2"),
    F.pad: _pad,
}
