"""Kernel -> per-frequency blocks of the layer -> singular values.

The circular convolution ``z[o, t] = sum_{i, p} K[p, i, o] x[i, (t + p) mod n]``
acts on the DFT of its input frequency by frequency,
``z_hat[f] = x_hat[f] @ T[f]`` with ``T[f] = sum_p K[p] exp(+2 pi i <f, p / n>)``
(Sedghi, Gupta & Long, 2019, Theorem 6). The rest is bookkeeping:

- dilation spreads the taps apart before the transform;
- groups make ``T[f]`` block diagonal: one ``(in/groups) x (out/groups)``
  block per group;
- a stride ``s`` keeps every ``s``-th output, which folds the ``s^d``
  frequencies ``g + j n/s`` onto output frequency ``g``: with unitary DFTs the
  layer is block diagonal over ``g`` with blocks
  ``A[g] = [T[g + j n/s] for j] / sqrt(s^d)``, of size ``(s^d in) x out``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._layout import ConvSpec
from ._lib import Array, Namespace, complex_dtype, interleave_zeros, pad_axis


def dilate(kernel: Array, dilation: Sequence[int], xp: Namespace) -> Array:
    """Spread a spatial-first kernel's taps ``dilation`` apart (zeros between them)."""
    for axis, d in enumerate(dilation):
        span = (*(slice(None),) * axis, slice(0, (kernel.shape[axis] - 1) * d + 1), ...)
        kernel = interleave_zeros(kernel, axis, d, xp)[span]
    return kernel


