"""Array-API plumbing: namespaces, devices and dtype rules, in one place.

The rest of the core is written once against the namespace returned by
:func:`namespace_of`; where a backend needs a patch, it goes here.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

import array_api_compat

Array = Any
Namespace = Any
State = TypeVar("State", bound=tuple[Any, ...])
F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "Array",
    "Namespace",
    "batch_map",
    "complex_dtype",
    "device_of",
    "full_precision",
    "interleave_zeros",
    "namespace_of",
    "on_accelerator",
    "pad_axis",
    "repeat",
    "start_vector",
    "stop_gradient",
    "while_loop",
    "working_dtype",
    "zero_d",
]


def namespace_of(kernel: object, xp: Namespace | None, *, name: str = "kernel") -> tuple[Array, Namespace]:
    """Return ``(array, namespace)`` for a user-supplied array.

    With ``xp`` given, ``kernel`` is first converted with ``xp.asarray`` (so
    nested lists work); the namespace returned is always the
    ``array_api_compat`` wrapper, whatever module the caller passed.
    """
    if xp is not None:
        kernel = xp.asarray(kernel)
    if not array_api_compat.is_array_api_obj(kernel) or isinstance(kernel, (bool, int, float, complex)):
        msg = (
            f"`{name}` must be an array (NumPy, PyTorch, JAX, CuPy or another array-API "
            f"array), got {type(kernel).__name__}; pass `xp=` to convert other input"
        )
        raise TypeError(msg)
    return kernel, array_api_compat.array_namespace(kernel)


def zero_d(x: Array, xp: Namespace) -> Array:
    """A full reduction as a 0-d array: NumPy's reductions return scalars instead."""
    return xp.asarray(x) if array_api_compat.is_numpy_namespace(xp) else x


def while_loop(more: Callable[[State], Array], step: Callable[[State], State], state: State) -> State:
    """``while more(state): state = step(state)``, also under ``jax.jit``.

    Traced JAX arrays cannot be tested with ``bool``; for them the loop is a
    ``jax.lax.while_loop`` (a compact graph that still stops early). Every
    other backend runs the Python loop, one host synchronisation per test.
    """
    if _is_traced(state[0]):
        import jax

        result: State = jax.lax.while_loop(more, step, state)
        return result
    while bool(more(state)):
        state = step(state)
    return state


def repeat(step: Callable[[State], State], state: State, count: int) -> State:
    """``count`` times ``state = step(state)``; a ``jax.lax.fori_loop`` for traced JAX arrays.

    With static bounds the JAX loop is a scan, so it stays reverse-differentiable
    (a ``while_loop`` is not).
    """
    if _is_traced(state[0]):
        import jax

        looped: State = jax.lax.fori_loop(0, count, lambda _, s: step(s), state)
        return looped
    for _ in range(count):
        state = step(state)
    return state


def _is_traced(x: Array) -> bool:
    if not array_api_compat.is_jax_array(x):
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


def start_vector(size: int, dtype: Any, xp: Namespace, device: Any) -> Array:
    """A fixed, noise-like unit vector (no RNG in the array API): spread over all frequencies."""
    index = xp.astype(xp.arange(size, device=device), dtype)
    noise = xp.sin(index * 12.9898 + 78.233) * 43758.5453
    noise = noise - xp.floor(noise) - 0.5
    return noise / xp.linalg.vector_norm(noise)


def stop_gradient(x: Array) -> Array:
    """``x`` cut out of automatic differentiation (PyTorch, JAX); unchanged elsewhere."""
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def pad_axis(x: Array, axis: int, before: int, after: int, xp: Namespace) -> Array:
    """``x`` with ``before`` and ``after`` zeros along ``axis`` (the standard has no ``pad``)."""
    parts = []
    for size in (before, None, after):
        if size is None:
            parts.append(x)
        elif size:
            shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
            parts.append(xp.zeros(shape, dtype=x.dtype, device=device_of(x)))
    return xp.concat(parts, axis=axis) if len(parts) > 1 else x


def interleave_zeros(x: Array, axis: int, factor: int, xp: Namespace) -> Array:
    """``x`` with ``factor - 1`` zeros after every entry along ``axis`` (length times ``factor``)."""
    if factor == 1:
        return x
    spaced = pad_axis(xp.expand_dims(x, axis=axis + 1), axis + 1, 0, factor - 1, xp)
    return xp.reshape(spaced, (*x.shape[:axis], x.shape[axis] * factor, *x.shape[axis + 1 :]))


