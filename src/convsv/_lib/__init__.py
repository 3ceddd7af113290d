"""Array-API plumbing: namespaces, devices and dtype rules, in one place.

The rest of the core is written once against the namespace returned by
:func:`namespace_of`; where a backend needs a patch, it goes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import array_api_compat

Array = Any
Namespace = Any
State = TypeVar("State", bound=tuple[Any, ...])

__all__ = [
    "Array",
    "Namespace",
    "complex_dtype",
    "device_of",
    "interleave_zeros",
    "namespace_of",
    "pad_axis",
    "repeat",
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
