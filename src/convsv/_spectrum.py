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
from collections.abc import Iterator, Sequence

from ._layout import ConvSpec
from ._lib import (
    Array,
    Namespace,
    batch_map,
    complex_dtype,
    device_of,
    interleave_zeros,
    pad_axis,
    start_vector,
    while_loop,
)


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
    """The ``(*grid, G, in/G, out/G)`` matrices ``T[f]`` of a spatial-first kernel (stride 1), by FFT."""
    spread = fold(dilate(kernel, spec.dilation, xp), spec.grid, xp)
    spread = xp.astype(grouped(spread, spec, xp), complex_dtype(xp, kernel.dtype))
    # norm="forward" leaves the inverse transform unscaled: exactly sum_p K[p] e^{+2 pi i f p / n}.
    return xp.fft.ifftn(spread, axes=tuple(range(spec.ndim)), norm="forward")


# --- the spectrum in rows -----------------------------------------------------
#
# The blocks are computed a few rows of the first output-frequency axis at a
# time: the other axes are transformed once by FFT (a slab only k_1 taps
# deep), and the first by a small DFT matrix for just the rows wanted. That
# bounds memory by the rows in flight, and for a real kernel lets the work
# stop at the first half of the rows: its blocks at -f are the conjugates of
# those at f (rows permuted), with the same singular values.


def half_rows(spec: ConvSpec, real: bool) -> int:
    """How many first-axis output-frequency rows determine the spectrum: ``m // 2 + 1`` if real."""
    m = spec.freq_grid[0]
    return m // 2 + 1 if real else m


def row_weights(rows: range, spec: ConvSpec, real: bool, like: Array, xp: Namespace) -> Array:
    """How many rows of the full spectrum each row stands for: 2, or 1 for a self-conjugate row.

    Built on ``like``'s device from ``arange`` (a list would be a host-to-device copy).
    """
    m = spec.freq_grid[0]
    g = xp.arange(rows.start, rows.stop, device=device_of(like))
    one = xp.ones(g.shape, dtype=xp.real(like).dtype, device=device_of(like))
    return one if not real else xp.where((g == 0) | (2 * g == m), one, 2 * one)


