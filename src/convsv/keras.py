"""Keras 3 adapter: bound the operator norm of a model's convolutions.

Two idioms, one projection (:func:`convsv.clip_operator_norm`):

- :class:`OperatorNormConstraint`, a ``keras.constraints.Constraint`` for a
  convolution's kernel, which the optimizer applies after every update
  (``Conv2D(..., kernel_constraint=...)``);
- :class:`OperatorNormClipping`, a callback that projects every convolution of
  the model each ``every`` steps (the paper's schedule), with each layer's
  strides, padding, dilation, groups and input shape read from the built
  model. :func:`clip_operator_norm_` does it once, now.

Works on the JAX, PyTorch and TensorFlow backends. On JAX and PyTorch the
kernels stay backend arrays on their device (inside the jitted train step on
JAX); TensorFlow tensors are not array-API arrays, so there the projection
runs in NumPy on the host (``tf.numpy_function`` inside a traced train step),
which XLA cannot compile. Importing this module imports Keras; ``import
convsv`` alone does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import keras

from ._docs import CLIP_OPTIONS_PARAMETER, shared_text
from ._frameworks.keras import convolutions, input_spatial, kernels_of, layer_fields, to_numpy
from ._keras_constraint import OperatorNormConstraint, Projecting, clip_config
from ._keras_spectral_norm import SpectralNormalization
from ._options import ClipOptions

__all__ = [
    "LayerReport",
    "OperatorNormClipping",
    "OperatorNormConstraint",
    "SpectralNormalization",
    "clip_operator_norm_",
    "conv_kernels",
]

Shapes = Mapping[str, Any]
_MODEL_PARAMETERS = (
    """\
input_shapes : mapping, optional
    Layer name to that layer's input spatial shape, for layers whose
    input size the model does not fix.
layers : sequence of str or keras.layers.Layer, optional
    Only these layers (names or layers); default every supported convolution.
