"""PyTorch adapter: bound the operator norm of a model's convolutions.

Three idioms, one projection (:func:`convsv.clip_operator_norm`):

- :func:`clip_operator_norm_` projects every convolution of a module, in place, now;
- :class:`OperatorNormClipper` does it every ``every`` optimizer steps, through
  ``Optimizer.register_step_post_hook`` (the paper's schedule);
- :func:`parametrize_operator_norm` applies it at every forward pass, as a
  differentiable ``torch.nn.utils.parametrize`` parametrization.

And one normalisation: :func:`spectral_norm`, PyTorch's ``spectral_norm``
with the layer's true operator norm as the divisor; and one certificate:
:func:`lipschitz_bound`, a bound on a whole network's Lipschitz constant
read from its ``torch.fx`` graph.

Each convolution's stride, dilation, groups and padding are read from the
layer itself; feature-map sizes come from ``input_shapes`` or from the layer's
inputs, recorded by forward pre-hooks. Importing this module imports torch;
``import convsv`` alone does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat
import torch
from torch import nn

from ._checks import shape as shape_of
from ._clipping import clip
from ._docs import CLIP_OPTIONS_PARAMETER, shared_text
from ._frameworks.torch import conv_options, forward_input_shapes, record_input_shapes
from ._layout import ConvSpec, conv_spec
from ._lib.dtensor import refuse_sharded_parametrization
from ._lipschitz import LipschitzReport, NodeBound, lipschitz_bound
from ._options import CLIP_OPTIONS, ClipOptions
from ._torch_spectral_norm import SpectralNorm, spectral_norm

__all__ = [
    "LayerReport",
    "LipschitzReport",
    "NodeBound",
    "OperatorNormClipper",
    "OperatorNormParametrization",
    "SpectralNorm",
    "clip_operator_norm_",
    "conv_layers",
    "input_shapes",
    "layer_options",
    "lipschitz_bound",
    "parametrize_operator_norm",
    "spectral_norm",
]

Shapes = Mapping[str, Any]
Conv = nn.modules.conv._ConvNd  # Conv1d/2d/3d and ConvTranspose1d/2d/3d
Layers = Sequence[tuple[str, Conv]]


class LayerReport(NamedTuple):
    """What :func:`clip_operator_norm_` did to one layer (0-d tensors on the layer's device).

    For zero-padded layers the norms are the zero-padded layer's own (those
    of the circular layer on the padded map with ``bound="circular"``).

    Parameters
    ----------
    name : str
        The layer's name in the module.
    norm_before : torch.Tensor
        Operator norm before the projection.
    norm_after : torch.Tensor
        Operator norm after it.
    iterations : torch.Tensor
        Projection steps taken.
    """

    name: str
    norm_before: torch.Tensor
    norm_after: torch.Tensor
    iterations: torch.Tensor


#: The model and the bound, as the model-level functions take them.
_MODEL_PARAMETERS = """\
module : torch.nn.Module
    The model (or a ``DistributedDataParallel`` wrapping it, or a model
    sharded with FSDP2's ``fully_shard``).
max_norm : float
    The bound on every layer's operator norm.
"""


def _ndim(layer: Conv) -> int:
    return int(layer.weight.ndim) - 2


def _as_conv(layer: object) -> Conv:
    if not isinstance(layer, Conv):
        msg = f"expected a torch.nn Conv or ConvTranspose layer, got {type(layer).__name__}"
        raise TypeError(msg)
    return layer


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel; a clear error for FSDP1's flattened parameters.

    FSDP2 (``fully_shard``) models pass: their parameters are ``DTensor`` shards, which the core
    gathers and shards again itself (:mod:`convsv._lib.dtensor`).
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel):
        module = module.module
    for name, sub in module.named_modules():
        if type(sub).__name__ == "FullyShardedDataParallel":
            msg = (
                f"{name or 'the module'} is wrapped in FSDP1 (FullyShardedDataParallel), whose flattened "
                "parameters hide each convolution's kernel. Shard the model with FSDP2 "
                "(torch.distributed.fsdp.fully_shard), which convsv handles, or project inside "
                "FullyShardedDataParallel.summon_full_params(model, writeback=True)"
            )
            raise TypeError(msg)
    return module


def conv_layers(module: nn.Module) -> Iterator[tuple[str, Conv]]:
    """Every ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` in ``module``, by name.

    Parameters
    ----------
    module : torch.nn.Module
        The model (or a ``DistributedDataParallel`` wrapping it).

    Yields
    ------
    name : str
        The layer's name, as ``module.named_modules()`` gives it.
    layer : torch.nn.Module
        The convolution.

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import conv_layers
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    >>> [name for name, _ in conv_layers(model)]
    ['0', '2']
    """
    for name, sub in _unwrap(module).named_modules():
        if isinstance(sub, Conv):
            yield name, sub


def layer_options(layer: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The :mod:`convsv` options that describe a PyTorch convolution.

    Parameters
    ----------
    layer : torch.nn.Module
        A ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d``.
    input_shape : sequence of int, optional
        The layer's input spatial shape: where given, a circular layer's
        stride is also checked to divide it.

    Returns
    -------
    dict
        ``layout``, ``stride``, ``dilation``, ``groups``, ``transposed``,
        ``padding`` and, for transposed layers, ``output_padding``.

    Raises
    ------
    TypeError
        If ``layer`` is not a convolution.
    ValueError
        For ``padding_mode`` ``"reflect"`` or ``"replicate"`` (not modelled),
        or circular padding that is not a circulant map: one whose output is
        not ``input / stride`` (for stride 1, padding other than
        ``(kernel span - 1)`` in all per axis), which repeats or drops rows
        of the circular layer. ``convsv analyze`` refuses such layers with
        the same reason (its ``--layers`` can leave them out).

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import layer_options
    >>> options = layer_options(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1))
    >>> options["layout"], options["stride"], options["padding"], options["groups"]
    ('OIHW', (2, 2), (1, 1), 1)
    """
    return conv_options(_as_conv(layer), input_shape)


def input_shapes(module: object, example_input: Any) -> dict[str, tuple[int, ...]]:
    """Each convolution's input spatial shape, recorded during one forward pass.

    Parameters
    ----------
    module : torch.nn.Module
        The model (or a ``DistributedDataParallel`` wrapping it).
    example_input : tensor or tuple of tensors
        The input of the forward pass (a tuple is unpacked into the call). It
        runs in eval mode, so batch-norm statistics are untouched, under
        ``torch.no_grad``; the module's mode is restored afterwards.

    Returns
    -------
    dict
        Layer name (as in :func:`conv_layers`) to the spatial shape of its
        input, for each convolution the pass called (the last call's, for a
        layer called more than once).

    Raises
    ------
    TypeError
        If ``module`` is not a ``torch.nn.Module``. Errors of the forward
        pass itself (an input of the wrong shape) are PyTorch's own.

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import input_shapes
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.Conv2d(4, 4, 3))
    >>> input_shapes(model, torch.zeros(1, 1, 16, 16))
    {'0': (16, 16), '1': (7, 7)}
    """
    if not isinstance(module, nn.Module):
        msg = f"`module` must be a torch.nn.Module, got {type(module).__name__}"
        raise TypeError(msg)
    return forward_input_shapes(module, list(conv_layers(module)), example_input)


def _strip(name: str) -> str:
    return name.removeprefix("module.")


def _resolve_shapes(
    root: nn.Module,
    layers: Layers,
    input_shapes: Shapes | None,
    example_input: Any = None,
    recorded: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Each layer's input shape: given, else recorded during training, else from ``example_input``."""
    shapes = {
        name: shape_of(shape, f"input_shapes[{key!r}]", _ndim(layer))
        for name, layer in layers
        for key, shape in (input_shapes or {}).items()
        if _strip(key) == name
    }
    for name, shape in (recorded or {}).items():
        shapes.setdefault(name, shape)
    missing = [name for name, _ in layers if name not in shapes]
    if missing and example_input is not None:
        shapes.update(
            forward_input_shapes(root, [(n, la) for n, la in layers if n in missing], example_input)
        )
        missing = [name for name, _ in layers if name not in shapes]
    if missing:
        msg = (
            f"no input shape for layer(s) {missing}: pass input_shapes={{name: spatial shape}} or "
            "example_input (one forward pass records them)"
        )
        raise ValueError(msg)
    return shapes


def _spec(layer: Conv, input_shape: Sequence[int]) -> ConvSpec:
    """The layer on a map of ``input_shape``, as the spec-level functions take it."""
    return conv_spec(tuple(layer.weight.shape), input_shape, **layer_options(layer, input_shape))


def _project_all(
    layers: Layers, shapes: Mapping[str, tuple[int, ...]], options: ClipOptions
) -> list[LayerReport]:
    """Compute every layer's projection first, then write them all: an error leaves no layer changed."""
    results = []
    with torch.no_grad():
        for name, layer in layers:
            weight = layer.weight.detach()
            xp = array_api_compat.array_namespace(weight)
            new, info = clip(weight, _spec(layer, shapes[name]), xp, options, return_info=True)
            assert info is not None  # (asked for)
            results.append((name, layer, new, info))
        for _, layer, new, _ in results:
            layer.weight.copy_(new)
    return [LayerReport(name, info.initial_norm, info.norm, info.iterations) for name, _, _, info in results]


@shared_text(model_parameters=_MODEL_PARAMETERS, clip_options=CLIP_OPTIONS_PARAMETER)
def clip_operator_norm_(
    module: nn.Module,
    max_norm: float,
    *,
    input_shapes: Shapes | None = None,
    example_input: Any = None,
    **clip_options: Any,
) -> list[LayerReport]:
    """Project every convolution of ``module`` onto an operator-norm ball, in place.

    Each ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` is projected with
    :func:`convsv.clip_operator_norm`, using the layer's own stride,
    dilation, groups and padding: exact for ``padding_mode="circular"``; for
    zero padding the layer's own norm lands on ``max_norm`` (or, with
    ``bound="circular"``, the circular layer on the padded map is
    projected, which bounds it from above).

    Parameters
    ----------
    {model_parameters}
    input_shapes : mapping, optional
        Layer name (as in ``module.named_modules()``) to the spatial shape of
        that layer's input (an int for every axis, or a tuple).
    example_input : tensor or tuple of tensors, optional
        An input for one forward pass (in eval mode, under
        ``torch.no_grad``) that records the shapes ``input_shapes`` does not
        give.
    {clip_options}

    Returns
    -------
    list of LayerReport
        One per layer: name, norm before, norm after, steps taken (0-d
        tensors; reading them synchronises a CUDA device, computing them
        does not).

    Raises
    ------
    ValueError
        For a missing input shape, a non-positive or non-finite ``max_norm``,
        a circular stride that does not divide the map, or an unsupported
        padding mode, before any weight changes.
    TypeError
        For a model wrapped in FSDP1's ``FullyShardedDataParallel``.

    Notes
    -----
    Weights are written with ``copy_`` under ``torch.no_grad()``: each
    parameter keeps its identity, dtype, device and ``requires_grad``, so
    optimizers and ``DistributedDataParallel`` are unaffected. All layers are
    computed before any is written. Under DDP every rank projects its own
    (identical) replica and gets the same result. Under FSDP2
    (``fully_shard``) each kernel is a ``DTensor`` shard: every rank
    gathers the whole kernel, projects it (each rank computing its share of
    the frequencies), and keeps its own shard of rank 0's result, so all
    ranks call this together (as they call ``optimizer.step()``) and end
    with the same weights; the report's norms are plain tensors, the same
    on every rank.

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import clip_operator_norm_
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
    ... )
    >>> report = clip_operator_norm_(
    ...     model, 1.0, example_input=torch.zeros(1, 1, 16, 16),
    ...     method="extrapolated", iterations=50, tol=1e-5,
    ... )
    >>> [(r.name, bool(r.norm_after <= 1 + 1e-5)) for r in report]
    [('0', True), ('1', True)]
    """
    options = ClipOptions.for_adapter(max_norm, clip_options)
    layers = list(conv_layers(module))
    shapes = _resolve_shapes(module, layers, input_shapes, example_input)
    return _project_all(layers, shapes, options)


@shared_text(model_parameters=_MODEL_PARAMETERS, clip_options=CLIP_OPTIONS_PARAMETER)
class OperatorNormClipper:
    """Project a model's convolutions every ``every`` optimizer steps (the paper's schedule).

    Parameters
    ----------
    {model_parameters}
    every : int, optional
        Project after every ``every``-th optimizer step (default 100).
    input_shapes : mapping, optional
        Layer name to input spatial shape. Layers not given here are
        measured from the model's own forward passes (forward pre-hooks
        record each convolution's latest input shape).
    example_input : tensor or tuple of tensors, optional
        An input for one forward pass (in eval mode, under
        ``torch.no_grad``) that records the shapes up front.
    {clip_options}

    Attributes
    ----------
    steps : int
        Optimizer steps seen since :meth:`attach`.
    last_report : list of LayerReport
        What the latest projection did (empty before the first).

    Raises
    ------
    ValueError
        For an unsupported layer (``padding_mode="reflect"``, say), a bad
        ``every`` or a bad ``max_norm``, at construction.

    See Also
    --------
    clip_operator_norm_ : One projection, now.

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import OperatorNormClipper
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(64, 2)
    ... )
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> clipper = OperatorNormClipper(model, 1.0, every=2)
    >>> handle = clipper.attach(optimizer)
    >>> for _ in range(4):
    ...     optimizer.zero_grad()
    ...     model(torch.randn(8, 1, 4, 4)).square().mean().backward()
    ...     optimizer.step()
    >>> clipper.steps, [r.name for r in clipper.last_report]
    (4, ['0'])
    >>> handle.remove()
    """

    def __init__(
        self,
        module: nn.Module,
        max_norm: float,
        *,
        every: int = 100,
        input_shapes: Shapes | None = None,
        example_input: Any = None,
        **clip_options: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            msg = f"`every` must be a positive int, got {every!r}"
            raise ValueError(msg)
        self.module, self.every = module, every
        self.options = ClipOptions.for_adapter(max_norm, clip_options)
        self.layers = list(conv_layers(module))
        for _, layer in self.layers:  # refuse unsupported layers now, not mid-training
            layer_options(layer)
        self.input_shapes = dict(input_shapes or {})
        self.recorded: dict[str, tuple[int, ...]] = {}
        self._hooks = record_input_shapes(self.layers, self.recorded)
        if example_input is not None:
            self.input_shapes.update(_resolve_shapes(module, self.layers, self.input_shapes, example_input))
        self.steps = 0
        self.last_report: list[LayerReport] = []

    def __call__(self) -> list[LayerReport]:
        """Project now; returns the per-layer report."""
        shapes = _resolve_shapes(self.module, self.layers, self.input_shapes, recorded=self.recorded)
        self.last_report = _project_all(self.layers, shapes, self.options)
        return self.last_report

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self()

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Project after every ``every``-th ``optimizer.step()``.

        Parameters
        ----------
        optimizer : torch.optim.Optimizer
            The optimizer whose steps are counted.

        Returns
        -------
        torch.utils.hooks.RemovableHandle
            ``handle.remove()`` detaches the clipper from the optimizer.
        """
        return optimizer.register_step_post_hook(self._after_step)

    def remove(self) -> None:
        """Stop recording input shapes (the hooks on the model's layers)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


class OperatorNormParametrization(nn.Module):
    """A ``torch.nn.utils.parametrize`` parametrization: the weight projected at every use.

    Parameters
    ----------
    max_norm : float
        The bound on the layer's operator norm.
    input_shape : int or sequence of int
        The layer's input spatial shape.
    **options
        Layer options (``layout``, ``stride``, ...) and projection options
        (``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``), as in
        :func:`convsv.clip_operator_norm`.

    See Also
    --------
    parametrize_operator_norm : Registers it on a layer, with the layer's own options.

    Examples
    --------
    >>> import torch
    >>> from convsv.torch import OperatorNormParametrization
    >>> p = OperatorNormParametrization(1.0, (8, 8), layout="OIHW")
    >>> p(torch.ones(1, 1, 3, 3)).shape
    torch.Size([1, 1, 3, 3])
    """

    def __init__(self, max_norm: float, input_shape: Any, **options: Any) -> None:
        super().__init__()
        projection = {name: value for name, value in options.items() if name in CLIP_OPTIONS}
        self.options = ClipOptions.for_adapter(max_norm, projection)
        self.input_shape = input_shape
        # The layer's options as convsv.clip_operator_norm takes them, with its default layout.
        self.layer = {"layout": "HWIO", **{k: v for k, v in options.items() if k not in CLIP_OPTIONS}}
        self._specs: dict[tuple[int, ...], ConvSpec] = {}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The projected weight (differentiable)."""
        shape = tuple(weight.shape)
        if shape not in self._specs:  # one spec per weight shape, not one per forward pass
            self._specs[shape] = conv_spec(shape, self.input_shape, **self.layer)
        xp = array_api_compat.array_namespace(weight)
        projected, _ = clip(weight, self._specs[shape], xp, self.options)
        assert isinstance(projected, torch.Tensor)
        return projected


