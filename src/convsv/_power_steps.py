"""The spectral normalisations' tracker: locally optimal power steps on a layer's own map.

Written once over the array API for every framework's normalisation: the layer is given as
``apply`` (its linear map) and the framework's ``vjp`` (``torch.func.vjp``, ``jax.vjp``, a
``tf.GradientTape`` for Keras on TensorFlow), which gives the map's adjoint, so the two are exact
transposes whatever the layer's options.

Each step is a power step made locally optimal (Knyazev's LOBPCG for the largest eigenvalue of
``A^T A``): the next ``v`` is the best unit vector, by Rayleigh-Ritz, in the span of ``v``, the
power step's residual ``A^T A v - rho v`` and the previous step's direction ``p``. A
convolution's top singular values lie close together, where a plain power step gains little.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._lib import Array, Namespace

#: Steps that warm fresh vectors, and that bring stored ones up to date (:func:`refresh`) when an
#: evaluation finds the weight moved since they were last stepped.
WARM_STEPS = 15

#: ``(u, v, p)``: the unit image of ``v``, the unit input map ``v``, the last step's direction.
Vectors = tuple[Array, Array, Array]


def unit(x: Array, eps: float, xp: Namespace) -> Array:
    """``x / max(||x||, eps)``."""
    return x / xp.maximum(xp.linalg.vector_norm(x), xp.asarray(eps, dtype=x.dtype))


def _dot(a: Array, b: Array, xp: Namespace) -> Array:
    return xp.sum(a * b)


def _orthonormal(x: Array, basis: list[Array], eps: float, xp: Namespace) -> Array:
    """``x`` orthogonalised against the orthonormal ``basis`` (twice: classical Gram-Schmidt), unit.

    A vanishing ``x`` leaves a tiny vector, harmless to the Rayleigh-Ritz step that follows.
    """
    for _ in range(2):
        for q in basis:
            x = x - _dot(q, x, xp) * q
    return unit(x, eps, xp)


def locally_optimal_step(
    v: Array,
    p: Array,
    apply: Callable[[Array], Array],
    vjp: Callable[..., tuple[Any, ...]],
    eps: float,
    xp: Namespace,
) -> tuple[Array, Array, Array]:
    """One step from the unit input map ``v`` (shape ``(1, ...)``) and the last direction ``p``.

    Returns ``(u, v, p)``: the unit image of the new ``v``, the new unit ``v``, and the step
    taken (orthogonal to the old ``v``), the next call's ``p``. ``vjp(apply, v)`` must return the
    image and a function of the cotangent, as ``torch.func.vjp`` and ``jax.vjp`` do. Five maps of
    one sample: the ``vjp`` (a map and its adjoint) and ``apply`` on two more.
    """
    image, adjoint = vjp(apply, v)[:2]
    gram = adjoint(image)[0]  # A^T A v
    residual = gram - _dot(v, gram, xp) * v
    q1 = _orthonormal(residual, [v], eps, xp)
    q2 = _orthonormal(p, [v, q1], eps, xp)
    shape = image.shape
    images = xp.concat([image, apply(xp.concat([q1, q2]))])
    images = xp.reshape(images, (3, -1))
    _, vectors = xp.linalg.eigh(xp.matmul(images, xp.matrix_transpose(images)))
    c = vectors[:, -1]  # the largest Ritz value's
    new = c[0] * v + c[1] * q1 + c[2] * q2
    scale = xp.maximum(xp.linalg.vector_norm(new), xp.asarray(eps, dtype=new.dtype))
    u = unit(xp.reshape(xp.matmul(c, images), shape), eps, xp)
    return u, new / scale, (c[1] * q1 + c[2] * q2) / scale


def steps(
    vectors: Vectors,
    count: int,
    apply: Callable[[Array], Array],
    vjp: Callable[..., Any],
    eps: float,
    xp: Namespace,
    loop: Callable[..., Any] | None = None,
) -> Vectors:
    """``count`` locally optimal steps from ``(u, v, p)``: the new ``(u, v, p)``.

    By default a Python loop, which a trace unrolls (a loop primitive would be compiled again at
    every eager call of a Keras layer). ``loop`` (``jax.lax.fori_loop``) keeps a long run of
    steps one loop in a compiled program, which compiles in a fraction of the time.
    """

    def body(_: Any, state: Vectors) -> Vectors:
        return locally_optimal_step(state[1], state[2], apply, vjp, eps, xp)

    if loop is not None:
        looped: Vectors = loop(0, count, body, vectors)
        return looped
    for i in range(count):
        vectors = body(i, vectors)
    return vectors


def refresh(
    vectors: Vectors,
    r: Array,
    apply: Callable[[Array], Array],
    vjp: Callable[..., Any],
    eps: float,
    xp: Namespace,
    loop: Callable[..., Any] | None = None,
) -> Vectors:
    """The better of ``WARM_STEPS`` steps from the stored vectors and from a restart: the new ``(u, v, p)``.

    Steps that track a moving weight can lose the part of ``v`` along a singular vector that was
    not on top (a grouped or depthwise layer's other groups, which the steps damp to nothing), and
    then miss it when it overtakes. The restart is ``v`` and the fixed random map ``r`` in equal
    parts, which gives every direction its share back; the warm steps keep what tracking gained
    where nothing overtook. The larger ``<u, A v>`` (both are lower bounds on the norm) wins.
    ``loop`` is :func:`steps`'.
    """
    _, v, p = vectors
    warm = steps(vectors, WARM_STEPS, apply, vjp, eps, xp, loop)
    start = unit(v + unit(r, eps, xp), eps, xp)
    fresh = steps((vectors[0], start, xp.zeros_like(p)), WARM_STEPS, apply, vjp, eps, xp, loop)
    better = _dot(warm[0], apply(warm[1]), xp) >= _dot(fresh[0], apply(fresh[1]), xp)
    u, v, p = (xp.where(better, a, b) for a, b in zip(warm, fresh, strict=True))
    return u, v, p
