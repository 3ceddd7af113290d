"""Projection of a layer onto an operator-norm ball (Sedghi, Gupta & Long, Section 3).

Two sets live in the space of kernels on the feature-map grid:

- ``B``: kernels whose layer has every singular value in ``[min_norm, max_norm]``.
  Projecting onto it (in the Frobenius norm, which is the norm of the layer's
  matrix up to the constant ``sqrt(N)``) clips the singular values of every
  per-frequency matrix ``T[f]`` (Lefkimmiatis et al. 2013, Proposition 1).
- ``S``: kernels supported on the original ``k_1 x ... x k_d`` taps. Projecting
  onto it zeroes the other taps (a crop).

The paper applies the pair once. Repeating it (alternating projections) reaches
``B ∩ S`` slowly; stretching each step to the hyperplane that separates the
iterate from ``B`` (Bauschke, Combettes & Kruk 2006) reaches it in a handful of
steps; Dykstra's algorithm converges to the nearest point of ``B ∩ S``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._lanczos import padded_values
from ._layout import ConvSpec, user_kernel, working_kernel
from ._lib import (
    Array,
    Namespace,
    batch_map,
    compiled_for_jax,
    complex_dtype,
    device_of,
    full_precision,
    interleave_zeros,
    repeat,
    unit_scale,
    while_loop,
    zero_d,
)
from ._lib.dtensor import across_ranks, whole_dtensor_kernel
from ._options import ClipOptions, NormOptions
from ._spectrum import (
    blocks_by_rows,
    conjugate_phases,
    finish_kernel,
    finite_or_zero,
    kernel_from_rows,
    matrix_singular_values,
    mirror_row,
    nan_where_not,
    partial_transfer,
    row_blocks,
    row_chunks,
    row_weights,
    self_conjugate_rows,
    small_gram,
)
from ._values import circular_norm, lanczos_options

#: How far below ``max_norm`` a tight projection may land (relative), and its most clip levels.
LEVEL_SLACK = 8e-4
MAX_LEVELS = 12


class ClipInfo(NamedTuple):
    """What :func:`clip_operator_norm` did, as 0-d arrays of the kernel's namespace.

    For zero padding the norms are the zero-padded layer's own with
    ``bound="tight"`` (Lanczos values: within the norm tolerance of a
    singular value, from below), and those of the circular layer on the
    padded map, the upper bound the projection controls, with
    ``bound="circular"``.

    Parameters
    ----------
    norm : array
        Operator norm of the returned kernel's layer.
    iterations : array
        Number of projection steps applied (at most ``iterations``; for a
        tight zero-padded projection, those of its last clip level).
    converged : array
        Whether the stopping rule was met (always false when ``tol`` is None);
        for a tight zero-padded projection, whether the norm landed in
        ``[max_norm (1 - 8e-4), max_norm]`` (or the input was within it).
    initial_norm : array
        Operator norm of the input kernel's layer.
    """

    norm: Array
    iterations: Array
    converged: Array
    initial_norm: Array


def clip_matrices(
    matrices: Array,
    max_norm: float,
    min_norm: float | None,
    xp: Namespace,
    *,
    rows: range | None = None,
    spec: ConvSpec | None = None,
) -> tuple[Array, Array]:
    """Clip every matrix's singular values into ``[min_norm, max_norm]``.

    Returns ``(clipped matrices, their original singular values)``; NaN for a
    matrix with a non-finite entry.

    With ``rows`` and ``spec``, ``matrices`` are those half-spectrum rows of a
    real kernel's layer (as :func:`row_blocks` gives them), whose kernel is
    the real part of the transformed-back blocks. Raising a zero singular
    value takes singular vectors, arbitrary in a null space: clipped apart,
    the blocks at ``f`` and ``-f`` would raise along directions that are not
    each other's conjugates, and the real part would lose the raise. So
    within a self-conjugate row the clip of one block of each such pair
    stands for both, and a block that is its own mirror is clipped by a real
    SVD (see :func:`_clip_self_conjugate_row`). The other rows need nothing:
    each stands for its mirror row.
    """
    finite, safe = finite_or_zero(matrices, xp)
    if min_norm is None:
        # Lowering only: the clipped matrix is unique, and so conjugate-symmetric already.
        clipped, s = batch_map(lambda m: _clip_from_gram(m, max_norm, xp), safe, xp)
    else:
        clipped, s = _clip_by_svd(safe, max_norm, min_norm, xp)
        if rows is not None and spec is not None:
            for i in self_conjugate_rows(rows, spec):
                row = _clip_self_conjugate_row(
                    clipped[i, ...], safe[i, ...], rows[i] == 0, spec, max_norm, min_norm, xp
                )
                clipped = xp.concat(
                    [clipped[:i, ...], xp.expand_dims(row, axis=0), clipped[i + 1 :, ...]], axis=0
                )
    return nan_where_not(finite, clipped, xp), nan_where_not(finite, s, xp)


def _clip_by_svd(matrices: Array, max_norm: float, min_norm: float, xp: Namespace) -> tuple[Array, Array]:
    """``U clip(S) V^H`` and ``S``, from the thin SVD (real matrices: a real SVD)."""
    u, s, vh = batch_map(lambda m: tuple(xp.linalg.svd(m, full_matrices=False)), matrices, xp)
    return (u * xp.astype(xp.clip(s, min=min_norm, max=max_norm), u.dtype)[..., None, :]) @ vh, s


def _clip_self_conjugate_row(
    clipped: Array,
    blocks: Array,
    zero_row: bool,
    spec: ConvSpec,
    max_norm: float,
    min_norm: float,
    xp: Namespace,
) -> Array:
    """A self-conjugate row's clipped blocks ``(*freq_grid[1:], G, r, c)``, made ``C[-f] = P conj(C[f])``.

    Of each pair ``f != -f`` the clip at the smaller flat index stands for
    both (``P``: :func:`conjugate_phases`). A block with ``f = -f`` has
    ``conj(A) = P A``, so for the unitary ``Q = ((1 - i) I + (1 + i) P) / 2``
    (``conj(Q) = Q P``) ``Q A = Re(A) + Im(A)`` is real: its clip comes from
    a real SVD, and ``Q^H`` of that satisfies ``conj(C) = P C``.
    """
    lead = spec.freq_grid[1:]
    # The frequencies with v = -v: 0 and m / 2 on each axis.
    picks = tuple(slice(0, m, m // 2) if m % 2 == 0 else slice(0, 1) for m in lead)
    index = (*picks, Ellipsis)
    own = blocks[index]
    real, _ = _clip_by_svd(xp.real(own) + xp.imag(own), max_norm, min_norm, xp)
    real = xp.astype(real, clipped.dtype)
    own = ((1 + 1j) * real + (1 - 1j) * conjugate_phases(real, zero_row, spec, xp)) / 2
    if not lead:  # 1-D: the row is one block
        return own
    for axis, m in enumerate(lead):
        own = interleave_zeros(own, axis, m // own.shape[axis], xp)  # back to positions 0 and m / 2
    index = xp.reshape(xp.arange(math.prod(lead), device=device_of(blocks)), lead)
    mirror = mirror_row(index, spec, xp)
    shape = (*lead, 1, 1, 1)
    mirrored = conjugate_phases(xp.conj(mirror_row(clipped, spec, xp)), zero_row, spec, xp)
    out = xp.where(xp.reshape(mirror < index, shape), mirrored, clipped)
    return xp.where(xp.reshape(mirror == index, shape), own, out)


def _clip_from_gram(matrices: Array, max_norm: float, xp: Namespace) -> tuple[Array, Array]:
    """Clip from above at ``max_norm`` through the eigenvectors of the smaller Gram matrix.

    With ``A^H A = V diag(s^2) V^H``, the clipped matrix is
    ``(A V) diag(min(1, max_norm / s)) V^H`` (or the same from the left when
    ``A A^H`` is smaller). Each ``s`` is taken as the norm of ``A v``, not
    from the Gram's eigenvalue: that is accurate to round-off of ``||A||``
    rather than of ``||A||^2``, and makes each clipped direction come out at
    ``max_norm`` to round-off. (The form ``A - (A V) diag(1 - f) V^H`` would
    keep the unclipped part exact but amplifies any loss of orthogonality
    in ``V`` by ``||A|| / max_norm``: 3e-5 above the bound in float32.)
    A Hermitian eigensolver is cheaper than an SVD, several times so for
    batches on a GPU. Returns the clipped matrices and the singular values.
    """
    r, c = matrices.shape[-2:]
    _, vectors = xp.linalg.eigh(small_gram(matrices, xp))
    vectors = xp.flip(vectors, axis=-1)  # descending
    adjoint = xp.conj(xp.matrix_transpose(vectors))
    image = matrices @ vectors if c <= r else adjoint @ matrices  # A V, or U^H A
    s = xp.linalg.vector_norm(image, axis=-2 if c <= r else -1)
    above = s > max_norm
    factor = xp.where(above, max_norm / xp.where(above, s, xp.ones_like(s)), xp.ones_like(s))
    factor = xp.astype(factor, vectors.dtype)
    if c <= r:
        return (image * factor[..., None, :]) @ adjoint, s
    return (vectors * factor[..., None, :]) @ image, s


def _meets_bounds(s: Array, max_norm: float, min_norm: float | None, tol: float, xp: Namespace) -> Array:
    """0-d bool: every singular value within the bounds, up to the relative ``tol``."""
    ok = xp.max(s) <= max_norm * (1 + tol)
    if min_norm is not None:
        ok = ok & (xp.min(s) >= min_norm * (1 - tol))
    return ok


def _sum_squares(x: Array, xp: Namespace) -> Array:
    return xp.sum(xp.abs(x) ** 2)


def spectrum_extremes(
    kernel: Array, spec: ConvSpec, xp: Namespace, chunks: tuple[int | None, int | None]
) -> Array:
    """All singular values' ``(max, min)`` as one ``(2,)`` array, chunk by chunk."""
    parts = []
    for _, blocks in blocks_by_rows(kernel, spec, xp, *chunks):
        s = matrix_singular_values(blocks, xp)
        parts.append(xp.stack([xp.max(s), -xp.min(s)]))
    both = across_ranks(xp.max(xp.stack(parts), axis=0), "max")
    return xp.stack([both[0], -both[1]])


