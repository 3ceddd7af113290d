"""A layer's singular values and norms, from its spec: what the public functions of :mod:`convsv._norms` run.

Each function here takes a kernel, a validated :class:`~convsv._layout.ConvSpec`
and validated :class:`~convsv._options.NormOptions`; the adapters and the command
line, which build a spec once per layer, call :func:`spectrum`, :func:`norm` and
:func:`norm_bounds` directly.
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import integer
from ._lanczos import BLOCK_CAPACITY, LANCZOS_CAPACITY, basis_rows, padded_values
from ._layout import ConvSpec, working_kernel
from ._lib import (
    Array,
    Namespace,
    compiled_for_jax,
    device_of,
    full_precision,
    on_accelerator,
    pad_axis,
    unit_scale,
    zero_d,
)
from ._lib.dtensor import across_ranks, joined_rows, whole_dtensor_kernel
from ._limits import check_memory
from ._operator import forward_matrix
from ._options import NormOptions
from ._spectrum import (
    blocks_by_rows,
    gram_iteration_bounds,
    grouped,
    half_rows,
    matrix_singular_values,
    mirror_rows,
    power_iteration_norm,
    spectrum_rows,
    top_singular_values,
)

#: Largest dense matrix (entries) whose SVD :func:`singular_values` computes for zero padding.
MAX_DENSE_SVD = 2**24

#: Most squarings of the Gram iteration: beyond ~30 the bound no longer moves in float64.
MAX_GRAM_STEPS = 30


def _pointwise(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array | None:
    """A 1x1 kernel's ``(G, in/G, out/G)`` channel matrices, else None.

    Its matrix is the same ``W`` at every frequency, and a stride stacks
    ``prod(stride)`` copies of it scaled by ``1/sqrt(prod(stride))``, so every
    block has the singular values of ``W`` (padded with zeros to the block's
    size): one small SVD instead of one per frequency.
    """
    if any(k != 1 for k in spec.kernel_size):
        return None
    first_tap = (0,) * spec.ndim + (Ellipsis,)
    return grouped(kernel, spec, xp)[first_tap]


def circular_norm(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> Array:
    """Norm of the circular layer on ``spec.grid``: the largest block singular value, chunk by chunk.

    ``kernel`` is spatial-first in its working dtype (see :func:`~convsv._layout.working_kernel`).
    """
    method = options.method
    if method == "auto":  # measured: gram 65-270x the two-liner on an H200, eigh 10x; eigh fastest on CPUs
        method = "gram" if on_accelerator(kernel) else "eigh"
    tolerance = options.tolerance(kernel.dtype, xp)
    kernel, scale = unit_scale(kernel, xp)  # every method squares: work where that cannot overflow
    best: Array | None = None
    pointwise = _pointwise(kernel, spec, xp)
    chunks = (
        [(None, pointwise)]
        if pointwise is not None
        else blocks_by_rows(kernel, spec, xp, options.chunk_size, options.max_memory)
    )
    for _, blocks in chunks:
        if method == "svd":
            value = xp.max(matrix_singular_values(blocks, xp))
        elif method == "eigh":
            value = xp.max(top_singular_values(blocks, xp))
        elif method == "power":
            value = power_iteration_norm(blocks, tolerance, options.iterations, xp)
        else:
            floor = (
                xp.zeros((), dtype=xp.real(blocks).dtype, device=device_of(blocks)) if best is None else best
            )
            steps = min(options.iterations, MAX_GRAM_STEPS)
            _, value = gram_iteration_bounds(blocks, floor, tolerance, steps, xp)
        best = value if best is None else xp.maximum(best, value)
    return zero_d(across_ranks(best, "max") * scale, xp)


def lanczos_options(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> dict[str, Any]:
    """What :func:`padded_values` takes for a zero-padded norm with ``options``."""
    rows = basis_rows(1, spec, _itemsize(kernel, xp), options.max_memory, LANCZOS_CAPACITY)
    return {
        "tol": options.tolerance(kernel.dtype, xp),
        "iterations": options.iterations,
        "capacity": rows,
        "max_memory": options.max_memory,
    }


def padded_norm(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> Array:
    """The zero-padded layer's norm (see :func:`padded_values`) of a spatial-first working kernel."""
    iteration = lanczos_options(kernel, spec, xp, options)
    unit, scale = unit_scale(kernel, xp)
    norm, _ = padded_values(unit, spec, xp, count=None, **iteration)
    return zero_d(norm * scale, xp)


def _itemsize(kernel: Array, xp: Namespace) -> int:
    return 8 if kernel.dtype in (xp.float64, xp.complex64) else 16 if kernel.dtype == xp.complex128 else 4


def check_count(k: object, spec: ConvSpec) -> int | None:
    """``k`` of :func:`singular_values`: ``None`` or how many of the layer's values to return."""
    total = _count_of_values(spec)
    if k is None:
        return None
    expected = f"None or an int from 1 to the number of singular values ({total})"
    return integer(k, "k", 1, total, expected=expected)


# --- the spec level: a kernel in its layer's layout; compiled once per spec and options on JAX ---------


