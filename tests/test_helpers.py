"""The tests' own check can fail: ``Backend.assert_close`` on a wrong namespace, device, dtype, value."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import DEFAULT_RTOL, require

TRUTH = np.array([[4.0, -2.0, 0.0], [1.0, 0.5, 1e-3]])


def test_a_close_result_passes_and_comes_back_as_numpy(backend):
    dtype = backend.default_float
    got = backend.assert_close(backend.asarray(TRUTH, dtype), TRUTH)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, TRUTH.astype(dtype))
    # A scalar truth, a NumPy scalar one, and a list.
    backend.assert_close(backend.asarray(np.float64(3.0), dtype), 3.0)
    backend.assert_close(backend.asarray(np.float64(3.0), dtype), np.float64(3.0))
    backend.assert_close(backend.asarray(TRUTH[0], dtype), [4.0, -2.0, 0.0])


def test_another_namespace_fails(backend):
    # NumPy's array for every other backend; for NumPy's, one from array_api_strict.
    if backend.name == "numpy":
        foreign = require("array_api_strict").asarray(TRUTH)
    else:
        foreign = TRUTH.astype(backend.default_float)
    with pytest.raises(AssertionError):
        backend.assert_close(foreign, TRUTH)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch-cuda", "jax-gpu"], indirect=True)
def test_another_device_fails(backend):
    # The backend's library, the right dtype, but not the backend's device (array_api_strict's
    # default device: the backend uses another one).
    if backend.name == "array_api_strict":
        other = backend.xp.Device("CPU_DEVICE")
    elif backend.name == "torch-cuda":
        other = require("torch").device("cpu")
    else:
        other = require("jax").devices("cpu")[0]
    dtype = backend.default_float
    wrong = backend.xp.asarray(TRUTH, dtype=getattr(backend.xp, dtype), device=other)
    assert wrong.device != backend.device
    with pytest.raises(AssertionError):
        backend.assert_close(wrong, TRUTH)


def test_another_dtype_fails(backend):
    result = backend.asarray(TRUTH, "float32")
    backend.assert_close(result, TRUTH, dtype="float32")
    with pytest.raises(AssertionError):
        backend.assert_close(result, TRUTH, dtype="float64")
    if backend.float64:
        with pytest.raises(AssertionError):  # the default: the backend's default float
            backend.assert_close(result, TRUTH)


def test_another_shape_fails(backend):
    result = backend.asarray(TRUTH, backend.default_float)
    with pytest.raises(AssertionError):
        backend.assert_close(result, TRUTH.T)
    with pytest.raises(AssertionError):
        backend.assert_close(result, TRUTH[None])


def test_a_wrong_value_fails_by_the_dtypes_tolerance(backend):
    dtype = backend.default_float
    rtol = DEFAULT_RTOL[dtype]
    scale = np.abs(TRUTH).max()
    for index in [(0, 0), (0, 2), (1, 2)]:  # the largest entry, a zero, a small one
        near, far = TRUTH.copy(), TRUTH.copy()
        near[index] += 0.5 * rtol * scale
        far[index] += 2 * rtol * scale
        backend.assert_close(backend.asarray(near, dtype), TRUTH)
        with pytest.raises(AssertionError):
            backend.assert_close(backend.asarray(far, dtype), TRUTH)
    # An explicit tolerance replaces the dtype's.
    far = TRUTH + 2 * rtol * scale
    backend.assert_close(backend.asarray(far, dtype), TRUTH, rtol=4 * rtol)
    with pytest.raises(AssertionError, match="the message"):
        backend.assert_close(backend.asarray(far, dtype), TRUTH, err_msg="the message")


def test_an_atol_compares_entry_by_entry(backend):
    # With atol, NumPy's rule: the small entries are held to their own size, not the largest one's.
    dtype = backend.default_float
    rtol = DEFAULT_RTOL[dtype]
    off = TRUTH.copy()
    off[1, 2] *= 1 + 0.1  # 10% off, but far below rtol times the largest entry
    backend.assert_close(backend.asarray(off, dtype), TRUTH, rtol=1e-2)
    with pytest.raises(AssertionError):
        backend.assert_close(backend.asarray(off, dtype), TRUTH, rtol=1e-2, atol=0)
    backend.assert_close(backend.asarray(off, dtype), TRUTH, rtol=1e-2, atol=1e-4 + 2 * rtol)
    # atol alone is absolute: the largest entry gets no more room than the others.
    top = TRUTH.copy()
    top[0, 0] += 1e-3
    backend.assert_close(backend.asarray(top, dtype), TRUTH, atol=2e-3)
    with pytest.raises(AssertionError):
        backend.assert_close(backend.asarray(top, dtype), TRUTH, atol=5e-4)
    # An all-zero truth: the default compares exactly, an atol gives room.
    zeros = np.zeros(3)
    tiny = backend.asarray(np.full(3, 1e-20), dtype)
    with pytest.raises(AssertionError):
        backend.assert_close(tiny, zeros)
    backend.assert_close(tiny, zeros, atol=1e-12)


def test_the_truth_must_be_numpy(backend):
    result = backend.asarray(TRUTH, backend.default_float)
    with pytest.raises(AssertionError, match="the truth is NumPy"):
        backend.assert_close(result, object())
    if backend.name != "numpy":
        with pytest.raises(AssertionError, match="the truth is NumPy"):
            backend.assert_close(result, result)


def test_a_dtype_without_a_default_needs_rtol(backend):
    if not hasattr(backend.xp, "float16"):
        pytest.skip(f"{backend.name} has no float16")
    result = backend.xp.asarray(backend.asarray(TRUTH, "float32"), dtype=backend.xp.float16)
    with pytest.raises(ValueError, match="pass rtol or atol"):
        backend.assert_close(result, TRUTH, dtype="float16")
    backend.assert_close(result, TRUTH, dtype="float16", rtol=1e-3)
