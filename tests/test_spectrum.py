"""singular_values and operator_norm against independent routes, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import convsv

from _reference import dense_singular_values, frequency_matrix, paper_singular_values
from helpers import require

# (spatial kernel size, c_in, c_out, input_shape): 1-D, 2-D, 3-D, non-square
# kernels and maps, c_in != c_out, and kernels larger than the map.
SHAPES = [
    ((3,), 2, 3, (7,)),
    ((4,), 1, 1, (2,)),
    ((3, 3), 2, 3, (5, 6)),
    ((2, 4), 3, 1, (4, 3)),
    ((5, 5), 2, 2, (3, 2)),
    ((1, 1), 4, 4, (3, 3)),
    ((2, 3, 2), 2, 3, (3, 4, 3)),
]
LAYOUTS = {1: ("WIO", "OIW"), 2: ("HWIO", "OIHW"), 3: ("DHWIO", "OIDHW")}


def tolerance(dtype: str) -> float:
    """Relative accuracy expected of an FFT + SVD in this precision."""
    return 1e-11 if dtype in ("float64", "complex128") else 3e-5


def random_kernel(rng, ksize, c_in, c_out, complex_=False):
    kernel = rng.standard_normal((*ksize, c_in, c_out))
    if complex_:
        kernel = kernel + 1j * rng.standard_normal(kernel.shape)
    return kernel


def as_layout(kernel: np.ndarray, layout: str) -> np.ndarray:
    """A spatial-first kernel rearranged into ``layout``."""
    if layout.startswith("OI"):
        d = kernel.ndim - 2
        return np.transpose(kernel, (d + 1, d, *range(d)))
    return kernel


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
@pytest.mark.parametrize("layout_index", [0, 1], ids=["channels_last", "channels_first"])
def test_singular_values_match_dense_svd(backend, rng, ksize, c_in, c_out, input_shape, layout_index):
    kernel = random_kernel(rng, ksize, c_in, c_out)
    layout = LAYOUTS[len(ksize)][layout_index]
    dtype = backend.default_float
    result = convsv.singular_values(
        backend.asarray(as_layout(kernel, layout), dtype), input_shape, layout=layout
    )
    s = backend.check(result, dtype)

    assert s.shape == (*input_shape, min(c_in, c_out))
    assert np.all(np.diff(s, axis=-1) <= 0), "each frequency's values must be in descending order"
    expected = dense_singular_values(kernel, input_shape)
    assert expected.shape == (s.size,)
    np.testing.assert_allclose(np.sort(s.ravel())[::-1], expected, atol=tolerance(dtype) * expected[0])


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
def test_each_frequency_is_the_written_out_sum(backend, rng, ksize, c_in, c_out, input_shape):
    # Complex kernels pin the frequency convention: the matrix at f and at -f differ.
    kernel = random_kernel(rng, ksize, c_in, c_out, complex_=True)
    dtype = "complex128" if backend.float64 else "complex64"
    real = "float64" if backend.float64 else "float32"
    layout = LAYOUTS[len(ksize)][0]
    s = backend.check(
        convsv.singular_values(backend.asarray(kernel, dtype), input_shape, layout=layout), real
    )
    for freq in np.ndindex(*input_shape):
        expected = np.linalg.svd(frequency_matrix(kernel, freq, input_shape), compute_uv=False)
        np.testing.assert_allclose(s[freq], expected, atol=tolerance(dtype) * max(1.0, expected[0]))


def test_matches_the_papers_two_liner(backend, rng):
    kernel = random_kernel(rng, (3, 3), 4, 6)
    dtype = backend.default_float
    s = convsv.singular_values(backend.asarray(kernel, dtype), (8, 8))
    backend.assert_close(s, paper_singular_values(kernel, (8, 8)), rtol=tolerance(dtype))


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
def test_operator_norm_is_the_largest_dense_singular_value(backend, rng, ksize, c_in, c_out, input_shape):
    kernel = random_kernel(rng, ksize, c_in, c_out)
    dtype = backend.default_float
    layout = LAYOUTS[len(ksize)][1]
    result = convsv.operator_norm(
        backend.asarray(as_layout(kernel, layout), dtype), input_shape, layout=layout
    )
    norm = backend.assert_close(result, dense_singular_values(kernel, input_shape)[0], rtol=tolerance(dtype))
    assert norm.shape == ()


def test_operator_norm_is_not_the_reshaped_norm(backend):
    # The box filter: exact norm 9 (all taps add at the zero frequency), while
    # the 9 x 1 reshaped kernel has norm 3. A written-out formula, not a fit.
    kernel = backend.asarray(np.ones((3, 3, 1, 1)), backend.default_float)
    backend.assert_close(convsv.operator_norm(kernel, (8, 8)), 9.0, rtol=1e-6)
    assert np.linalg.norm(np.ones((9, 1)), 2) == pytest.approx(3.0)


def test_identity_kernel_is_orthogonal(backend):
    # A 1x1 identity kernel is the identity map: every singular value is 1.
    kernel = backend.asarray(np.eye(3).reshape(1, 1, 3, 3), backend.default_float)
    backend.assert_close(convsv.singular_values(kernel, (4, 5)), np.ones((4, 5, 3)), rtol=1e-6)


def test_bare_int_input_shape_means_every_axis(backend, rng):
    kernel = backend.asarray(random_kernel(rng, (2, 3, 2), 1, 2), backend.default_float)
    a = backend.to_numpy(convsv.singular_values(kernel, 4, layout="DHWIO"))
    b = backend.to_numpy(convsv.singular_values(kernel, (4, 4, 4), layout="DHWIO"))
    np.testing.assert_array_equal(a, b)


def test_float32_in_float32_out(backend, rng):
    kernel = random_kernel(rng, (3, 3), 3, 2)
    s = convsv.singular_values(backend.asarray(kernel, "float32"), (6, 6))
    backend.assert_close(s, paper_singular_values(kernel, (6, 6)), dtype="float32")


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8"])
def test_integer_kernels_use_the_default_float(backend, dtype):
    if not hasattr(backend.xp, dtype) or (dtype == "int64" and not backend.float64):
        pytest.skip(f"{backend.name} has no {dtype}")
    kernel_np = np.arange(2 * 2 * 2 * 3).reshape(2, 2, 2, 3) % 5
    result = convsv.singular_values(backend.asarray(kernel_np, dtype), (3, 3))
    expected = paper_singular_values(kernel_np.astype(np.float64), (3, 3))
    backend.assert_close(result, expected, dtype=backend.default_real)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(backend, rng, dtype):
    if not hasattr(backend.xp, dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    kernel_np = random_kernel(rng, (3, 3), 2, 2)
    kernel = backend.xp.asarray(backend.asarray(kernel_np, "float32"), dtype=getattr(backend.xp, dtype))
    # Exact for the kernel as rounded to half precision.
    rounded = backend.to_numpy(backend.xp.astype(kernel, backend.xp.float32)).astype(np.float64)
    backend.assert_close(
        convsv.singular_values(kernel, (5, 5)), paper_singular_values(rounded, (5, 5)), dtype="float32"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entries_give_nan_everywhere(backend, rng, bad):
    kernel = random_kernel(rng, (3, 3), 2, 2)
    kernel[1, 2, 0, 1] = bad
    dtype = backend.default_float
    s = backend.check(convsv.singular_values(backend.asarray(kernel, dtype), (4, 4)), dtype)
    assert np.all(np.isnan(s))
    assert np.isnan(backend.check(convsv.operator_norm(backend.asarray(kernel, dtype), (4, 4)), dtype))


def test_explicit_xp_converts_nested_lists(backend):
    kernel = [[[[1.0]], [[2.0]]]]  # (1, 2, 1, 1): a 1x2 filter
    norm = convsv.operator_norm(kernel, (1, 4), xp=backend.xp)
    # sum of taps at the zero frequency, 3; elsewhere |1 + 2 e^{i theta}| < 3
    assert float(backend.to_numpy(norm)) == pytest.approx(3.0)


@pytest.mark.backend("numpy")
def test_explicit_plain_numpy_module_is_wrapped():
    result = convsv.operator_norm(np.ones((2, 1, 1)), 3, layout="WIO", xp=np)
    assert isinstance(result, np.ndarray)
    assert result == pytest.approx(2.0)


@pytest.mark.backend("jax")
def test_jax_jit_traces(rng):
    jax = require("jax")
    kernel = random_kernel(rng, (3, 3), 3, 4).astype(np.float32)
    jitted = jax.jit(lambda k: convsv.operator_norm(k, (8, 8)))
    expected = dense_singular_values(kernel, (8, 8))[0]
    np.testing.assert_allclose(np.asarray(jitted(jax.numpy.asarray(kernel))), expected, rtol=3e-5)
    s = jax.jit(lambda k: convsv.singular_values(k, 8))(jax.numpy.asarray(kernel))
    assert s.shape == (8, 8, 3)


@pytest.mark.backend("jax")
def test_jax_jit_propagates_nan(rng):
    jax = require("jax")
    kernel = random_kernel(rng, (3, 3), 2, 2).astype(np.float32)
    kernel[0, 0, 0, 0] = np.nan
    assert np.isnan(jax.jit(lambda k: convsv.operator_norm(k, (4, 4)))(jax.numpy.asarray(kernel)))


def finite_difference_gradient(kernel: np.ndarray, input_shape, step: float = 1e-6) -> np.ndarray:
    """Central differences of the dense route's largest singular value."""
    grad = np.zeros_like(kernel)
    for idx in np.ndindex(*kernel.shape):
        plus, minus = kernel.copy(), kernel.copy()
        plus[idx] += step
        minus[idx] -= step
        grad[idx] = (
            dense_singular_values(plus, input_shape)[0] - dense_singular_values(minus, input_shape)[0]
        ) / (2 * step)
    return grad


