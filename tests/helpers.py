"""Helpers the tests share: the ``Backend`` description and its checks, optional imports, JAX case thinning.

Imported as ``from helpers import ...`` (``conftest.py`` holds only fixtures and hooks: a test
module importing ``conftest`` gets whichever ``conftest`` is first on ``sys.path``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

CPU_BACKENDS = ["numpy", "array_api_strict", "torch", "jax", "jax-x64"]
GPU_BACKENDS = ["cupy", "torch-cuda", "jax-gpu"]

# Backend.assert_close's default rtol, by the result's dtype: the round-off the suite allows a
# direct computation (FFT, small SVDs) against a float64 truth, relative to the largest value.
# float32: 3e-5, about 250 eps; float64: 1e-10, well above its round-off but far below any
# iterative method's tol. Tests that need another (an iteration's tol, a longer sum) pass it.
DEFAULT_RTOL = {"float32": 3e-5, "complex64": 3e-5, "float64": 1e-10, "complex128": 1e-10}


def selected(name: str) -> bool:
    wanted = os.environ.get("CONVSV_BACKENDS")
    if not wanted:
        return True
    return name.split("-")[0] in {w.strip() for w in wanted.split(",")}


@dataclass
class Backend:
    """One array library on one device, as the tests see it."""

    name: str
    xp: Any  # the array_api_compat namespace results must come back in
    device: Any
    float64: bool = True  # whether float64 arrays can be made (jax without x64: no)
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        """Move a NumPy array (or scalar) to this backend, with an optional dtype name."""
        a = np.asarray(a)
        dt = getattr(self.xp, dtype if dtype is not None else str(a.dtype))
        return self.xp.asarray(a, dtype=dt, device=self.device)

    @property
    def default_float(self) -> str:
        """The most precise real float this backend offers: what most tests use."""
        return "float64" if self.float64 else "float32"

    @property
    def default_real(self) -> str:
        """The namespace's default real float (float32 on torch, whatever the device)."""
        info = self.xp.__array_namespace_info__()
        default = info.default_dtypes(device=self.device)["real floating"]
        return "float64" if default == self.xp.float64 else "float32"

    def check(self, result: Any, dtype: str) -> np.ndarray:
        """Assert namespace, device and dtype of ``result``; return it as NumPy."""
        import array_api_compat

        assert array_api_compat.array_namespace(result) is self.xp, self.name
        if self.name == "numpy":
            assert isinstance(result, np.ndarray), f"a NumPy array, not {type(result).__name__}"
        assert array_api_compat.device(result) == self.device, (array_api_compat.device(result), self.device)
        assert result.dtype == getattr(self.xp, dtype), (result.dtype, dtype)
        return self.to_numpy(result)

    def assert_close(
        self,
        result: Any,
        expected: Any,
        *,
        dtype: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        err_msg: str = "",
    ) -> np.ndarray:
        """Assert ``result`` is this backend's array of ``dtype``, close to ``expected``; return it as NumPy.

        ``result`` goes through :meth:`check` (namespace, device, dtype, which
        defaults to :attr:`default_float`); ``expected`` is the ground truth in
        NumPy (an array of the same shape, or a scalar, which matches any shape)
        or a Python number or list.

        The bound on ``|result - expected|``, entry by entry:

        - ``rtol`` alone: ``rtol * max|expected|``, a normwise relative error:
          small entries and zeros compare at the scale of the whole (a
          spectrum's small values, a matrix's zeros), a single value to
          ``rtol`` of itself;
        - neither: the same with :data:`DEFAULT_RTOL` for the result's dtype,
          the round-off the suite allows a direct computation;
        - ``atol`` alone: ``atol``, absolute (an all-zero truth needs one);
        - both: ``atol + rtol * |expected|``, NumPy's rule (``atol=0``: each
          entry to ``rtol`` of itself).
        """
        dtype = self.default_float if dtype is None else dtype
        got = self.check(result, dtype)
        if rtol is None and atol is None:
            if dtype not in DEFAULT_RTOL:
                msg = f"no default tolerance for {dtype}: pass rtol or atol"
                raise ValueError(msg)
            rtol = DEFAULT_RTOL[dtype]
        if isinstance(expected, (list, tuple)):
            expected = np.asarray(expected)
        assert isinstance(expected, (np.ndarray, np.generic, int, float, complex)), (
            f"the truth is NumPy or a Python number, not {type(expected).__name__}"
        )
        if isinstance(expected, np.ndarray):
            assert got.shape == expected.shape, (got.shape, expected.shape)
        header = f"{self.name}, {dtype}" + (f": {err_msg}" if err_msg else "")
        if atol is None:
            assert rtol is not None
            magnitude = np.abs(np.asarray(expected))
            largest = float(np.max(magnitude, where=np.isfinite(magnitude), initial=0.0))
            np.testing.assert_allclose(
                got, expected, rtol=0, atol=rtol * largest, err_msg=f"{header} (rtol={rtol:g} of the largest)"
            )
        else:
            np.testing.assert_allclose(got, expected, rtol=rtol or 0, atol=atol, err_msg=header)
        return got


def require(module: str) -> Any:
    """Import an optional framework used as an independent reference (a framework's own conv).

    Skips where the library is missing, unless this run selects its backend and
    ``CONVSV_REQUIRE_BACKENDS=1`` asks for it: then its absence is a failure.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        if selected(module) and os.environ.get("CONVSV_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{module!r} is required (CONVSV_REQUIRE_BACKENDS=1) but missing")
        pytest.skip(f"{module} is not installed")


def one_in(every: int, index: int, backend: Backend) -> None:
    """Run only every ``every``-th case of a many-layer test on JAX, which compiles each layer afresh.

    A second or more per layer and backend (jax and jax-x64): the other
    backends run every case, and JAX a spread sample of them, each as strict.
    """
    if backend.name.startswith("jax") and index % every:
        pytest.skip(f"JAX runs one case in {every} of this test (each layer compiles for seconds)")
