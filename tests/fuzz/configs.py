"""Random layer configurations for the campaign, each reproducible from ``(seed, index)``.

``draw(seed, index, dtypes)`` returns the same layer for the same arguments on
every machine: a NumPy ``Generator`` seeded with ``[seed, index]``. Only the
dtype depends on the backend (``dtypes``: the ones it has), so a failure on
one backend reruns on another with ``draw(seed, index, ...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ALL_DTYPES = ("float32", "float64", "complex64", "complex128")
SINGLE = {"float32", "complex64"}
# Kernel scales at the ends of each precision's range (the norm is homogeneous, so the checks are too).
EXTREME_SCALES = {"single": (1e-12, 1e12), "double": (1e-150, 1e150)}
# The dense matrix of a layer is at most this many rows and columns: its SVD stays a few ms.
MAX_SIDE = 600
METHODS = ("auto", "svd", "eigh", "gram", "power")
CLIP_METHODS = ("alternating", "extrapolated", "dykstra")


@dataclass(frozen=True)
class Config:
    """One layer and the options of the calls made on it.

    ``kernel_shape`` is spatial-first ``(*k, in / groups, out)`` of the forward
    convolution (the array the library reads, before ``layout``);
    ``conv_input`` is that convolution's input map, ``input_shape`` what the
    layer (transposed or not) is given, ``pads`` the zeros added before and
    after each axis (None: circular).
    """

    seed: int
    index: int
    dtype: str
    layout: str
    kernel_shape: tuple[int, ...]
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    padding: Any  # as passed to convsv: "circular", "same", "valid", int, ints, pairs
    output_padding: tuple[int, ...]
    input_shape: tuple[int, ...]
    conv_input: tuple[int, ...]
    pads: tuple[tuple[int, int], ...] | None
    scale: float
    rank: str  # "full", "zero-out", "zero-in", "dup-out", "dup-in", "zero"
    k: int  # for singular_values(k=...)
    clip_factor: float  # max_norm = clip_factor * ||layer|| (1.0 when the layer is 0)
    clip_method: str
    clip_iterations: int
    clip_tol: float | None
    min_factor: float | None  # min_norm = min_factor * max_norm
    bounds_method: str
    gradient: bool

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    @property
    def precision(self) -> str:
        return "single" if self.dtype in SINGLE else "double"

    @property
    def complex(self) -> bool:
        return self.dtype.startswith("complex")

    @property
    def circular(self) -> bool:
        return self.pads is None

    @property
    def span(self) -> tuple[int, ...]:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_shape, self.dilation, strict=False))

    def options(self) -> dict[str, Any]:
        """The layer's keyword arguments, as every convsv function takes them."""
        options: dict[str, Any] = {"layout": self.layout, "padding": self.padding}
        if self.groups != 1:
            options["groups"] = self.groups
        if any(s != 1 for s in self.stride):
            options["stride"] = self.stride
        if any(d != 1 for d in self.dilation):
            options["dilation"] = self.dilation
        if self.transposed:
            options["transposed"] = True
        if any(self.output_padding):
            options["output_padding"] = self.output_padding
        return options

    def kernel(self) -> np.ndarray:
        """The kernel in spatial-first order and float64/complex128, scaled, rounded to ``dtype``."""
        rng = np.random.default_rng([self.seed, self.index, 1])
        kernel = rng.standard_normal(self.kernel_shape)
        if self.complex:
            kernel = kernel + 1j * rng.standard_normal(self.kernel_shape)
        kernel = _rank_deficient(kernel, self.rank, self.groups, rng)
        return (kernel * self.scale).astype(self.dtype).astype(np.result_type(kernel, np.float64))

    def in_layout(self, kernel: np.ndarray) -> np.ndarray:
        """A spatial-first kernel in this config's ``layout``."""
        if self.layout.startswith("OI"):
            d = self.ndim
            return np.transpose(kernel, (d + 1, d, *range(d)))
        return kernel

    def rerun(self) -> str:
        """A line that redraws this configuration."""
        return f"fuzz.configs.draw({self.seed}, {self.index}, {(self.dtype,)!r})"


