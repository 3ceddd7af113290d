"""The layer as an operator: its dense matrix, and its action and adjoint matrix-free.

Zero padding breaks the circulant structure, so its singular values are found
from the layer's action alone (:mod:`convsv._lanczos`): the map is embedded in
the padded grid, convolved circularly there by FFT (with no wrap-around, the
grid is large enough), then strided and cropped; its adjoint does the reverse.
Small layers use the framework's own convolution or a sum of per-tap products.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from ._layout import ConvSpec, working_kernel
from ._lib import (
    Array,
    Namespace,
    compiled_for_jax,
    contiguous,
    device_of,
    framework_convolution,
    full_precision,
    interleave_zeros,
    pad_axis,
)
from ._lib.dtensor import whole_dtensor_kernel
from ._spectrum import fold, grouped, transfer_matrices


def _positions(shape: Sequence[int], xp: Namespace, device: Any) -> list[Array]:
    """Per-axis coordinates of every position of ``shape``, flattened in C order."""
    flat = xp.arange(math.prod(shape), device=device)
    coords, stride = [], math.prod(shape)
    for n in shape:
        stride //= n
        coords.append((flat // stride) % n)
    return coords


def ungrouped_kernel(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*k, in/G, out)`` -> ``(*k, in, out)`` with zeros between groups (block diagonal)."""
    if spec.groups == 1:
        return kernel
    d = spec.ndim
    blocks = grouped(kernel, spec, xp)  # (*k, G, i, o)
    eye = xp.eye(spec.groups, dtype=kernel.dtype, device=device_of(kernel))
    full = blocks[..., None, :] * eye[:, None, :, None]  # (*k, G_in, i, G_out, o)
    return xp.reshape(full, (*kernel.shape[:d], spec.in_channels, spec.out_channels))