"""
    + CLIP_OPTIONS_PARAMETER
)
Kernels = list[tuple[str, str, Any, "OperatorNormConstraint"]]


class LayerReport(NamedTuple):
    """What :func:`clip_operator_norm_` did to one kernel.

    For zero-padded layers the norms are the zero-padded layer's own (those
    of the circular layer on the padded map with ``bound="circular"``). A
    ``SeparableConv`` layer has two kernels, each clipped to
    ``sqrt(max_norm)``.

    Parameters
    ----------
    name : str
        The layer's name.
    kernel : str
        The kernel's attribute: ``"kernel"``, ``"depthwise_kernel"`` or
        ``"pointwise_kernel"``.
    norm_before : float
        Operator norm before the projection.
    norm_after : float
        Operator norm after it.
    iterations : int
        Projection steps taken.
    """

    name: str
    kernel: str
    norm_before: float
    norm_after: float
    iterations: int


@shared_text(model_parameters=_MODEL_PARAMETERS)
def conv_kernels(
    model: Any,
    max_norm: float,
    *,
    input_shapes: Shapes | None = None,
    layers: Sequence[Any] | None = None,
    **clip_options: Any,
) -> list[tuple[str, str, Any, OperatorNormConstraint]]:
    """Every convolution kernel of a built model, with the constraint that describes its layer.

    Parameters
    ----------
    model : keras.Model or keras.layers.Layer
        The model; its convolutions must be built (or their input shapes
        given).
    max_norm : float
        The bound on each layer's operator norm (``SeparableConv`` layers:
        ``sqrt(max_norm)`` on each of their two kernels).
    {model_parameters}

    Returns
    -------
    list of (str, str, keras.Variable, OperatorNormConstraint)
        Layer name, kernel attribute, the kernel variable and its constraint.

    Raises
    ------
    TypeError
        For a layer in ``layers`` that is not a supported convolution.
    ValueError
        For an unknown input shape, a bad ``max_norm`` or option, or a layer
        that does not fit its map.

    Examples
    --------
    >>> import keras
    >>> from convsv.keras import conv_kernels
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down"),
    ...     keras.layers.SeparableConv2D(4, 3, padding="same", name="sep"),
    ... ])
    >>> [(name, attr, c.input_shape) for name, attr, _, c in conv_kernels(model, 1.0)]
    [('down', 'kernel', (8, 8)), ('sep', 'depthwise_kernel', (4, 4)), ('sep', 'pointwise_kernel', 1)]
    """
    return _conv_kernels(model, ClipOptions.for_adapter(max_norm, clip_options), input_shapes, layers)


def _conv_kernels(
    model: Any, options: ClipOptions, input_shapes: Shapes | None, layers: Sequence[Any] | None
) -> Kernels:
    """:func:`conv_kernels` with checked options."""
    given = dict(input_shapes or {})
    chosen = convolutions(model, layers)
    unknown = sorted(set(given) - {layer.name for layer in chosen})
    if unknown:
        msg = f"input_shapes names layer(s) {unknown} that are not among the convolutions clipped"
        raise ValueError(msg)
    found = []
    for layer in chosen:
        shape = given[layer.name] if layer.name in given else input_spatial(layer)
        kernels = kernels_of(layer)
        # A separable layer is two kernels in a row: each to sqrt(max_norm) bounds the layer by max_norm.
        bound = math.sqrt(options.max_norm) if len(kernels) > 1 else options.max_norm
        for attr, kind, variable in kernels:
            if variable is None:
                msg = f"layer {layer.name!r} is not built: build the model first"
                raise ValueError(msg)
            fields = layer_fields(layer, kind, shape)
            constraint = OperatorNormConstraint(bound, **fields, **clip_config(options))
            constraint.check(tuple(variable.shape))
            found.append((layer.name, attr, variable, constraint))
    return found


def _sync(model: Any) -> None:
    """On JAX, put the state ``fit`` keeps outside the variables back into them (re-read next step)."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def _project_all(kernels: Sequence[tuple[str, str, Any, OperatorNormConstraint]]) -> list[LayerReport]:
    """Compute every projection first, then write them all: an error leaves no kernel changed."""
    results = [
        (name, attr, variable, *constraint.project(variable)) for name, attr, variable, constraint in kernels
    ]
    for _, _, variable, new, _ in results:
        variable.assign(new)
    return [
        LayerReport(
            name,
            attr,
            float(to_numpy(info.initial_norm)),
            float(to_numpy(info.norm)),
            int(to_numpy(info.iterations)),
        )
        for name, attr, _, _, info in results
    ]


@shared_text(model_parameters=_MODEL_PARAMETERS)
def clip_operator_norm_(
    model: Any,
    max_norm: float,
    *,
    input_shapes: Shapes | None = None,
    layers: Sequence[Any] | None = None,
    **clip_options: Any,
) -> list[LayerReport]:
    """Project every convolution of a built Keras model onto an operator-norm ball, now.

    Each ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D`` and
    ``Conv1D/2D/3DTranspose`` kernel is projected with
    :func:`convsv.clip_operator_norm`, with the layer's own strides,
    padding, dilation, groups and input shape, and assigned back
    (``variable.assign``).

    Parameters
    ----------
    model : keras.Model or keras.layers.Layer
        A built model.
    max_norm : float
        The bound on every layer's operator norm (positive).
    {model_parameters}

    Returns
    -------
    list of LayerReport
        One per kernel: layer name, kernel attribute, norm before and after,
        steps taken.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv_kernels`, before any kernel changes. Every projection
        is computed before any kernel is written.

    Notes
    -----
    Zero padding (``"valid"``, ``"same"``, ``"causal"``): the layer's own
    norm lands on ``max_norm`` (with ``bound="circular"``, the circular layer
    on the padded map is projected instead; its norm bounds the layer's).
    A ``SeparableConv`` layer's depthwise and pointwise kernels are each
    projected to ``sqrt(max_norm)``, which bounds the layer's norm by
    ``max_norm``. On TensorFlow the kernels go through NumPy on the host; on
    JAX and PyTorch they stay on their device.

    Examples
    --------
    >>> import keras
    >>> from convsv.keras import clip_operator_norm_
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(8, 3, padding="same", name="conv"),
    ...     keras.layers.Conv2D(8, 3, strides=2, padding="same", name="down"),
    ... ])
    >>> report = clip_operator_norm_(model, 1.0, method="extrapolated", iterations=50, tol=1e-5)
    >>> [(r.name, r.norm_after <= 1 + 1e-5) for r in report]
    [('conv', True), ('down', True)]
    """
    kernels = conv_kernels(model, max_norm, input_shapes=input_shapes, layers=layers, **clip_options)
    _sync(model)
    return _project_all(kernels)


