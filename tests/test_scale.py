"""Scale invariance: tiny and huge kernels give the right norms, spectra and projections.

Every norm method squares something (Gram matrices, vector norms, Rayleigh
quotients), which overflows or underflows far inside the dtype's range
unless the kernel is rescaled first. The truth is the dense matrix of the
unscaled kernel (written-out convolution, float64 SVD) times the scale: a
layer's singular values are homogeneous in its kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

import convsv

from _reference import dense_singular_values, general_dense

# Powers of ten across the finite range of each dtype, as the issue asks (float32 squares overflow
# from about 1e19 and underflow below 1e-19; float64 from 1e154 and below 1e-154).
SCALES = {"float32": (1e-12, 1e-6, 1e6, 1e12, 1e18), "float64": (1e-200, 1e-100, 1e100, 1e150)}
METHODS = ("svd", "eigh", "gram", "power")
N = 6


def _kernel() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((3, 3, 2, 2))


def _zero_padded_norm(kernel: np.ndarray) -> float:
    matrix = general_dense(kernel, (N, N), stride=(1, 1), dilation=(1, 1), groups=1, pads=((1, 1), (1, 1)))
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _dtypes(backend) -> list[str]:
    return ["float32", "float64"] if backend.float64 else ["float32"]


def _scales(backend, dtype: str) -> tuple[float, ...]:
    # JAX compiles afresh for every bound (a static argument): only the smallest there.
    every = SCALES[dtype]
    return every[:1] if backend.name.startswith("jax") else every


def _close(value, truth: float, dtype: str, tol: float | None = None) -> None:
    rtol = tol if tol is not None else (2e-5 if dtype == "float32" else 1e-9)
    assert np.isfinite(value).all(), value
    np.testing.assert_allclose(value, truth, rtol=rtol)


@pytest.mark.parametrize("method", METHODS)
def test_circular_norm_at_any_scale(backend, method):
    kernel = _kernel()
    truth = dense_singular_values(kernel, (N, N))[0]
    for dtype in _dtypes(backend):
        for scale in _scales(backend, dtype):
            k = backend.asarray(kernel * scale, dtype)
            norm = backend.check(convsv.operator_norm(k, N, method=method), dtype)
            # gram: certified within its tol above; power: an estimate, both to the default tol.
            rtol = 3e-5 if dtype == "float32" else (2e-6 if method in ("gram", "power") else 1e-9)
            _close(norm / scale, truth, dtype, rtol)


def test_spectrum_and_zero_padded_norm_at_any_scale(backend):
    kernel = _kernel()
    truth = dense_singular_values(kernel, (N, N))
    padded = _zero_padded_norm(kernel)
    for dtype in _dtypes(backend):
        for scale in _scales(backend, dtype):
            k = backend.asarray(kernel * scale, dtype)
            values = backend.check(convsv.singular_values(k, N), dtype)
            _close(np.sort(values.ravel())[::-1] / scale, truth, dtype, 3e-5 if dtype == "float32" else None)
            lower, upper = convsv.operator_norm_bounds(k, N, padding=1)
            lower, upper = backend.check(lower, dtype) / scale, backend.check(upper, dtype) / scale
            # Lanczos: certified within tol (1e-5 / 1e-6) below a singular value, here the top one.
            _close(lower, padded, dtype, 2e-5 if dtype == "float32" else 2e-6)
            _close(upper, truth[0], dtype, 3e-5 if dtype == "float32" else None)


def test_projections_at_any_scale(backend):
    kernel = _kernel()
    circular = dense_singular_values(kernel, (N, N))[0]
    padded = _zero_padded_norm(kernel)
    for dtype in _dtypes(backend):
        rtol = 1e-4 if dtype == "float32" else 2e-6  # the projection stops within tol=1e-6
        for scale in _scales(backend, dtype):
            k = backend.asarray(kernel * scale, dtype)
            # Circular: the clipped kernel's dense norm is on the bound, and the report says so.
            bound = 0.5 * circular * scale
            clipped, info = convsv.clip_operator_norm(k, N, bound, tol=1e-6, iterations=200, return_info=True)
            clipped = backend.check(clipped, dtype).astype(np.float64) / scale
            assert bool(info.converged), (dtype, scale)
            _close(dense_singular_values(clipped, (N, N))[0], 0.5 * circular, dtype, rtol)
            _close(backend.to_numpy(info.norm) / scale, 0.5 * circular, dtype, rtol)
            # Zero padding, tight: the layer's own norm within 1e-3 below the bound, not above.
            bound = 0.5 * padded * scale
            clipped = backend.check(convsv.clip_operator_norm(k, N, bound, padding=1), dtype)
            norm = _zero_padded_norm(clipped.astype(np.float64) / scale)
            assert 0.5 * padded * (1 - 1e-3) <= norm <= 0.5 * padded * (1 + 2e-5), (dtype, scale, norm)
            # The full-size projection with a lower clip: every singular value in [min, max].
            full = convsv.clip_singular_values(k, N, bound, min_norm=0.5 * bound)
            values = dense_singular_values(backend.check(full, dtype).astype(np.float64) / scale, (N, N))
            assert values[0] <= 0.5 * padded * (1 + rtol), (dtype, scale)
            assert values[-1] >= 0.25 * padded * (1 - rtol), (dtype, scale)


def test_scaling_leaves_the_kernel_and_gradient_alone(backend):
    """A kernel already within the bound comes back bit for bit, and the gradient is scale-free."""
    kernel = _kernel()
    dtype = backend.default_float
    for scale in SCALES[dtype][:: len(SCALES[dtype]) - 1]:
        k = backend.asarray(kernel * scale, dtype)
        bound = 100 * scale * dense_singular_values(kernel, (N, N))[0]
        same = convsv.clip_operator_norm(k, N, bound, tol=1e-6)  # with a tol, a feasible kernel is kept
        np.testing.assert_array_equal(backend.check(same, dtype), backend.to_numpy(k))
    if backend.name.startswith("torch"):
        import torch

        gradients = []
        for scale in (1.0, *SCALES[dtype]):
            k = torch.asarray(kernel * scale, dtype=getattr(torch, dtype), device=backend.device)
            k.requires_grad_(True)
            convsv.operator_norm(k, N).backward()
            gradients.append(k.grad.cpu().numpy())
        # A norm is homogeneous of degree one: its gradient does not depend on the scale.
        for g in gradients[1:]:
            np.testing.assert_allclose(g, gradients[0], rtol=1e-3 if dtype == "float32" else 1e-8, atol=0)
