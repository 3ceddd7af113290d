"""The JAX spectral normalisations' shared part: the tracked vectors and the divisor, on a layer's map.

:mod:`convsv.equinox` and :mod:`convsv.flax` hold the same state -- the unit vectors ``u`` and
``v``, the last step's direction ``p`` and the kernel the vectors were last stepped with -- and
differ only in how their framework stores it and applies the layer. The map is the layer's own
computation (a :data:`LayerMap`: a batch of input maps and a weight in, the layer's output
without bias out), so every option the layer has -- transposition, padding, output padding,
dilation, groups -- is the layer's, with no second implementation to drift from it; its adjoint is
``jax.vjp`` of it. The steps are :func:`convsv._power_steps.locally_optimal_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _power_steps as power_steps
from ._power_steps import WARM_STEPS, unit

Vectors = tuple[jax.Array, jax.Array, jax.Array]

#: The linear part of a layer: ``(batch of input maps, weight) -> batch of outputs``, no bias.
LayerMap = Callable[[jax.Array, jax.Array], jax.Array]


def steps(apply_map: LayerMap, weight: jax.Array, vectors: Vectors, count: int, eps: float) -> Vectors:
    """``count`` locally optimal steps from ``(u, v, p)``, the weight held constant."""
    return power_steps.steps(vectors, count, _applied(apply_map, weight), jax.vjp, eps, jnp)


def _applied(apply_map: LayerMap, weight: jax.Array) -> Callable[[jax.Array], jax.Array]:
    weight = jax.lax.stop_gradient(weight)
    return lambda x: apply_map(x, weight)


def start(
    apply_map: LayerMap,
    weight: jax.Array,
    sample_shape: tuple[int, ...],
    key: jax.Array,
    eps: float,
) -> Vectors:
    """Fresh vectors: a random unit ``v`` of ``sample_shape`` (a batch of one), ``WARM_STEPS`` steps on.

    Applying the map here also checks that the input size fits the layer.
    """
    v = unit(jax.random.normal(key, sample_shape, weight.dtype), eps, jnp)
    u = unit(apply_map(v, jax.lax.stop_gradient(weight)), eps, jnp)
    return steps(apply_map, weight, (u, v, jnp.zeros_like(v)), WARM_STEPS, eps)


def track(
    apply_map: LayerMap,
    weight: jax.Array,
    vectors: Vectors,
    seen: jax.Array,
    count: int | None,
    eps: float,
) -> Vectors:
    """The vectors for this call: ``count`` steps in training, ``None`` for inference.

    Inference uses the stored vectors, but first brings them up to date (:func:`refresh`, in a
    ``jax.lax.cond``, so it stays jit-safe) if the weight differs from ``seen``, the one they were
    last stepped with: an evaluation right after a training update would otherwise divide by a
    stale norm.
    """
    current = jax.lax.stop_gradient(weight)
    if count is not None:
        return steps(apply_map, current, vectors, count, eps)
    updated: Vectors = jax.lax.cond(
        jnp.any(current != seen),
        lambda stored: refresh(apply_map, current, stored, eps),
        lambda stored: stored,
        vectors,
    )
    return updated


def refresh(apply_map: LayerMap, weight: jax.Array, vectors: Vectors, eps: float) -> Vectors:
    """:func:`convsv._power_steps.refresh`, with a fixed random map (evaluations repeat)."""
    r = jax.random.normal(jax.random.key(0), vectors[1].shape, vectors[1].dtype)
    # One loop, not 30 unrolled steps: the inference branch compiles in seconds, not tens of them.
    return power_steps.refresh(vectors, r, _applied(apply_map, weight), jax.vjp, eps, jnp, jax.lax.fori_loop)


def divisor(apply_map: LayerMap, weight: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """``<u, A(weight) v>``, differentiable in the weight with ``u`` and ``v`` held fixed."""
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return jnp.sum(u * apply_map(v, weight))