def projection_steps(
    kernel: Array,
    spec: ConvSpec,
    xp: Namespace,
    max_norm: float,
    min_norm: float | None,
    method: str,
    iterations: int,
    tol: float | None,
    chunks: tuple[int | None, int | None],
) -> tuple[Array, Array, Array, Array]:
    """Run ``method`` on a spatial-first kernel; returns ``(kernel, steps, converged, initial norm)``.

    One step is one pair of projections, computed a chunk of frequency rows at
    a time (half of them for a real kernel). The loop stops after
    ``iterations`` steps or once the stopping rule holds (under ``jax.jit``
    too, as a ``while_loop``). The first step decomposes the input's own
    layer: its largest value is the input's norm, kept for :class:`ClipInfo`.
    """
    real = not xp.isdtype(kernel.dtype, "complex floating")
    device = device_of(kernel)
    itemsize = 16 if kernel.dtype in (xp.float64, xp.complex128) else 8
    row_sets = row_chunks(spec, real, itemsize, *chunks)
    first, last = row_sets[0].start, row_sets[-1].stop  # (of a kernel split over ranks, this rank's rows)

    def step(state: tuple[Array, ...]) -> tuple[Array, ...]:
        x, dual, steps, done, initial = state
        partial = partial_transfer(x, spec, xp)
        total, residual, duals, meets, top = None, 0.0, [], None, None
        for rows in row_sets:
            matrices = row_blocks(partial, rows, spec, xp)
            if method == "dykstra":
                matrices = matrices + dual[rows.start - first : rows.stop - first, ...]
            half = rows if real else None
            clipped, s = clip_matrices(matrices, max_norm, min_norm, xp, rows=half, spec=spec)
            if method == "dykstra":
                duals.append(matrices - clipped)  # Dykstra's correction for B; S is a subspace and needs none
            chunk_meets = _meets_bounds(s, max_norm, min_norm, 0.0 if tol is None else tol, xp)
            meets = chunk_meets if meets is None else meets & chunk_meets
            top = xp.max(s) if top is None else xp.maximum(top, xp.max(s))
            if method == "extrapolated":
                weights = row_weights(rows, spec, real, s, xp)
                excess = xp.reshape(xp.abs(s - xp.clip(s, min=min_norm, max=max_norm)) ** 2, (len(rows), -1))
                chunk_residual = xp.sum(weights * xp.sum(excess, axis=1))
                residual = residual + chunk_residual
            share = kernel_from_rows(clipped, rows, spec, spec, real, xp)
            total = share if total is None else total + share
        total = across_ranks(total, "sum")
        meets, top = across_ranks(meets, "all"), across_ranks(top, "max")
        new = finish_kernel(total, spec, spec, real, xp)
        initial = xp.where(steps == 0, top, initial)
        if method != "dykstra" and tol is not None:
            # s is the spectrum of x's own layer: the stopping test costs nothing,
            # and an x that passes it is kept as it is.
            done = meets
        if method == "extrapolated":
            # Step to the hyperplane through P_B(x) normal to x - P_B(x), which
            # contains B; within S that is x + lam (P_S P_B x - x), lam >= 1.
            # (A kernel's squared norm is its layer's divided by the number of blocks.)
            residual = across_ranks(residual, "sum") / spec.n_blocks
            length = _sum_squares(new - x, xp)
            one = xp.ones_like(length)
            lam = xp.where(length > 0, residual / xp.where(length > 0, length, one), one)
            new = x + xp.astype(lam, x.dtype) * (new - x)
        elif method == "dykstra":
            dual = xp.concat(duals, axis=0) if len(duals) > 1 else duals[0]
            if tol is not None:
                top, bottom = spectrum_extremes(new, spec, xp, chunks)
                settled = _sum_squares(new - x, xp) <= tol**2 * _sum_squares(new, xp)
                ok = top <= max_norm * (1 + tol)
                if min_norm is not None:
                    ok = ok & (bottom >= min_norm * (1 - tol))
                return new, dual, steps + 1, ok & settled, initial
        x = xp.where(done, x, new)
        return x, dual, steps + xp.astype(~done, steps.dtype), done, initial

    def more(state: tuple[Array, ...]) -> Array:
        _, _, steps, done, _ = state
        return (steps < iterations) & ~done

    if method == "dykstra":
        shape = (
            last - first,
            *spec.freq_grid[1:],
            spec.groups,
            spec.phases * spec.group_in,
            spec.group_out,
        )
        dual = xp.zeros(shape, dtype=complex_dtype(xp, kernel.dtype), device=device)
    else:
        dual = xp.zeros((), device=device)  # unused
    initial = xp.zeros((), dtype=xp.real(kernel).dtype, device=device)
    start = (kernel, dual, xp.asarray(0, device=device), xp.asarray(False, device=device), initial)
    if tol is None:  # a fixed count: differentiable under JAX too
        x, _, steps, done, initial = repeat(step, start, iterations)
    else:
        x, _, steps, done, initial = while_loop(more, step, start)
    return x, steps, done, initial


