"""Stride, dilation, groups, transposed layers and zero padding, on every backend.

Ground truth: the written-out convolution of ``_reference.general_conv``, and
PyTorch's own ``conv{1,2,3}d`` / ``conv_transpose{1,2,3}d``. The dense matrix
is checked against both; everything else is checked against the dense matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import convsv

from _reference import general_dense, layer_output_shape
from helpers import require


@dataclass(frozen=True)
class Layer:
    ksize: tuple[int, ...]
    c_in: int
    c_out: int
    input_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return len(self.ksize)

    def get(self, name: str, default: Any = 1) -> Any:
        value = self.options.get(name, default)
        return (value,) * self.d if isinstance(value, int) and name in ("stride", "dilation") else value

    @property
    def pads(self) -> tuple[tuple[int, int], ...] | None:
        """The zeros before and after each axis, from the written-out conventions."""
        padding = self.options.get("padding", "circular")
        stride, dilation = self.get("stride"), self.get("dilation")
        if padding == "circular":
            return None
        if padding == "valid":
            return ((0, 0),) * self.d
        if padding == "same":  # TensorFlow: output ceil(n / s), the odd zero after
            pads = []
            for n, k, s, dil in zip(self.input_shape, self.ksize, stride, dilation, strict=True):
                total = max((-(-n // s) - 1) * s + (k - 1) * dil + 1 - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        if isinstance(padding, int):
            return ((padding, padding),) * self.d
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)

    def kernel(self, rng: np.random.Generator, complex_: bool = False) -> np.ndarray:
        kernel = rng.standard_normal((*self.ksize, self.c_in // self.get("groups", 1), self.c_out))
        return kernel + 1j * rng.standard_normal(kernel.shape) if complex_ else kernel

    def dense(self, kernel: np.ndarray) -> np.ndarray:
        return general_dense(
            kernel,
            self.input_shape,
            stride=self.get("stride"),
            dilation=self.get("dilation"),
            groups=self.get("groups", 1),
            pads=self.pads,
        )

    @property
    def output_shape(self) -> tuple[int, ...]:
        return layer_output_shape(
            self.input_shape, self.ksize, self.get("stride"), self.get("dilation"), self.pads
        )


def _id(layer: Layer) -> str:
    opts = ",".join(f"{k}={v}" for k, v in layer.options.items())
    ksize, shape = "x".join(map(str, layer.ksize)), "x".join(map(str, layer.input_shape))
    return f"{layer.d}d-k{ksize}-{layer.c_in}to{layer.c_out}-n{shape}-{opts}"


LAYOUT = {1: "WIO", 2: "HWIO", 3: "DHWIO"}
TORCH_LAYOUT = {1: "OIW", 2: "OIHW", 3: "OIDHW"}

CIRCULAR = [
    Layer((3, 3), 2, 4, (6, 8), {"stride": 2}),
    Layer((3, 2), 4, 4, (4, 6), {"stride": (2, 1), "dilation": (1, 2), "groups": 2}),
    Layer((3, 3), 4, 4, (5, 5), {"groups": 4}),  # depthwise
    Layer((3, 3), 3, 6, (4, 4), {"groups": 3, "stride": 2}),  # depthwise, multiplier 2
    Layer((3,), 2, 3, (9,), {"stride": 3, "dilation": 2}),
    Layer((2, 2, 2), 2, 2, (4, 2, 4), {"stride": (2, 1, 2)}),
    Layer((5,), 1, 2, (4,), {"stride": 2}),  # larger than the map: folded
    Layer((2, 3), 3, 2, (4, 6), {"stride": 2, "dilation": 3}),  # dilated span beyond the map
]
ZERO = [
    Layer((3, 3), 2, 3, (7, 6), {"padding": 1, "stride": 2}),
    Layer((3, 3), 2, 2, (5, 5), {"padding": "same", "dilation": 2}),
    Layer((3, 3), 2, 2, (6, 7), {"padding": "same", "stride": 2}),  # asymmetric
    Layer((4,), 2, 3, (11,), {"padding": "valid", "stride": 2}),
    Layer((2, 3), 2, 2, (4, 5), {"padding": ((0, 2), (1, 0))}),
    Layer((3, 3), 4, 2, (6, 6), {"padding": 2, "dilation": 2, "groups": 2}),
    Layer((3, 3), 3, 3, (5, 5), {"padding": 1, "groups": 3}),  # depthwise
    Layer((3, 2, 3), 2, 2, (3, 4, 4), {"padding": 1, "stride": (1, 2, 2)}),
]
LAYERS = CIRCULAR + ZERO


def _tol(dtype: str) -> float:
    return 1e-10 if dtype in ("float64", "complex128") else 3e-5


# --- the dense matrix: against the written-out formula and against PyTorch -------


@pytest.mark.parametrize("layer", LAYERS, ids=_id)
def test_conv_matrix_matches_the_written_out_convolution(backend, rng, layer):
    kernel = layer.kernel(rng)
    dtype = backend.default_float
    expected = layer.dense(kernel)
    assert expected.shape == (
        layer.c_out * math.prod(layer.output_shape),
        layer.c_in * math.prod(layer.input_shape),
    )
    m = convsv.conv_matrix(
        backend.asarray(kernel, dtype), layer.input_shape, layout=LAYOUT[layer.d], **layer.options
    )
    backend.assert_close(m, expected, atol=1e-5 if dtype == "float32" else 1e-12)


def _torch_weight(kernel: np.ndarray) -> np.ndarray:
    """Spatial-first (*k, in/G, out) -> PyTorch's (out, in/G, *k)."""
    d = kernel.ndim - 2
    return np.transpose(kernel, (d + 1, d, *range(d)))


