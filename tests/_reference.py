"""Independent NumPy ground truth, written from the formulas, not from convsv.

Nothing here imports convsv: these are the routes the library is checked
against.
"""

from __future__ import annotations

import math

import numpy as np


def circular_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``y[o, r] = sum_i sum_p K[p, i, o] * x[i, (r + p) mod n]``, written out.

    ``x`` is ``(..., c_in, *n)``, ``kernel`` is spatial-first
    ``(*k, c_in, c_out)``; returns ``(..., c_out, *n)``. ``np.roll`` by ``-p``
    puts ``x[r + p]`` at ``r`` for any ``p``, including offsets beyond the map
    (wrap-around).
    """
    d = kernel.ndim - 2
    spatial = "xyz"[:d]
    y = np.zeros((*x.shape[: -d - 1], kernel.shape[-1], *x.shape[-d:]), dtype=np.result_type(x, kernel))
    for p in np.ndindex(*kernel.shape[:d]):
        shifted = np.roll(x, shift=[-q for q in p], axis=tuple(range(-d, 0)))
        y += np.einsum(f"io,...i{spatial}->...o{spatial}", kernel[p], shifted)
    return y


def dense_matrix(kernel: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """The layer's matrix, column by column: the convolution of each basis vector."""
    c_in = kernel.shape[-2]
    size = c_in * math.prod(input_shape)
    basis = np.eye(size).reshape(size, c_in, *input_shape)
    return circular_conv(basis, kernel).reshape(size, -1).T


def dense_singular_values(kernel: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """All singular values of the dense matrix, in float64/complex128, descending."""
    kernel = kernel.astype(np.complex128 if np.iscomplexobj(kernel) else np.float64)
    return np.linalg.svd(dense_matrix(kernel, input_shape), compute_uv=False)


def frequency_matrix(kernel: np.ndarray, freq: tuple[int, ...], input_shape: tuple[int, ...]) -> np.ndarray:
    """``sum_p K[p] exp(+2 pi i <f, p / n>)`` by an explicit sum over the taps."""
    d = len(input_shape)
    total = np.zeros(kernel.shape[d:], dtype=np.complex128)
    for p in np.ndindex(*kernel.shape[:d]):
        phase = sum(f * q / n for f, q, n in zip(freq, p, input_shape, strict=True))
        total += kernel[p] * np.exp(2j * np.pi * phase)
    return total


def paper_singular_values(kernel: np.ndarray, input_shape: tuple[int, int]) -> np.ndarray:
    """The paper's NumPy two-liner (real 2-D HWIO kernels no larger than the map)."""
    transforms = np.fft.fft2(kernel, input_shape, axes=[0, 1])
    return np.linalg.svd(transforms, compute_uv=False)


def to_hwio(kernel: np.ndarray, layout: str) -> np.ndarray:
    """A PyTorch-layout (out, in, *spatial) kernel in spatial-first order."""
    if layout.startswith("OI"):
        d = kernel.ndim - 2
        return np.transpose(kernel, (*range(2, d + 2), 1, 0))
    return kernel


def paper_clip(kernel: np.ndarray, input_shape: tuple[int, ...], clip_to: float) -> np.ndarray:
    """One step of the paper's projection (Appendix A), for spatial-first kernels of any rank.

    FFT over the spatial axes onto the map, SVD per frequency, clip the
    singular values, transform back, keep the real part, crop to the kernel.
    """
    d = len(input_shape)
    transforms = np.fft.fftn(kernel, input_shape, axes=list(range(d)))
    u, s, vh = np.linalg.svd(transforms, compute_uv=True, full_matrices=False)
    clipped = np.matmul(u * np.minimum(s, clip_to)[..., None, :], vh)
    full = np.fft.ifftn(clipped, axes=list(range(d)))
    if not np.iscomplexobj(kernel):
        full = full.real
    return full[tuple(slice(k) for k in kernel.shape[:d])]


def dense_clip(matrix: np.ndarray, max_norm: float, min_norm: float | None = None) -> np.ndarray:
    """Proposition 9: the Frobenius-nearest matrix with singular values in [min_norm, max_norm]."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return (u * np.clip(s, min_norm, max_norm)) @ vh


def kernel_of_dense(matrix: np.ndarray, input_shape: tuple[int, ...], c_in: int, c_out: int) -> np.ndarray:
    """Read the full-grid spatial-first kernel off a circular layer's dense matrix.

    Row ``o * N`` (output position 0) holds ``F[p, i, o]`` at column ``i * N + p``.
    """
    n = math.prod(input_shape)
    rows = matrix.reshape(c_out, n, c_in, n)[:, 0]  # (o, i, p)
    return np.transpose(rows, (2, 1, 0)).reshape(*input_shape, c_in, c_out)


def layer_output_shape(input_shape, ksize, stride, dilation, pads):
    """Output map of a convolution: ``n / s`` (circular) or the zero-padded formula."""
    span = [(k - 1) * d + 1 for k, d in zip(ksize, dilation, strict=True)]
    if pads is None:
        return tuple(n // s for n, s in zip(input_shape, stride, strict=True))
    return tuple(
        (n + a + b - w) // s + 1 for n, (a, b), w, s in zip(input_shape, pads, span, stride, strict=True)
    )


def general_conv(x, kernel, *, stride, dilation, groups, pads):
    """Any convolution, written out tap by tap from its definition.

    ``x`` is ``(batch, c_in, *n)``; ``kernel`` is spatial-first
    ``(*k, c_in / groups, c_out)``; ``pads`` is None for circular padding or
    ``((before, after), ...)`` zeros. Output channel ``o`` of group
    ``g = o // (c_out / groups)`` reads input channels of that group only:
    ``y[o, r] = sum_p sum_i K[p, i, o] x_padded[g * c_in/groups + i, r * s + p * d]``,
    indices taken modulo ``n`` for circular padding.
    """
    d = kernel.ndim - 2
    ksize = kernel.shape[:d]
    if pads is not None:
        x = np.pad(x, [(0, 0), (0, 0), *pads])
    n = x.shape[2:]
    out = layer_output_shape(n, ksize, stride, dilation, None if pads is None else [(0, 0)] * d)
    group_in, c_out = kernel.shape[-2], kernel.shape[-1]
    group_out = c_out // groups
    y = np.zeros((x.shape[0], c_out, *out), dtype=np.result_type(x, kernel))
    for p in np.ndindex(*ksize):
        index = [np.arange(m) * s + q * dil for m, s, q, dil in zip(out, stride, p, dilation, strict=True)]
        if pads is None:
            index = [i % size for i, size in zip(index, n, strict=True)]
        patch = x[(slice(None), slice(None), *np.ix_(*index))]  # (batch, c_in, *out)
        for g in range(groups):
            inputs = patch[:, g * group_in : (g + 1) * group_in]
            weights = kernel[p][:, g * group_out : (g + 1) * group_out]
            y[:, g * group_out : (g + 1) * group_out] += np.einsum("io,bi...->bo...", weights, inputs)
    return y


def general_dense(kernel, input_shape, *, stride, dilation, groups, pads):
    """The dense matrix of :func:`general_conv`, column by column."""
    c_in = kernel.shape[-2] * groups
    size = c_in * math.prod(input_shape)
    basis = np.eye(size).reshape(size, c_in, *input_shape)
    y = general_conv(basis, kernel, stride=stride, dilation=dilation, groups=groups, pads=pads)
    return y.reshape(size, -1).T