def device_of(x: Array) -> Any:
    """The device of ``x`` (``None`` for JAX tracers, which is a valid ``device=``)."""
    return array_api_compat.device(x)


def working_dtype(xp: Namespace, dtype: Any, device: Any) -> Any:
    """The dtype the maths runs in for a kernel of ``dtype``.

    float32/float64 and complex kernels keep their dtype; integers become the
    namespace's default real float; float16 and bfloat16 are computed in
    float32 (their FFT and SVD are unsupported or too inaccurate on most
    backends). Booleans are rejected.
    """
    if xp.isdtype(dtype, "bool"):
        msg = "`kernel` has a boolean dtype; convolution weights must be numeric"
        raise TypeError(msg)
    if xp.isdtype(dtype, "integral"):
        return xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    if xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        return xp.float32
    if xp.isdtype(dtype, ("real floating", "complex floating")):
        return dtype
    msg = f"`kernel` has unsupported dtype {dtype}; expected a real or complex floating or integer dtype"
    raise TypeError(msg)


def complex_dtype(xp: Namespace, dtype: Any) -> Any:
    """The complex dtype with the precision of the floating ``dtype``."""
    if xp.isdtype(dtype, "complex floating"):
        return dtype
    return xp.complex64 if dtype == xp.float32 else xp.complex128


#: Below this many flops' worth of matrices, a batch is not worth splitting across threads.
MIN_PARALLEL_WORK = 2**22


@cache
def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_workers(), thread_name_prefix="convsv")


@cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _threadable(x: Array) -> bool:
    """NumPy and CPU PyTorch arrays: their LAPACK calls release the GIL and run eagerly."""
    if array_api_compat.is_numpy_array(x):
        return True
    return array_api_compat.is_torch_array(x) and x.device.type == "cpu"


def batch_map(fn: Callable[[Array], Any], matrices: Array, xp: Namespace) -> Any:
    """``fn(matrices)`` for a function batched over the leading axes of ``(..., r, c)`` matrices.

    On the CPU (NumPy, PyTorch) the batch is split across one thread per
    core, each calling LAPACK with one BLAS thread: small decompositions do
    not parallelise inside, and two BLAS threads per SVD measured up to 3x
    slower than one thread per matrix. Elsewhere (GPU, JAX) ``fn`` sees the
    whole batch. ``fn`` returns an array or a tuple of arrays with the same
    leading axes.
    """
    batch, (r, c) = matrices.shape[:-2], matrices.shape[-2:]
    count = math.prod(batch)
    workers = min(_workers(), count)
    if workers < 2 or count * r * c * min(r, c) < MIN_PARALLEL_WORK or not _threadable(matrices):
        return fn(matrices)
    flat = xp.reshape(matrices, (count, r, c))
    bounds = [count * w // workers for w in range(workers + 1)]
    parts = [flat[a:b, ...] for a, b in itertools.pairwise(bounds)]
    with _blas_controller().limit(limits=1):
        results = list(_pool().map(fn, parts))

    def join(pieces: list[Array]) -> Array:
        whole = xp.concat(pieces, axis=0)
        return xp.reshape(whole, (*batch, *whole.shape[1:]))

    if isinstance(results[0], tuple):
        return tuple(join([res[i] for res in results]) for i in range(len(results[0])))
    return join(results)


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU: CuPy, CUDA PyTorch, JAX on a GPU (a tracer: JAX's default backend)."""
    if array_api_compat.is_cupy_array(x):
        return True
    if array_api_compat.is_torch_array(x):
        return bool(x.device.type != "cpu")
    if array_api_compat.is_jax_array(x):
        import jax

        if _is_traced(x):
            return bool(jax.default_backend() != "cpu")
        return any(d.platform != "cpu" for d in x.devices())
    return False


def full_precision(func: F) -> F:
    """Run ``func`` with JAX's matrix products in full float32 precision.

    JAX multiplies float32 (and complex64) matrices in TF32 on recent NVIDIA
    GPUs unless told otherwise, which costs three digits; the context also
    holds while ``jax.jit`` traces. Other libraries multiply in full
    precision by default. JAX is only consulted once something imported it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        jax = sys.modules.get("jax")
        context = jax.default_matmul_precision("highest") if jax is not None else contextlib.nullcontext()
        with context:
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
