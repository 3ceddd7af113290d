"""Spectral normalisation by the layer's own operator norm: ``convsv.torch.spectral_norm``.

PyTorch's ``torch.nn.utils.parametrizations.spectral_norm`` divides a weight
by the largest singular value of the weight reshaped into a matrix, which is
not the norm of a convolution (Sedghi, Gupta & Long, ICLR 2019). This one runs
the same warm-started power iteration (Miyato et al., ICLR 2018) on the
layer's real linear map: its own convolution, with its stride, dilation,
groups, padding and transposition, on the feature map it is applied to. Its
adjoint comes from ``torch.func.vjp`` of that map, so the two are exact
transposes of each other whatever the options.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _power_steps as power_steps
from ._checks import integer, real
from ._checks import shape as shape_of
from ._frameworks.torch import conv_options
from ._layout import ConvSpec, conv_spec
from ._lib.dtensor import refuse_sharded_parametrization, whole
from ._options import NormOptions
from ._power_steps import WARM_STEPS, Vectors, unit
from ._values import norm, norm_bounds


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """The linear part of a ``torch.nn`` convolution (no bias), as a function of its input and weight.

    A plain object, not the layer: the parametrization must not hold its own
    module (that would make the module its own child), and it pickles.
    """

    ndim: int
    transposed: bool
    stride: tuple[int, ...]
    padding: Any  # ints per axis, or "same"/"valid"; transposed: ints
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]
    padding_mode: str
    circular_pads: tuple[int, ...]  # F.pad's order (last axis first), for padding_mode="circular"

    @classmethod
    def of(cls, layer: Any) -> LayerMap:
        """The map of ``layer`` (a ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d``)."""
        return cls(
            ndim=layer.weight.ndim - 2,
            transposed=bool(layer.transposed),
            stride=tuple(layer.stride),
            padding=layer.padding if isinstance(layer.padding, str) else tuple(layer.padding),
            dilation=tuple(layer.dilation),
            groups=int(layer.groups),
            output_padding=tuple(layer.output_padding),
            padding_mode=layer.padding_mode,
            circular_pads=tuple(layer._reversed_padding_repeated_twice),
        )

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            transpose = getattr(F, f"conv_transpose{self.ndim}d")
            return transpose(  # type: ignore[no-any-return]
                x, weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        convolve = getattr(F, f"conv{self.ndim}d")
        if self.padding_mode == "circular":
            x = F.pad(x, self.circular_pads, mode="circular")
            return convolve(x, weight, None, self.stride, 0, self.dilation, self.groups)  # type: ignore[no-any-return]
        return convolve(x, weight, None, self.stride, self.padding, self.dilation, self.groups)  # type: ignore[no-any-return]


class SpectralNorm(nn.Module):
    """The parametrization :func:`spectral_norm` registers: the weight divided by the layer's operator norm.

    In training mode each call first takes ``n_power_iterations`` steps of
    the power iteration (locally optimal: ``power_iteration``) on the
    layer's map with the current weight, updating the buffers ``_u`` (an
    output map), ``_v`` (an input map) and ``_p`` (the last step) in place;
    in eval mode the stored vectors are used, first brought up to date
    (``refresh``: ``WARM_STEPS`` steps, once) if the weights changed since the last
    training pass -- as they do at the optimizer's step. The divisor is
    ``sigma = <u, A(weight) v>``, differentiable in the weight with ``u`` and
    ``v`` held fixed, as in Miyato et al. With ``exact=True`` it is
    :func:`convsv.operator_norm` of the layer instead (no vectors).

    Parameters
    ----------
    layer : torch.nn.Module
        The convolution whose weight it normalises (read once: its options).
    n_power_iterations : int
        Power-iteration steps per training-mode call.
    eps : float
        Floor of the vectors' norms when they are normalised.
    input_shape : tuple of int or None
        The input map the norm is of; ``None``: set later, by ``resize``.
    exact : bool
        Divide by :func:`convsv.operator_norm` instead of the estimate.

    Attributes
    ----------
    input_shape : tuple of int or None
        The spatial shape of the layer's input the norm is of (``None``
        until the first forward pass when :func:`spectral_norm` was not told).

    See Also
    --------
    spectral_norm : Registers it on a layer (the way to make one).
    """

    _weight: torch.Tensor

    def __init__(
        self,
        layer: Any,
        n_power_iterations: int,
        eps: float,
        input_shape: tuple[int, ...] | None,
        exact: bool,
    ) -> None:
        super().__init__()
        self.map = LayerMap.of(layer)
        self.options = conv_options(layer, input_shape)  # refuses the paddings convsv does not model
        self.in_channels = int(
            layer.weight.shape[0] if layer.transposed else layer.weight.shape[1] * layer.groups
        )
        self.n_power_iterations, self.eps, self.exact = n_power_iterations, eps, exact
        self.input_shape: tuple[int, ...] | None = None
        self.register_buffer("_u", None)
        self.register_buffer("_v", None)
        self.register_buffer("_p", None)
        # The layer's weight, which becomes the parametrization's `original` (not registered here: it is
        # the layer's parameter; a deep copy of the layer copies this reference along with it).
        object.__setattr__(self, "_weight", layer.weight)
        self._spec: ConvSpec | None = None
        self.follows = input_shape is None  # whether the input size is taken from each forward pass
        self._updated_at: int | None = None  # the weight's version when the vectors were last updated
        if input_shape is not None:
            self.resize(input_shape, layer.weight)

    def _original(self) -> torch.Tensor:
        """The layer's weight now: the parametrization's ``original`` once registered.

        FSDP2's ``fully_shard`` replaces the parameter (by a ``DTensor`` shard) after this took
        its reference to it, so the registered list's ``original`` is read where there is one.
        """
        weights = self.__dict__.get("_weights")
        return self._weight if weights is None else weights.original

    # -- the vectors ---------------------------------------------------------------------------------

    def resize(self, input_shape: tuple[int, ...], weight: torch.Tensor) -> None:
        """Take the norm on another input map: fresh vectors, warmed by ``WARM_STEPS`` (15, as PyTorch's)."""
        self._spec = conv_spec(tuple(weight.shape), input_shape, **self.options)  # the map must fit the layer
        self.input_shape = input_shape
        if self.exact:
            return
        with torch.no_grad():
            # A fixed seed, not the global generator: every rank of a sharded (FSDP2) model, which
            # broadcasts no buffers, starts from the same vectors and so keeps them equal.
            generator = torch.Generator(device=weight.device).manual_seed(1)
            shape = (1, self.in_channels, *input_shape)
            v = torch.randn(shape, generator=generator, dtype=weight.dtype, device=weight.device)
            v = unit(v, self.eps, _namespace())
            self._v, self._u, self._p = (
                v,
                unit(self.map(v, weight), self.eps, _namespace()),
                torch.zeros_like(v),
            )
        self.power_iteration(weight, WARM_STEPS)

    @torch.no_grad()
    def power_iteration(self, weight: torch.Tensor, steps: int) -> None:
        """``steps`` locally optimal steps on the layer with ``weight``, the vectors updated in place.

        Each step is a power step made locally optimal
        (:func:`convsv._power_steps.locally_optimal_step`: LOBPCG on ``A^T A``
        with the previous direction ``_p``). A convolution's top singular
        values lie close together, where a plain power step gains little. A
        step costs five of the layer's convolutions of one sample where a
        power step takes three.

        In place, as PyTorch's: ``DataParallel`` replicas share the buffers'
        storage, and ``DistributedDataParallel`` broadcasts them.
        """
        self._replace(
            power_steps.steps(
                self._vectors(), steps, self._applied(weight), torch.func.vjp, self.eps, _namespace()
            )
        )

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor) -> None:
        """:func:`convsv._power_steps.refresh` of the vectors, with a fixed random map (repeatable)."""
        v = self._vectors()[1]
        generator = torch.Generator(device=v.device).manual_seed(0)
        r = torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        self._replace(
            power_steps.refresh(
                self._vectors(), r, self._applied(weight), torch.func.vjp, self.eps, _namespace()
            )
        )

    def _vectors(self) -> Vectors:
        assert self._u is not None
        assert self._v is not None
        assert self._p is not None
        return self._u, self._v, self._p

    def _replace(self, vectors: Vectors) -> None:
        for buffer, value in zip(self._vectors(), vectors, strict=True):
            buffer.copy_(value)

    def _applied(self, weight: torch.Tensor) -> Any:
        weight = weight.detach()
        return lambda x: self.map(x, weight)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Vectors saved by a layer that had seen its input: take their shapes before loading them.
        v = state_dict.get(prefix + "_v")
        if v is not None and (self._v is None or self._v.shape != v.shape):
            self.input_shape = tuple(int(n) for n in v.shape[2:])
            self._v, self._u = torch.empty_like(v), torch.empty_like(state_dict[prefix + "_u"])
            self._p = torch.empty_like(v)
            self._spec = None  # built again at the next call, for the loaded map
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- the normalised weight -----------------------------------------------------------------------

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight / sigma``: the layer's operator norm (estimated, or exact with ``exact=True``)."""
        if self.input_shape is None:
            msg = (
                "convsv.torch.spectral_norm: the layer's input size is not known yet; run a forward pass "
                "first, or pass input_shape= to spectral_norm"
            )
            raise RuntimeError(msg)
        if not self.exact:
            if self.training:
                self.power_iteration(weight, self.n_power_iterations)
                self._updated_at = weight._version
            elif self._updated_at is not None and weight._version != self._updated_at:
                # The weights moved since the last training pass (the optimizer's step): evaluate the
                # layer as it is, with vectors brought up to date once.
                self.refresh(weight)
                self._updated_at = weight._version
        return weight / self._divisor(weight)

    def _divisor(self, weight: torch.Tensor) -> torch.Tensor:
        """``<u, A(weight) v>``, differentiable in ``weight`` (or the exact norm).

        The stored vectors are cloned: later in-place steps must not change what this graph saw.
        """
        if self._spec is None:
            assert self.input_shape is not None
            self._spec = conv_spec(tuple(weight.shape), self.input_shape, **self.options)
        if self.exact:
            exact: torch.Tensor = norm(weight, self._spec, _namespace(), NormOptions())
            return exact
        assert self._u is not None
        assert self._v is not None
        u, v = self._u.clone(), self._v.clone()
        return torch.vdot(u.flatten(), self.map(v, weight).flatten())

    def norm_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified lower and upper bounds on the operator norm of the layer as it is now (normalised).

        Returns
        -------
        lower : torch.Tensor
            A 0-d tensor: the lower end of :func:`convsv.operator_norm_bounds`
            of the layer's current (normalised) weight on ``input_shape``.
        upper : torch.Tensor
            The upper end: the Lipschitz constant a certificate may use.
        """
        if self.input_shape is None:
            msg = "the layer's input size is not known yet: run a forward pass first"
            raise RuntimeError(msg)
        with torch.no_grad():  # the weight as the layer uses it now, the vectors left as they are
            original = whole(self._original())  # a sharded (FSDP2) weight gathered on every rank
            weight = original / self._divisor(original)
            spec = conv_spec(tuple(weight.shape), self.input_shape, **self.options)
            return norm_bounds(weight, spec, _namespace(), NormOptions())


def _follow_input_size(layer: Any, args: tuple[Any, ...]) -> None:
    """The forward pre-hook of a layer normalised without ``input_shape``: take the norm on this input.

    It looks up the layer's own normalisation at each call (a deep copy of the layer, whose hooks are
    the same function, finds its copy), and does nothing once ``remove_parametrizations`` took it off.
    """
    weight: Any = getattr(getattr(layer, "parametrizations", None), "weight", None)
    for part in weight or ():
        if isinstance(part, SpectralNorm) and part.follows:
            size = tuple(int(n) for n in args[0].shape[-(weight.original.ndim - 2) :])
            if size != part.input_shape:
                part.resize(size, weight.original)


def _namespace() -> Any:
    import array_api_compat.torch

    return array_api_compat.torch


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    input_shape: Any = None,
    exact: bool = False,
) -> nn.Module:
    """Spectral normalisation of a convolution by its true operator norm (a drop-in for PyTorch's).

    The same parametrization as ``torch.nn.utils.parametrizations.spectral_norm``
    (Miyato et al., ICLR 2018) -- training mode takes ``n_power_iterations``
    steps of a warm-started power iteration per forward pass and divides the
    weight by the estimate, eval mode uses the stored estimate, the vectors
    are buffers saved with the state dict, and
    ``torch.nn.utils.parametrize.remove_parametrizations`` undoes it -- but
    the power iteration runs on the layer's own map, on its input's feature
    map, not on the kernel reshaped into a matrix. So the layer's operator
    norm (its Lipschitz constant) is what comes out at 1, with its stride,
    dilation, groups, zero or circular padding, transposition, in 1-D, 2-D
    and 3-D. PyTorch's version leaves a convolution's true norm anywhere
    from below 1 to several times 1.

    Parameters
    ----------
    module : torch.nn.Module
        A ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d`` (for ``Linear``
        layers PyTorch's own is already exact).
    name : str, optional
        The parameter to normalise: ``"weight"`` (default), the only one.
    n_power_iterations : int, optional
        Power-iteration steps per training forward pass (default 1).
    eps : float, optional
        Added safety in the vectors' normalisation (default ``1e-12``).
    dim : None, optional
        PyTorch's "output dimension" of the reshaped matrix: meaningless
        for the layer's operator norm, so only ``None`` is accepted.
    input_shape : int or sequence of int, optional
        The spatial shape of the layer's input, whose operator norm is
        normalised. Default: the shape of each forward pass's input (the
        vectors start afresh, warmed by 15 steps, when it changes).
    exact : bool, optional
        Divide by :func:`convsv.operator_norm` of the layer at every forward
        pass instead of the power iteration's estimate (exact for circular
        padding, certified within ``tol`` for zero padding): slower, for
        evaluation or small layers.

    Returns
    -------
    torch.nn.Module
        ``module``, parametrized. ``module.parametrizations.weight[0]`` is
        the :class:`SpectralNorm`, whose ``norm_bounds()`` certifies the
        normalised layer's norm.

    Raises
    ------
    TypeError
        If ``module`` is not a convolution, or an option has the wrong type,
        or its weight is already sharded by FSDP2 (normalise, then shard).
    ValueError
        For another ``name``, a ``dim``, a padding mode convsv does not model
        (``"reflect"``, ``"replicate"``, circular padding that is not a
        circulant map), or an ``input_shape`` that does not fit the layer.

    See Also
    --------
    parametrize_operator_norm : Project onto the norm ball instead of dividing.

    Notes
    -----
    Under ``DistributedDataParallel`` the vectors are buffers, broadcast
    from rank 0. Under FSDP2, normalise the layers first and then
    ``fully_shard`` the model: each forward pass sees the whole weight,
    gathered, on every rank, and the vectors, which FSDP2 does not
    broadcast, start from a fixed seed and so stay the same on every rank.
    ``norm_bounds()`` then gathers the weight itself: every rank calls it.

    Examples
    --------
    >>> import torch
    >>> import convsv
    >>> from convsv.torch import spectral_norm
    >>> _ = torch.manual_seed(0)
    >>> conv = spectral_norm(torch.nn.Conv2d(8, 8, 3, padding=1), input_shape=16)
    >>> for _ in range(50):  # training steps: each refines the estimate
    ...     _ = conv(torch.randn(1, 8, 16, 16))
    >>> lower, upper = conv.parametrizations.weight[0].norm_bounds()
    >>> bool(abs(lower - 1) < 1e-3), bool(upper < 1.02)  # the layer attains 1; upper: its circular twin's
    (True, True)
    """
    if not isinstance(module, nn.modules.conv._ConvNd):
        msg = (
            f"convsv.torch.spectral_norm normalises convolutions, got {type(module).__name__} "
            "(for Linear layers torch.nn.utils.parametrizations.spectral_norm is already exact)"
        )
        raise TypeError(msg)
    if name != "weight":
        msg = f"`name` must be 'weight' (a convolution's kernel), got {name!r}"
        raise ValueError(msg)
    if dim is not None:
        msg = "`dim` must be None: the layer's operator norm does not depend on a reshaping of its kernel"
        raise ValueError(msg)
    refuse_sharded_parametrization(module.weight, "convsv.torch.spectral_norm")
    steps = integer(n_power_iterations, "n_power_iterations")
    eps = real(eps, "eps", "a positive float", above=0.0)
    ndim = module.weight.ndim - 2
    shape = None if input_shape is None else shape_of(input_shape, "input_shape", ndim)
    normalisation = SpectralNorm(module, steps, eps, shape, bool(exact))
    if shape is None:
        module.register_forward_pre_hook(_follow_input_size)
    torch.nn.utils.parametrize.register_parametrization(module, "weight", normalisation, unsafe=True)
    # Not a submodule (the list holds the normalisation): a plain reference, which deep copies follow.
    parametrizations: Any = module.parametrizations
    object.__setattr__(normalisation, "_weights", parametrizations.weight)
    return module