def partial_transfer(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The kernel transformed along every spatial axis but the first: ``(k_1, *grid[1:], G, in/G, out/G)``."""
    rest = (1, *spec.dilation[1:])
    spread = fold(dilate(kernel, rest, xp), (kernel.shape[0], *spec.grid[1:]), xp)
    spread = xp.astype(grouped(spread, spec, xp), complex_dtype(xp, kernel.dtype))
    if spec.ndim == 1:
        return spread
    return xp.fft.ifftn(spread, axes=tuple(range(1, spec.ndim)), norm="forward")


def _first_axis_phases(
    rows: range, spec: ConvSpec, taps: int, spacing: int, like: Array, xp: Namespace
) -> Array:
    """``exp(2 pi i f p / n)``: input frequencies ``f`` of output ``rows``, taps at ``p = spacing * t``.

    Input frequency ``j m + g`` aliases onto output row ``g``; the rows come
    ordered ``(j, g)``, as :func:`to_blocks` expects. Taps past ``n`` wrap
    around (the phase is periodic), which is the fold.
    """
    n, m, s = spec.grid[0], spec.freq_grid[0], spec.stride[0]
    device = device_of(like)
    freqs = xp.reshape(
        xp.arange(s, device=device)[:, None] * m + xp.arange(rows.start, rows.stop, device=device), (-1,)
    )
    positions = xp.arange(taps, device=device) * spacing
    # Reduce modulo n in integers, so the angles are exact before the float multiply.
    turns = (freqs[:, None] * positions[None, :]) % n
    angle = xp.astype(turns, xp.real(like).dtype) * (2 * math.pi / n)
    return xp.astype(xp.cos(angle), like.dtype) + 1j * xp.astype(xp.sin(angle), like.dtype)


def row_blocks(partial: Array, rows: range, spec: ConvSpec, xp: Namespace) -> Array:
    """The circular layer's blocks for output ``rows`` of the first axis.

    Shape ``(len(rows), *freq_grid[1:], G, prod(stride) in/G, out/G)``.
    """
    phases = _first_axis_phases(rows, spec, spec.kernel_size[0], spec.dilation[0], partial, xp)
    flat = xp.reshape(partial, (partial.shape[0], math.prod(partial.shape[1:])))
    # inf * 0 in the product would warn; NaN propagates quietly to every block, as an FFT's would.
    flat = xp.where(xp.isinf(flat), xp.full_like(flat, float("nan")), flat)
    return to_blocks(xp.reshape(phases @ flat, (phases.shape[0], *partial.shape[1:])), spec, xp)


def kernel_from_rows(
    blocks: Array, rows: range, spec: ConvSpec, target: ConvSpec, real: bool, xp: Namespace
) -> Array:
    """These rows' share of the kernel with blocks ``blocks``, on ``target``'s first-axis taps.

    ``K[p] = (1/N) sum_f T[f] e^{-2 pi i <f, p / n>}``; summed over every row
    chunk (a row of a real kernel's half spectrum counting with its mirror,
    see :func:`row_weights`), then passed to :func:`finish_kernel`. Returns
    ``(taps_1, *grid[1:], G, in/G, out/G)``.
    """
    matrices = from_blocks(blocks, spec, xp)
    if spec.ndim > 1:
        matrices = xp.fft.fftn(matrices, axes=tuple(range(1, spec.ndim)), norm="forward")
    phases = _first_axis_phases(rows, spec, target.kernel_size[0], target.dilation[0], matrices, xp)
    weights = xp.concat([row_weights(rows, spec, real, matrices, xp)] * spec.stride[0]) / spec.grid[0]
    flat = xp.reshape(matrices, (matrices.shape[0], math.prod(matrices.shape[1:])))
    share = xp.matrix_transpose(xp.conj(phases) * xp.astype(weights, matrices.dtype)[:, None]) @ flat
    return xp.reshape(share, (share.shape[0], *matrices.shape[1:]))


def finish_kernel(total: Array, spec: ConvSpec, target: ConvSpec, real: bool, xp: Namespace) -> Array:
    """Summed :func:`kernel_from_rows` -> the spatial-first kernel ``(*target.kernel_size, in/G, out)``."""
    if real:
        total = xp.real(total)
    taps = (
        slice(None),
        *(slice(0, w, d) for w, d in zip(target.dilated_size[1:], target.dilation[1:], strict=True)),
        ...,
    )
    return ungrouped(total[taps], spec, xp)


def row_chunks(
    spec: ConvSpec, real: bool, itemsize: int, chunk_size: int | None, max_memory: int | None
) -> list[range]:
    """The first-axis output rows to compute, in chunks.

    At most ``chunk_size`` frequencies or about ``max_memory`` bytes of
    blocks in flight per chunk, never less than one row.
    """
    rows = half_rows(spec, real)
    per_row = math.prod(spec.freq_grid[1:])
    step = rows
    if chunk_size is not None:
        step = min(step, max(1, chunk_size // per_row))
    if max_memory is not None:
        # The transformed rows, their blocks, and the decomposition's copy and workspace.
        row_bytes = 4 * per_row * spec.phases * spec.in_channels * spec.group_out * itemsize
        step = min(step, max(1, max_memory // row_bytes))
    return [range(a, min(a + step, rows)) for a in range(0, rows, step)]


def blocks_by_rows(
    kernel: Array, spec: ConvSpec, xp: Namespace, chunk_size: int | None, max_memory: int | None
) -> Iterator[tuple[range, Array]]:
    """``(rows, blocks)`` chunk by chunk over the rows that determine the spectrum (half, if real)."""
    real = not xp.isdtype(kernel.dtype, "complex floating")
    partial = partial_transfer(kernel, spec, xp)
    itemsize = 8 if partial.dtype == xp.complex64 else 16
    for rows in row_chunks(spec, real, itemsize, chunk_size, max_memory):
        yield rows, row_blocks(partial, rows, spec, xp)


def mirror_rows(values: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """Per-frequency values on the half rows ``(m // 2 + 1, *freq_grid[1:], ...)`` -> the full grid.

    A real kernel's block at ``-f`` has the singular values of the one at ``f``.
    """
    m = spec.freq_grid[0]
    if values.shape[0] == m:
        return values
    device = device_of(values)
    rest = xp.take(values, xp.arange(m - values.shape[0], 0, -1, device=device), axis=0)
    for axis, size in enumerate(spec.freq_grid[1:], start=1):
        rest = xp.take(rest, (size - xp.arange(size, device=device)) % size, axis=axis)
    return xp.concat([values, rest], axis=0)


def to_blocks(matrices: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``T`` on the grid (or rows of it) -> the strided layer's blocks.

    Shape ``(*grid/stride, G, prod(stride) in/G, out/G)``.

    Frequency ``f = j * m + g`` on an axis of ``s * m`` points (C order) aliases
    onto output frequency ``g``.
    """
    if spec.phases == 1:
        return matrices
    d = spec.ndim
    freqs = [n // s for n, s in zip(matrices.shape[:d], spec.stride, strict=True)]
    split = xp.reshape(
        matrices,
        (*(x for s, m in zip(spec.stride, freqs, strict=True) for x in (s, m)), *matrices.shape[d:]),
    )
    # (s1, m1, ..., sd, md, G, i, o) -> (m1..md, G, s1..sd, i, o)
    order = (*range(1, 2 * d, 2), 2 * d, *range(0, 2 * d, 2), 2 * d + 1, 2 * d + 2)
    blocks = xp.reshape(
        xp.permute_dims(split, order),
        (*freqs, spec.groups, spec.phases * spec.group_in, spec.group_out),
    )
    return blocks / math.sqrt(spec.phases)


def from_blocks(blocks: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """Inverse of :func:`to_blocks`."""
    if spec.phases == 1:
        return blocks
    d = spec.ndim
    freqs = blocks.shape[:d]
    split = xp.reshape(
        blocks * math.sqrt(spec.phases),
        (*freqs, spec.groups, *spec.stride, spec.group_in, spec.group_out),
    )
    # (m1..md, G, s1..sd, i, o) -> (s1, m1, ..., sd, md, G, i, o)
    order = (*(x for a in range(d) for x in (d + 1 + a, a)), d, 2 * d + 1, 2 * d + 2)
    grid = [m * s for m, s in zip(freqs, spec.stride, strict=True)]
    return xp.reshape(xp.permute_dims(split, order), (*grid, spec.groups, spec.group_in, spec.group_out))


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
    return nan_where_not(finite, batch_map(xp.linalg.svdvals, safe, xp), xp)


def small_gram(matrices: Array, xp: Namespace) -> Array:
    """``A^H A`` or ``A A^H``, whichever is smaller: its eigenvalues are the squared singular values."""
    adjoint = xp.conj(xp.matrix_transpose(matrices))
    r, c = matrices.shape[-2:]
    return adjoint @ matrices if c <= r else matrices @ adjoint


def top_singular_values(matrices: Array, xp: Namespace) -> Array:
    """Each matrix's largest singular value, from the largest eigenvalue of its smaller Gram matrix.

    The top eigenvalue of the Gram matrix is well conditioned (its absolute
    error is round-off times itself), so this is the SVD's value to
    round-off, and a Hermitian eigensolver on ``min(r, c)`` rows is cheaper
    than an SVD. (Small singular values would lose accuracy: not used here.)
    """
    if min(matrices.shape[-2:]) == 1:
        return xp.linalg.vector_norm(matrices, axis=(-2, -1))
    finite, safe = finite_or_zero(matrices, xp)
    top = batch_map(lambda m: xp.linalg.eigvalsh(small_gram(m, xp))[..., -1], safe, xp)
    return nan_where_not(finite, xp.sqrt(xp.clip(top, min=0)), xp)


def _rayleigh(gram: Array, vectors: Array, xp: Namespace) -> Array:
    """``v^H G v / v^H v`` for a batch of Hermitian matrices and column vectors ``(..., c, 1)``."""
    num = xp.real(xp.sum(xp.conj(vectors) * (gram @ vectors), axis=(-2, -1)))
    den = xp.sum(xp.abs(vectors) ** 2, axis=(-2, -1))
    return num / xp.clip(den, min=xp.finfo(den.dtype).smallest_normal)  # 0 for a zero vector


def gram_iteration_bounds(
    matrices: Array, floor: Array, tol: float, steps: int, xp: Namespace
) -> tuple[Array, Array]:
    """Certified ``(lower, upper)`` on the largest singular value of a batch, by Gram iteration.

    With ``G = small_gram(A)`` and ``sigma^2 = lambda_max(G)``,
    ``sigma <= ||G^(2^t)||_F^(1 / 2^(t+1))`` for every ``t`` (Delattre et al.,
    ICML 2023): each step squares the (rescaled) matrix. The lower bound is
    the Rayleigh quotient of the heaviest column of ``G^(2^t)``, which turns
    to the top singular vector. The squaring stops once the largest upper
    bound is within ``tol`` of the larger of ``floor`` and the largest lower
    bound (``floor``: a norm already attained elsewhere), or after ``steps``.
    """
    finite, safe = finite_or_zero(matrices, xp)
    gram = small_gram(safe, xp)
    real = xp.real(gram).dtype
    tiny = xp.finfo(real).smallest_normal

    def normalized(power: Array) -> tuple[Array, Array]:
        norm = xp.clip(xp.linalg.matrix_norm(power, ord="fro"), min=tiny)
        return power / xp.astype(norm, power.dtype)[..., None, None], xp.log(norm)

    def bounds(power: Array, log_upper: Array) -> tuple[Array, Array]:
        column = xp.argmax(xp.sum(xp.abs(power) ** 2, axis=-2), axis=-1)
        one_hot = xp.arange(power.shape[-1], device=device_of(power)) == column[..., None]
        lower = xp.sqrt(
            xp.clip(_rayleigh(gram, power @ xp.astype(one_hot, power.dtype)[..., None], xp), min=0)
        )
        upper = xp.where(lower > 0, xp.exp(log_upper), lower)  # a zero matrix: both 0
        return nan_where_not(finite, lower, xp), nan_where_not(finite, upper, xp)

    def settled(power: Array, log_upper: Array) -> Array:
        lower, upper = bounds(power, log_upper)
        return xp.max(upper) <= (1 + tol) * xp.maximum(xp.max(lower), floor)

    # State: G^(2^t) / ||G^(2^t)||_F, log of the bound ||G^(2^t)||_F^(1/2^(t+1)), 2^-(t+1), t, done.
    def step(state: tuple[Array, Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array, Array]:
        power, log_upper, weight, t, _ = state
        power, log_norm = normalized(power @ power)  # Hermitian: its own Gram
        weight = weight / 2
        log_upper = log_upper + weight * log_norm
        return power, log_upper, weight, t + 1, settled(power, log_upper)

    def more(state: tuple[Array, Array, Array, Array, Array]) -> Array:
        return (state[3] < steps) & ~state[4]

    device = device_of(matrices)
    power, log_norm = normalized(gram)
    log_upper = log_norm / 2
    start = (
        power,
        log_upper,
        xp.asarray(0.5, dtype=real, device=device),
        xp.asarray(0, device=device),
        settled(power, log_upper),
    )
    power, log_upper, _, _, _ = while_loop(more, step, start)
    lower, upper = bounds(power, log_upper)
    return xp.max(lower), xp.max(upper)


def power_iteration_norm(matrices: Array, tol: float, steps: int, xp: Namespace) -> Array:
    """The largest singular value of a batch, estimated from below by batched power iteration.

    Each step applies ``A^H A`` (or ``A A^H``, the smaller) to one vector per
    matrix without forming it; the estimate is the largest Rayleigh
    quotient, and the iteration stops once it moves by at most ``tol``
    (relative) in a step: a heuristic, not a certificate.
    """
    finite, safe = finite_or_zero(matrices, xp)
    r, c = safe.shape[-2:]
    adjoint = xp.conj(xp.matrix_transpose(safe))
    first, second = (safe, adjoint) if c <= r else (adjoint, safe)
    size = min(r, c)
    device = device_of(safe)
    start = start_vector(size, xp.real(safe).dtype, xp, device)
    vectors = xp.astype(
        xp.broadcast_to(xp.reshape(start, (size, 1)), (*safe.shape[:-2], size, 1)), safe.dtype
    )

    def apply(v: Array) -> tuple[Array, Array]:
        image = second @ (first @ v)
        value = xp.max(xp.real(xp.sum(xp.conj(v) * image, axis=(-2, -1))))
        norm = xp.linalg.vector_norm(image, axis=(-2, -1), keepdims=True)
        tiny = xp.finfo(norm.dtype).smallest_normal
        return image / xp.astype(xp.clip(norm, min=tiny), image.dtype), value

    def step(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        v, value, t, _ = state
        v, new = apply(v)
        return v, new, t + 1, xp.abs(new - value) <= tol * new

    def more(state: tuple[Array, Array, Array, Array]) -> Array:
        return (state[2] < steps) & ~state[3]

    v, value = apply(vectors)
    state = while_loop(more, step, (v, value, xp.asarray(1, device=device), xp.asarray(False, device=device)))
    value = xp.sqrt(xp.clip(state[1], min=0))
    return xp.where(xp.all(finite), value, xp.full_like(value, float("nan")))


def spectrum_rows(values: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*freq_grid, G, r)`` block singular values -> ``(*freq_grid, G r)``, each row descending."""
    rows = xp.reshape(values, (*spec.freq_grid, spec.groups * values.shape[-1]))
    return xp.flip(xp.sort(rows, axis=-1), axis=-1) if spec.groups > 1 else rows