@shared_text(model_parameters=_MODEL_PARAMETERS)
class OperatorNormClipping(Projecting, keras.callbacks.Callback):  # type: ignore[misc]
    """Project the model's convolutions every ``every`` training steps (the paper's schedule).

    At the end of every ``every``-th optimizer step, each convolution's
    kernel is projected as :func:`clip_operator_norm_` does, with the
    layer's own options and input shape read from the built model.

    Parameters
    ----------
    max_norm : float
        The bound on every layer's operator norm (positive).
    every : int, optional
        Project after every ``every``-th step (default 100).
    {model_parameters}

    Attributes
    ----------
    steps : int
        Training steps seen.
    last_report : list of LayerReport
        What the latest projection did (empty before the first).

    Raises
    ------
    ValueError
        For a bad ``every``, ``max_norm`` or option, at construction; for an
        unknown input shape or an unsupported layer, when training begins
        (before any weight changes).

    See Also
    --------
    clip_operator_norm_ : One projection, now.
    OperatorNormConstraint : A projection after every update.

    Notes
    -----
    Steps are counted from the batch indices ``fit`` reports, so
    ``steps_per_execution > 1`` is honoured (the projection then happens at
    the end of the execution that crosses a multiple of ``every``). The
    projection runs eagerly between steps, so it works with any
    ``jit_compile`` on every backend; on JAX the callback first writes the
    state ``fit`` keeps outside the variables back into them (as Keras'
    own callbacks do), and the next step reads the projected kernels.

    Examples
    --------
    >>> import numpy as np
    >>> import keras
    >>> from convsv.keras import OperatorNormClipping
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same", name="conv"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> clipping = OperatorNormClipping(1.0, every=2, method="extrapolated", iterations=50, tol=1e-5)
    >>> x, y = np.ones((32, 8, 8, 1), "float32"), np.ones((32, 2), "float32")
    >>> _ = model.fit(x, y, batch_size=8, epochs=1, callbacks=[clipping], verbose=0)
    >>> clipping.steps, [(r.name, r.norm_after <= 1 + 1e-5) for r in clipping.last_report]
    (4, [('conv', True)])
    """

    def __init__(
        self,
        max_norm: float,
        *,
        every: int = 100,
        input_shapes: Shapes | None = None,
        layers: Sequence[Any] | None = None,
        **clip_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            msg = f"`every` must be a positive int, got {every!r}"
            raise ValueError(msg)
        self._options = ClipOptions.for_adapter(max_norm, clip_options)
        self.every = every
        self.input_shapes = dict(input_shapes or {})
        self.layers = None if layers is None else list(layers)
        self.steps = 0
        self.last_report: list[LayerReport] = []
        self._last_batch = -1

    def _kernels(self) -> Kernels:
        return _conv_kernels(self.model, self._options, self.input_shapes, self.layers)

    def on_train_begin(self, logs: Any = None) -> None:
        """Check every layer now (unknown input shapes, unsupported layers), before any step."""
        if self.model.built:
            self._kernels()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        """Batch indices restart with each epoch."""
        self._last_batch = -1

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Count the steps run since the last call; project when a multiple of ``every`` is crossed."""
        steps = (self.params or {}).get("steps")
        if steps:  # Keras reports a short last execution (steps_per_execution > 1) as a full one
            batch = min(batch, steps - 1)
        before = self.steps
        self.steps += max(batch - self._last_batch, 1)
        self._last_batch = batch
        if self.steps // self.every > before // self.every:
            self.clip()

    def clip(self) -> list[LayerReport]:
        """Project now, and keep the report in ``last_report``.

        Returns
        -------
        list of LayerReport
            One per kernel: layer name, norm before and after, steps taken.
        """
        kernels = self._kernels()
        _sync(self.model)
        self.last_report = _project_all(kernels)
        return self.last_report