def _torch_dense(torch, function, in_shape):
    """A torch map's matrix, from its action on the basis vectors (in float64)."""
    size = math.prod(in_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *in_shape)
    return function(basis).reshape(size, -1).T.numpy()


@pytest.mark.backend("torch")
@pytest.mark.parametrize("layer", LAYERS, ids=_id)
def test_conv_matrix_matches_torch_convolution(rng, layer):
    torch = require("torch")
    functional = torch.nn.functional
    conv = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}[layer.d]
    kernel = layer.kernel(rng)
    weight = torch.tensor(_torch_weight(kernel))
    stride, dilation, groups = layer.get("stride"), layer.get("dilation"), layer.get("groups", 1)

    def torch_layer(x):
        if layer.pads is None:  # circular: (k - 1) * d more at the end of each axis
            wrap = [(k - 1) * dil for k, dil in zip(layer.ksize, dilation, strict=True)]
            if all(w <= n for w, n in zip(wrap, layer.input_shape, strict=True)):
                x = functional.pad(x, [p for w in reversed(wrap) for p in (0, w)], mode="circular")
            else:  # F.pad wraps at most once; a kernel wider than the map wraps by index
                for axis, (n, w) in enumerate(zip(layer.input_shape, wrap, strict=True), start=2):
                    x = torch.index_select(x, axis, torch.arange(n + w) % n)
        else:  # zeros: F.pad takes (before, after) pairs from the last axis backwards
            x = functional.pad(x, [p for pair in reversed(layer.pads) for p in pair])
        return conv(x, weight, stride=stride, dilation=dilation, groups=groups)

    expected = _torch_dense(torch, torch_layer, (layer.c_in, *layer.input_shape))
    m = convsv.conv_matrix(weight, layer.input_shape, layout=TORCH_LAYOUT[layer.d], **layer.options).numpy()
    np.testing.assert_allclose(m, expected, atol=1e-12)
    if layer.options.get("padding") == "same" and set(stride) == {1}:
        # PyTorch's own "same" (stride 1 only) agrees with ours.
        same = _torch_dense(
            torch,
            lambda x: conv(x, weight, padding="same", dilation=dilation, groups=groups),
            (layer.c_in, *layer.input_shape),
        )
        np.testing.assert_allclose(m, same, atol=1e-12)


TRANSPOSED = [  # PyTorch ConvTranspose: weight (in, out/G, *k); input_shape is the transposed layer's input
    Layer((3, 3), 4, 2, (3, 4), {"stride": 2, "padding": 1, "output_padding": 1}),
    Layer((3,), 2, 4, (5,), {"stride": 3, "padding": 2, "dilation": 2, "groups": 2}),
    Layer((2, 2, 2), 2, 2, (2, 3, 2), {"stride": 2, "padding": 0}),
    Layer((3, 3), 2, 2, (4, 4), {"padding": 1}),
]


