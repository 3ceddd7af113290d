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
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._docs import fill_layer_doc
from ._layout import ConvSpec, parse, user_kernel, working_kernel
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
from ._norms import circular_norm, lanczos_options
from ._operator import padded_values
from ._options import DEFAULT_MAX_MEMORY, ClipOptions, NormOptions
from ._spectrum import (
    blocks_by_rows,
    conjugate_phases,
    finish_kernel,
    finite_or_zero,
    half_rows,
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


def _extremes(kernel: Array, spec: ConvSpec, xp: Namespace, chunks: tuple[int | None, int | None]) -> Array:
    """All singular values' ``(max, min)`` as one ``(2,)`` array, chunk by chunk."""
    parts = []
    for _, blocks in blocks_by_rows(kernel, spec, xp, *chunks):
        s = matrix_singular_values(blocks, xp)
        parts.append(xp.stack([xp.max(s), -xp.min(s)]))
    both = xp.max(xp.stack(parts), axis=0)
    return xp.stack([both[0], -both[1]])


def _project(
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

    def step(state: tuple[Array, ...]) -> tuple[Array, ...]:
        x, dual, steps, done, initial = state
        partial = partial_transfer(x, spec, xp)
        total, residual, duals, meets, top = None, 0.0, [], None, None
        for rows in row_sets:
            matrices = row_blocks(partial, rows, spec, xp)
            if method == "dykstra":
                matrices = matrices + dual[rows.start : rows.stop, ...]
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
            residual = residual / spec.n_blocks
            length = _sum_squares(new - x, xp)
            one = xp.ones_like(length)
            lam = xp.where(length > 0, residual / xp.where(length > 0, length, one), one)
            new = x + xp.astype(lam, x.dtype) * (new - x)
        elif method == "dykstra":
            dual = xp.concat(duals, axis=0) if len(duals) > 1 else duals[0]
            if tol is not None:
                top, bottom = _extremes(new, spec, xp, chunks)
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
            half_rows(spec, real),
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


def _tight_projection(
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
# The public functions below parse their arguments into these; the adapters, which build a spec once
# per layer, call them directly. Compiled once per spec and options on JAX.


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
            return _project(x, spec, xp, level, None, method, iterations, tol, chunks)

        x, info = _tight_projection(k, spec, xp, upper, project, iteration)
        out = user_kernel(x * xp.astype(scale, x.dtype), spec, xp, user_dtype)
        norm, initial = zero_d(info.norm * scale, xp), zero_d(info.initial_norm * scale, xp)
        return out, info._replace(norm=norm, initial_norm=initial) if return_info else None
    x, steps, done, initial = _project(k, spec, xp, upper, lower, method, iterations, tol, chunks)
    out = user_kernel(x * xp.astype(scale, x.dtype), spec, xp, user_dtype)
    if not return_info:
        return out, None
    if lower is None:
        eigh = NormOptions("eigh", chunk_size=options.chunk_size, max_memory=options.max_memory)
        norm = circular_norm(x, spec, xp, eigh)
        meets = norm <= upper * (1 + (tol or 0.0))
    else:
        norm, bottom = _extremes(x, spec, xp, chunks)
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
    total = finish_kernel(total, spec, full_size, real, xp)
    return user_kernel(total * xp.astype(scale, total.dtype), full_size, xp, user_dtype)


@fill_layer_doc
def clip_operator_norm(
    kernel: Array,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    min_norm: float | None = None,
    method: str = "alternating",
    iterations: int = 1,
    tol: float | None = None,
    bound: str = "tight",
    return_info: bool = False,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array | tuple[Array, ClipInfo]:
    r"""Project a convolution kernel towards the layer-norm ball, keeping its size.

    Clips the singular values of the layer (see :func:`singular_values`) to
    ``max_norm`` in the frequency domain, returns to the kernel's own
    ``k_1 x ... x k_d`` taps by zeroing the others, and optionally repeats.
    One step is the algorithm of Sedghi, Gupta & Long (ICLR 2019, Section 3).
    The crop can push the norm above ``max_norm`` again; repeating the pair
    with ``tol`` drives it down to the bound.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`. With circular
        padding its dilated size must be at most the feature map's.
    input_shape : int or sequence of int
        Spatial shape of the layer's input.
    max_norm : float
        The bound on the operator norm (non-negative).
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes. Default ``"HWIO"``.
    {layer_parameters}
    min_norm : float, optional
        Also raise singular values below ``min_norm`` up to it, aiming at
        singular values in ``[min_norm, max_norm]``; ``min_norm = max_norm = 1``
        asks for a layer as close to orthogonal as the kernel's size allows.
        This set is not convex: no method is guaranteed to reach it or to
        return the nearest point of it (see Notes).
    method : {"alternating", "extrapolated", "dykstra"}, optional
        ``"alternating"`` (default) repeats the paper's pair of projections;
        ``"extrapolated"`` lengthens each step of that pair to the hyperplane
        separating the iterate from the ball, which reaches the bound in far
        fewer iterations (not with ``min_norm``); ``"dykstra"`` converges to
        the nearest kernel (in the Frobenius norm) whose layer meets the bound.
    iterations : int, optional
        The most steps to take (default 1). Static under ``jax.jit``.
    tol : float, optional
        Stop as soon as every singular value lies within
        ``[min_norm * (1 - tol), max_norm * (1 + tol)]``; for ``"dykstra"``,
        also when the kernel moved by at most ``tol`` relative to its norm in
        the last step. ``None`` (default) runs exactly ``iterations`` steps.
        Use at least ``1e-5`` in float32.
    bound : {"tight", "circular"}, optional
        Zero padding only: ``"tight"`` (default) puts the zero-padded layer's
        own norm on ``max_norm`` (see Notes); ``"circular"`` projects the
        circular layer on the padded map, an upper bound: cheaper, certified,
        and conservative on small maps. ``min_norm`` needs ``"circular"``.
    return_info : bool, optional
        Also return a :class:`ClipInfo` with the exact norm reached, the steps
        taken and whether ``tol`` was met.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    kernel : array
        Same shape, layout, namespace and device as the input; same dtype for
        floating and complex kernels (integer kernels come back in the
        namespace's default float).
    info : ClipInfo
        Only with ``return_info=True``: the norm reached, the steps taken,
        whether ``tol`` was met, and the input's norm (for zero padding, see
        :class:`ClipInfo`).

    Raises
    ------
    TypeError
        As :func:`singular_values`, or if ``max_norm``, ``min_norm`` or
        ``tol`` is not a real number or ``iterations`` not an int.
    ValueError
        As :func:`singular_values`; also for a negative or non-finite bound,
        ``min_norm > max_norm``, an unknown ``method``, ``iterations < 1``, a
        negative or non-finite ``tol``, ``min_norm`` with ``"extrapolated"`` or with a tight
        zero-padded projection, an unknown ``bound``, or (circular padding) a
        dilated kernel larger than the feature map.

    See Also
    --------
    clip_singular_values : The exact projection, as a full-size kernel.
    operator_norm : The norm of the result.

    Notes
    -----
    Let ``B`` be the kernels on the feature-map grid whose layer has operator
    norm at most ``max_norm`` and ``S`` those supported on the original
    (dilated) taps. Both are convex and contain 0, and the Frobenius norm of
    a kernel is that of its layer's matrix divided by the square root of the
    number of output positions, so:

    - ``"alternating"`` converges to a point of ``B ∩ S`` (Cheney & Goldstein
      1959), often slowly: hundreds of steps for a relative ``tol`` of
      ``1e-4`` on a 16-channel 3x3 layer at 32x32;
    - ``"extrapolated"`` also converges to a point of ``B ∩ S`` (Bauschke,
      Combettes & Kruk 2006), typically within 10 steps to ``tol = 1e-6``;
      one step is longer than the paper's, never shorter;
    - ``"dykstra"`` converges to the projection of ``kernel`` onto
      ``B ∩ S``, the nearest kernel of that size whose layer meets the bound
      (Boyle & Dykstra 1986); it needs the most steps.

    Zero padding: the clip acts on the circular layer on the zero-padded map
    (rounded up to a multiple of the stride), whose norm bounds the
    zero-padded layer's from above (see :func:`operator_norm_bounds`). With
    ``bound="circular"`` that is all: the zero-padded layer's norm is at most
    ``max_norm`` once that circular layer's is, which is what ``tol`` tests,
    conservative by the gap between the two norms (on a 4x4 map a layer
    clipped to 1 keeps norm 0.93). With ``bound="tight"`` (default) the clip
    level is searched instead: each level is clipped with ``method``,
    ``iterations`` and ``tol``, and the zero-padded norm of the result
    (:func:`operator_norm`, started from the previous level's vector) sets
    the next level (a secant step through the origin, kept in a bracket),
    until that norm lies in ``[max_norm (1 - 8e-4), max_norm]``, in two to
    four levels; a norm still above after 12 levels is scaled onto the
    bound. So the zero-padded layer's norm is at most ``max_norm (1 + t)``,
    ``t`` the norm's tolerance (1e-6 in float64, 1e-5 in float32), and at
    most ``8e-4`` below it. Clipping the circular layer keeps the cheap,
    exact frequency-domain projection while the search fixes where it lands;
    projecting with the zero-padded operator itself would need an SVD of the
    whole layer. A kernel whose layer is already within the bound is
    returned unchanged.

    With ``min_norm`` the lower clip is still the nearest point in the
    frequency domain, but the set is not convex, so these guarantees lapse;
    check ``info`` for what was reached. After a finite number of steps the
    bound holds only to ``tol``; :func:`clip_singular_values` gives a layer
    meeting it exactly, with a full-size kernel.

    Under ``jax.jit`` (with ``max_norm``, ``min_norm``, ``method``,
    ``iterations`` and ``tol`` static) the loop is a ``jax.lax.while_loop``
    that stops where the eager loop would; JAX cannot differentiate through
    it, so differentiate with ``tol=None`` (a fixed-count loop) or through
    :func:`clip_singular_values`. On PyTorch it works under
    ``torch.no_grad()`` and on CUDA tensors, with one host synchronisation per
    step when ``tol`` is given, and is differentiable.

    References
    ----------
    H. Sedghi, V. Gupta and P. M. Long, "The Singular Values of Convolutional
    Layers", ICLR 2019.
    H. H. Bauschke, P. L. Combettes and S. G. Kruk, "Extrapolation algorithm
    for affine-convex feasibility problems", Numer. Algorithms 41, 2006.
    J. P. Boyle and R. L. Dykstra, "A method for finding projections onto the
    intersection of convex sets in Hilbert spaces", 1986.

    Examples
    --------
    The 3x3 box filter has norm 9; one step of the paper's clipping:

    >>> import array_api_strict as xp
    >>> import convsv
    >>> box = xp.ones((3, 3, 1, 1))
    >>> clipped = convsv.clip_operator_norm(box, (8, 8), 1.0)
    >>> clipped.shape
    (3, 3, 1, 1)
    >>> convsv.operator_norm(clipped, (8, 8))
    Array(2.06878157, dtype=array_api_strict.float64)

    The crop pushed the norm back above 1. Iterate until it is within 1e-6:

    >>> clipped, info = convsv.clip_operator_norm(
    ...     box, (8, 8), 1.0, method="extrapolated", iterations=50, tol=1e-6, return_info=True
    ... )
    >>> int(info.iterations), bool(info.converged), bool(info.norm <= 1.0 + 1e-6)
    (3, True, True)

    Dykstra's method finds the nearest such kernel, here the box scaled by 1/9:

    >>> nearest = convsv.clip_operator_norm(box, (8, 8), 1.0, method="dykstra", iterations=2000, tol=1e-9)
    >>> bool(xp.max(xp.abs(nearest - box / 9)) < 1e-6)
    True

    With zero padding the layer's own norm lands on the bound; the circular
    bound on the padded map is tighter than needed on a small map:

    >>> tight = convsv.clip_operator_norm(box, (4, 4), 1.0, padding=1)
    >>> float(convsv.operator_norm(tight, (4, 4), padding=1))  # within 8e-4 below 1
    0.9996...
    >>> loose = convsv.clip_operator_norm(
    ...     box, (4, 4), 1.0, padding=1, bound="circular", iterations=50, tol=1e-9
    ... )
    >>> round(float(convsv.operator_norm(loose, (4, 4), padding=1)), 3)
    0.711
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    options = ClipOptions(max_norm, min_norm, method, iterations, tol, bound, chunk_size, max_memory)
    out, info = clip(array, spec, xp, options, return_info)
    return (out, info) if return_info else out


@fill_layer_doc
def clip_singular_values(
    kernel: Array,
    input_shape: int | Sequence[int],
    max_norm: float,
    *,
    layout: str = "HWIO",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    transposed: bool = False,
    padding: str | int | Sequence[Any] = "circular",
    output_padding: int | Sequence[int] = 0,
    min_norm: float | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    xp: Namespace | None = None,
) -> Array:
    """The exact projection of a layer onto the operator-norm ball, as a full-size kernel.

    Clips every singular value of the layer (circular padding) to at most
    ``max_norm`` (and at least ``min_norm``) and returns the kernel of the
    resulting layer. That layer is still a circular convolution with the same
    stride and groups, but its kernel has a tap at every position of the
    (forward convolution's input) feature map, and dilation 1. Of all layers
    whose norm is at most ``max_norm`` it is the nearest to the original in
    the Frobenius norm (Lefkimmiatis et al. 2013,
    Proposition 1), and its norm bound holds exactly, up to round-off.

    Parameters
    ----------
    kernel : array
        The convolution kernel; see :func:`singular_values`. Any spatial size
        (a kernel larger than the map wraps around first).
    input_shape : int or sequence of int
        Spatial shape of the layer's input.
    max_norm : float
        The bound on the operator norm (non-negative).
    layout : {"HWIO", "OIHW", "WIO", "OIW", "DHWIO", "OIDHW"}, optional
        Order of the kernel's axes (of the input and of the result).
    {layer_parameters}
    min_norm : float, optional
        Also raise singular values below ``min_norm`` up to it.
    {memory_parameters}
    xp : array namespace, optional
        Namespace to use; inferred from ``kernel`` when omitted.

    Returns
    -------
    array
        The full-size kernel: the input's layout with the spatial sizes of
        the forward convolution's input (``input_shape``, or for a transposed
        layer ``input_shape * stride``); same namespace, device and dtype
        (integer kernels come back in the default float). Real for real
        kernels.

    Raises
    ------
    TypeError, ValueError
        As :func:`clip_operator_norm`; ``ValueError`` also for zero padding,
        whose projection is not a convolution.

    See Also
    --------
    clip_operator_norm : The same, cropped back to the kernel's own size.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import convsv
    >>> box = xp.ones((3, 3, 1, 1))
    >>> full = convsv.clip_singular_values(box, (8, 8), 1.0)
    >>> full.shape
    (8, 8, 1, 1)
    >>> convsv.operator_norm(full, (8, 8))
    Array(1., dtype=array_api_strict.float64)
    """
    array, spec, xp = parse(
        kernel, input_shape, layout, xp, stride, dilation, groups, transposed, padding, output_padding
    )
    options = ClipOptions(max_norm, min_norm, chunk_size=chunk_size, max_memory=max_memory)
    return clip_full(array, spec, xp, options)
