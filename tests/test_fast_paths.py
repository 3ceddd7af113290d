"""The fast paths return what the reference paths return, on every backend.

Half spectrum (real kernels), row chunks under ``chunk_size`` / ``max_memory``,
threads over the batch, and the norm methods ``svd`` / ``eigh`` / ``gram`` /
``power``: each is checked against the dense matrix's SVD (an independent
route), or against the same function on the path it replaces (a complex
kernel has no half spectrum; ``chunk_size=None`` is one chunk).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import convsv
import convsv._lib as lib

# (kernel HWIO shape, input shape, options): odd and even maps, strides on
# either axis, groups, dilation, 1-D and 3-D, a kernel larger than the map.
LAYERS: list[tuple[tuple[int, ...], Any, dict[str, Any]]] = [
    ((3, 3, 4, 5), (6, 7), {}),
    ((3, 3, 4, 6), (8, 6), {"stride": 2}),
    ((3, 2, 2, 6), (6, 9), {"stride": (2, 3), "groups": 2}),
    ((2, 3, 4, 3), (5, 8), {"stride": (1, 2), "dilation": (2, 1)}),
    ((5, 3, 4), 8, {"stride": 2, "layout": "WIO"}),
    ((2, 3, 2, 2, 3), (4, 3, 4), {"stride": (2, 1, 2), "layout": "DHWIO"}),
    ((7, 6, 2, 3), (4, 5), {}),
    ((1, 1, 3, 8), (4, 6), {"stride": 2}),  # 1x1: one SVD for every frequency
    ((1, 1, 2, 6), (4, 6), {"groups": 3}),
]
IDS = ["plain", "stride2", "groups", "dilated", "1d", "3d", "wraps", "1x1-stride2", "1x1-groups"]


def _dense_singular_values(kernel: np.ndarray, n: Any, options: dict[str, Any]) -> np.ndarray:
    return np.linalg.svd(convsv.conv_matrix(kernel, n, **options), compute_uv=False)


@pytest.mark.parametrize(("shape", "n", "options"), LAYERS, ids=IDS)
@pytest.mark.parametrize("chunks", [{}, {"chunk_size": 1}, {"max_memory": 1}], ids=["whole", "rows", "bytes"])
def test_spectrum_matches_the_dense_svd(backend, rng, shape, n, options, chunks):
    kernel = rng.standard_normal(shape)
    dense = _dense_singular_values(kernel, n, options)
    dtype = backend.default_float
    values = backend.check(
        convsv.singular_values(backend.asarray(kernel, dtype), n, **options, **chunks), dtype
    )
    ours = np.sort(values.ravel())[::-1]
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(ours, dense[: ours.size], rtol=rtol, atol=rtol * dense[0])


@pytest.mark.parametrize(("shape", "n", "options"), LAYERS[:4], ids=IDS[:4])
def test_half_spectrum_rows_equal_the_full_computation(backend, rng, shape, n, options):
    """A real kernel's rows computed from the half spectrum equal those of the same kernel as complex."""
    if not backend.float64:
        pytest.skip("complex128 needs float64")
    kernel = rng.standard_normal(shape)
    real = convsv.singular_values(backend.asarray(kernel), n, **options)
    full = convsv.singular_values(backend.asarray(kernel.astype(np.complex128)), n, **options)
    np.testing.assert_allclose(backend.to_numpy(real), backend.to_numpy(full), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "n", "options"), LAYERS, ids=IDS)
