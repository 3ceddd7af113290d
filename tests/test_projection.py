"""clip_operator_norm and clip_singular_values against independent routes, on every backend."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import convsv

from _reference import (
    dense_clip,
    dense_matrix,
    dense_singular_values,
    kernel_of_dense,
    paper_clip,
    to_hwio,
)
from helpers import require
from test_spectrum import as_layout, random_kernel

# (kernel size, c_in, c_out, input_shape, layout): c_in < c_out and c_in > c_out,
# non-square kernels and maps, 1-D and 3-D, PyTorch layouts.
CASES = [
    ((3, 3), 2, 3, (5, 6), "HWIO"),
    ((3, 3), 3, 2, (4, 4), "OIHW"),
    ((2, 3), 4, 4, (3, 5), "HWIO"),
    ((3,), 2, 2, (7,), "OIW"),
    ((2, 2, 2), 2, 3, (3, 3, 2), "DHWIO"),
]
METHODS = ["alternating", "extrapolated", "dykstra"]


def tolerance(dtype: str) -> float:
    return 1e-10 if dtype in ("float64", "complex128") else 2e-5


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape", "layout"), CASES)
def test_one_step_is_the_papers_algorithm(backend, rng, ksize, c_in, c_out, input_shape, layout):
    kernel = random_kernel(rng, ksize, c_in, c_out)
    dtype = backend.default_float
    result = convsv.clip_operator_norm(
        backend.asarray(as_layout(kernel, layout), dtype), input_shape, 1.0, layout=layout
    )
    expected = as_layout(paper_clip(kernel, input_shape, 1.0), layout)
    backend.assert_close(result, expected, atol=tolerance(dtype) * np.abs(kernel).max())


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape", "layout"), CASES)
@pytest.mark.parametrize("min_norm", [None, 0.5])
def test_clip_singular_values_is_the_dense_projection(
    backend, rng, ksize, c_in, c_out, input_shape, layout, min_norm
):
    kernel = random_kernel(rng, ksize, c_in, c_out)
    dtype = backend.default_float
    full = convsv.clip_singular_values(
        backend.asarray(as_layout(kernel, layout), dtype), input_shape, 1.0, min_norm=min_norm, layout=layout
    )
    projected = dense_clip(dense_matrix(kernel, input_shape), 1.0, min_norm)
    expected = kernel_of_dense(projected, input_shape, c_in, c_out)
    full = backend.assert_close(full, as_layout(expected, layout), atol=tolerance(dtype) * 10)
    s = dense_singular_values(to_hwio(full, layout).astype(np.float64), input_shape)
    assert s[0] <= 1.0 + tolerance(dtype)
    if min_norm is not None:
        assert s[-1] >= min_norm - tolerance(dtype)


def test_clip_singular_values_bound_holds_exactly(backend, rng):
    kernel = random_kernel(rng, (3, 3), 4, 4) * 3
    dtype = backend.default_float
    full = backend.check(convsv.clip_singular_values(backend.asarray(kernel, dtype), 6, 0.7), dtype)
    s = dense_singular_values(full.astype(np.float64), (6, 6))
    assert s[0] <= 0.7 * (1 + tolerance(dtype))


def test_complex_kernel_one_step_is_the_cropped_dense_projection(backend, rng):
    kernel = random_kernel(rng, (2, 3), 2, 3, complex_=True)
    dtype = "complex128" if backend.float64 else "complex64"
    out = convsv.clip_operator_norm(backend.asarray(kernel, dtype), (4, 5), 1.5)
    projected = dense_clip(dense_matrix(kernel, (4, 5)), 1.5)
    expected = kernel_of_dense(projected, (4, 5), 2, 3)[:2, :3]
    backend.assert_close(out, expected, dtype=dtype, atol=tolerance(dtype) * 10)


@pytest.mark.parametrize("method", METHODS)
def test_info_reports_the_exact_norm_and_steps(backend, rng, method):
    kernel = random_kernel(rng, (3, 3), 3, 3) * 2
    dtype = backend.default_float
    out, info = convsv.clip_operator_norm(
        backend.asarray(kernel, dtype), (5, 5), 1.0, method=method, iterations=4, return_info=True
    )
    out = backend.check(out, dtype)
    backend.assert_close(info.norm, dense_singular_values(out.astype(np.float64), (5, 5))[0], rtol=1e-5)
    backend.assert_close(info.initial_norm, dense_singular_values(kernel, (5, 5))[0], rtol=1e-5)
    # Without tol, exactly `iterations` steps are taken and "converged" is not claimed.
    assert int(backend.to_numpy(info.iterations)) == 4
    assert not bool(backend.to_numpy(info.converged))


@pytest.mark.parametrize("method", METHODS)
def test_tol_stops_early_and_never_runs_past_iterations(backend, rng, method):
    kernel = backend.asarray(random_kernel(rng, (3, 3), 3, 3) * 2, backend.default_float)
    tol = 1e-4 if backend.float64 else 1e-3
    out, info = convsv.clip_operator_norm(
        kernel, (5, 5), 1.0, method=method, iterations=3000, tol=tol, return_info=True
    )
    steps = int(backend.to_numpy(info.iterations))
    assert 1 < steps < 3000
    assert bool(backend.to_numpy(info.converged))
    reached = dense_singular_values(backend.to_numpy(out).astype(np.float64), (5, 5))[0]
    assert reached <= 1.0 * (1 + tol) + 1e-6
    if method != "dykstra":  # (Dykstra also waits for the iterate to settle)
        # It stopped at the first iterate within the bound: the one before was not.
        _, before = convsv.clip_operator_norm(
            kernel, (5, 5), 1.0, method=method, iterations=steps - 1, return_info=True
        )
        assert float(backend.to_numpy(before.norm)) > 1.0 * (1 + tol)
    _, capped = convsv.clip_operator_norm(
        kernel, (5, 5), 1.0, method=method, iterations=2, tol=0.0, return_info=True
    )
    assert int(backend.to_numpy(capped.iterations)) == 2
    assert not bool(backend.to_numpy(capped.converged))


def test_a_kernel_already_inside_is_unchanged(backend, rng):
    kernel = random_kernel(rng, (3, 3), 2, 3)
    kernel /= 2 * dense_singular_values(kernel, (5, 5))[0]  # norm 0.5
    dtype = backend.default_float
    for method in METHODS:
        out, info = convsv.clip_operator_norm(
            backend.asarray(kernel, dtype),
            (5, 5),
            1.0,
            method=method,
            iterations=5,
            tol=1e-9 if backend.float64 else 1e-5,
            return_info=True,
        )
        backend.assert_close(out, kernel, atol=tolerance(dtype))
        assert int(backend.to_numpy(info.iterations)) <= 1


# Dykstra: the projection onto B ∩ S, checked by what characterises a projection.
DYKSTRA = {"method": "dykstra", "iterations": 20000, "tol": 1e-11}


def test_dykstra_of_the_box_filter_is_the_scaled_box(backend):
    # For the box filter the nearest kernel of norm <= 1 is box / 9: for any
    # feasible Y, <box - box/9, Y - box/9> = 8/9 (sum(Y) - 1) <= 0, since
    # sum(Y) is Y's transfer at frequency 0, at most its norm.
    box = np.ones((3, 3, 1, 1))
    dtype = backend.default_float
    out = convsv.clip_operator_norm(backend.asarray(box, dtype), (8, 8), 1.0, **DYKSTRA)
    backend.assert_close(out, box / 9, atol=1e-8 if backend.float64 else 1e-5)


def test_dykstra_is_a_projection(backend, rng):
    if not backend.float64:
        pytest.skip("the variational inequality is checked to float64 round-off")
    # A layer Dykstra's iteration projects in about 500 steps (a 2-to-3 layer at 1.5x took 5,000,
    # 45 s on array_api_strict), norm 4.5 onto the unit ball.
    kernel = random_kernel(rng, (3, 3), 2, 2) * 0.6
    n = (5, 4)
    project = functools.partial(convsv.clip_operator_norm, input_shape=n, max_norm=1.0, **DYKSTRA)
    if backend.name.startswith("jax"):
        project = require("jax").jit(project)  # thousands of eager JAX dispatches are slow
    p = backend.check(project(backend.asarray(kernel, "float64")), "float64")
    # feasible
    assert dense_singular_values(p, n)[0] <= 1.0 + 1e-6
    # idempotent
    backend.assert_close(project(backend.asarray(p, "float64")), p, dtype="float64", atol=1e-7)
    # variational inequality against many random feasible kernels of the same size
    worst = -np.inf
    for _ in range(200):
        y = rng.standard_normal(kernel.shape)
        y *= rng.uniform(0, 1) / dense_singular_values(y, n)[0]
        worst = max(worst, float(np.sum((kernel - p) * (y - p))))
    assert worst <= 1e-6
    # and it is no farther from the kernel than the other methods' feasible points
    for method in ("alternating", "extrapolated"):
        other = convsv.clip_operator_norm(kernel, n, 1.0, method=method, iterations=5000, tol=1e-9)
        assert np.linalg.norm(kernel - p) <= np.linalg.norm(kernel - other) + 1e-7


def test_one_by_one_kernel_with_min_norm_is_the_polar_factor(backend, rng):
    # A 1x1 kernel is the same matrix at every frequency, so clipping into
    # [1, 1] and cropping lands exactly on its orthogonal polar factor.
    weight = rng.standard_normal((4, 4))
    u, _, vh = np.linalg.svd(weight)
    dtype = backend.default_float
    kernel = backend.asarray(weight.reshape(1, 1, 4, 4), dtype)
    out = convsv.clip_operator_norm(kernel, (3, 3), 1.0, min_norm=1.0)
    backend.assert_close(out, (u @ vh).reshape(1, 1, 4, 4), atol=tolerance(dtype) * 10)


def test_dtypes_and_layout_are_kept(backend, rng):
    kernel = random_kernel(rng, (3, 3), 2, 4)
    for dtype in ("float32", "float16", "bfloat16"):
        if not hasattr(backend.xp, dtype):
            continue
        k = backend.xp.astype(
            backend.asarray(as_layout(kernel, "OIHW"), "float32"), getattr(backend.xp, dtype)
        )
        out = convsv.clip_operator_norm(k, (5, 5), 1.0, layout="OIHW")
        backend.check(out, dtype)
        assert out.shape == (4, 2, 3, 3)
        full = convsv.clip_singular_values(k, (5, 5), 1.0, layout="OIHW")
        backend.check(full, dtype)
        assert full.shape == (4, 2, 5, 5)
    ints = backend.asarray(np.arange(2 * 2 * 1 * 1).reshape(2, 2, 1, 1), "int32")
    backend.check(convsv.clip_operator_norm(ints, 4, 1.0), backend.default_real)


def test_non_finite_kernels_give_nan(backend, rng):
    kernel = random_kernel(rng, (3, 3), 2, 2)
    kernel[0, 1, 1, 0] = np.nan
    dtype = backend.default_float
    out, info = convsv.clip_operator_norm(
        backend.asarray(kernel, dtype), 4, 1.0, iterations=3, tol=1e-3, return_info=True
    )
    assert np.all(np.isnan(backend.check(out, dtype)))
    assert np.isnan(backend.to_numpy(info.norm))
    assert not bool(backend.to_numpy(info.converged))
    assert np.all(
        np.isnan(backend.to_numpy(convsv.clip_singular_values(backend.asarray(kernel, dtype), 4, 1.0)))
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.backend("jax")
def test_jax_jit_matches_eager(rng, method):
    jax = require("jax")
    kernel = rng.standard_normal((3, 3, 2, 2))
    with jax.enable_x64(True):
        clip = functools.partial(
            convsv.clip_operator_norm, input_shape=(5, 5), max_norm=1.0, method=method,
            iterations=2000, tol=1e-4, return_info=True,
        )  # fmt: skip
        eager, eager_info = clip(jax.numpy.asarray(kernel))
        traced, traced_info = jax.jit(clip)(jax.numpy.asarray(kernel))
        np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-12)
        # The traced loop stops early too (a while_loop), at the same step.
        assert int(traced_info.iterations) == int(eager_info.iterations) < 2000
        assert bool(traced_info.converged)
        np.testing.assert_allclose(float(traced_info.norm), float(eager_info.norm), rtol=1e-12)


@pytest.mark.backend("torch")
def test_torch_no_grad_and_autograd(rng):
    torch = require("torch")
    kernel = torch.tensor(random_kernel(rng, (3, 3), 2, 2) * 2, requires_grad=True)
    with torch.no_grad():
        out = convsv.clip_operator_norm(kernel, 5, 1.0, method="extrapolated", iterations=10, tol=1e-6)
    assert not out.requires_grad
    # Differentiable too: a projected layer can sit inside a training graph.
    full = convsv.clip_singular_values(kernel, 5, 1.0)
    full.square().sum().backward()
    assert kernel.grad is not None
    assert torch.all(torch.isfinite(kernel.grad))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": -1.0}, ValueError, "`max_norm` must be a finite non-negative number, got -1.0"),
        ({"max_norm": float("nan")}, ValueError, "`max_norm` must be a finite non-negative number"),
        ({"max_norm": float("inf")}, ValueError, "`max_norm` must be a finite non-negative number"),
        ({"max_norm": "1"}, TypeError, "`max_norm` must be a finite non-negative number"),
        ({"max_norm": None}, TypeError, "`max_norm` must be a finite non-negative number"),
        ({"max_norm": True}, TypeError, "`max_norm` must be a finite non-negative number, got True"),
        ({"min_norm": -0.5}, ValueError, "`min_norm` must be a finite non-negative number"),
        ({"min_norm": 2.0}, ValueError, "`min_norm` .* must not exceed `max_norm`"),
        ({"method": "newton"}, ValueError, "`method` must be one of"),
        ({"iterations": 0}, ValueError, "`iterations` must be a positive int"),
        ({"iterations": 2.0}, TypeError, "`iterations` must be a positive int"),
        ({"tol": -1e-3}, ValueError, "`tol` must be None or a finite non-negative number"),
        ({"tol": float("nan")}, ValueError, "`tol` must be"),
        ({"method": "extrapolated", "min_norm": 0.5}, ValueError, "convexity"),
    ],
)
def test_bad_arguments(backend, kwargs, error, match):
    kernel = backend.asarray(np.ones((3, 3, 2, 2)), backend.default_float)
    arguments = {"max_norm": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        convsv.clip_operator_norm(kernel, 4, **arguments)
    if set(kwargs) <= {"max_norm", "min_norm"}:
        with pytest.raises(error, match=match):
            convsv.clip_singular_values(kernel, 4, **arguments)


def test_kernel_larger_than_the_map_is_refused_for_cropping(backend):
    kernel = backend.asarray(np.ones((5, 3, 1, 1)), backend.default_float)
    with pytest.raises(ValueError, match="exceeds the feature map"):
        convsv.clip_operator_norm(kernel, (4, 4), 1.0)
    full = convsv.clip_singular_values(kernel, (4, 4), 1.0)  # the full-size projection is fine
    assert full.shape == (4, 4, 1, 1)


@pytest.mark.backend("jax")
def test_jax_gradient_through_a_fixed_number_of_steps(rng):
    # tol=None is a fixed-count loop: reverse-differentiable under jit, and equal
    # to central differences of the same function evaluated eagerly.
    jax = require("jax")
    kernel = rng.standard_normal((2, 2, 2, 2))
    direction = rng.standard_normal(kernel.shape)
    with jax.enable_x64(True):

        def loss(k):
            return jax.numpy.sum(
                convsv.clip_operator_norm(k, (4, 4), 1.0, method="alternating", iterations=3) ** 2
            )

        grad = jax.jit(jax.grad(loss))(jax.numpy.asarray(kernel))
        eps = 1e-6
        numeric = (loss(kernel + eps * direction) - loss(kernel - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(np.asarray(grad) * direction)), float(numeric), rtol=1e-5)
