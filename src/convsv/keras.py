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

from ._clipping import ClipInfo
from ._docs import CLIP_OPTIONS_PARAMETER, shared_text
from ._frameworks.keras import KerasConv, convolutions, input_spatial, kernels_of, layer_fields, to_numpy
from ._keras_backends import constrain, layer_norm, project
from ._options import CLIP_OPTIONS, ClipOptions, positive_bound

__all__ = [
    "LayerReport",
    "OperatorNormClipping",
    "OperatorNormConstraint",
    "clip_operator_norm_",
    "conv_kernels",
]

#: The projection options the constraint and the callback take (``ClipOptions.for_adapter``'s), in order.
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


def _clip_config(options: ClipOptions) -> dict[str, Any]:
    """The adapter's projection options as keyword arguments (JSON-serialisable)."""
    return {name: getattr(options, name) for name in CLIP_OPTIONS}


class _Projecting:
    """What the constraint and the callback hold alike: one checked :class:`~convsv._options.ClipOptions`."""

    _options: ClipOptions

    @property
    def max_norm(self) -> float:
        """The bound on the operator norm."""
        return self._options.max_norm

    @property
    def clip_options(self) -> dict[str, Any]:
        """The projection options: ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``."""
        return _clip_config(self._options)


def _described(name: str, doc: str) -> Any:
    """A read-only attribute of the constraint's layer description (a frozen :class:`KerasConv`)."""
    return property(lambda self: getattr(self._conv, name), doc=doc)


