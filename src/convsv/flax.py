"""Flax NNX adapter: spectral normalisation of a convolution by its true operator norm.

:class:`SpectralNorm` is ``flax.nnx.SpectralNorm`` (Miyato et al., ICLR 2018)
for ``flax.nnx.Conv`` and ``flax.nnx.ConvTranspose`` layers, with two
changes: its power steps run on the layer's own map (a copy of the layer with
a zero bias, so its transposition, strides, padding, dilation and groups are
its own, on the input map it is given), not on the kernel reshaped into a
matrix, so the layer's operator norm is what it holds at 1; and the wrapped
layer's kernel parameter is left as it is. The steps and the vectors'
tracking are those of :mod:`convsv.equinox`, written once over JAX arrays
for both.
Importing this module imports jax and flax.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ._checks import integer, real
from ._checks import shape as shape_of
from ._frameworks.flax import spatial_rank
from ._jax_spectral_norm import LayerMap, divisor, start, track

__all__ = ["SpectralNorm"]


def _with_kernel(layer: Any, kernel: jax.Array, *, bias: bool = True) -> Any:
    """A copy of ``layer`` (``nnx.split`` / ``nnx.merge``) with ``kernel``, and a zero bias unless ``bias``.

    The layer's own parameters are left as they are.
    """
    graphdef, state = nnx.split(layer)
    param: Any = state["kernel"]
    state["kernel"] = param.replace(kernel)
    if not bias and "bias" in state:
        offset: Any = state["bias"]
        state["bias"] = offset.replace(jnp.zeros_like(offset[...]))
    return nnx.merge(graphdef, state)


def _linear_map(layer: Any) -> LayerMap:
    """The layer's own call on a batch of maps, with the kernel swapped in and a zero bias."""
    return lambda x, kernel: _with_kernel(layer, kernel, bias=False)(x)