@pytest.mark.backend("torch")
@pytest.mark.parametrize("layer", TRANSPOSED, ids=_id)
def test_transposed_conv_matrix_matches_torch(rng, layer):
    torch = require("torch")
    functional = torch.nn.functional
    conv_t = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d, 3: functional.conv_transpose3d}[
        layer.d
    ]
    groups = layer.get("groups", 1)
    # ConvTranspose weight: (in, out / groups, *k); here in = layer.c_in, out = layer.c_out.
    weight = torch.tensor(rng.standard_normal((layer.c_in, layer.c_out // groups, *layer.ksize)))
    options = dict(layer.options)

    def torch_layer(u):
        return conv_t(u, weight, **options)

    expected = _torch_dense(torch, torch_layer, (layer.c_in, *layer.input_shape))
    m = convsv.conv_matrix(
        weight, layer.input_shape, layout=TORCH_LAYOUT[layer.d], transposed=True, **options
    )
    np.testing.assert_allclose(m.numpy(), expected, atol=1e-12)
    s = convsv.singular_values(
        weight, layer.input_shape, layout=TORCH_LAYOUT[layer.d], transposed=True, **options
    )
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(expected, compute_uv=False), atol=1e-10)


@pytest.mark.backend("torch")
def test_circular_transposed_layer_is_torch_autograd_adjoint(rng):
    # PyTorch has no circular ConvTranspose; its autograd gives the adjoint of the circular conv.
    torch = require("torch")
    layer = CIRCULAR[0]
    kernel = layer.kernel(rng)
    weight = torch.tensor(_torch_weight(kernel))
    m_t = convsv.conv_matrix(weight, layer.output_shape, layout="OIHW", transposed=True, stride=2).numpy()
    u = torch.tensor(rng.standard_normal((1, layer.c_out, *layer.output_shape)))
    x = torch.zeros((1, layer.c_in, *layer.input_shape), dtype=torch.float64, requires_grad=True)
    padded = x
    for axis, (n, k) in enumerate(zip(layer.input_shape, layer.ksize, strict=True), start=2):
        padded = torch.index_select(padded, axis, torch.arange(n + k - 1) % n)
    (torch.nn.functional.conv2d(padded, weight, stride=2) * u).sum().backward()
    np.testing.assert_allclose(m_t @ u.numpy().ravel(), x.grad.numpy().ravel(), atol=1e-12)


# --- spectra against the dense matrix ----------------------------------------------


@pytest.mark.parametrize("layer", CIRCULAR, ids=_id)
@pytest.mark.parametrize("transposed", [False, True], ids=["forward", "transposed"])
def test_singular_values_match_dense_svd(backend, rng, layer, transposed):
    kernel = layer.kernel(rng)
    dtype = backend.default_float
    shape = layer.output_shape if transposed else layer.input_shape
    result = convsv.singular_values(
        backend.asarray(kernel, dtype), shape, layout=LAYOUT[layer.d], transposed=transposed, **layer.options
    )
    s = backend.check(result, dtype)
    stride = layer.get("stride")
    groups = layer.get("groups", 1)
    per_group = min(math.prod(stride) * layer.c_in // groups, layer.c_out // groups)
    assert s.shape == (*layer.output_shape, groups * per_group)
    assert np.all(np.diff(s, axis=-1) <= 1e-12), "each row in descending order"
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)
    assert expected.shape == (s.size,)
    np.testing.assert_allclose(np.sort(s.ravel())[::-1], expected, atol=_tol(dtype) * expected[0])
    norm = convsv.operator_norm(
        backend.asarray(kernel, dtype), shape, layout=LAYOUT[layer.d], transposed=transposed, **layer.options
    )
    backend.assert_close(norm, expected[0], rtol=_tol(dtype))


def test_complex_strided_grouped_layer(backend, rng):
    layer = CIRCULAR[1]
    kernel = layer.kernel(rng, complex_=True)
    dtype = "complex128" if backend.float64 else "complex64"
    s = backend.check(
        convsv.singular_values(backend.asarray(kernel, dtype), layer.input_shape, **layer.options),
        "float64" if backend.float64 else "float32",
    )
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)
    np.testing.assert_allclose(np.sort(s.ravel())[::-1], expected, atol=_tol(dtype) * expected[0])


@pytest.mark.parametrize("layer", [la for la in LAYERS if la.get("groups", 1) > 1], ids=_id)
def test_group_norm_is_the_largest_group_norm(backend, rng, layer):
    # The layer is block diagonal over groups: its norm is the largest group's
    # (not their product), each group checked as a layer of its own.
    kernel = layer.kernel(rng)
    groups = layer.get("groups")
    per_out = layer.c_out // groups
    options = {k: v for k, v in layer.options.items() if k != "groups"}
    norms = []
    for g in range(groups):
        single = Layer(layer.ksize, layer.c_in // groups, per_out, layer.input_shape, options)
        norms.append(
            np.linalg.svd(single.dense(kernel[..., g * per_out : (g + 1) * per_out]), compute_uv=False)[0]
        )
    dtype = backend.default_float
    norm = convsv.operator_norm(
        backend.asarray(kernel, dtype), layer.input_shape, layout=LAYOUT[layer.d], **layer.options
    )
    backend.assert_close(norm, max(norms), rtol=1e-4 if dtype == "float32" else 1e-6)


@pytest.mark.parametrize("layer", ZERO, ids=_id)
def test_zero_padding_spectrum_norm_and_bounds(backend, rng, layer):
    kernel = layer.kernel(rng)
    dtype = backend.default_float
    k = backend.asarray(kernel, dtype)
    options = {"layout": LAYOUT[layer.d], **layer.options}
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)
    backend.assert_close(convsv.singular_values(k, layer.input_shape, **options), expected, rtol=_tol(dtype))
    tol = 1e-9 if dtype == "float64" else 1e-5
    norm = convsv.operator_norm(k, layer.input_shape, tol=tol, **options)
    backend.assert_close(norm, expected[0], rtol=1e-6 if dtype == "float64" else 1e-4)
    lower, upper = (
        backend.check(b, dtype) for b in convsv.operator_norm_bounds(k, layer.input_shape, **options)
    )
    slack = 1e-12 if dtype == "float64" else 1e-5
    assert lower <= expected[0] * (1 + slack)
    assert upper >= expected[0] * (1 - slack)
    # The upper bound is the circular layer on the padded map, computed independently.
    grid = [
        -(-(n + a + b) // s) * s
        for n, (a, b), s in zip(layer.input_shape, layer.pads, layer.get("stride"), strict=True)
    ]
    circular = Layer(
        layer.ksize, layer.c_in, layer.c_out, tuple(grid), {**layer.options, "padding": "circular"}
    )
    np.testing.assert_allclose(
        upper, np.linalg.svd(circular.dense(kernel), compute_uv=False)[0], rtol=_tol(dtype)
    )


def test_circular_bounds_are_the_exact_norm(backend, rng):
    layer = CIRCULAR[0]
    kernel = backend.asarray(layer.kernel(rng), backend.default_float)
    lower, upper = convsv.operator_norm_bounds(kernel, layer.input_shape, **layer.options)
    norm = convsv.operator_norm(kernel, layer.input_shape, **layer.options)
    assert float(backend.to_numpy(lower)) == float(backend.to_numpy(upper)) == float(backend.to_numpy(norm))


def test_zero_padded_singular_values_refuse_large_layers(backend):
    kernel = backend.asarray(np.ones((3, 3, 64, 64)), backend.default_float)
    with pytest.raises(ValueError, match="operator_norm or operator_norm_bounds"):
        convsv.singular_values(kernel, (32, 32), padding=1)


# --- gradients and jit for zero padding --------------------------------------------


@pytest.mark.backend("torch")
def test_zero_padded_norm_gradient_matches_finite_differences(rng):
    torch = require("torch")
    layer = ZERO[0]
    kernel = layer.kernel(rng)
    direction = rng.standard_normal(kernel.shape)

    def dense_norm(k):
        return np.linalg.svd(layer.dense(k), compute_uv=False)[0]

    eps = 1e-6
    numeric = (dense_norm(kernel + eps * direction) - dense_norm(kernel - eps * direction)) / (2 * eps)
    t = torch.tensor(kernel, requires_grad=True)
    convsv.operator_norm(t, layer.input_shape, tol=1e-12, **layer.options).backward()
    np.testing.assert_allclose(float((t.grad.numpy() * direction).sum()), numeric, rtol=1e-5)


@pytest.mark.backend("jax")
def test_zero_padded_norm_under_jit_and_grad(rng):
    jax = require("jax")
    layer = ZERO[1]
    kernel = layer.kernel(rng)
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    with jax.enable_x64(True):

        def norm(k):
            return convsv.operator_norm(k, layer.input_shape, tol=1e-10, **layer.options)

        np.testing.assert_allclose(float(jax.jit(norm)(jax.numpy.asarray(kernel))), expected, rtol=1e-8)
        grad = jax.jit(jax.grad(norm))(jax.numpy.asarray(kernel))
        direction = rng.standard_normal(kernel.shape)
        eps = 1e-6
        dense = lambda k: np.linalg.svd(layer.dense(k), compute_uv=False)[0]  # noqa: E731
        numeric = (dense(kernel + eps * direction) - dense(kernel - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(np.asarray(grad) * direction)), numeric, rtol=1e-5)


# --- clipping ------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [CIRCULAR[0], CIRCULAR[1], CIRCULAR[3], CIRCULAR[4]], ids=_id)
def test_clip_singular_values_is_exact_for_strided_and_grouped_layers(backend, rng, layer):
    kernel = layer.kernel(rng) * 2
    dtype = backend.default_float
    full = backend.check(
        convsv.clip_singular_values(
            backend.asarray(kernel, dtype), layer.input_shape, 1.0, layout=LAYOUT[layer.d], **layer.options
        ),
        dtype,
    )
    assert full.shape == (*layer.input_shape, layer.c_in // layer.get("groups", 1), layer.c_out)
    # The full-size kernel is a layer with the same stride and groups, dilation 1.
    options = {k: v for k, v in layer.options.items() if k != "dilation"}
    full_layer = Layer(layer.input_shape, layer.c_in, layer.c_out, layer.input_shape, options)
    dense = full_layer.dense(full.astype(np.float64))
    original = layer.dense(kernel)
    u, s, vh = np.linalg.svd(original, full_matrices=False)
    # Proposition 9: the projection keeps the singular vectors and clips the values.
    np.testing.assert_allclose(dense, (u * np.minimum(s, 1.0)) @ vh, atol=_tol(dtype) * 10 * s[0])


CLIPPED = [
    pytest.param(layer, transposed, id=f"{_id(layer)}-{'transposed' if transposed else 'forward'}")
    for layer in (CIRCULAR[0], CIRCULAR[1], CIRCULAR[4], ZERO[0], ZERO[2], ZERO[5])
    for transposed in (False, True)
    # A transposed "same" layer's input (ceil(n / s)) does not determine n: not a round trip.
    if not (transposed and layer.options.get("padding") == "same")
]


@pytest.mark.parametrize(("layer", "transposed"), CLIPPED)
def test_clip_operator_norm_reaches_the_bound(backend, rng, layer, transposed):
    kernel = layer.kernel(rng) * 3
    dtype = backend.default_float
    tol = 1e-6 if dtype == "float64" else 1e-4
    shape = layer.output_shape if transposed else layer.input_shape
    options = dict(layer.options)
    if transposed and layer.pads is not None:
        # The output_padding that makes the transposed layer the adjoint of this very layer (its
        # dense matrix is the reference below), as PyTorch's ConvTranspose takes it.
        spans = [(k - 1) * d + 1 for k, d in zip(layer.ksize, layer.get("dilation"), strict=True)]
        options["output_padding"] = tuple(
            n + a + b - (m - 1) * s - w
            for n, (a, b), m, s, w in zip(
                layer.input_shape, layer.pads, layer.output_shape, layer.get("stride"), spans, strict=True
            )
        )
    out, info = convsv.clip_operator_norm(
        backend.asarray(kernel, dtype),
        shape,
        1.0,
        layout=LAYOUT[layer.d],
        transposed=transposed,
        method="extrapolated",
        iterations=200,
        tol=tol,
        return_info=True,
        **options,
    )
    out = backend.check(out, dtype)
    assert out.shape == kernel.shape
    assert bool(backend.to_numpy(info.converged))
    # The layer's own dense norm (zero padding: at most the padded circular norm the clip bounds).
    reached = np.linalg.svd(layer.dense(out.astype(np.float64)), compute_uv=False)[0]
    assert reached <= 1.0 + tol + 1e-6
    assert np.linalg.svd(layer.dense(kernel), compute_uv=False)[0] > 1.5  # it had work to do


def test_clip_singular_values_refuses_zero_padding(backend):
    kernel = backend.asarray(np.ones((3, 3, 1, 1)), backend.default_float)
    with pytest.raises(ValueError, match="padding='circular'"):
        convsv.clip_singular_values(kernel, 5, 1.0, padding=1)


# --- option errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"stride": 3}, ValueError, r"`stride` \(3, 3\) must divide the feature map \(8, 8\)"),
        ({"stride": 0}, ValueError, "`stride` must contain positive sizes"),
        ({"stride": (2, 2, 2)}, ValueError, "`stride` has 3 entries"),
        ({"dilation": -1}, ValueError, "`dilation` must contain positive sizes"),
        ({"groups": 3}, ValueError, r"`groups`=3 must divide the output channels \(4\)"),
        ({"groups": 0}, ValueError, "`groups` must be a positive int, got 0"),
        ({"groups": 2.0}, TypeError, "`groups` must be a positive int, got 2.0"),
        ({"transposed": 1}, TypeError, "`transposed` must be a bool"),
        ({"padding": "full"}, ValueError, "`padding` must be 'circular', 'same', 'valid'"),
        ({"padding": -1}, ValueError, "`padding` must contain non-negative sizes"),
        ({"padding": (1, 2, 3)}, ValueError, "`padding` has 3 entries"),
        ({"padding": "valid", "dilation": 5}, ValueError, "the layer's output would be empty"),
        ({"output_padding": 1}, ValueError, "`output_padding` only applies to transposed layers"),
        ({"output_padding": 1, "transposed": True}, ValueError, "`output_padding` is for zero padding"),
        (
            {"output_padding": 3, "transposed": True, "padding": 1, "stride": 2},
            ValueError,
            "`output_padding` .* does not fit",
        ),
    ],
)
def test_option_errors(backend, options, error, match):
    kernel = backend.asarray(np.ones((3, 3, 2, 4)), backend.default_float)
    for function in (convsv.singular_values, convsv.operator_norm, convsv.conv_matrix):
        with pytest.raises(error, match=match):
            function(kernel, (8, 8), **options)
    with pytest.raises(error, match=match):
        convsv.clip_operator_norm(kernel, (8, 8), 1.0, **options)


DATA = Path(__file__).with_name("data")


def test_zero_padded_norm_with_clustered_top_singular_values(backend):
    # A projected (3, 3, 1, 8) kernel whose "same"-padded layer on 8x8 has its two largest singular
    # values 5.6e-5 apart: a Ritz value that only stops moving lands between them (4.4e-5 low).
    kernel = np.load(DATA / "clustered_top_singular_values_hwio.npy")
    pads = ((1, 1), (1, 1))
    expected = np.linalg.svd(
        general_dense(kernel, (8, 8), stride=(1, 1), dilation=(1, 1), groups=1, pads=pads), compute_uv=False
    )
    assert expected[0] - expected[1] < 1e-4  # the layer is the hard case it claims to be
    dtype = backend.default_float
    norm = convsv.operator_norm(backend.asarray(kernel, dtype), (8, 8), padding="same")  # default tol
    backend.assert_close(norm, expected[0], rtol=1e-6 if dtype == "float64" else 2e-5)


def test_zero_padded_norm_of_a_rank_deficient_layer(backend):
    # A constant kernel at stride 2: the layer has rank far below its size, so the bidiagonalisation
    # breaks down; float32 round-off must not be normalised into an overflow (warnings are errors).
    kernel = np.full((3, 3, 1, 4), 0.1)
    pads = ((0, 1), (0, 1))  # TensorFlow's "same" at stride 2 on 8
    expected = np.linalg.svd(
        general_dense(kernel, (8, 8), stride=(2, 2), dilation=(1, 1), groups=1, pads=pads), compute_uv=False
    )
    for dtype in {"float32", backend.default_float}:
        k = backend.asarray(kernel, dtype)
        norm = convsv.operator_norm(k, (8, 8), stride=2, padding="same")
        backend.assert_close(norm, expected[0], dtype=dtype, rtol=1e-5)
