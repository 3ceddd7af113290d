"""Equinox adapter: spectral normalisation of a convolution by its true operator norm.

:class:`SpectralNorm` is ``equinox.nn.SpectralNorm`` (Miyato et al., ICLR
2018) for ``equinox.nn.Conv`` layers, with one change: its power steps run on
the layer's own map (its stride, dilation, groups, zero or circular padding,
on the input map it is given), not on the kernel reshaped into a matrix, so
the layer's operator norm is what it holds at 1. The steps are the PyTorch
adapter's (:func:`convsv.torch.spectral_norm`), written once for both; the
layer's map and the vectors' tracking are shared with :mod:`convsv.flax`.
Importing this module imports jax and equinox.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from ._checks import integer, real
from ._checks import shape as shape_of
from ._frameworks.equinox import conv_options, explicit_pads
from ._jax_spectral_norm import LayerMap, divisor, start, track

__all__ = ["SpectralNorm"]


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
            channels_last=False,
        )
        self.input_shape = shape
        self.n_power_iterations = integer(n_power_iterations, "n_power_iterations")
        self.eps = real(eps, "eps", "a positive float", above=0.0)
        self.inference = bool(inference)
        weight = layer.weight
        u, v, p = start(self.map, weight, layer.in_channels, shape, key, self.eps)
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
        u, v, p = track(self.map, weight, (u, v, p), seen, count, self.eps)
        current = jax.lax.stop_gradient(weight)
        state = state.set(self.state_index, (u, v, p, current))
        layer = eqx.tree_at(lambda conv: conv.weight, self.layer, weight / divisor(self.map, weight, u, v))
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
        normalised: jax.Array = weight / divisor(self.map, weight, u, v)
        return normalised