class SpectralNorm(nnx.Module):
    """An ``nnx.Conv`` or ``ConvTranspose`` whose kernel is divided by its operator norm, as it trains.

    Used as ``flax.nnx.SpectralNorm`` is: ``SpectralNorm(conv, input_shape,
    rngs=rngs)``, called as ``layer(x, update_stats=...)`` with the layer's
    own input (``(batch..., *input_shape, in_features)``). With
    ``update_stats=True`` each call takes ``n_steps`` locally optimal power
    steps on the layer's map and stores the vectors in ``nnx.BatchStat``
    variables; with ``False`` the stored vectors are used, first brought up
    to date (``WARM_STEPS`` steps, stored too) if the kernel changed since
    they were last stepped. The layer's output is then the wrapped layer's,
    with its kernel divided by ``<u, A(kernel) v>``, a divisor
    differentiable in the kernel with ``u`` and ``v`` held fixed.
    ``model.eval()`` and ``model.train()`` set the default as they do for
    ``nnx.BatchNorm`` (through ``use_running_average``, the opposite of
    ``update_stats``), and so does ``nnx.view``. Works under ``nnx.jit``
    and in ``nnx.Optimizer`` loops.

    Unlike ``flax.nnx.SpectralNorm``, the kernel parameter is never
    overwritten with the normalised kernel: the layer is applied through a
    copy made with ``nnx.split`` / ``nnx.merge`` that holds the normalised
    kernel. The parameter stays what the optimizer updates (normalising it
    in place would make each call divide an already divided kernel again,
    and put the optimizer's steps on the divided one);
    :meth:`normalised_kernel` gives the kernel as used.

    Parameters
    ----------
    layer_instance : flax.nnx.Conv or flax.nnx.ConvTranspose
        A Conv or ConvTranspose with any of its options: ``padding``
        (``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"CAUSAL"``, ints or
        pairs...), ``strides``, ``kernel_dilation``, a Conv's
        ``feature_group_count`` and ``input_dilation``, a ``mask``, a
        ConvTranspose's ``transpose_kernel``: the map is the layer's own
        call without its bias.
    input_shape : int or sequence of int
        The spatial shape of the layer's input, whose operator norm is
        normalised (an int: every axis). Calls with another shape are refused.
    n_steps : int, optional
        Steps per call with ``update_stats=True`` (default 1).
    epsilon : float, optional
        Floor of the vectors' norms when they are normalised (default 1e-12).
    update_stats : bool, optional
        The default of calls (default True).
    rngs : flax.nnx.Rngs
        Random numbers for the starting vector (its ``params`` stream).

    Raises
    ------
    TypeError
        If ``layer_instance`` is not an ``nnx.Conv`` or ``nnx.ConvTranspose``
        (``nnx.Linear``, Linen layers...).
    ValueError
        For an ``input_shape`` of another rank than the layer's.
    TypeError or ValueError
        From the layer's own call, for an ``input_shape`` it cannot take.

    See Also
    --------
    convsv.equinox.SpectralNorm : The same for Equinox.
    convsv.torch.spectral_norm : The same for PyTorch.

    Notes
    -----
    Names follow ``flax.nnx.SpectralNorm``: ``layer_instance``, ``n_steps``,
    ``epsilon``, ``update_stats``, ``rngs``, and the vectors are
    ``nnx.BatchStat`` variables (``u``, ``v``, the last step's direction
    ``p`` and the kernel they were stepped with, ``seen_kernel``), so code
    that splits a model into ``nnx.Param`` and ``nnx.BatchStat`` state
    handles them as it handles ``nnx.BatchNorm``'s.

    Examples
    --------
    >>> import jax
    >>> from flax import nnx
    >>> import convsv
    >>> from convsv.flax import SpectralNorm
    >>> conv = nnx.Conv(4, 4, (3, 3), padding=1, rngs=nnx.Rngs(0))
    >>> layer = SpectralNorm(conv, 8, rngs=nnx.Rngs(1))
    >>> x = jax.random.normal(jax.random.key(2), (2, 8, 8, 4))
    >>> for _ in range(20):
    ...     y = layer(x)
    >>> kernel = layer.normalised_kernel()
    >>> bool(abs(convsv.operator_norm(kernel, 8, layout="HWIO", padding=1) - 1) < 1e-3)
    True
    """

    def __init__(
        self,
        layer_instance: Any,
        input_shape: Any,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        update_stats: bool = True,
        rngs: nnx.Rngs,
    ) -> None:
        if not isinstance(layer_instance, (nnx.Conv, nnx.ConvTranspose)):
            msg = (
                "convsv.flax.SpectralNorm normalises flax.nnx.Conv and flax.nnx.ConvTranspose layers "
                f"(layer_instance), got {type(layer_instance).__name__}"
            )
            raise TypeError(msg)
        shape = shape_of(input_shape, "input_shape", spatial_rank(layer_instance))
        self.layer_instance = layer_instance
        self.input_shape = shape
        self.n_steps = integer(n_steps, "n_steps")
        self.epsilon = real(epsilon, "epsilon", "a positive float", above=0.0)
        # As nnx.SpectralNorm and nnx.BatchNorm: Module.train() / eval() set this attribute.
        self.use_running_average = not update_stats
        kernel = layer_instance.kernel[...]
        key = rngs.params()
        sample = (1, *shape, layer_instance.in_features)
        u, v, p = start(_linear_map(layer_instance), kernel, sample, key, self.epsilon)
        self.u, self.v, self.p = nnx.BatchStat(u), nnx.BatchStat(v), nnx.BatchStat(p)
        self.seen_kernel = nnx.BatchStat(kernel)

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Set the default mode of calls, as ``nnx.view`` asks (``nnx.BatchNorm``'s convention).

        Parameters
        ----------
        use_running_average : bool, optional
            If True, calls use the stored vectors (``update_stats=False``).
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, update_stats: bool | None = None) -> jax.Array:
        """The wrapped layer applied to ``x`` with its kernel divided by its operator norm.

        Parameters
        ----------
        x : jax.Array
            The layer's input, ``(batch..., *input_shape, in_features)``.
        update_stats : bool, optional
            Step the vectors (True) or use the stored ones, brought up to
            date if the kernel moved (False). Default: ``not
            self.use_running_average``.

        Returns
        -------
        jax.Array
            The layer's output, with its normalised kernel.

        Raises
        ------
        ValueError
            If ``x``'s spatial shape is not ``input_shape``.
        """
        update_stats = not self.use_running_average if update_stats is None else update_stats
        spatial = tuple(x.shape[-len(self.input_shape) - 1 : -1])
        if x.ndim <= len(self.input_shape) or spatial != self.input_shape:
            msg = (
                f"`x` of shape {tuple(x.shape)} has spatial shape {spatial}, but this SpectralNorm "
                f"normalises the layer on input_shape={self.input_shape} (the norm depends on it)"
            )
            raise ValueError(msg)
        kernel = self.layer_instance.kernel[...]
        stored = (self.u[...], self.v[...], self.p[...])
        count = self.n_steps if update_stats else None
        apply_map = _linear_map(self.layer_instance)
        u, v, p = track(apply_map, kernel, stored, self.seen_kernel[...], count, self.epsilon)
        self.u[...], self.v[...], self.p[...] = u, v, p
        self.seen_kernel[...] = jax.lax.stop_gradient(kernel)
        # A copy of the layer holding the divided kernel (its parameter keeps the undivided one).
        conv = _with_kernel(self.layer_instance, kernel / divisor(apply_map, kernel, u, v))
        out: jax.Array = conv(x)
        return out

    def normalised_kernel(self) -> jax.Array:
        """The kernel as the layer uses it with the stored vectors (no step taken).

        Returns
        -------
        jax.Array
            ``kernel / <u, A(kernel) v>``, in the layer's layout (its
            ``kernel``'s, ``HWIO``).
        """
        kernel = self.layer_instance.kernel[...]
        normalised: jax.Array = kernel / divisor(
            _linear_map(self.layer_instance), kernel, self.u[...], self.v[...]
        )
        return normalised


# nnx.Module's metaclass shows every class as (*args, **kwargs); help() and the API pages read
# the constructor's own signature from here.
_init = inspect.signature(SpectralNorm.__init__)
_signature = _init.replace(parameters=list(_init.parameters.values())[1:], return_annotation=_init.empty)
SpectralNorm.__signature__ = _signature  # type: ignore[attr-defined]