@keras.saving.register_keras_serializable(package="convsv")
class OperatorNormConstraint(_Projecting, keras.constraints.Constraint):  # type: ignore[misc]
    """Keep a convolution's operator norm at most ``max_norm`` after every update.

    A ``keras.constraints.Constraint``: the optimizer calls it on the kernel
    after each update and writes the result back. It projects the kernel with
    :func:`convsv.clip_operator_norm`, for the layer that the options
    describe; they must be the layer's own (Keras layers do not tell their
    constraints). :meth:`for_layer` reads them from a layer.

    Parameters
    ----------
    max_norm : float
        The bound on the layer's operator norm (positive).
    input_shape : int or sequence of int
        Spatial shape of the layer's input (for a transposed layer, its own
        input); an int means the same size on every axis.
    strides : int or sequence of int, optional
        As the layer's (default 1).
    padding : {"valid", "same", "causal", "circular"}, optional
        The layer's ``padding`` (default ``"valid"``, as Keras). ``"valid"``,
        ``"same"`` and ``"causal"`` (``Conv1D``) are zero padding: the
        zero-padded layer's own norm is held at ``max_norm`` (see
        ``bound``). ``"circular"`` is a circular
        convolution on ``input_shape`` (say, a periodic padding layer before a
        ``"valid"`` convolution, with ``input_shape`` the map before padding):
        exact; the strides must divide the map.
    dilation_rate : int or sequence of int, optional
        As the layer's (default 1).
    groups : int, optional
        As the layer's (default 1).
    output_padding : int or sequence of int, optional
        A transposed layer's ``output_padding`` (default None, as Keras).
    kind : {"conv", "depthwise", "transpose"}, optional
        ``"conv"`` (default) for ``Conv1D/2D/3D`` kernels ``(*k, in / groups,
        out)``; ``"depthwise"`` for ``DepthwiseConv1D/2D`` kernels ``(*k, in,
        multiplier)`` (pass it as ``depthwise_constraint``); ``"transpose"``
        for ``Conv1D/2D/3DTranspose`` kernels ``(*k, out, in)``.
    method : {"alternating", "extrapolated", "dykstra"}, optional
        As in :func:`convsv.clip_operator_norm` (default: one step of the
        paper's projection). ``method="extrapolated", iterations=50,
        tol=1e-5`` meets the bound at every step.
    iterations : int, optional
        Most projection steps per application (default 1).
    tol : float, optional
        Stop once the norm is within ``max_norm * (1 + tol)`` (default None:
        always take ``iterations`` steps).
    min_norm : float, optional
        A lower bound on every singular value (default None; with zero
        padding it needs ``bound="circular"``).
    bound : {"tight", "circular"}, optional
        Zero padding: ``"tight"`` (default) lands the layer's own norm on
        ``max_norm``; ``"circular"`` projects the circular layer on the padded
        map, whose norm bounds the layer's from above (cheaper, conservative).
        As in :func:`convsv.clip_operator_norm`.

    Attributes
    ----------
    max_norm, input_shape, strides, padding, dilation_rate, groups, output_padding, kind, clip_options
        The arguments as checked (read-only): sequences as tuples, an int
        for the same size on every axis, ``padding`` in lower case;
        ``clip_options`` the projection's (``method``, ``iterations``,
        ``tol``, ``min_norm``, ``bound``) as a dict.

    Raises
    ------
    ValueError
        At construction, for a non-positive ``max_norm``, a bad size, an
        unknown ``padding``, ``kind`` or ``method``, options that do not fit
        the kind (``groups`` with ``"depthwise"``, ``output_padding`` without
        ``"transpose"``), or circular strides that do not divide the map.
        When first applied, for a kernel whose rank or size does not fit.
    RuntimeError
        On the TensorFlow backend inside an XLA-compiled function: compile
        with ``jit_compile=False`` (see Notes).

    See Also
    --------
    OperatorNormClipping : The every-N-steps schedule, options read from the model.

    Notes
    -----
    On JAX the projection is traced into the jitted train step (with ``tol``,
    as a ``jax.lax.while_loop``); on PyTorch it runs on the kernel's device.
    On TensorFlow it runs in NumPy through ``tf.numpy_function``, which XLA
    cannot compile: ``model.compile(jit_compile="auto")`` (the default) picks
    XLA on TensorFlow when a GPU is visible (not on CPU-only machines), so
    there compile with ``jit_compile=False``, or use
    :class:`OperatorNormClipping`, which runs eagerly between steps.

    The constraint is saved with the model (``get_config``; registered as
    ``"convsv>OperatorNormConstraint"``), so ``keras.models.load_model``
    restores it once ``convsv.keras`` is imported.

    Examples
    --------
    >>> import keras
    >>> from convsv.keras import OperatorNormConstraint
    >>> constraint = OperatorNormConstraint(
    ...     1.0, (8, 8), strides=2, padding="same", method="extrapolated", iterations=50, tol=1e-5
    ... )
    >>> layer = keras.layers.Conv2D(4, 3, strides=2, padding="same", kernel_constraint=constraint)
    >>> kernel = constraint(keras.ops.ones((3, 3, 1, 4)))
    >>> bool(constraint.operator_norm(kernel) <= 1 + 1e-5)
    True
    >>> OperatorNormConstraint.from_config(constraint.get_config()).get_config() == constraint.get_config()
    True
    """

    input_shape = _described("input_shape", "The layer's input spatial shape (an int: every axis).")
    strides = _described("strides", "The layer's strides.")
    padding = _described("padding", "The layer's padding, lower case.")
    dilation_rate = _described("dilation_rate", "The layer's dilation.")
    groups = _described("groups", "The layer's groups.")
    output_padding = _described("output_padding", "A transposed layer's output padding, or None.")
    kind = _described("kind", "The kernel's kind: 'conv', 'depthwise' or 'transpose'.")

    def __init__(
        self,
        max_norm: float,
        input_shape: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        output_padding: int | Sequence[int] | None = None,
        kind: str = "conv",
        method: str = "alternating",
        iterations: int = 1,
        tol: float | None = None,
        min_norm: float | None = None,
        bound: str = "tight",
    ) -> None:
        max_norm = positive_bound(max_norm)  # first: its error before any other
        # KerasConv's fields are these arguments, in this order.
        self._conv = KerasConv(input_shape, strides, padding, dilation_rate, groups, output_padding, kind)
        given = {"method": method, "iterations": iterations, "tol": tol, "min_norm": min_norm, "bound": bound}
        self._options = ClipOptions.for_adapter(max_norm, given)
        self._options.check_padding(self._conv.padding == "circular")

    # -- the layer, as convsv sees it --------------------------------------------------------------

    def convsv_options(self, kernel_shape: Sequence[int]) -> tuple[tuple[int, ...], dict[str, Any]]:
        """The kernel shape and options :mod:`convsv` functions take for this layer.

        Parameters
        ----------
        kernel_shape : sequence of int
            The Keras kernel's shape.

        Returns
        -------
        shape : tuple of int
            The shape to give the kernel first (a depthwise kernel ``(*k, in,
            m)`` is the grouped kernel ``(*k, 1, in * m)`` with ``in`` groups).
        options : dict
            ``input_shape``, ``layout``, ``stride``, ``dilation``, ``groups``,
            ``transposed``, ``padding`` and ``output_padding``.

        Raises
        ------
        ValueError
            If the kernel's rank does not fit the options, or the layer does
            not fit the map (as :func:`convsv.operator_norm`).

        Examples
        --------
        >>> from convsv.keras import OperatorNormConstraint
        >>> causal = OperatorNormConstraint(1.0, 16, padding="causal", dilation_rate=2)
        >>> shape, options = causal.convsv_options((3, 4, 4))
        >>> shape, options["layout"], options["padding"]
        ((3, 4, 4), 'WIO', ((4, 0),))
        """
        return self._conv.convsv_options(kernel_shape)

    def check(self, kernel_shape: Sequence[int]) -> None:
        """Raise now what applying the constraint to a kernel of this shape would raise.

        Parameters
        ----------
        kernel_shape : sequence of int
            The Keras kernel's shape.

        Raises
        ------
        ValueError
            As :meth:`convsv_options`, or for a dilated kernel larger than
            the (circular) map.
        """
        _, spec = self._conv.spec(kernel_shape)
        self._options.check_layer(spec)

    def project(self, kernel: Any) -> tuple[Any, ClipInfo]:
        """Project a kernel eagerly; returns ``(kernel, info)``.

        Parameters
        ----------
        kernel : tensor or keras.Variable
            The kernel, in the layer's layout.

        Returns
        -------
        kernel : tensor
            The projected kernel: a backend tensor on the kernel's device (a
            NumPy array on the TensorFlow backend).
        info : convsv.ClipInfo
            As :func:`convsv.clip_operator_norm` returns it.
        """
        return project(kernel, self._conv, self._options)

    def __call__(self, w: Any) -> Any:
        """The projected kernel, as a backend tensor (traced inside the train step)."""
        return constrain(w, self._conv, self._options)

    def operator_norm(self, kernel: Any, **norm_options: Any) -> float:
        """The operator norm of the layer with this kernel (exact; Lanczos for zero padding).

        Computed in float64 NumPy on the host.

        Parameters
        ----------
        kernel : tensor or keras.Variable
            The kernel, in the layer's layout.
        **norm_options
            ``iterations`` and ``tol`` of :func:`convsv.operator_norm`'s
            Lanczos iteration (zero padding); a clipped layer has many
            singular values near the bound, where a tighter ``tol`` helps.

        Returns
        -------
        float
            :func:`convsv.operator_norm` of the layer the options describe:
            for zero padding, the norm of the zero-padded layer itself (at
            most that of the circular layer the projection bounds).
        """
        return layer_norm(kernel, self._conv, norm_options)

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-serialisable).

        Returns
        -------
        dict
            Keyword arguments that rebuild this constraint.
        """
        return {"max_norm": self.max_norm, **self._conv.config(), **self.clip_options}

    @classmethod
    def for_layer(
        cls, layer: Any, max_norm: float, *, input_shape: Any = None, **clip_options: Any
    ) -> OperatorNormConstraint:
        """The constraint that describes a Keras convolution, its options read from the layer.

        Parameters
        ----------
        layer : keras.layers.Layer
            A ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` or
            ``Conv1D/2D/3DTranspose``.
        max_norm : float
            The bound on the layer's operator norm.
        input_shape : int or sequence of int, optional
            The layer's input spatial shape; read from the built layer when
            omitted.
        **clip_options
            ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``.

        Returns
        -------
        OperatorNormConstraint

        Raises
        ------
        TypeError
            If ``layer`` is not one of those convolutions.
        ValueError
            If the input shape is unknown, or as the constructor.

        Examples
        --------
        >>> import keras
        >>> from convsv.keras import OperatorNormConstraint
        >>> layer = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")
        >>> layer.build((None, 8, 8, 4))
        >>> constraint = OperatorNormConstraint.for_layer(layer, 1.0)
        >>> constraint.kind, constraint.input_shape, constraint.strides, constraint.padding
        ('depthwise', (8, 8), (2, 2), 'same')
        >>> layer.kernel.constraint = constraint  # applied after every update (not saved with the model)
        """
        kinds = [kind for attr, kind, _ in kernels_of(layer) if attr == "kernel"]
        if not kinds:
            msg = (
                f"{type(layer).__name__} is not a Keras Conv1D/2D/3D, DepthwiseConv1D/2D or "
                "Conv1D/2D/3DTranspose layer"
            )
            raise TypeError(msg)
        if input_shape is None:
            input_shape = input_spatial(layer)
        return cls(max_norm, **layer_fields(layer, kinds[0], input_shape), **clip_options)


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
            constraint = OperatorNormConstraint(bound, **fields, **_clip_config(options))
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
class OperatorNormClipping(_Projecting, keras.callbacks.Callback):  # type: ignore[misc]
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
