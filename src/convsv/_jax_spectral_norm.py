"""The JAX spectral normalisations' shared part: a layer's map, its tracked vectors, the divisor.

:mod:`convsv.equinox` (channels first: ``NCHW`` maps, ``OIHW`` kernels) and :mod:`convsv.flax`
(channels last: ``NHWC``, ``HWIO``) hold the same state -- the unit vectors ``u`` and ``v``, the last
step's direction ``p`` and the kernel the vectors were last stepped with -- and differ only in how
their framework stores and applies it. The steps are :func:`convsv._power_steps.locally_optimal_step`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _power_steps as power_steps
from ._power_steps import WARM_STEPS, unit

Vectors = tuple[jax.Array, jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """The linear part of a convolution (no bias) on batched maps, channels first or last.

    ``pads`` are ``(before, after)`` per spatial axis: zeros, or with ``circular`` the positions
    wrapped around before a convolution without padding (as Equinox and Flax do).
    """

    ndim: int
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    circular: bool
    channels_last: bool

    @property
    def dimension_numbers(self) -> tuple[str, str, str]:
        """``jax.lax`` dimension numbers: ``("NCHW", "OIHW", "NCHW")`` or ``("NHWC", "HWIO", "NHWC")``."""
        spatial = "DHW"[3 - self.ndim :]
        if self.channels_last:
            return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"
        return f"NC{spatial}", f"OI{spatial}", f"NC{spatial}"

    def sample_shape(self, channels: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one input map in a batch of one."""
        return (1, *spatial, channels) if self.channels_last else (1, channels, *spatial)

    def __call__(self, x: jax.Array, weight: jax.Array) -> jax.Array:
        pads = self.pads
        if self.circular:
            unpadded = ((0, 0),)
            wrap = (*unpadded, *pads, *unpadded) if self.channels_last else (*unpadded, *unpadded, *pads)
            x = jnp.pad(x, wrap, mode="wrap")
            pads = unpadded * self.ndim
        return jax.lax.conv_general_dilated(
            x,
            weight,
            self.stride,
            pads,
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
            dimension_numbers=self.dimension_numbers,
        )


def steps(apply_map: LayerMap, weight: jax.Array, vectors: Vectors, count: int, eps: float) -> Vectors:
    """``count`` locally optimal steps from ``(u, v, p)``, the weight held constant."""
    return power_steps.steps(vectors, count, _applied(apply_map, weight), jax.vjp, eps, jnp)


def _applied(apply_map: LayerMap, weight: jax.Array) -> Callable[[jax.Array], jax.Array]:
    weight = jax.lax.stop_gradient(weight)
    return lambda x: apply_map(x, weight)


def start(
    apply_map: LayerMap,
    weight: jax.Array,
    channels: int,
    spatial: tuple[int, ...],
    key: jax.Array,
    eps: float,
) -> Vectors:
    """Fresh vectors: a random unit ``v`` and ``WARM_STEPS`` steps from it.

    Applying the map here also checks that it fits the layer (channels, groups, input size).
    """
    v = unit(jax.random.normal(key, apply_map.sample_shape(channels, spatial), weight.dtype), eps, jnp)
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
    return power_steps.refresh(vectors, r, _applied(apply_map, weight), jax.vjp, eps, jnp)


def divisor(apply_map: LayerMap, weight: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """``<u, A(weight) v>``, differentiable in the weight with ``u`` and ``v`` held fixed."""
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return jnp.sum(u * apply_map(v, weight))