@pytest.mark.backend("torch")
def test_torch_gradient_matches_finite_differences(rng):
    torch = require("torch")
    kernel = random_kernel(rng, (3, 2), 2, 3)
    expected = finite_difference_gradient(kernel, (4, 5))
    t = torch.tensor(kernel, requires_grad=True)
    convsv.operator_norm(t, (4, 5)).backward()
    np.testing.assert_allclose(t.grad.numpy(), expected, atol=1e-6)
    assert torch.autograd.gradcheck(lambda k: convsv.operator_norm(k, (4, 5)), (t,))


@pytest.mark.backend("jax")
def test_jax_gradient_matches_finite_differences(rng):
    jax = require("jax")
    kernel = random_kernel(rng, (3, 2), 2, 3)
    expected = finite_difference_gradient(kernel, (4, 5))
    with jax.enable_x64(True):
        grad = jax.grad(lambda k: convsv.operator_norm(k, (4, 5)))(jax.numpy.asarray(kernel))
        np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)
        jitted = jax.jit(jax.grad(lambda k: convsv.operator_norm(k, (4, 5), layout="HWIO")))
        np.testing.assert_allclose(np.asarray(jitted(jax.numpy.asarray(kernel))), expected, atol=1e-6)
    # float32 gradient: same to single precision
    grad32 = jax.grad(lambda k: convsv.operator_norm(k, (4, 5)))(jax.numpy.asarray(kernel, dtype="float32"))
    np.testing.assert_allclose(np.asarray(grad32), expected, atol=1e-4)


@pytest.mark.backend("torch")
def test_torch_works_under_no_grad(rng):
    torch = require("torch")
    kernel = torch.tensor(random_kernel(rng, (3, 3), 2, 2), requires_grad=True)
    with torch.no_grad():
        norm = convsv.operator_norm(kernel, 5)
    assert not norm.requires_grad
    assert float(norm) == pytest.approx(dense_singular_values(kernel.detach().numpy(), (5, 5))[0])


def test_one_by_one_kernel_norm_is_the_matrix_norm(backend, rng):
    # A 1x1 convolution applies the same c_in x c_out matrix at every position,
    # so its norm is that matrix's norm and its spectrum repeats at every frequency.
    weight = rng.standard_normal((5, 3))
    dtype = backend.default_float
    kernel = backend.asarray(weight.reshape(1, 1, 5, 3), dtype)
    backend.assert_close(
        convsv.operator_norm(kernel, (6, 4)), np.linalg.norm(weight, 2), rtol=tolerance(dtype)
    )
    expected = np.broadcast_to(np.linalg.svd(weight, compute_uv=False), (6, 4, 3))
    backend.assert_close(convsv.singular_values(kernel, (6, 4)), expected, rtol=tolerance(dtype) * 10, atol=0)