def _rank_deficient(kernel: np.ndarray, rank: str, groups: int, rng: np.random.Generator) -> np.ndarray:
    """Zero or duplicate a channel (within one group, so the layer loses rank)."""
    kernel = kernel.copy()
    group_in, c_out = kernel.shape[-2:]
    group_out = c_out // groups
    if rank == "zero":
        kernel[...] = 0
    elif rank == "zero-out":
        kernel[..., int(rng.integers(c_out))] = 0
    elif rank == "zero-in":
        kernel[..., int(rng.integers(group_in)), :] = 0
    elif rank == "dup-out":  # two output channels of one group read the same weights
        first = int(rng.integers(groups)) * group_out
        kernel[..., first + 1] = kernel[..., first]
    elif rank == "dup-in":
        kernel[..., 1, :] = kernel[..., 0, :]
    return kernel


def _choice(rng: np.random.Generator, options: Any, p: Any = None) -> Any:
    return options[int(rng.choice(len(options), p=p))]


def _per_axis(rng: np.random.Generator, d: int, values: tuple[int, ...], p: Any) -> tuple[int, ...]:
    """Mostly one value on every axis, sometimes one per axis."""
    if rng.random() < 0.7:
        return (int(_choice(rng, values, p)),) * d
    return tuple(int(_choice(rng, values, p)) for _ in range(d))


