"""Equinox adapter: spectral normalisation of a convolution by its true operator norm.

:class:`SpectralNorm` is ``equinox.nn.SpectralNorm`` (Miyato et al., ICLR
2018) for ``equinox.nn.Conv`` layers, with one change: its power steps run on
the layer's own map (its stride, dilation, groups, zero or circular padding,
on the input map it is given), not on the kernel reshaped into a matrix, so
the layer's operator norm is what it holds at 1. The steps are the PyTorch
adapter's (:func:`convsv.torch.spectral_norm`), written once for both.
Importing this module imports jax and equinox.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import integer, real
from ._checks import shape as shape_of
from ._frameworks.equinox import conv_options, explicit_pads
from ._power_steps import WARM_STEPS, locally_optimal_step, unit

__all__ = ["SpectralNorm"]

_NUMBERS = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW"), 3: ("NCDHW", "OIDHW", "NCDHW")}


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """The linear part of an ``equinox.nn.Conv`` (no bias) on batched maps ``(B, C, *spatial)``."""

    ndim: int
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    circular: bool

    def __call__(self, x: jax.Array, weight: jax.Array) -> jax.Array:
        pads = self.pads
        if self.circular:
            x = jnp.pad(x, ((0, 0), (0, 0), *pads), mode="wrap")
            pads = ((0, 0),) * self.ndim
        return jax.lax.conv_general_dilated(
            x,
            weight,
            self.stride,
            pads,
            rhs_dilation=self.dilation,
            feature_group_count=self.groups,
            dimension_numbers=_NUMBERS[self.ndim],
        )


def _steps(
    apply_map: LayerMap, weight: jax.Array, vectors: tuple[jax.Array, ...], steps: int, eps: float
) -> Any:
    """``steps`` locally optimal steps from ``(u, v, p)``, the weight held constant."""
    weight = jax.lax.stop_gradient(weight)

    def apply(x: jax.Array) -> jax.Array:
        return apply_map(x, weight)

    u, v, p = vectors
    for _ in range(steps):
        u, v, p = locally_optimal_step(v, p, apply, jax.vjp, eps, jnp)
    return u, v, p


class SpectralNorm(eqx.Module):
    """An ``equinox.nn.Conv`` whose weight is divided by the layer's operator norm, estimated as it trains.

    Used as ``equinox.nn.SpectralNorm`` is: made with
    ``equinox.nn.make_with_state(SpectralNorm)(layer, input_shape, key=key)``
    and called as ``layer(x, state)`` (``x`` unbatched, ``(channels,
    *spatial)``), returning ``(y, state)``. Outside inference each call takes
    ``n_power_iterations`` locally optimal power steps on the layer's map and
    stores the vectors in ``state``; in inference the stored vectors are used,
    first brought up to date (``WARM_STEPS`` steps) if the weight changed
    since they were last updated. The divisor ``<u, A(weight) v>`` is
    differentiable in the weight with ``u`` and ``v`` held fixed. Under
    ``jax.jit`` (or ``eqx.filter_jit``) everything but the arrays is static.

    Parameters
    ----------
    layer : equinox.nn.Conv
        A ``Conv``, ``Conv1d``, ``Conv2d`` or ``Conv3d`` with
        ``padding_mode`` ``"ZEROS"`` or ``"CIRCULAR"``.
    input_shape : int or sequence of int
        The spatial shape of the layer's input, whose operator norm is
        normalised (an int: every axis).
    n_power_iterations : int, optional
        Steps per call outside inference (default 1).
    eps : float, optional
        Floor of the vectors' norms when they are normalised (default 1e-12).
    inference : bool, optional
        The default mode of calls (default False); ``equinox.nn.inference_mode``
        sets it.
    key : jax.Array
        A PRNG key for the starting vector.

    Raises
    ------
    TypeError
        If ``layer`` is not an ``equinox.nn.Conv`` (``ConvTranspose`` is not
        supported yet).
    ValueError
        For another padding mode, circular padding that is not a circulant
        map, or an ``input_shape`` that does not fit the layer.

    See Also
    --------
    convsv.torch.spectral_norm : The same for PyTorch.

    Examples
    --------
    >>> import equinox as eqx, jax
    >>> import convsv
    >>> from convsv.equinox import SpectralNorm
    >>> conv = eqx.nn.Conv2d(4, 4, 3, padding=1, key=jax.random.key(0))
    >>> layer, state = eqx.nn.make_with_state(SpectralNorm)(conv, 8, key=jax.random.key(1))
    >>> x = jax.random.normal(jax.random.key(2), (4, 8, 8))
    >>> for _ in range(20):
    ...     y, state = layer(x, state)
    >>> weight = layer.normalised_weight(state)
    >>> bool(abs(convsv.operator_norm(weight, 8, layout="OIHW", padding=1) - 1) < 1e-3)
    True
    """

    layer: Any
    state_index: eqx.nn.StateIndex[Any]
    map: LayerMap = eqx.field(static=True)
    input_shape: tuple[int, ...] = eqx.field(static=True)
    n_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        layer: Any,
        input_shape: Any,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        key: jax.Array,
    ) -> None:
        if not isinstance(layer, eqx.nn.Conv):
            msg = f"convsv.equinox.SpectralNorm normalises equinox.nn.Conv layers, got {type(layer).__name__}"
            raise TypeError(msg)
        shape = shape_of(input_shape, "input_shape", layer.num_spatial_dims)
        conv_options(layer, shape)  # refuses the padding modes convsv does not model
        self.layer = layer
        self.map = LayerMap(
            ndim=layer.num_spatial_dims,
            stride=tuple(layer.stride),
            pads=explicit_pads(layer, shape),
            dilation=tuple(layer.dilation),
            groups=int(layer.groups),
            circular=layer.padding_mode == "CIRCULAR",
        )
        self.input_shape = shape
        self.n_power_iterations = integer(n_power_iterations, "n_power_iterations")
        self.eps = real(eps, "eps", "a positive float", above=0.0)
        self.inference = bool(inference)
        weight = layer.weight
        v = unit(jax.random.normal(key, (1, layer.in_channels, *shape), weight.dtype), self.eps, jnp)
        u = unit(self.map(v, weight), self.eps, jnp)  # also checks that the map fits the layer
        u, v, p = _steps(self.map, weight, (u, v, jnp.zeros_like(v)), WARM_STEPS, self.eps)
        self.state_index = eqx.nn.StateIndex((u, v, p, weight))

    def _divisor(self, weight: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
        return jnp.sum(u * self.map(v, weight))

    def __call__(self, x: jax.Array, state: eqx.nn.State, *, inference: bool | None = None) -> Any:
        """``(layer with the normalised weight)(x)`` and the new state.

        Parameters
        ----------
        x : jax.Array
            The layer's input, unbatched: ``(channels, *input_shape)``.
        state : equinox.nn.State
            The state ``make_with_state`` returned, or the last call's.
        inference : bool, optional
            Use the stored vectors (brought up to date if the weight moved)
            instead of stepping them. Default: the module's ``inference``.

        Returns
        -------
        y : jax.Array
            The layer's output with its weight divided by the norm.
        state : equinox.nn.State
            The state with the vectors after this call.
        """
        inference = self.inference if inference is None else inference
        weight = self.layer.weight
        u, v, p, seen = state.get(self.state_index)
        current = jax.lax.stop_gradient(weight)
        if inference:
            moved = jnp.any(current != seen)
            u, v, p = jax.lax.cond(
                moved,
                lambda vectors: _steps(self.map, current, vectors, WARM_STEPS, self.eps),
                lambda vectors: vectors,
                (u, v, p),
            )
        else:
            u, v, p = _steps(self.map, current, (u, v, p), self.n_power_iterations, self.eps)
        state = state.set(self.state_index, (u, v, p, current))
        layer = eqx.tree_at(lambda conv: conv.weight, self.layer, weight / self._divisor(weight, u, v))
        return layer(x), state

    def normalised_weight(self, state: eqx.nn.State) -> jax.Array:
        """The weight as the layer uses it with the vectors in ``state`` (no step taken).

        Parameters
        ----------
        state : equinox.nn.State
            The layer's state.

        Returns
        -------
        jax.Array
            ``weight / <u, A(weight) v>``, in the layer's layout (OIHW).
        """
        u, v, _, _ = state.get(self.state_index)
        weight: jax.Array = self.layer.weight
        normalised: jax.Array = weight / self._divisor(weight, u, v)
        return normalised
