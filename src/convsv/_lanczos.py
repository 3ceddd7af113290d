"""The zero-padded layer's largest singular values, matrix-free.

Golub-Kahan-Lanczos bidiagonalisation on the layer's action and adjoint
(:class:`~convsv._operator.PaddedLayer`) converges to the largest singular
value from below; block Lanczos on ``A^H A``, thick-restarted, to the ``k``
largest. Each value returned is certified from a residual computed on the
layer itself.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._layout import ConvSpec
from ._lib import (
    Array,
    Namespace,
    device_of,
    fori,
    put_rows,
    start_vector,
    stop_gradient,
    unit_scale,
    while_loop,
    wider_dtype,
)
from ._limits import check_memory
from ._operator import PaddedLayer

# --- the largest singular value: Golub-Kahan-Lanczos ------------------------------------------------

#: Lanczos steps between two looks at the bidiagonal's top singular value.
CHECK_EVERY = 5

#: The most Lanczos vectors kept (to form the Ritz vector) before the iteration restarts from it.
LANCZOS_CAPACITY = 160


def _smaller(a: Any, b: Any, xp: Namespace) -> Any:
    """``min(a, b)`` for Python ints (eager loop counters) or traced JAX integers."""
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else xp.minimum(a, b)


class Ritz(NamedTuple):
    """A cycle's result, per group: value, unit right vector, certified?, relative residual; steps taken."""

    value: Array
    vector: Array
    certified: Array
    residual: Array
    steps: Any