def _draw_layer(rng: np.random.Generator) -> dict[str, Any] | None:
    """The layer's sizes and options, or None when the draw is rejected (too large, empty)."""
    d = int(_choice(rng, (1, 2, 3), (0.35, 0.5, 0.15)))
    ksize = tuple(int(k) for k in rng.integers(1, 5 if d < 3 else 4, size=d))
    stride = _per_axis(rng, d, (1, 2, 3), (0.6, 0.25, 0.15))
    dilation = _per_axis(rng, d, (1, 2, 3), (0.7, 0.2, 0.1))
    c_in, c_out = (int(c) for c in rng.integers(1, 5, size=2))
    divisors = [g for g in range(1, 5) if c_in % g == 0 and c_out % g == 0]
    groups = int(_choice(rng, divisors))
    transposed = bool(rng.random() < 0.25)
    span = tuple((k - 1) * dl + 1 for k, dl in zip(ksize, dilation, strict=True))
    most = {1: 24, 2: 9, 3: 5}[d]  # input positions per axis, before the size limit
    padding: Any
    extra = (0,) * d
    if rng.random() < 0.5:  # circular: the stride must divide the map
        padding, pads = "circular", None
        conv_input = tuple(s * int(rng.integers(1, max(2, most // s + 1))) for s in stride)
        conv_output = tuple(n // s for n, s in zip(conv_input, stride, strict=True))
        given = conv_output if transposed else conv_input
    else:
        kind = _choice(rng, ("same", "valid", "int", "ints", "pairs"), (0.25, 0.15, 0.25, 0.15, 0.2))
        conv_input = tuple(int(n) for n in rng.integers(1, most + 1, size=d))
        if kind == "same" and transposed:  # a transposed "same" layer's output is input * stride
            conv_input = tuple(-(-n // s) * s for n, s in zip(conv_input, stride, strict=True))
        if kind == "same":
            padding = "same"
            pads = tuple(_same_pads(n, w, s) for n, w, s in zip(conv_input, span, stride, strict=True))
        elif kind == "valid":
            padding, pads = "valid", ((0, 0),) * d
        elif kind == "int":
            p = int(rng.integers(0, 4))
            padding, pads = p, ((p, p),) * d
        elif kind == "ints":
            ps = tuple(int(p) for p in rng.integers(0, 4, size=d))
            padding, pads = ps, tuple((p, p) for p in ps)
        else:
            pads = tuple((int(a), int(b)) for a, b in rng.integers(0, 4, size=(d, 2)))
            padding = pads
        if any(n + a + b < w for n, (a, b), w in zip(conv_input, pads, span, strict=True)):
            return None  # empty output
        conv_output = tuple(
            (n + a + b - w) // s + 1 for n, (a, b), w, s in zip(conv_input, pads, span, stride, strict=True)
        )
        if transposed and kind != "same":
            # The output padding that makes the transposed layer's output exactly conv_input.
            extra = tuple(
                (n + a + b - w) % s for n, (a, b), w, s in zip(conv_input, pads, span, stride, strict=True)
            )
        given = conv_output if transposed else conv_input
    columns, rows = c_in * math.prod(conv_input), c_out * math.prod(conv_output)
    if max(columns, rows) > MAX_SIDE:
        return None
    return {
        "kernel_shape": (*ksize, c_in // groups, c_out),
        "groups": groups,
        "stride": stride,
        "dilation": dilation,
        "transposed": transposed,
        "padding": padding,
        "output_padding": extra,
        "input_shape": given,
        "conv_input": conv_input,
        "pads": pads,
        "count": min(columns, rows),
    }


def _same_pads(n: int, w: int, s: int) -> tuple[int, int]:
    """TensorFlow's "same" (as documented by convsv): output ``ceil(n / s)``, the odd zero after."""
    total = max((-(-n // s) - 1) * s + w - n, 0)
    return total // 2, total - total // 2


def draw(seed: int, index: int, dtypes: tuple[str, ...] = ALL_DTYPES) -> Config:
    """Configuration ``index`` of the campaign ``seed``, in one of ``dtypes`` (those a backend has)."""
    rng = np.random.default_rng([seed, index])
    layer = None
    while layer is None:
        layer = _draw_layer(rng)
    wanted = _choice(rng, ALL_DTYPES)
    # A backend without float64 (JAX without x64) runs the same layer in single precision.
    fallback = {"float64": "float32", "complex128": "complex64"}
    dtype = wanted if wanted in dtypes else fallback.get(wanted, wanted)
    if dtype not in dtypes:
        dtype = dtypes[0]
    d = len(layer["input_shape"])
    channels_last = {1: "WIO", 2: "HWIO", 3: "DHWIO"}[d]
    layout = channels_last if rng.random() < 0.5 else "OI" + channels_last[:-2]
    precision = "single" if dtype in SINGLE else "double"
    scale = 1.0 if rng.random() < 0.85 else float(_choice(rng, EXTREME_SCALES[precision]))
    group_in, c_out = layer["kernel_shape"][-2:]
    group_out = c_out // layer["groups"]
    ranks = ["full", "zero-out", "zero-in", "zero"]
    if group_out >= 2:
        ranks.append("dup-out")
    if group_in >= 2:
        ranks.append("dup-in")
    rank = "full" if rng.random() < 0.7 else str(_choice(rng, ranks[1:]))
    count = layer.pop("count")
    clip_method = str(_choice(rng, CLIP_METHODS, (0.3, 0.5, 0.2)))
    iterations = int(_choice(rng, (1, 20, 100), (0.2, 0.3, 0.5)))
    tol = None if iterations == 1 else float(_choice(rng, (1e-4, 1e-6) if precision == "double" else (1e-4,)))
    min_factor = float(_choice(rng, (0.1, 0.5, 1.0))) if rng.random() < 0.3 else None
    if clip_method == "extrapolated":  # extrapolation does not take min_norm
        min_factor = None
    return Config(
        seed=seed,
        index=index,
        dtype=dtype,
        layout=layout,
        scale=scale,
        rank=rank,
        k=int(rng.integers(1, min(4, count) + 1)),
        clip_factor=float(_choice(rng, (0.0, 0.3, 0.8, 1.5), (0.05, 0.45, 0.3, 0.2))),
        clip_method=clip_method,
        clip_iterations=iterations,
        clip_tol=tol,
        min_factor=min_factor,
        bounds_method=str(_choice(rng, ("auto", "svd", "eigh", "gram"))),
        gradient=bool(rng.random() < 0.3),
        **layer,
    )
