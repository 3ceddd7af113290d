"""Collect the framework adapters' doctests and tests only where their framework imports.

With ``CONVSV_REQUIRE_ADAPTERS=1`` (set by the nox adapter sessions) nothing
is left out, so a broken install fails instead of passing as an empty run.
"""

from __future__ import annotations

import importlib.util
import os


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# Keras 3 imports TensorFlow unless KERAS_BACKEND names another backend.
_KERAS_OK = not _missing("keras") and (
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or not _missing("tensorflow")
)
_AVAILABLE = {
    "torch": not _missing("torch"),
    "keras": _KERAS_OK,
    "optax": not any(_missing(module) for module in ("optax", "flax", "equinox")),
    "equinox": not any(_missing(module) for module in ("equinox", "optax")),
    "flax": not any(_missing(module) for module in ("flax", "optax")),
}
_REQUIRED = os.environ.get("CONVSV_REQUIRE_ADAPTERS") == "1"
# The private modules that hold part of a public adapter, with doctests that need its framework
# (noxfile.py reads this table too).
ADAPTER_PARTS = {
    "keras": ["_keras_constraint", "_keras_spectral_norm"],
    "optax": ["_jax_layers"],
    "torch": ["_torch_spectral_norm", "_lipschitz", "_lipschitz_maps"],
    "equinox": ["_jax_spectral_norm"],
    "flax": ["_jax_spectral_norm"],
}
# Each adapter's test modules (test_torch.py, test_torch_spectral_norm.py, ...) and sources.
ADAPTER_FILES = {
    name: [f"tests/adapters/test_{name}*.py"]
    + [f"src/convsv/{module}.py" for module in (name, *ADAPTER_PARTS.get(name, []))]
    for name in _AVAILABLE
}
collect_ignore_glob = [
    path for name, ok in _AVAILABLE.items() if not ok and not _REQUIRED for path in ADAPTER_FILES[name]
]