def fold(kernel: Array, grid: Sequence[int], xp: Namespace) -> Array:
    """Wrap a spatial-first kernel onto the ``grid`` torus.

    Taps whose offsets agree modulo ``n`` act on the same input position and
    are summed; a kernel smaller than the grid is zero-padded. (``fftn(s=n)``
    would crop a larger kernel instead, which is wrong.)
    """
    for axis, n in enumerate(grid):
        k = kernel.shape[axis]
        periods = -(-k // n)
        kernel = pad_axis(kernel, axis, 0, periods * n - k, xp)
        if periods > 1:
            split = (*kernel.shape[:axis], periods, n, *kernel.shape[axis + 1 :])
            kernel = xp.sum(xp.reshape(kernel, split), axis=axis)
    return kernel


def grouped(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*k, in/G, out)`` -> ``(*k, G, in/G, out/G)``: the group as a batch axis."""
    d = spec.ndim
    split = xp.reshape(kernel, (*kernel.shape[:d], spec.group_in, spec.groups, spec.group_out))
    return xp.permute_dims(split, (*range(d), d + 1, d, d + 2))


def ungrouped(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*k, G, in/G, out/G)`` -> ``(*k, in/G, out)``: inverse of :func:`grouped`."""
    d = spec.ndim
    merged = xp.permute_dims(kernel, (*range(d), d + 1, d, d + 2))
    return xp.reshape(merged, (*kernel.shape[:d], spec.group_in, spec.out_channels))


def transfer_matrices(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The ``(*grid, G, in/G, out/G)`` matrices ``T[f]`` of a spatial-first kernel (stride 1)."""
    spread = fold(dilate(kernel, spec.dilation, xp), spec.grid, xp)
    spread = xp.astype(grouped(spread, spec, xp), complex_dtype(xp, kernel.dtype))
    # norm="forward" leaves the inverse transform unscaled: exactly sum_p K[p] e^{+2 pi i f p / n}.
    return xp.fft.ifftn(spread, axes=tuple(range(spec.ndim)), norm="forward")


def to_blocks(matrices: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``T`` on the grid -> the strided layer's blocks ``(*grid/stride, G, prod(stride) in/G, out/G)``.

    Frequency ``f = j * m + g`` on an axis of ``s * m`` points (C order) aliases
    onto output frequency ``g``.
    """
    if spec.phases == 1:
        return matrices
    d = spec.ndim
    split = xp.reshape(
        matrices,
        (*(x for s, m in zip(spec.stride, spec.freq_grid, strict=True) for x in (s, m)), *matrices.shape[d:]),
    )
    # (s1, m1, ..., sd, md, G, i, o) -> (m1..md, G, s1..sd, i, o)
    order = (*range(1, 2 * d, 2), 2 * d, *range(0, 2 * d, 2), 2 * d + 1, 2 * d + 2)
    blocks = xp.reshape(
        xp.permute_dims(split, order),
        (*spec.freq_grid, spec.groups, spec.phases * spec.group_in, spec.group_out),
    )
    return blocks / math.sqrt(spec.phases)


def from_blocks(blocks: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """Inverse of :func:`to_blocks`."""
    if spec.phases == 1:
        return blocks
    d = spec.ndim
    split = xp.reshape(
        blocks * math.sqrt(spec.phases),
        (*spec.freq_grid, spec.groups, *spec.stride, spec.group_in, spec.group_out),
    )
    # (m1..md, G, s1..sd, i, o) -> (s1, m1, ..., sd, md, G, i, o)
    order = (*(x for a in range(d) for x in (d + 1 + a, a)), d, 2 * d + 1, 2 * d + 2)
    return xp.reshape(xp.permute_dims(split, order), (*spec.grid, spec.groups, spec.group_in, spec.group_out))


def layer_blocks(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The circular layer's per-frequency blocks, ``(*freq_grid, G, prod(stride) in/G, out/G)``."""
    return to_blocks(transfer_matrices(kernel, spec, xp), spec, xp)


def kernel_from_blocks(blocks: Array, spec: ConvSpec, real: bool, xp: Namespace) -> Array:
    """The full-grid spatial-first kernel ``(*grid, in/G, out)`` of the layer with these blocks.

    Inverts :func:`layer_blocks` for dilation 1: ``K[p] = (1/N) sum_f T[f] e^{-2 pi i <f, p / n>}``.
    """
    full = xp.fft.fftn(from_blocks(blocks, spec, xp), axes=tuple(range(spec.ndim)), norm="forward")
    return ungrouped(xp.real(full) if real else full, spec, xp)


def finite_or_zero(matrices: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(finite, safe)``: which matrices are all-finite, and the batch with the others zeroed.

    LAPACK and cuSOLVER may raise or hang on non-finite input, so those
    matrices are zeroed before a decomposition and their results marked NaN
    afterwards: propagated rather than raised, which also works under ``jax.jit``.
    """
    finite = xp.all(xp.isfinite(matrices), axis=(-2, -1))
    return finite, xp.where(finite[..., None, None], matrices, xp.zeros_like(matrices))


def nan_where_not(finite: Array, values: Array, xp: Namespace) -> Array:
    """``values`` with NaN wherever ``finite`` (broadcast from the left) is false."""
    mask = xp.reshape(finite, (*finite.shape, *(1,) * (values.ndim - finite.ndim)))
    return xp.where(mask, values, xp.full_like(values, float("nan")))


def matrix_singular_values(matrices: Array, xp: Namespace) -> Array:
    """Batched singular values (descending), NaN for any matrix with a non-finite entry.

    A matrix with one row or column has one singular value, its norm: no SVD
    (the depthwise case).
    """
    if min(matrices.shape[-2:]) == 1:
        return xp.linalg.vector_norm(matrices, axis=(-2, -1), keepdims=True)[..., 0]
    finite, safe = finite_or_zero(matrices, xp)
    return nan_where_not(finite, xp.linalg.svdvals(safe), xp)


def spectrum_rows(values: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*freq_grid, G, r)`` block singular values -> ``(*freq_grid, G r)``, each row descending."""
    rows = xp.reshape(values, (*spec.freq_grid, spec.groups * values.shape[-1]))
    return xp.flip(xp.sort(rows, axis=-1), axis=-1) if spec.groups > 1 else rows
