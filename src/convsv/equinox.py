"""Equinox adapter: spectral normalisation of a convolution by its true operator norm.

:class:`SpectralNorm` is ``equinox.nn.SpectralNorm`` (Miyato et al., ICLR
2018) for ``equinox.nn.Conv`` and ``equinox.nn.ConvTranspose`` layers, with
one change: its power steps run on the layer's own map (the layer's own call,
with its transposition, stride, padding, output padding, dilation and groups,
on the input map it is given), not on the kernel reshaped into a matrix, so
the layer's operator norm is what it holds at 1. The steps are the PyTorch
adapter's (:func:`convsv.torch.spectral_norm`), written once for both; the
vectors' tracking is shared with :mod:`convsv.flax`.
Importing this module imports jax and equinox.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import integer, real
from ._checks import shape as shape_of
from ._jax_spectral_norm import LayerMap, divisor, start, track

__all__ = ["SpectralNorm"]


def _linear_map(layer: Any) -> LayerMap:
    """The layer's own call on a batch (``jax.vmap``), with the weight swapped in and a zero bias.

    Zeroed rather than removed: ``use_bias`` is a static field, and the call adds ``bias`` when it
    is set.
    """
    if layer.bias is not None:
        layer = eqx.tree_at(lambda conv: conv.bias, layer, jnp.zeros_like(layer.bias))

    def apply(x: jax.Array, weight: jax.Array) -> jax.Array:
        return jax.vmap(eqx.tree_at(lambda conv: conv.weight, layer, weight))(x)  # type: ignore[no-any-return]

    return apply


class SpectralNorm(eqx.Module):
    """An ``equinox.nn.Conv`` or ``ConvTranspose`` whose weight is divided by its operator norm, as it trains.

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
    layer : equinox.nn.Conv or equinox.nn.ConvTranspose
        A ``Conv``, ``Conv1d/2d/3d``, ``ConvTranspose`` or
        ``ConvTranspose1d/2d/3d``, with any stride, padding (and padding
        mode), output padding, dilation and groups: the map is the layer's
        own call without its bias.
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
        If ``layer`` is not an ``equinox.nn.Conv`` or
        ``equinox.nn.ConvTranspose`` (``Linear`` and others).
    ValueError
        For an ``input_shape`` of another rank than the layer's.
    TypeError or ValueError
        From the layer's own call, for an ``input_shape`` it cannot take
        (smaller than the kernel without padding, say).

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
        if not isinstance(layer, (eqx.nn.Conv, eqx.nn.ConvTranspose)):
            msg = (
                "convsv.equinox.SpectralNorm normalises equinox.nn.Conv and equinox.nn.ConvTranspose "
                f"layers, got {type(layer).__name__}"
            )
            raise TypeError(msg)
        shape = shape_of(input_shape, "input_shape", layer.num_spatial_dims)
        self.layer = layer
        self.input_shape = shape
        self.n_power_iterations = integer(n_power_iterations, "n_power_iterations")
        self.eps = real(eps, "eps", "a positive float", above=0.0)
        self.inference = bool(inference)
        weight = layer.weight
        u, v, p = start(_linear_map(layer), weight, (1, layer.in_channels, *shape), key, self.eps)
        self.state_index = eqx.nn.StateIndex((u, v, p, weight))

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
        count = None if inference else self.n_power_iterations
        apply_map = _linear_map(self.layer)
        u, v, p = track(apply_map, weight, (u, v, p), seen, count, self.eps)
        current = jax.lax.stop_gradient(weight)
        state = state.set(self.state_index, (u, v, p, current))
        layer = eqx.tree_at(lambda conv: conv.weight, self.layer, weight / divisor(apply_map, weight, u, v))
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
            ``weight / <u, A(weight) v>``, in the layer's layout (its
            ``weight``'s: ``(out, in / groups, *kernel_size)``, a
            ``ConvTranspose``'s too).
        """
        u, v, _, _ = state.get(self.state_index)
        weight: jax.Array = self.layer.weight
        normalised: jax.Array = weight / divisor(_linear_map(self.layer), weight, u, v)
        return normalised
