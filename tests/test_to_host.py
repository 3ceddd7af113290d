"""``_lib.to_host``: the one way results and kernels reach the host as NumPy (CLI, adapters, experiments)."""

from __future__ import annotations

import numpy as np

from convsv._lib import to_host

from helpers import require


def test_every_backend_comes_back_as_the_same_numpy_array(backend, rng):
    values = rng.standard_normal((3, 4))
    for dtype in {backend.default_float, "float32"}:
        host = to_host(backend.asarray(values, dtype))
        assert type(host) is np.ndarray
        assert host.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(host, values.astype(dtype))


def test_torch_tensors_needing_grad_and_bfloat16():
    torch = require("torch")
    weight = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))  # requires grad: detached first
    np.testing.assert_array_equal(to_host(weight), np.arange(6.0).reshape(2, 3))
    half = to_host(weight.detach().to(torch.bfloat16))  # NumPy has no bfloat16
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, np.arange(6.0).reshape(2, 3))