def parametrize_operator_norm(
    layer: nn.Module, max_norm: float, input_shape: Any, **clip_options: Any
) -> nn.Module:
    """Constrain a convolution's weight at every forward pass, differentiably.

    Registers :class:`OperatorNormParametrization` on ``layer.weight`` with
    the layer's own stride, dilation, groups and padding, like
    ``torch.nn.utils.parametrizations.spectral_norm`` does for the reshaped
    norm. Gradients flow through the projection (SVD backward).

    Parameters
    ----------
    layer : torch.nn.Module
        A ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d``.
    max_norm : float
        The bound on the layer's operator norm.
    input_shape : int or sequence of int
        The layer's input spatial shape.
    **clip_options
        ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``: as in
        :func:`convsv.clip_operator_norm` (the default, one step of the
        paper's projection, is the cheapest).

    Returns
    -------
    torch.nn.Module
        ``layer``, now parametrized; undo with
        ``torch.nn.utils.parametrize.remove_parametrizations(layer, "weight")``.

    Raises
    ------
    TypeError, ValueError
        As :func:`layer_options` and :func:`convsv.clip_operator_norm`; a
        ``TypeError`` too for a weight already sharded by FSDP2
        (parametrize, then ``fully_shard``).

    Examples
    --------
    >>> import torch
    >>> import convsv
    >>> from convsv.torch import parametrize_operator_norm
    >>> conv = parametrize_operator_norm(
    ...     torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), 1.0, 8,
    ...     method="extrapolated", iterations=30, tol=1e-5,
    ... )
    >>> bool(convsv.operator_norm(conv.weight, 8, layout="OIHW") <= 1 + 1e-5)
    True
    """
    input_shape = shape_of(input_shape, "input_shape", _ndim(_as_conv(layer)))
    refuse_sharded_parametrization(layer.weight, "convsv.torch.parametrize_operator_norm")
    options = layer_options(layer, input_shape)
    parametrization = OperatorNormParametrization(max_norm, input_shape, **options, **clip_options)
    with torch.no_grad():  # fail now, not at the first forward pass
        parametrization(layer.weight)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", parametrization)
    return layer
