"""Helpers the tests share: the ``Backend`` description, optional imports, JAX case thinning.

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
