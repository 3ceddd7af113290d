"""Collect the framework adapters' doctests only where their framework imports."""

from __future__ import annotations

import importlib.util
import os


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# Keras 3 imports TensorFlow unless KERAS_BACKEND names another backend.
_KERAS_OK = not _missing("keras") and (
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or not _missing("tensorflow")
)
collect_ignore = [
    path
    for path, ok in {
        "src/convsv/torch.py": not _missing("torch"),
        "src/convsv/keras.py": _KERAS_OK,
        "src/convsv/optax.py": not _missing("optax"),
    }.items()
    if not ok
]