def tight_projection(
    kernel: Array,
    spec: ConvSpec,
    xp: Namespace,
    max_norm: float,
    project: Any,
    norm_options: dict[str, Any],
) -> tuple[Array, ClipInfo]:
    """Clip the circular layer on the padded map at the level that puts the zero-padded norm at ``max_norm``.

    The zero-padded norm of ``project(kernel, level)`` grows with the level,
    nearly in proportion: the first level is ``max_norm``, the second the
    first times ``aim / norm`` (a secant through the origin), the others
    secant steps through the last two, each kept inside the bracket of
    levels seen to land below and above (halved geometrically when it would
    leave it).
    It stops once the norm lies in ``[max_norm (1 - LEVEL_SLACK), max_norm]``;
    a norm still above after ``MAX_LEVELS`` levels is scaled down onto
    ``max_norm``. Every norm is a Lanczos value started from the last one's
    vectors, certified within ``tol`` of a singular value and below it.
    A kernel already within the bound is returned as it is.
    """
    initial, vectors = padded_values(kernel, spec, xp, count=None, **norm_options)
    aim = max_norm * (1 - LEVEL_SLACK / 2)
    zero = xp.zeros_like(initial)
    inf = xp.full_like(initial, float("inf"))

    def landed(norm: Array) -> Array:
        return (norm <= max_norm) & ((norm >= max_norm * (1 - LEVEL_SLACK)) | (initial <= max_norm))

    def more(state: tuple[Any, ...]) -> Array:
        norm, count = state[1], state[8]
        return (count < MAX_LEVELS) & ~landed(norm) & xp.isfinite(norm)

    def step(state: tuple[Any, ...]) -> tuple[Any, ...]:
        _, norm, vectors, level, previous_level, previous_norm, low, high, count, _ = state
        # Through the last two points (a secant), or through the last and the origin at first.
        # Two equal levels (``max_norm`` 0, or a bracket that closed) have no slope, and a zero norm
        # no ratio: each division is guarded, and the bracket's middle catches what is left.
        rise = level - previous_level
        sloped = (count > 1) & (rise != 0)
        slope = xp.where(sloped, (norm - previous_norm) / xp.where(sloped, rise, xp.ones_like(rise)), zero)
        secant = level + (aim - norm) / xp.where(slope > 0, slope, xp.ones_like(slope))
        through_origin = xp.where(norm > 0, level * aim / xp.where(norm > 0, norm, xp.ones_like(norm)), -inf)
        proposal = xp.where(slope > 0, secant, through_origin)
        proposal = xp.where(count == 0, zero + max_norm, proposal)
        bounded = high < inf
        geometric = xp.sqrt(low * xp.where(bounded, high, zero))
        middle = xp.where(low > 0, xp.where(bounded, geometric, 2 * low), high / 2)
        proposal = xp.where((proposal >= low) & (proposal < high), proposal, middle)  # max_norm 0: level 0
        x, steps, _, _ = project(kernel, proposal)
        new_norm, vectors = padded_values(x, spec, xp, count=None, start=vectors, **norm_options)
        low = xp.where(new_norm < aim, xp.maximum(low, proposal), low)
        high = xp.where(new_norm > max_norm, xp.minimum(high, proposal), high)
        return x, new_norm, vectors, proposal, level, norm, low, high, count + 1, steps

    device = device_of(kernel)
    first = xp.asarray(0, device=device)
    start = (kernel, initial, vectors, zero + max_norm, zero, zero, zero, inf, first, first)
    x, norm, *_, steps = while_loop(more, step, start)
    # Still above after the last level: scale onto the bound (the norm is homogeneous).
    over = norm > max_norm
    factor = xp.where(over, max_norm / xp.where(over, norm, xp.ones_like(norm)), xp.ones_like(norm))
    x = x * xp.astype(factor, x.dtype)
    norm = norm * factor
    return x, ClipInfo(
        norm=zero_d(norm, xp),
        iterations=zero_d(steps, xp),
        converged=zero_d(landed(norm), xp),
        initial_norm=zero_d(initial, xp),
    )