def _unit(x: Array, norm: Array, floor: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(x / norm, norm)`` per row, both zero where ``norm <= floor`` (a breakdown: noise)."""
    norm = xp.where(norm > floor, norm, xp.zeros_like(norm))
    inverse = xp.where(norm > 0, 1 / xp.where(norm > 0, norm, xp.ones_like(norm)), xp.zeros_like(norm))
    return x * xp.astype(inverse, x.dtype)[:, None], norm


def _top_of_bidiagonal(alphas: Array, betas: Array, k: Any, xp: Namespace) -> tuple[Array, Array, Array]:
    """Top singular value, right vector and residual of each group's leading ``k x k`` bidiagonal.

    ``alphas`` (its diagonal) and ``betas`` (superdiagonal, then the next
    beta) are ``(capacity, G)``. Eagerly ``k`` is an int and the matrix is
    cut to ``k x k``; traced, the whole capacity is used with zeros past
    ``k``, which adds only zero singular values. The residual
    ``||A^T u - value v||`` of the Ritz pair is ``beta_k`` times the last
    entry of the left vector.
    """
    size = k if isinstance(k, int) else alphas.shape[0]
    rows = xp.arange(size, device=device_of(alphas))
    diagonal = xp.where((rows < k)[:, None], alphas[:size, ...], xp.zeros_like(alphas[:size, ...]))
    upper = xp.where((rows < k - 1)[:, None], betas[:size, ...], xp.zeros_like(betas[:size, ...]))
    on_diagonal = rows[:, None] == rows[None, :]
    on_upper = rows[:, None] + 1 == rows[None, :]
    zero = xp.zeros((), dtype=alphas.dtype, device=device_of(alphas))
    bidiagonal = xp.where(on_diagonal, xp.matrix_transpose(diagonal)[:, :, None], zero) + xp.where(
        on_upper, xp.matrix_transpose(upper)[:, :, None], zero
    )
    left, values, right = xp.linalg.svd(bidiagonal)
    last = rows == k - 1
    left_last = xp.sum(xp.where(last, left[:, :, 0], xp.zeros_like(left[:, :, 0])), axis=1)
    next_beta = xp.sum(xp.where(last[:, None], betas[:size, ...], xp.zeros_like(betas[:size, ...])), axis=0)
    return values[:, 0], right[:, 0, :], xp.abs(left_last) * next_beta


def lanczos_norm(
    layer: PaddedLayer,
    *,
    tol: float,
    iterations: int,
    capacity: int = LANCZOS_CAPACITY,
    start: Array | None = None,
    check: PaddedLayer | None = None,
) -> Ritz:
    """Each group's largest singular value by Golub-Kahan-Lanczos bidiagonalisation.

    The groups run side by side (one batched convolution per step). Each
    cycle bidiagonalises from its start vector, each new right vector
    orthogonalised against all stored ones (one-sided full
    reorthogonalisation, with a second pass where the first cancelled; a
    memory-bound sweep over the ``k`` stored vectors at step ``k``, it added
    5-32% to PyTorch CPU norms of 3x3 layers of 16-512 channels, by
    ``benchmarks/compare_versions.py``), looking at the top Ritz value every
    ``CHECK_EVERY`` steps. When the bidiagonal's residual estimate says every
    group has settled, or ``capacity`` vectors are stored, the Ritz vector
    ``v`` is formed and checked on the layer itself: with ``u = A v / ||A v||``
    the value ``||A v||`` lies within ``||A^T u - ||A v|| v|| / sqrt(2)`` of a
    singular value (the augmented matrix ``[[0, A], [A^H, 0]]`` has that
    residual on ``(u, v) / sqrt(2)``). A group is certified when that is at
    most ``tol`` times the value; otherwise the next cycle starts from ``v``.
    The check runs on ``check`` (the layer in a wider dtype) where given: a
    float32 convolution's own round-off (3e-5 of the norm for PyTorch's on a
    7x7 RGB layer) can exceed the residual to be certified. Stops when all
    groups are certified, after ``iterations`` steps, or when a cycle left
    the residual of some uncertified group no better than half the last
    one's (round-off: more cycles would not help). The values never exceed
    the true norms.
    """
    xp, dtype, device = layer.xp, layer.dtype, layer.device
    groups = layer.input_shape[0]
    n_in, n_out = math.prod(layer.input_shape[1:]), math.prod(layer.output_shape[1:])
    real = xp.real(xp.zeros((), dtype=dtype)).dtype
    size = max(2, min(capacity, n_in + 1, n_out + 1))
    breakdown = 64 * xp.finfo(real).eps
    zero = xp.zeros((groups,), dtype=real, device=device)

    def step(j: Any, state: tuple[Array, ...]) -> tuple[Array, ...]:
        v, u, alpha, basis, alphas, betas, scale = state
        floor = breakdown * scale
        w = _backward(layer, u) - xp.astype(alpha, dtype)[:, None] * v
        # Full reorthogonalisation of the right vectors (one-sided, Simon and Zha 2000): without it
        # they lose orthogonality within a few steps once the top values bunch -- which is what a
        # clip makes them do -- and the bidiagonal then holds spurious copies that stall or misplace
        # the Ritz value (found by the random campaign, in float32).
        w = _off_basis(w, basis, j, xp)
        v, beta = _unit(w, _norms(w, xp), floor, xp)
        z = _forward(layer, v) - xp.astype(beta, dtype)[:, None] * u
        u, alpha = _unit(z, _norms(z, xp), floor, xp)
        basis = put_rows(basis, j + 1, v[None, ...])
        betas, alphas = put_rows(betas, j, beta[None, ...]), put_rows(alphas, j + 1, alpha[None, ...])
        return v, u, alpha, basis, alphas, betas, xp.maximum(scale, alpha)

    def cycle(v0: Array, budget: Any) -> Ritz:
        image = _forward(layer, v0)
        u, alpha = _unit(image, _norms(image, xp), zero, xp)
        basis = put_rows(xp.zeros((size, groups, n_in), dtype=dtype, device=device), 0, v0[None, ...])
        alphas = put_rows(xp.zeros((size, groups), dtype=real, device=device), 0, alpha[None, ...])
        betas = xp.zeros((size, groups), dtype=real, device=device)
        last = _smaller(size - 1, budget, xp)

        def more(state: tuple[Any, tuple[Array, ...], Array]) -> Array:
            j, _, settled = state
            return (j < last) & ~settled

        def chunk(state: tuple[Any, tuple[Array, ...], Array]) -> tuple[Any, tuple[Array, ...], Array]:
            j, inner, _ = state
            stop = _smaller(j + CHECK_EVERY, last, xp)
            inner = fori(j, stop, step, inner)
            value, _, residual = _top_of_bidiagonal(inner[4], inner[5], stop, xp)
            return stop, inner, xp.all(residual <= math.sqrt(2) * tol * value)

        start = (v0, u, alpha, basis, alphas, betas, alpha)
        steps, inner, _ = while_loop(more, chunk, (0, start, xp.asarray(False, device=device)))
        # The Ritz vector from every stored vector: the last alpha is known, only the next beta is not.
        _, right, _ = _top_of_bidiagonal(inner[4], inner[5], steps + 1, xp)
        kept = inner[3][: right.shape[1], ...]  # (k, G, n)
        vector = (xp.astype(right, dtype)[:, None, :] @ xp.permute_dims(kept, (1, 0, 2)))[:, 0, :]
        vector, _ = _unit(vector, _norms(vector, xp), zero, xp)
        value, residual = _verify(layer if check is None else check, vector, real, xp)
        # A layer that is zero (every output in the padding) has value 0 and residual 0: certified.
        tiny = xp.asarray(xp.finfo(real).smallest_normal, dtype=real, device=device)
        relative = residual / xp.maximum(value, tiny)
        return Ritz(value, vector, residual <= math.sqrt(2) * tol * value, relative, steps)

    def again(state: tuple[Ritz, Ritz, Array]) -> Array:
        ritz, best, previous = state
        progress = (ritz.steps == 0) | xp.any(~ritz.certified & (ritz.residual < previous / 2))
        return ~xp.all(best.certified) & (ritz.steps < iterations) & progress

    def restart(state: tuple[Ritz, Ritz, Array]) -> tuple[Ritz, Ritz, Array]:
        ritz, best, _ = state
        new = cycle(ritz.vector, iterations - ritz.steps)
        new = new._replace(steps=ritz.steps + new.steps)
        return new, _better(new, best, xp), ritz.residual

    start = _start_rows(layer, start, zero)
    infinite = xp.full((groups,), float("inf"), dtype=real, device=device)
    first = Ritz(zero, start, zero > 0, infinite, 0)
    return while_loop(again, restart, (first, first, infinite))[1]


def _norms(x: Array, xp: Namespace) -> Array:
    return xp.linalg.vector_norm(x, axis=1)


def _forward(layer: PaddedLayer, v: Array) -> Array:
    """The layer on ``(G, n_in)`` rows, as ``(G, n_out)`` rows."""
    xp = layer.xp
    return xp.reshape(layer.apply(xp.reshape(v, (1, *layer.input_shape))), (v.shape[0], -1))


def _backward(layer: PaddedLayer, u: Array) -> Array:
    """Its adjoint on ``(G, n_out)`` rows, as ``(G, n_in)`` rows."""
    xp = layer.xp
    return xp.reshape(layer.adjoint(xp.reshape(u, (1, *layer.output_shape))), (u.shape[0], -1))


def _off_basis(w: Array, basis: Array, j: Any, xp: Namespace) -> Array:
    """``w`` ``(G, n)`` without its components along the stored rows ``basis[0 .. j]`` (Gram-Schmidt).

    A second pass follows where the first removed most of ``w`` (Daniel, Gragg, Kaufman and
    Stewart's test: the norm fell below ``1 / sqrt(2)``), as its round-off is then no longer
    small against what is left; traced, it always follows (no branch on values there).
    """
    eager = isinstance(j, int)
    # Eagerly only the rows written so far; traced, all of them (the rest are zeros).
    rows = xp.permute_dims(basis[: j + 1 if eager else basis.shape[0], ...], (1, 0, 2))  # (G, k, n)
    adjoint = xp.conj(rows) if xp.isdtype(rows.dtype, "complex floating") else rows

    def project(x: Array) -> Array:
        return x - (xp.matrix_transpose(rows) @ (adjoint @ x[:, :, None]))[:, :, 0]

    once = project(w)
    if eager and not bool(xp.any(_norms(once, xp) < _norms(w, xp) / math.sqrt(2))):
        return once
    return project(once)


def _verify(exact: PaddedLayer, vector: Array, real: Any, xp: Namespace) -> tuple[Array, Array]:
    """``(||A v||, ||A^H u - ||A v|| v||)`` per group, on ``exact`` (the layer, maybe in a wider dtype)."""
    wide = xp.astype(vector, exact.dtype)
    image = _forward(exact, wide)
    zero = xp.zeros((vector.shape[0],), dtype=xp.real(image).dtype, device=exact.device)
    u, value = _unit(image, _norms(image, xp), zero, xp)
    residual = _norms(_backward(exact, u) - xp.astype(value, exact.dtype)[:, None] * wide, xp)
    return xp.astype(value, real), xp.astype(residual, real)


def _start_rows(layer: PaddedLayer, start: Array | None, zero: Array) -> Array:
    """Unit start rows ``(G, n_in)``: fresh, or half ``start`` and half fresh.

    Unit, because the basis they start is projected out of every later vector.
    Half fresh, because a warm start (a nearby layer's top vector) can be a
    singular vector of this layer too -- clipping bunches the top values --
    with nothing along its top one; Lanczos would then certify the second
    value (found by the random campaign).
    """
    xp, groups = layer.xp, layer.input_shape[0]
    fresh = xp.reshape(
        start_vector(groups * math.prod(layer.input_shape[1:]), layer.dtype, xp, layer.device), (groups, -1)
    )
    fresh, _ = _unit(fresh, _norms(fresh, xp), zero, xp)
    if start is None:
        return fresh
    start, _ = _unit(start, _norms(start, xp), zero, xp)
    start, _ = _unit(start + fresh, _norms(start + fresh, xp), zero, xp)
    return start


def _better(new: Ritz, best: Ritz, xp: Namespace) -> Ritz:
    """Each group's pair with the smaller residual, of ``new`` and ``best`` (``new``'s step count).

    The best-certified pair (its value is the nearest to a singular value),
    not the last: when the top values bunch, as after a clip, a restart can
    end farther off than the cycle before it (found by the random campaign).
    """
    better = new.residual <= best.residual
    return Ritz(
        xp.where(better, new.value, best.value),
        xp.where(better[:, None], new.vector, best.vector),
        xp.where(better, new.certified, best.certified),
        xp.where(better, new.residual, best.residual),
        new.steps,
    )


def basis_rows(
    vectors_per_row: int,
    spec: ConvSpec,
    itemsize: int,
    max_memory: int | None,
    most: int,
    *,
    count: int | None = None,
) -> int:
    """How many basis rows fit in ``max_memory`` bytes (between 16 and ``most``).

    A row is ``vectors_per_row`` vectors of the layer's input or output size.
    What no ``max_memory`` shrinks -- 16 rows (``count + 16`` for the
    ``count`` largest singular values) and the maps of one vector (``count``)
    padded onto the grid, input and output, with their transforms -- is
    first checked against the limit of :func:`~convsv._limits.check_memory`.
    """
    row = vectors_per_row * spec.in_channels * max(math.prod(spec.conv_input), math.prod(spec.conv_output))
    batch = 1 if count is None else count
    maps = 4 * batch * (spec.in_channels + spec.out_channels) * math.prod(spec.grid)
    fewest = min(16 if count is None else count + 16, most)
    what = f"the {fewest} Lanczos vectors{'' if count is None else f' for `k`={count}'} and the padded maps"
    check_memory((fewest * row + maps) * itemsize, max_memory, what, spec)
    if max_memory is None:
        return most
    return max(fewest, min(most, max_memory // (row * itemsize)))


def padded_values(
    kernel: Array,
    spec: ConvSpec,
    xp: Namespace,
    *,
    count: int | None,
    tol: float,
    iterations: int,
    capacity: int,
    start: Array | None = None,
    max_memory: int | None = None,
) -> tuple[Array, Array]:
    """A zero-padded layer's norm (``count=None``) or ``count`` largest singular values, differentiable.

    The iteration (:func:`lanczos_norm` per group, or :func:`block_lanczos`)
    runs on a detached copy of the kernel scaled to largest tap 1, so
    nothing it squares overflows or underflows. It ends with unit vectors
    ``v``; the values returned are ``||A(kernel) v||``, each a lower bound
    of the singular value it stands for, and differentiable with the
    singular value's own gradient (the envelope theorem). The norm is the
    largest over the groups; the top values are merged over the groups,
    descending. A non-finite kernel gives NaN (the iteration runs on zeros:
    no error, no host round trip). Returns ``(values, vectors)``; a norm's
    vectors ``(G, n_in)`` can start a later call (``start``). ``max_memory``
    bounds the layers' FFT matrices (see :class:`PaddedLayer`).
    """
    finite = xp.all(xp.isfinite(kernel))
    kernel = xp.where(finite, kernel, xp.zeros_like(kernel))
    detached = stop_gradient(kernel)
    unit, _ = unit_scale(detached, xp)
    scaled = PaddedLayer(unit, spec, xp, max_memory)
    if count is None:
        wide = wider_dtype(unit.dtype, xp, device_of(unit))
        check = None if wide is None else PaddedLayer(xp.astype(unit, wide), spec, xp, max_memory)
        vectors = lanczos_norm(
            scaled, tol=tol, iterations=iterations, capacity=capacity, start=start, check=check
        ).vector
        rows = vectors[None, ...]
    else:
        rows, _ = block_lanczos(scaled, count, tol=tol, iterations=iterations, capacity=capacity)
        vectors = rows
    rows = stop_gradient(rows)
    layer = PaddedLayer(kernel, spec, xp, max_memory)
    image = layer.apply(xp.reshape(rows, (rows.shape[0], *layer.input_shape)))
    norms = xp.linalg.vector_norm(xp.reshape(image, (rows.shape[0], spec.groups, -1)), axis=-1)
    top = xp.max(norms) if count is None else xp.flip(xp.sort(xp.reshape(norms, (-1,))), axis=0)[:count]
    return xp.where(finite, top, xp.full_like(top, float("nan"))), stop_gradient(vectors)


# --- the k largest singular values: block Lanczos with thick restarts -----------------------------------


#: The most vectors the block iteration keeps before it restarts.
BLOCK_CAPACITY = 96


class Block(NamedTuple):
    """The block iteration's subspace per group: orthonormal rows and what the layer makes of them.

    ``basis`` ``(size, G, n_in)``, ``images = A basis`` ``(size, G, n_out)``,
    ``normal = A^H A basis`` ``(size, G, n_in)``, ``gram`` the rows of
    ``images images^H`` ``(size, G, size)``, each row filled up to its own
    block; ``used`` rows hold vectors, the others zeros.
    """

    basis: Array
    images: Array
    normal: Array
    gram: Array
    used: Any


class RayleighRitz(NamedTuple):
    """Rayleigh-Ritz on a :class:`Block`.

    Ritz values of ``A^H A`` ``(G, keep)`` descending, their coefficients
    ``(G, keep, size)``, and the residual norms ``||A^H A x - theta x||`` of
    the first ``width`` ``(G, width)``.
    """

    values: Array
    coefficients: Array
    residuals: Array


def block_lanczos(
    layer: PaddedLayer, count: int, *, tol: float, iterations: int, capacity: int = BLOCK_CAPACITY
) -> tuple[Array, Array]:
    """Each group's ``count`` largest singular values by block Lanczos on ``A^H A``, thick-restarted.

    The subspace grows by blocks of ``b`` vectors: the residuals of the
    leading unconverged Ritz vectors, orthogonalised twice against the whole
    basis (full reorthogonalisation, so every Ritz value stays meaningful;
    a block also finds repeated singular values, which one vector cannot).
    Rayleigh-Ritz gives Ritz values ``theta`` (squared singular values) and
    residuals ``A^H A x_i - theta_i x_i`` from the stored images, computed,
    not estimated. By Kahan's theorem ``count`` eigenvalues of ``A^H A`` lie
    within ``||[r_1 .. r_count]||_2`` of the Ritz values, one each; the
    iteration stops once that (bounded by the Frobenius norm) is at most
    ``tol`` times the smallest of them, so each value returned is within
    ``tol`` (relative) of a singular value of its own. A full basis restarts
    from its best half. Returns the Ritz vectors ``(count, G, n_in)``
    (``||A x||`` is the value; at most the singular value of its rank) and
    whether each group is certified ``(G,)``.
    """
    xp, device, dtype = layer.xp, layer.device, layer.dtype
    groups = layer.input_shape[0]
    n_in, n_out = math.prod(layer.input_shape[1:]), math.prod(layer.output_shape[1:])
    real = xp.real(xp.zeros((), dtype=dtype)).dtype
    block = min(max(2, count), 8)
    width = max(count, block)  # the Ritz vectors whose residuals are needed
    keep = min(max(width + block, capacity // 2), n_in - block)
    size = keep + block * max(1, (min(capacity, n_in) - keep) // block)  # whole blocks after a restart
    floor = 64 * xp.finfo(real).eps

    def by_group(rows: Array) -> Array:
        return _by_group(rows, xp)

    def adjoint(rows: Array) -> Array:
        return _adjoint(rows, xp)

    def extend(space: Block, rows: Array) -> Block:
        b = rows.shape[0]
        w = layer.apply(xp.reshape(rows, (b, *layer.input_shape)))
        z = xp.reshape(layer.adjoint(w), (b, groups, n_in))
        w = xp.reshape(w, (b, groups, n_out))
        images = put_rows(space.images, space.used, w)
        cross = xp.conj(by_group(w)) @ xp.matrix_transpose(by_group(images))  # new rows of <A v_i, A v_j>
        return Block(
            put_rows(space.basis, space.used, rows),
            images,
            put_rows(space.normal, space.used, z),
            put_rows(space.gram, space.used, by_group(cross)),
            space.used + b,
        )

    def rayleigh_ritz(space: Block) -> RayleighRitz:
        return _rayleigh_ritz(space, keep, width, xp)

    def settled(ritz: RayleighRitz) -> Array:
        theta = ritz.values
        bound = xp.sqrt(xp.sum(ritz.residuals[:, :count] ** 2, axis=1))
        return bound <= tol * theta[:, count - 1] + floor * theta[:, 0]

    def expand(state: tuple[Block, RayleighRitz, Any]) -> tuple[Block, RayleighRitz, Any]:
        space, ritz, steps = state
        done = ritz.residuals <= tol * ritz.values[:, :width]
        order = xp.argsort(xp.astype(done, xp.int32), axis=1, stable=True)[:, :block]  # unconverged first
        picked = xp.take_along_axis(ritz.coefficients, order[:, :, None], axis=1)  # (G, b, size)
        theta = xp.astype(xp.take_along_axis(ritz.values, order, axis=1), dtype)[:, :, None]
        residual = picked @ by_group(space.normal) - theta * (picked @ by_group(space.basis))
        space = extend(space, _orthonormal(by_group(residual), space.basis, xp))
        return space, rayleigh_ritz(space), steps + 1

    def restart(space: Block, ritz: RayleighRitz) -> Block:
        """The best ``keep`` Ritz vectors as the new basis; their images follow without applying ``A``."""

        def rotate(stored: Array) -> Array:
            return put_rows(xp.zeros_like(stored), 0, by_group(ritz.coefficients @ by_group(stored)))

        eye = xp.eye(keep, size, dtype=space.gram.dtype, device=device)
        gram = by_group(eye[None, :, :] * xp.astype(ritz.values, space.gram.dtype)[:, :, None])
        gram = put_rows(xp.zeros_like(space.gram), 0, gram)
        return Block(rotate(space.basis), rotate(space.images), rotate(space.normal), gram, keep)

    def growing(state: tuple[Block, RayleighRitz, Any]) -> Array:
        space, ritz, steps = state
        return (space.used + block <= size) & (steps < iterations) & ~xp.all(settled(ritz))

    def cycle(state: tuple[Block, RayleighRitz, Any]) -> tuple[Block, RayleighRitz, Any]:
        space, ritz, steps = while_loop(growing, expand, state)
        space = restart(space, ritz)
        return space, rayleigh_ritz(space), steps

    def unfinished(state: tuple[Block, RayleighRitz, Any]) -> Array:
        _, ritz, steps = state
        return (steps < iterations) & ~xp.all(settled(ritz))

    empty = Block(
        xp.zeros((size, groups, n_in), dtype=dtype, device=device),
        xp.zeros((size, groups, n_out), dtype=dtype, device=device),
        xp.zeros((size, groups, n_in), dtype=dtype, device=device),
        xp.zeros((size, groups, size), dtype=dtype, device=device),
        0,
    )
    noise = xp.reshape(start_vector(block * groups * n_in, dtype, xp, device), (block, groups, n_in))
    space = extend(empty, _orthonormal(noise, empty.basis, xp))
    space, ritz, _ = while_loop(unfinished, cycle, (space, rayleigh_ritz(space), 0))
    vectors = ritz.coefficients[:, :count, :] @ by_group(space.basis)  # (G, count, n_in)
    return by_group(vectors), settled(ritz)


def _by_group(rows: Array, xp: Namespace) -> Array:
    return xp.permute_dims(rows, (1, 0, 2))  # (rows, G, n) <-> (G, rows, n)


def _adjoint(rows: Array, xp: Namespace) -> Array:
    flipped = xp.matrix_transpose(rows)
    return xp.conj(flipped) if xp.isdtype(rows.dtype, "complex floating") else flipped


def _orthonormal(candidates: Array, basis: Array, xp: Namespace) -> Array:
    """Rows ``(b, G, n)`` made orthonormal and orthogonal to the ``basis`` rows ``(size, G, n)``.

    Two projections, a QR, and one more of each: round-off (or a breakdown,
    whose QR gives unit noise) leaves nothing along the basis.
    """
    basis, q = _by_group(basis, xp), _by_group(candidates, xp)
    for passes in (2, 1):
        for _ in range(passes):
            q = q - _adjoint(basis @ _adjoint(q, xp), xp) @ basis
        q, _ = xp.linalg.qr(xp.matrix_transpose(q))
        q = xp.matrix_transpose(q)
    return _by_group(q, xp)


def _rayleigh_ritz(space: Block, keep: int, width: int, xp: Namespace) -> RayleighRitz:
    """Rayleigh-Ritz on ``space``: the ``keep`` largest Ritz values, the first ``width`` residuals."""
    size = space.gram.shape[0]
    index = xp.arange(size, device=device_of(space.gram))
    filled = xp.permute_dims(space.gram, (1, 0, 2))  # (G, size, size)
    below = index[:, None] >= index[None, :]
    gram = xp.where(below, filled, _adjoint(filled, xp))
    used = index < space.used
    # Unused rows get -1 on the diagonal: their Ritz values sort below every real one (>= 0).
    unused = xp.astype(~used[:, None] & (index[:, None] == index[None, :]), gram.dtype)
    gram = xp.where(used[:, None] & used[None, :], gram, xp.zeros_like(gram)) - unused
    theta, vectors = xp.linalg.eigh(gram)
    theta = xp.flip(theta, axis=-1)[:, :keep]
    coefficients = xp.matrix_transpose(xp.flip(vectors, axis=-1)[:, :, :keep])
    lead = coefficients[:, :width, :]
    theta_lead = xp.astype(theta[:, :width], space.basis.dtype)[:, :, None]
    residual = lead @ _by_group(space.normal, xp) - theta_lead * (lead @ _by_group(space.basis, xp))
    return RayleighRitz(theta, coefficients, xp.linalg.vector_norm(residual, axis=-1))
