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
    pad_axis,
    spread_rows,
    start_vector,
    while_loop,
)
from ._lib.dtensor import rows_share
from ._limits import check_memory


def fold(kernel: Array, grid: Sequence[int], xp: Namespace, dilation: Sequence[int] | None = None) -> Array:
    """Wrap a spatial-first kernel, its taps ``dilation`` apart, onto the ``grid`` torus.

    On an axis of ``n`` points tap ``p`` lands on ``(p * d) mod n``; taps that
    land together act on the same input position and are summed, and the
    positions no tap reaches are zeros. The dilated kernel is never formed:
    memory is that of the kernel and the result, whatever the dilation.
    (``fftn(s=n)`` would crop a kernel larger than the grid instead, which is
    wrong.)
    """
    for axis, n in enumerate(grid):
        d = 1 if dilation is None else dilation[axis]
        kernel = _fold_axis(kernel, axis, n, d, xp)
    return kernel


def _fold_axis(kernel: Array, axis: int, n: int, d: int, xp: Namespace) -> Array:
    k = kernel.shape[axis]
    if (d - 1) % n == 0:  # tap p lands on p mod n: whole periods of n taps, summed
        periods = -(-k // n)
        kernel = pad_axis(kernel, axis, 0, periods * n - k, xp)
        if periods > 1:
            split = (*kernel.shape[:axis], periods, n, *kernel.shape[axis + 1 :])
            kernel = xp.sum(xp.reshape(kernel, split), axis=axis)
        return kernel
    landing: dict[int, list[int]] = {}
    for p in range(k):
        landing.setdefault(p * d % n, []).append(p)

    def taps(first: int, stop: int) -> Array:
        return kernel[(slice(None),) * axis + (slice(first, stop), Ellipsis)]

    def zeros(size: int) -> Array:
        shape = (*kernel.shape[:axis], size, *kernel.shape[axis + 1 :])
        return xp.zeros(shape, dtype=kernel.dtype, device=device_of(kernel))

    # The grid from position 0 up: runs of zeros, then the taps landing on each reached position.
    parts, filled = [], 0
    for position in sorted(landing):
        if position > filled:
            parts.append(zeros(position - filled))
        total = taps(landing[position][0], landing[position][0] + 1)
        for p in landing[position][1:]:
            total = total + taps(p, p + 1)
        parts.append(total)
        filled = position + 1
    if filled < n:
        parts.append(zeros(n - filled))
    return xp.concat(parts, axis=axis) if len(parts) > 1 else parts[0]


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
    spread = fold(kernel, spec.grid, xp, spec.dilation)
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
    spread = fold(kernel, (kernel.shape[0], *spec.grid[1:]), xp, (1, *spec.dilation[1:]))
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
    positions = (xp.arange(taps, device=device) * (spacing % n)) % n  # reduced: no overflow for any dilation
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
    blocks = to_blocks(xp.reshape(phases @ flat, (phases.shape[0], *partial.shape[1:])), spec, xp)
    return spread_rows(blocks)  # (on a mesh: each device makes its share)


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
    blocks in flight per chunk, never less than one row. Of a ``DTensor``
    kernel split over ranks, this rank's share of the rows (see
    :mod:`convsv._lib.dtensor`; the callers combine the shares).
    """
    rows = rows_share(half_rows(spec, real))
    per_row = math.prod(spec.freq_grid[1:])
    step = len(rows)
    if chunk_size is not None:
        step = min(step, max(1, chunk_size // per_row))
    if max_memory is not None:
        step = min(step, max(1, max_memory // (_row_entries(spec) * itemsize)))
    return [range(a, min(a + step, rows.stop)) for a in range(rows.start, rows.stop, step)]


def _row_entries(spec: ConvSpec) -> int:
    """One row's transformed taps, its blocks, and the decomposition's copy and workspace."""
    return 4 * math.prod(spec.freq_grid[1:]) * spec.phases * spec.in_channels * spec.group_out


def unchunked_bytes(spec: ConvSpec, itemsize: int) -> int:
    """What no ``max_memory`` shrinks: :func:`partial_transfer` (and its fold) and one row of blocks.

    ``itemsize`` is the complex dtype's.
    """
    partial = 2 * spec.kernel_size[0] * math.prod(spec.grid[1:]) * spec.group_in * spec.out_channels
    return (partial + _row_entries(spec)) * itemsize


def blocks_by_rows(
    kernel: Array, spec: ConvSpec, xp: Namespace, chunk_size: int | None, max_memory: int | None
) -> Iterator[tuple[range, Array]]:
    """``(rows, blocks)`` chunk by chunk over the rows that determine the spectrum (half, if real).

    What the chunks cannot shrink (:func:`unchunked_bytes`) is checked
    first, against :func:`~convsv._limits.check_memory`'s limit.
    """
    real = not xp.isdtype(kernel.dtype, "complex floating")
    itemsize = 16 if kernel.dtype in (xp.float64, xp.complex128) else 8
    check_memory(unchunked_bytes(spec, itemsize), max_memory, "one row of the frequency matrices", spec)
    partial = partial_transfer(kernel, spec, xp)
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


# --- conjugate pairs within a self-conjugate row ------------------------------
#
# A real kernel's half spectrum stands for row -g by row g, except where
# g = -g (mod m): rows 0 and m/2, which hold both blocks of every pair
# (g, v), (g, -v) themselves, and the frequencies with v = -v, whose blocks
# are their own mirror. Their block at -f is ``P conj(A[f])``, ``P`` a
# permutation of the stride phases.


def self_conjugate_rows(rows: range, spec: ConvSpec) -> list[int]:
    """Offsets within ``rows`` of the first-axis rows ``g`` with ``2 g = 0`` mod ``m``: 0 and ``m / 2``."""
    m = spec.freq_grid[0]
    return [i for i, g in enumerate(rows) if (2 * g) % m == 0]


def mirror_row(values: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """One row's per-frequency values ``(*freq_grid[1:], ...)`` at ``-v``: ``values[(-v) mod m]``."""
    for axis in range(spec.ndim - 1):
        values = xp.roll(xp.flip(values, axis=axis), 1, axis=axis)
    return values