# --- the spec level: a kernel in its layer's layout, a validated spec and options ----------------------
# The public functions of convsv._projection parse their arguments into these; the adapters, which build
# a spec once per layer, call them directly. Compiled once per spec and options on JAX.


@whole_dtensor_kernel(reshard=True)
@full_precision
@compiled_for_jax
def clip(
    kernel: Array, spec: ConvSpec, xp: Namespace, options: ClipOptions, return_info: bool = False
) -> tuple[Array, ClipInfo | None]:
    """:func:`clip_operator_norm` of ``kernel`` (in ``spec``'s layout); ``(kernel, info or None)``."""
    options.check_layer(spec)
    user_dtype = kernel.dtype
    k = working_kernel(kernel, spec, xp)
    chunks = (options.chunk_size, options.max_memory)
    # Projections are homogeneous: project k / scale onto the bounds / scale, then scale back.
    k, scale = unit_scale(k, xp)
    upper = options.max_norm / scale
    lower = None if options.min_norm is None else options.min_norm / scale
    method, iterations, tol = options.method, options.iterations, options.tol
    if not spec.circular and options.bound == "tight":
        iteration = lanczos_options(k, spec, xp, NormOptions(max_memory=options.max_memory))

        def project(x: Array, level: Array) -> tuple[Array, Array, Array, Array]:
            return projection_steps(x, spec, xp, level, None, method, iterations, tol, chunks)

        x, info = tight_projection(k, spec, xp, upper, project, iteration)
        out = user_kernel(x * xp.astype(scale, x.dtype), spec, xp, user_dtype)
        norm, initial = zero_d(info.norm * scale, xp), zero_d(info.initial_norm * scale, xp)
        return out, info._replace(norm=norm, initial_norm=initial) if return_info else None
    x, steps, done, initial = projection_steps(k, spec, xp, upper, lower, method, iterations, tol, chunks)
    out = user_kernel(x * xp.astype(scale, x.dtype), spec, xp, user_dtype)
    if not return_info:
        return out, None
    if lower is None:
        eigh = NormOptions("eigh", chunk_size=options.chunk_size, max_memory=options.max_memory)
        norm = circular_norm(x, spec, xp, eigh)
        meets = norm <= upper * (1 + (tol or 0.0))
    else:
        norm, bottom = spectrum_extremes(x, spec, xp, chunks)
        meets = (norm <= upper * (1 + (tol or 0.0))) & (bottom >= lower * (1 - (tol or 0.0)))
    if tol is not None and method != "dykstra":
        # The loop tests each iterate before stepping from it: not the last one.
        done = done | meets
    return out, ClipInfo(
        norm=zero_d(norm * scale, xp),
        iterations=zero_d(steps, xp),
        converged=zero_d(done, xp),
        initial_norm=zero_d(initial * scale, xp),
    )