@pytest.mark.parametrize("method", ["auto", "svd", "eigh", "gram", "power"])
def test_norm_methods_agree_with_the_dense_svd(backend, rng, shape, n, options, method):
    kernel = rng.standard_normal(shape)
    exact = _dense_singular_values(kernel, n, options)[0]
    dtype = backend.default_float
    value = float(
        backend.check(
            convsv.operator_norm(backend.asarray(kernel, dtype), n, method=method, **options), dtype
        )
    )
    tol = 1e-6 if dtype == "float64" else 1e-5
    if method in ("auto", "svd", "eigh"):  # direct decompositions: round-off
        assert value == pytest.approx(exact, rel=1e-12 if dtype == "float64" else 2e-6)
    elif method == "gram":  # a certified upper bound within tol
        assert (
            exact * (1 - 4 * np.finfo(dtype).eps)
            <= value
            <= exact * (1 + tol) * (1 + 8 * np.finfo(dtype).eps)
        )
    else:  # power iteration: from below, heuristic stop
        assert exact * (1 - 10 * tol) <= value <= exact * (1 + 8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("method", ["eigh", "gram", "power"])
def test_norm_methods_with_chunks_and_a_clustered_top(backend, method):
    """Chunked methods, on a layer whose two largest singular values are 1e-4 apart (in different rows)."""
    kernel = np.load(
        __import__("pathlib").Path(__file__).parent / "data" / "clustered_top_singular_values_hwio.npy"
    )
    n = 8
    exact = _dense_singular_values(kernel, n, {})[0]
    dtype = backend.default_float
    value = float(convsv.operator_norm(backend.asarray(kernel, dtype), n, method=method, chunk_size=8))
    tol = 1e-6 if dtype == "float64" else 1e-5
    assert value == pytest.approx(exact, rel=10 * tol)
    if method == "gram":
        assert value >= exact * (1 - 4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("method", ["auto", "svd", "eigh", "gram", "power"])
def test_norm_methods_propagate_nan(backend, method):
    kernel = np.ones((3, 3, 2, 2))
    kernel[1, 1, 0, 0] = np.nan
    value = convsv.operator_norm(backend.asarray(kernel, backend.default_float), 6, method=method)
    assert np.isnan(float(value))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_zero_padded_norm_and_bounds_propagate_non_finite(backend, bad):
    # The docstring's promise: NaN out, not an exception from the Lanczos iteration's small SVD.
    kernel = np.ones((3, 3, 2, 2))
    kernel[0, 2, 1, 0] = bad
    k = backend.asarray(kernel, backend.default_float)
    assert np.isnan(float(convsv.operator_norm(k, 6, padding=1)))
    lower, upper = convsv.operator_norm_bounds(k, 6, padding=1)
    assert np.isnan(float(lower))
    assert not np.isfinite(float(upper))


@pytest.mark.parametrize(("shape", "n", "options"), LAYERS[:4], ids=IDS[:4])
@pytest.mark.parametrize("method", ["alternating", "extrapolated", "dykstra"])
def test_chunked_projection_equals_the_whole(backend, rng, shape, n, options, method):
    kernel = rng.standard_normal(shape)
    dtype = backend.default_float
    k = backend.asarray(kernel, dtype)
    args = {"method": method, "iterations": 3, **options}
    rtol, atol = (1e-9, 1e-9) if dtype == "float64" else (1e-4, 1e-5)
    whole = backend.to_numpy(convsv.clip_operator_norm(k, n, 1.0, **args))
    rows = convsv.clip_operator_norm(k, n, 1.0, chunk_size=1, **args)
    backend.assert_close(rows, whole, rtol=rtol, atol=atol)
    full = backend.to_numpy(convsv.clip_singular_values(k, n, 1.0, **options))
    full_rows = convsv.clip_singular_values(k, n, 1.0, max_memory=1, **options)
    backend.assert_close(full_rows, full, rtol=rtol, atol=atol)


def test_threads_over_the_batch_change_nothing(monkeypatch, rng):
    """The thread split (NumPy, CPU PyTorch) gives the serial results, also for the SVD's factors."""
    kernel = rng.standard_normal((3, 3, 6, 5))
    serial = convsv.singular_values(kernel, 8)
    serial_clip = convsv.clip_operator_norm(kernel, 8, 1.0, iterations=2)
    monkeypatch.setattr(lib, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(lib, "_workers", lambda: 3)
    np.testing.assert_array_equal(convsv.singular_values(kernel, 8), serial)
    np.testing.assert_allclose(
        convsv.clip_operator_norm(kernel, 8, 1.0, iterations=2), serial_clip, rtol=1e-13, atol=1e-14
    )
    assert float(convsv.operator_norm(kernel, 8)) == pytest.approx(float(np.max(serial)), rel=1e-13)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"method": "lanczos"}, ValueError, "`method` must be one of"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` must be None or a positive int"),
        ({"max_memory": 1.5}, TypeError, "`max_memory` must be None or a positive int"),
        ({"max_memory": True}, TypeError, "`max_memory` must be None or a positive int"),
        ({"method": "gram", "tol": 2.0}, ValueError, "`tol` must be a number in"),
        ({"method": "power", "iterations": 0}, ValueError, "`iterations` must be a positive int"),
    ],
)
def test_bad_fast_path_options_are_named(options, error, message):
    with pytest.raises(error, match=message):
        convsv.operator_norm(np.ones((3, 3, 2, 2)), 6, **options)


def test_bad_chunk_options_are_named_everywhere():
    kernel = np.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="`chunk_size`"):
        convsv.singular_values(kernel, 6, chunk_size=-1)
    with pytest.raises(ValueError, match="`max_memory`"):
        convsv.clip_operator_norm(kernel, 6, 1.0, max_memory=0)
    with pytest.raises(TypeError, match="`chunk_size`"):
        convsv.clip_singular_values(kernel, 6, 1.0, chunk_size="8")