def conjugate_phases(blocks: Array, zero_row: bool, spec: ConvSpec, xp: Namespace) -> Array:
    """``P A``: a self-conjugate row's blocks ``(*lead, G, phases in/G, out/G)`` with the phases permuted.

    Row ``j`` of a block holds input frequency ``g + j m`` (per axis, the
    phase axes in C order); ``-(g + j m)`` is row ``-j mod s`` of ``-g`` when
    ``g = 0``, else row ``s - 1 - j``. So ``conj(A[-f]) = P A[f]``. ``zero_row``
    says whether the row is ``g = 0``; on the other axes index 0 of ``lead``
    is frequency 0 and every other index a non-zero one (a full row, or its
    self-conjugate frequencies ``(0, m / 2)``). ``P`` is a symmetric permutation.
    """
    if spec.phases == 1:
        return blocks
    lead = blocks.shape[:-3]
    x = xp.reshape(blocks, (*lead, spec.groups, *spec.stride, spec.group_in, blocks.shape[-1]))
    for a, s in enumerate(spec.stride):
        if s == 1:
            continue
        axis = len(lead) + 1 + a
        flipped = xp.flip(x, axis=axis)  # j -> s - 1 - j
        negated = xp.roll(flipped, 1, axis=axis)  # j -> -j mod s
        if a == 0:
            x = negated if zero_row else flipped
        else:
            size = lead[a - 1]
            zero = xp.arange(size, device=device_of(x)) == 0
            zero = xp.reshape(zero, (*(1,) * (a - 1), size, *(1,) * (x.ndim - a)))
            x = xp.where(zero, negated, flipped)
    return xp.reshape(x, blocks.shape)


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
    """The largest singular value of a batch, estimated from below by power iteration on each matrix.

    Each step applies ``G = A^H A`` (or ``A A^H``, the smaller) to one unit
    vector per matrix without forming ``G``; ``||G v||`` is that matrix's
    estimate of ``sigma_max^2``: never above it (up to round-off), and
    rising step by step. The start vectors are pseudo-random and differ from
    matrix to matrix, so a structure shared by the blocks cannot make them
    all miss their top singular vectors.

    A matrix has settled once its last step raised its estimate by at most
    ``tol`` (relative) *and* the rest of its climb, extrapolated as a
    geometric series with the larger of its last two ratios of rises, is at
    most ``tol`` too; a slowly converging matrix (close top singular values)
    rises little per step and does not settle on that alone. It is dropped
    once the certified bound ``sigma_max^2 <= min(||A||_F^2, ||A||_1
    ||A||_inf)`` is at most ``(1 + tol)`` times the best estimate. The loop
    stops when every matrix has settled or been dropped, or after ``steps``
    applications of ``G``; every matrix steps on until then.

    What this guarantees: the result is at most the true value (up to
    round-off), and when the loop stops before ``steps`` every matrix
    looked converged to within ``tol`` in ``sigma^2`` (``tol / 2`` in
    ``sigma``). What it does not: the extrapolation is a heuristic. It can
    be off while several singular values still drive the climb or when the
    rises are at round-off level (float32), and a start vector with almost
    no component along a matrix's top singular vector can settle on a lower
    one before that component has grown (rare with pseudo-random starts, but
    not excluded: only the dense methods are exact). With ``tol = 0`` a
    matrix settles only when its estimate stops changing.
    """
    finite, safe = finite_or_zero(matrices, xp)
    r, c = safe.shape[-2:]
    batch = safe.shape[:-2]
    adjoint = xp.conj(xp.matrix_transpose(safe))
    first, second = (safe, adjoint) if c <= r else (adjoint, safe)
    size = min(r, c)
    real = xp.real(safe).dtype
    device = device_of(safe)
    # sigma_max <= ||A||_F and <= sqrt(||A||_1 ||A||_inf) (Hoelder): a certified bound on each G's top.
    magnitude = xp.abs(safe)
    ceiling = xp.minimum(
        xp.sum(magnitude**2, axis=(-2, -1)),
        xp.max(xp.sum(magnitude, axis=-2), axis=-1) * xp.max(xp.sum(magnitude, axis=-1), axis=-1),
    )
    # One pseudo-random start per matrix (a shared one can miss a structured block's top vector).
    count = math.prod(batch) * size
    noise = start_vector(2 * count if safe.dtype != real else count, real, xp, device)
    v = xp.astype(noise[:count], safe.dtype)
    if safe.dtype != real:
        v = v + 1j * xp.astype(noise[count:], safe.dtype)
    v = xp.reshape(v, (*batch, size, 1)) if size > 1 else xp.ones_like(first[..., :1, :1])  # 1 x 1: any v

    def apply(v: Array) -> tuple[Array, Array]:
        image = second @ (first @ v)
        norm = xp.linalg.vector_norm(image, axis=(-2, -1))  # ||G v||, v a unit vector
        tiny = xp.finfo(real).smallest_normal
        return image / xp.astype(xp.clip(norm, min=tiny), image.dtype)[..., None, None], norm

    # State: unit vectors, estimates of sigma^2, their last two rises, which still count, steps taken.
    def step(state: tuple[Array, ...]) -> tuple[Array, ...]:
        v, value, rise, earlier, active, t = state
        w, new = apply(v)
        latest = xp.abs(new - value)
        # Relative rises (no overflow from squaring). A geometric climb with ratio q has latest q / (1 - q)
        # left: at most tol for q = latest / rise and for q = rise / earlier, in product form.
        scale = xp.clip(new, min=xp.finfo(real).smallest_normal)
        a, b, c = latest / scale, rise / scale, earlier / scale
        settled = (a <= tol) & (a * a <= tol * (b - a)) & (a * b <= tol * (c - b))
        # Every matrix steps on (the batched product costs the same): a settled one can only gain.
        dropped = ceiling <= (1 + tol) * xp.max(new)
        return w, new, latest, rise, active & ~settled & ~dropped, t + 1

    def more(state: tuple[Array, ...]) -> Array:
        return (state[5] < steps) & xp.any(state[4])

    v, value = apply(v / xp.astype(xp.linalg.vector_norm(v, axis=(-2, -1), keepdims=True), v.dtype))
    zero = xp.zeros_like(value)  # no rises yet: the first two steps cannot settle unless nothing moves
    active = ceiling > (1 + tol) * xp.max(value)
    state = while_loop(more, step, (v, value, zero, zero, active, xp.asarray(1, device=device)))
    value = xp.sqrt(xp.max(state[1]))
    return xp.where(xp.all(finite), value, xp.full_like(value, float("nan")))


def spectrum_rows(values: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """``(*freq_grid, G, r)`` block singular values -> ``(*freq_grid, G r)``, each row descending."""
    rows = xp.reshape(values, (*spec.freq_grid, spec.groups * values.shape[-1]))
    return xp.flip(xp.sort(rows, axis=-1), axis=-1) if spec.groups > 1 else rows