@whole_dtensor_kernel(reshard=True)
@full_precision
@compiled_for_jax
def clip_full(kernel: Array, spec: ConvSpec, xp: Namespace, options: ClipOptions) -> Array:
    """:func:`clip_singular_values` of ``kernel`` (in ``spec``'s layout): bounds and memory options only."""
    if not spec.circular:
        msg = (
            "clip_singular_values needs padding='circular': the projection of a zero-padded layer "
            "is not a convolution; use clip_operator_norm, which works on the padded map"
        )
        raise ValueError(msg)
    user_dtype = kernel.dtype
    k = working_kernel(kernel, spec, xp)
    real = not xp.isdtype(k.dtype, "complex floating")
    full_size = spec.with_grid(spec.grid)
    k, scale = unit_scale(k, xp)  # as in clip: clip k / scale, scale back
    upper = options.max_norm / scale
    lower = None if options.min_norm is None else options.min_norm / scale
    total = None
    for rows, blocks in blocks_by_rows(k, spec, xp, options.chunk_size, options.max_memory):
        clipped, _ = clip_matrices(blocks, upper, lower, xp, rows=rows if real else None, spec=spec)
        share = kernel_from_rows(clipped, rows, spec, full_size, real, xp)
        total = share if total is None else total + share
    total = finish_kernel(across_ranks(total, "sum"), spec, full_size, real, xp)
    return user_kernel(total * xp.astype(scale, total.dtype), full_size, xp, user_dtype)
