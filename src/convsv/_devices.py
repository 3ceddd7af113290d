"""The array library and device the command line computes with."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._models import ModelError

BACKENDS = ("numpy", "torch", "jax", "cupy")


def _parse_device(device: str) -> tuple[bool, int]:
    """``--device`` as (on a GPU?, device index)."""
    kind, _, index = device.partition(":")
    if device == "cpu" or (kind in ("cuda", "gpu") and (not index or index.isdigit())):
        return device != "cpu", int(index or 0)
    msg = f"device {device!r}: expected cpu, cuda, cuda:N, gpu or gpu:N"
    raise ModelError(msg)


def _available(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def converter(backend: str | None, device: str) -> tuple[str, Callable[[Any], Any]]:
    """The backend to compute with and a function moving a NumPy kernel onto ``device`` there."""
    gpu, index = _parse_device(device)
    if backend is None:
        candidates = ("torch", "cupy", "jax") if gpu else ("numpy",)
        backend = next((b for b in candidates if _available(b)), None)
        if backend is None:
            msg = f"device {device!r}: no GPU array library is installed (torch, cupy or jax)"
            raise ModelError(msg)
    if not _available(backend):
        msg = f"backend {backend!r}: the package is not installed (pip install {backend})"
        raise ModelError(msg)
    if backend == "numpy":
        if gpu:
            msg = f"device {device!r}: NumPy computes on the CPU only; use the backend torch, cupy or jax"
            raise ModelError(msg)
        return backend, lambda k: k
    if backend == "torch":
        import torch

        if gpu and index >= torch.cuda.device_count():
            msg = f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            raise ModelError(msg)
        where = torch.device(f"cuda:{index}" if gpu else "cpu")
        # Readers hand over read-only arrays (ONNX's, memory-mapped files): a copy, not PyTorch's warning.
        return backend, lambda k: torch.asarray(k if k.flags.writeable else k.copy(), device=where)
    if backend == "jax":
        import jax

        try:
            where = jax.devices("gpu" if gpu else "cpu")[index]
        except (RuntimeError, IndexError) as err:
            msg = f"device {device!r}: JAX has no such device ({err})"
            raise ModelError(msg) from None
        return backend, lambda k: jax.device_put(k, where)
    import cupy  # backend == "cupy"

    if not gpu:
        msg = "backend 'cupy' computes on a GPU: use device 'cuda'"
        raise ModelError(msg)
    if index >= cupy.cuda.runtime.getDeviceCount():
        msg = f"device {device!r}: CuPy sees {cupy.cuda.runtime.getDeviceCount()} CUDA device(s)"
        raise ModelError(msg)

    def to_cupy(k: Any) -> Any:
        with cupy.cuda.Device(index):
            return cupy.asarray(k)

    return backend, to_cupy