def forward_matrix(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The forward convolution's dense matrix, ``(out * N_out, in * N_in)``."""
    device = device_of(kernel)
    # Output r reads position r * stride + p of the torus `grid`; input q sits at q + before. With
    # zero padding the padded map (not rounded up to the stride) is large enough that no read wraps.
    if spec.pads is None:
        grid, before = spec.grid, (0,) * spec.ndim
    else:
        grid = tuple(n + a + b for n, (a, b) in zip(spec.conv_input, spec.pads, strict=True))
        before = tuple(a for a, _ in spec.pads)
    full = fold(ungrouped_kernel(kernel, spec, xp), grid, xp, spec.dilation)
    full = xp.reshape(full, (math.prod(grid), spec.in_channels, spec.out_channels))
    rows, cols = _positions(spec.conv_output, xp, device), _positions(spec.conv_input, xp, device)
    offset = xp.zeros((rows[0].shape[0], cols[0].shape[0]), dtype=rows[0].dtype, device=device)
    grid_stride = math.prod(grid)
    for r, q, s, b, n in zip(rows, cols, spec.stride, before, grid, strict=True):
        grid_stride //= n
        offset = offset + ((q[None, :] + b - r[:, None] * s) % n) * grid_stride
    taps = xp.take(full, xp.reshape(offset, (-1,)), axis=0)
    taps = xp.reshape(taps, (*offset.shape, spec.in_channels, spec.out_channels))
    # (r, q, i, o) -> (o, r, i, q)
    taps = xp.permute_dims(taps, (3, 0, 2, 1))
    return xp.reshape(taps, (spec.out_channels * offset.shape[0], spec.in_channels * offset.shape[1]))


@whole_dtensor_kernel(reshard=False)
@full_precision
@compiled_for_jax
def dense_matrix(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """:func:`conv_matrix` of ``kernel`` (in ``spec``'s layout), transposed layers included."""
    matrix = forward_matrix(working_kernel(kernel, spec, xp), spec, xp)
    return xp.matrix_transpose(matrix) if spec.transposed else matrix


# --- the zero-padded layer, matrix-free --------------------------------------------------------------


def _pad_or_crop(x: Array, axis: int, before: int, after: int, xp: Namespace) -> Array:
    """``x`` with zeros added (positive) or entries removed (negative) at both ends of ``axis``."""
    x = pad_axis(x, axis, max(before, 0), max(after, 0), xp)
    if before < 0 or after < 0:
        keep = slice(max(-before, 0), x.shape[axis] - max(-after, 0))
        x = x[(slice(None),) * axis + (keep, Ellipsis)]
    return x


#: Most entries of gathered windows (im2col columns) per matrix product of the composed convolution.
GATHERED_ENTRIES = 2**22


def _tap_chunks(taps: int, entries_per_tap: int) -> list[range]:
    """Consecutive taps whose gathered windows together hold at most ``GATHERED_ENTRIES`` entries.

    All taps in one product (im2col) where they fit, which matters when the
    channels are few (a 7x7 RGB layer: products with 3 rows each, one per
    tap, spend their time writing outputs); fewer, down to one, on large maps.
    """
    step = max(1, GATHERED_ENTRIES // max(entries_per_tap, 1))
    return [range(t, min(t + step, taps)) for t in range(0, taps, step)]


def _correlate(
    x: Array,
    kernel: Array,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    out: Sequence[int],
    xp: Namespace,
) -> Array:
    """``y[r] = sum_p x[r * stride + p * dilation] @ K[p]``: ``(B, G, c, *P)`` -> ``(B, G, o, *out)``.

    ``kernel`` is ``(G, taps * c, o)``, the taps of ``kernel_size`` in C
    order. The windows of a chunk of taps, gathered by strided slices, are
    laid side by side and multiplied at once.
    """
    d = len(out)
    batch, groups, channels = x.shape[:3]
    rows = math.prod(out)
    last = xp.permute_dims(x, (0, 1, *range(3, 3 + d), 2))  # channels last: (B, G, *P, c)
    taps = list(itertools.product(*(range(k) for k in kernel_size)))
    total = None
    for chunk in _tap_chunks(len(taps), batch * groups * rows * channels):
        windows = []
        for t in chunk:
            spans = zip(taps[t], dilation, out, stride, strict=True)
            window = (
                slice(None),
                slice(None),
                *(slice(p * r, p * r + (m - 1) * s + 1, s) for p, r, m, s in spans),
                slice(None),
            )
            windows.append(xp.reshape(last[window], (batch, groups, rows, channels)))
        gathered = xp.concat(windows, axis=-1) if len(windows) > 1 else windows[0]
        term = gathered @ kernel[:, chunk.start * channels : chunk.stop * channels, :]
        total = term if total is None else total + term
    assert total is not None
    total = xp.reshape(total, (batch, groups, *out, total.shape[-1]))
    return xp.permute_dims(total, (0, 1, d + 2, *range(2, d + 2)))


def _spread(
    y: Array,
    kernel: Array,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    before: Sequence[int],
    out: Sequence[int],
    xp: Namespace,
) -> Array:
    """The adjoint of :func:`_correlate`: ``x[r * stride + p * dilation - before] += y[r] @ K[p]^H``.

    ``(B, G, o, *m)`` -> ``(B, G, i, *out)`` with ``kernel`` ``(G, o, taps * i)``
    (the conjugated, transposed taps side by side). One matrix product per
    chunk of taps at the output's own size; each tap's share lands on the
    positions ``j * stride + phase``: it is shifted on that coarse grid and
    added to its phase's sum, and the phases are interleaved once at the end.
    Nothing is spent on the zeros between strided outputs.
    """
    d = len(out)
    batch, groups, channels = y.shape[:3]
    m = y.shape[3:]
    width = kernel.shape[-1] // math.prod(kernel_size)  # input channels per group
    coarse = [-(-n // s) for n, s in zip(out, stride, strict=True)]  # positions per phase
    last = xp.permute_dims(y, (0, 1, *range(3, 3 + d), 2))  # channels last
    last = xp.reshape(last, (batch, groups, math.prod(m), channels))
    taps = list(itertools.product(*(range(k) for k in kernel_size)))
    sums: dict[tuple[int, ...], Array] = {}
    for chunk in _tap_chunks(len(taps), batch * groups * math.prod(m) * width):
        product = last @ kernel[:, :, chunk.start * width : chunk.stop * width]
        for index, t in enumerate(chunk):
            part = xp.reshape(product[..., index * width : (index + 1) * width], (batch, groups, *m, width))
            phase = []
            for axis, (p, r, s, b, size, c) in enumerate(
                zip(taps[t], dilation, stride, before, m, coarse, strict=True)
            ):
                offset = p * r - b  # output j lands on j * s + offset = (j + shift) * s + phase
                phase.append(offset % s)
                shift = (offset - offset % s) // s
                part = _pad_or_crop(part, axis + 2, shift, c - size - shift, xp)
            key = tuple(phase)
            sums[key] = part if key not in sums else sums[key] + part
    # Interleave the phases, last axis first: position j * s + phase of each axis. A stride longer
    # than the map leaves one position per phase (j = 0), and the phases past the map are cropped:
    # only min(s, n) of them are stacked, not s.
    for axis in reversed(range(d)):
        s, n = stride[axis], out[axis]
        width = min(s, n)
        merged: dict[tuple[int, ...], Array] = {}
        for key in {k[:axis] for k in sums}:
            some = next(v for k, v in sums.items() if k[:axis] == key)
            phases = [sums.get((*key, f), xp.zeros_like(some)) for f in range(width)]
            one = xp.expand_dims(phases[0], axis=axis + 3)
            spread = xp.stack(phases, axis=axis + 3) if width > 1 else one
            shape = (*some.shape[: axis + 2], some.shape[axis + 2] * width, *some.shape[axis + 3 :])
            merged[key] = xp.reshape(spread, shape)[(slice(None),) * (axis + 2) + (slice(0, n), Ellipsis)]
        sums = merged
    total = sums[()]
    return xp.permute_dims(total, (0, 1, d + 2, *range(2, d + 2)))


#: Relative cost of one complex multiply-add of the FFT route's per-frequency products against
#: one real multiply-add of a tap's matrix product (measured with NumPy on a 2-core CPU: they are
#: memory bound, small and batched).
FFT_PRODUCT_COST = 45


def fft_bytes(spec: ConvSpec, dtype: Any, xp: Namespace) -> int:
    """About what the FFT route's per-frequency matrices take on ``spec.grid``, with their copies.

    The transform of the kernel, its half spectrum and the conjugate transposes: four complex arrays
    of ``prod(grid) * in * out / groups`` entries. The direct route needs none of it.
    """
    complex_size = 16 if dtype in (xp.float64, xp.complex128) else 8
    return 4 * math.prod(spec.grid) * spec.in_channels * spec.group_out * complex_size


class PaddedLayer:
    """The zero-padded forward convolution and its adjoint, applied matrix-free.

    Maps are ``(batch, groups, channels per group, *spatial)``: ``apply``
    takes ``(B, G, in / G, *conv_input)`` to ``(B, G, out / G, *conv_output)``
    and ``adjoint`` (the conjugate transpose) back. Groups never mix: each is
    an operator of its own.

    Where the array's framework has a convolution (PyTorch, JAX), it is
    used. Elsewhere the layer is a sum over the taps of matrix products on
    shifted views of the padded map (its adjoint the same sum with the
    flipped, conjugated taps on the output spread out by the stride), or,
    when the kernel has many taps, one product per frequency on the FFT grid
    ``spec.grid``: whichever an operation count says is cheaper, the FFT only
    where its matrices (:func:`fft_bytes`) fit in ``max_memory`` bytes.
    """

    def __init__(self, kernel: Array, spec: ConvSpec, xp: Namespace, max_memory: int | None = None) -> None:
        assert spec.pads is not None
        self.spec, self.xp, self.dtype, self.device = spec, xp, kernel.dtype, device_of(kernel)
        self.pads = spec.pads  # (before, after) per axis: a zero-padded spec always has them
        d, groups = spec.ndim, spec.groups
        self.input_shape = (groups, spec.group_in, *spec.conv_input)
        self.output_shape = (groups, spec.group_out, *spec.conv_output)
        # (out, in / G, *k), laid out in memory so: a permuted view made oneDNN reorder it every call.
        weight = contiguous(xp.permute_dims(kernel, (d + 1, d, *range(d))), xp)
        native = framework_convolution(
            weight, spec.stride, spec.dilation, groups, spec.pads, spec.conv_input, spec.conv_output
        )
        if native is not None:
            self.route = "framework"
            self._forward, self._adjoint = native
        elif self._fft_is_cheaper() and fft_bytes(spec, kernel.dtype, xp) <= (max_memory or math.inf):
            self.route = "fft"
            self._setup_fft(kernel)
        else:
            self.route = "direct"
            taps = grouped(kernel, spec, xp)  # (*k, G, i, o)
            count = math.prod(spec.kernel_size)
            # The taps side by side, in C order: (G, taps * i, o), and conjugated, (G, o, taps * i).
            forward = xp.permute_dims(taps, (d, *range(d), d + 1, d + 2))
            self.taps = contiguous(xp.reshape(forward, (groups, count * spec.group_in, spec.group_out)), xp)
            adjoint = xp.conj(xp.permute_dims(taps, (d, d + 2, *range(d), d + 1)))
            self.adjoint_taps = contiguous(xp.reshape(adjoint, (groups, spec.group_out, -1)), xp)

    def _fft_is_cheaper(self) -> bool:
        spec = self.spec
        channels = spec.in_channels * spec.group_out
        taps = math.prod(spec.kernel_size)
        direct = 2 * taps * channels * math.prod(spec.conv_output)  # forward and adjoint, each output once
        grid = math.prod(spec.grid)
        fft = FFT_PRODUCT_COST * channels * grid + 5 * (spec.in_channels + spec.out_channels) * grid * max(
            1, math.log2(grid)
        )
        return fft < direct

    # -- the routes that compose the convolution from the array API ---------------------------------

    def _setup_fft(self, kernel: Array) -> None:
        xp, spec = self.xp, self.spec
        self.real = not xp.isdtype(kernel.dtype, "complex floating")
        matrices = transfer_matrices(kernel, spec, xp)  # (*grid, G, i, o)
        if self.real:  # the half spectrum of real maps
            half = (slice(0, spec.grid[-1] // 2 + 1), Ellipsis)
            matrices = matrices[(slice(None),) * (spec.ndim - 1) + half]
        self.freq_shape = matrices.shape[: spec.ndim]
        flat = xp.reshape(matrices, (math.prod(self.freq_shape), *matrices.shape[spec.ndim :]))
        self.matrices = contiguous(flat, xp)
        self.adjoint_matrices = contiguous(xp.conj(xp.matrix_transpose(flat)), xp)

    def _fft_product(self, x: Array, matrices: Array) -> Array:
        """Circular correlation on the grid: ``(B, G, c, *grid)`` -> ``(B, G, o, *grid)``."""
        xp, spec = self.xp, self.spec
        axes = tuple(range(3, 3 + spec.ndim))
        spectrum = xp.fft.rfftn(x, axes=axes) if self.real else xp.fft.fftn(x, axes=axes)
        batch, groups, channels = x.shape[:3]
        spectrum = xp.reshape(spectrum, (batch, groups, channels, -1))
        product = xp.permute_dims(spectrum, (3, 1, 0, 2)) @ matrices  # (F, G, B, o)
        product = xp.reshape(xp.permute_dims(product, (2, 1, 3, 0)), (batch, groups, -1, *self.freq_shape))
        if self.real:
            return xp.fft.irfftn(product, s=spec.grid, axes=axes)
        return xp.fft.ifftn(product, axes=axes)

    def _native(self, convolution: Callable[[Array], Array], x: Array, output_shape: Sequence[int]) -> Array:
        """A framework's convolution on grouped maps: ``(B, G, c, *n)`` as ``(B, G * c, *n)``, and back."""
        batch = x.shape[0]
        flat = self.xp.reshape(x, (batch, -1, *x.shape[3:]))
        return self.xp.reshape(convolution(flat), (batch, *output_shape))

    def apply(self, x: Array) -> Array:
        """``(B, G, in / G, *conv_input)`` -> ``(B, G, out / G, *conv_output)``."""
        xp, spec, pads = self.xp, self.spec, self.pads
        if self.route == "framework":
            return self._native(self._forward, x, self.output_shape)
        for axis, ((before, after), n, g) in enumerate(zip(pads, spec.conv_input, spec.grid, strict=True)):
            if self.route == "fft":
                after = g - n - before
            x = pad_axis(x, axis + 3, before, after, xp)
        if self.route == "direct":
            return _correlate(
                x, self.taps, spec.kernel_size, spec.dilation, spec.stride, spec.conv_output, xp
            )
        z = self._fft_product(x, self.matrices)
        keep = (..., *(slice(0, m * s, s) for m, s in zip(spec.conv_output, spec.stride, strict=True)))
        return z[keep]

    def adjoint(self, y: Array) -> Array:
        """``(B, G, out / G, *conv_output)`` -> ``(B, G, in / G, *conv_input)``."""
        xp, spec = self.xp, self.spec
        if self.route == "framework":
            return self._native(self._adjoint, y, self.input_shape)
        if self.route == "direct":
            before = tuple(a for a, _ in self.pads)
            sizes = (spec.kernel_size, spec.dilation, spec.stride, before, spec.conv_input)
            return _spread(y, self.adjoint_taps, *sizes, xp)
        # Each output back at the position it read first (r * stride), zeros between.
        for axis, s in enumerate(spec.stride):
            y = interleave_zeros(y, axis + 3, s, xp)
        for axis, (g, m, s) in enumerate(zip(spec.grid, spec.conv_output, spec.stride, strict=True)):
            y = pad_axis(y, axis + 3, 0, g - m * s, xp)
        x = self._fft_product(y, self.adjoint_matrices)
        keep = (..., *(slice(b, b + n) for (b, _), n in zip(self.pads, spec.conv_input, strict=True)))
        return x[keep]
