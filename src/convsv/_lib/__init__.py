"""Array-API plumbing: namespaces, devices and dtype rules, in one place.

The rest of the core is written once against the namespace returned by
:func:`namespace_of`; where a backend needs a patch, it goes here.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

Array = Any
Namespace = Any

__all__ = [
    "Array",
    "Namespace",
    "complex_dtype",
    "device_of",
    "namespace_of",
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