@whole_dtensor_kernel(reshard=False)
@full_precision
@compiled_for_jax
def spectrum(kernel: Array, spec: ConvSpec, xp: Namespace, count: int | None, options: NormOptions) -> Array:
    """:func:`singular_values` of ``kernel`` (in ``spec``'s layout); ``count`` from :func:`check_count`."""
    array = working_kernel(kernel, spec, xp)
    if spec.circular:  # the whole spectrum is computed (and kept, sorted, mirrored) even for `count`
        result = _count_of_values(spec) * (8 if array.dtype in (xp.float64, xp.complex128) else 4)
        check_memory(result, options.max_memory, f"the {_count_of_values(spec)} singular values", spec)
    array, scale = unit_scale(array, xp)  # values of kernel / scale, times scale: no overflow
    return scale * _spectrum_of_unit(array, spec, xp, count, options)


@whole_dtensor_kernel(reshard=False)
@full_precision
@compiled_for_jax
def norm(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> Array:
    """:func:`operator_norm` of ``kernel`` (in ``spec``'s layout)."""
    array = working_kernel(kernel, spec, xp)
    if spec.circular:
        return circular_norm(array, spec, xp, options)
    return padded_norm(array, spec, xp, options)


@whole_dtensor_kernel(reshard=False)
@full_precision
@compiled_for_jax
def norm_upper(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> Array:
    """The upper end of :func:`norm_bounds` alone: the circular layer's norm on the (padded) grid."""
    return circular_norm(working_kernel(kernel, spec, xp), spec, xp, options)


@whole_dtensor_kernel(reshard=False)
@full_precision
@compiled_for_jax
def norm_bounds(kernel: Array, spec: ConvSpec, xp: Namespace, options: NormOptions) -> tuple[Array, Array]:
    """:func:`operator_norm_bounds` of ``kernel`` (in ``spec``'s layout)."""
    array = working_kernel(kernel, spec, xp)
    upper = circular_norm(array, spec, xp, options)  # the circular layer on the (padded) grid
    if spec.circular:
        return upper, upper
    # Where the two ends meet (a 1x1 kernel without padding is its circular twin), their round-off can
    # put the lower one an ulp above: the bracket is ordered in the dtype it is reported in. (NumPy's
    # minimum of two 0-d arrays is a scalar; where keeps an array.)
    lower = padded_norm(array, spec, xp, options)
    return xp.where(lower > upper, upper, lower), upper


def _spectrum_of_unit(
    array: Array, spec: ConvSpec, xp: Namespace, count: int | None, options: NormOptions
) -> Array:
    """:func:`singular_values` of a kernel whose largest entry is about 1."""
    if spec.circular:
        values = _circular_spectrum(array, spec, xp, options.chunk_size, options.max_memory)
        return values if count is None else _largest(values, count, xp)
    entries = math.prod(spec.matrix_shape)
    if entries <= MAX_DENSE_SVD:
        values = matrix_singular_values(forward_matrix(array, spec, xp), xp)
        return values if count is None else values[:count]
    if count is None:
        msg = (
            f"with zero padding the whole spectrum needs a dense SVD, and this layer's matrix has "
            f"{entries} entries (the limit is {MAX_DENSE_SVD}); pass `k` for the k largest by "
            "block Lanczos, use operator_norm or operator_norm_bounds, which work matrix-free, or "
            "padding='circular' for the exact spectrum of the circular layer"
        )
        raise ValueError(msg)
    capacity = max(BLOCK_CAPACITY, 4 * count)
    rows = basis_rows(3, spec, _itemsize(array, xp), options.max_memory, capacity, count=count)
    values, _ = padded_values(
        array,
        spec,
        xp,
        count=count,
        tol=options.tolerance(array.dtype, xp),
        iterations=options.iterations,
        capacity=rows,
        max_memory=options.max_memory,
    )
    return values


def _circular_spectrum(
    k: Array, spec: ConvSpec, xp: Namespace, chunk_size: int | None, max_memory: int | None
) -> Array:
    """Every singular value of the circular layer, ``(*freq_grid, values per frequency)``."""
    pointwise = _pointwise(k, spec, xp)
    if pointwise is not None:
        values = matrix_singular_values(pointwise, xp)  # (G, min(i, o))
        rank = min(spec.phases * spec.group_in, spec.group_out)
        values = pad_axis(values, 1, 0, rank - values.shape[1], xp)
        values = xp.broadcast_to(values, (*spec.freq_grid, *values.shape))
        return spectrum_rows(values, spec, xp)
    chunks = [
        matrix_singular_values(blocks, xp)
        for _, blocks in blocks_by_rows(k, spec, xp, chunk_size, max_memory)
    ]
    values = xp.concat(chunks, axis=0) if len(chunks) > 1 else chunks[0]
    values = joined_rows(values, half_rows(spec, not xp.isdtype(k.dtype, "complex floating")))
    return spectrum_rows(mirror_rows(values, spec, xp), spec, xp)


def _count_of_values(spec: ConvSpec) -> int:
    """How many singular values the layer has (its matrix's smaller side, zeros included)."""
    if spec.circular:
        return spec.n_blocks * spec.groups * min(spec.phases * spec.group_in, spec.group_out)
    return min(spec.matrix_shape)


def _largest(values: Array, count: int, xp: Namespace) -> Array:
    """The ``count`` largest entries of ``values``, descending, as a 1-D array."""
    return xp.flip(xp.sort(xp.reshape(values, (-1,))), axis=0)[:count]
