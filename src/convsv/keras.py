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

import functools
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat
import keras
import numpy as np

from ._clipping import ClipInfo
from ._frameworks.keras import to_numpy, transposed_padding
from ._layout import conv_spec, dilated_spans
from ._norms import operator_norm
from ._options import ClipOptions, positive_bound
from ._projection import clip_operator_norm

__all__ = [
    "LayerReport",
    "OperatorNormClipping",
    "OperatorNormConstraint",
    "clip_operator_norm_",
    "conv_kernels",
]

_LAYOUTS = {1: "WIO", 2: "HWIO", 3: "DHWIO"}
_PADDINGS = ("valid", "same", "causal", "circular")
_KINDS = ("conv", "depthwise", "transpose")
_CLIP_OPTIONS = ("method", "iterations", "tol", "min_norm", "bound")
Shapes = Mapping[str, Any]


def _check_clip_options(max_norm: float, options: Mapping[str, Any]) -> dict[str, Any]:
    """The projection options (``method``, ..., ``bound``), checked with the bound they go with."""
    checked = ClipOptions.for_adapter(max_norm, options)
    return {name: getattr(checked, name) for name in _CLIP_OPTIONS}


def _sizes(value: object, name: str, minimum: int = 1) -> int | tuple[int, ...]:
    """An int or a sequence of ints, each ``>= minimum``; lists (from JSON configs) become tuples."""
    if value is None:
        msg = f"`{name}` is required"
        raise ValueError(msg)
    items = value if isinstance(value, (list, tuple)) else (value,)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            msg = f"`{name}` must be a {kind} int or a sequence of them, got {value!r}"
            raise ValueError(msg)
    if isinstance(value, (list, tuple)):
        if not value:
            msg = f"`{name}` must not be empty"
            raise ValueError(msg)
        return tuple(int(v) for v in value)
    return operator.index(value)  # type: ignore[arg-type]


def _per_axis(value: int | tuple[int, ...], rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    if len(value) != rank:
        msg = f"`{name}` has {len(value)} entries but the kernel has {rank} spatial axes"
        raise ValueError(msg)
    return value


@functools.lru_cache(maxsize=64)
def _jitted_projection(config: tuple[tuple[str, Any], ...], return_info: bool) -> Any:
    """One compiled projection per constraint configuration (eager JAX would dispatch op by op)."""
    import jax

    constraint = OperatorNormConstraint(**dict(config))
    return jax.jit(lambda kernel: constraint._project_array(kernel, return_info=return_info))


def _in_xla_context() -> bool:
    """Whether TensorFlow is tracing a function for XLA (``jit_compile=True``)."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow internals moved
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


@keras.saving.register_keras_serializable(package="convsv")
class OperatorNormConstraint(keras.constraints.Constraint):  # type: ignore[misc]
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
        self.max_norm = positive_bound(max_norm)
        self.input_shape = _sizes(input_shape, "input_shape")
        self.strides = _sizes(strides, "strides")
        self.dilation_rate = _sizes(dilation_rate, "dilation_rate")
        groups_ = _sizes(groups, "groups")
        if not isinstance(groups_, int):
            msg = f"`groups` must be a positive int, got {groups!r}"
            raise ValueError(msg)
        self.groups = groups_
        self.output_padding = None if output_padding is None else _sizes(output_padding, "output_padding", 0)
        if kind not in _KINDS:
            msg = f"`kind` must be one of {_KINDS}, got {kind!r}"
            raise ValueError(msg)
        self.kind = kind
        self.padding = padding.lower() if isinstance(padding, str) else padding
        if self.padding not in _PADDINGS:
            msg = f"`padding` must be one of {_PADDINGS}, got {padding!r}"
            raise ValueError(msg)
        if kind != "conv" and self.groups != 1:
            msg = f"`groups` is for kind='conv' (a {kind} kernel's groups follow from its shape)"
            raise ValueError(msg)
        if kind != "transpose" and self.output_padding is not None:
            msg = "`output_padding` is for kind='transpose'"
            raise ValueError(msg)
        if self.padding == "causal" and (kind == "transpose" or _rank_of(self) not in (None, 1)):
            msg = "padding='causal' is for 1-D convolutions (Conv1D)"
            raise ValueError(msg)
        rank = _rank_of(self) or 1  # all ints: the same on every axis
        if self.padding == "circular" and kind != "transpose":
            shape = _per_axis(self.input_shape, rank, "input_shape")
            steps = _per_axis(self.strides, rank, "strides")
            if any(n % s for n, s in zip(shape, steps, strict=True)):
                msg = (
                    f"`strides` {self.strides} must divide the feature map {self.input_shape} "
                    "for circular padding"
                )
                raise ValueError(msg)
        self.clip_options = _check_clip_options(
            self.max_norm,
            {"method": method, "iterations": iterations, "tol": tol, "min_norm": min_norm, "bound": bound},
        )
        ClipOptions(self.max_norm, **self.clip_options).check_padding(self.padding == "circular")

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
        shape = tuple(int(n) for n in kernel_shape)
        rank = len(shape) - 2
        if rank not in _LAYOUTS:
            msg = f"expected a 1-D, 2-D or 3-D convolution kernel (*k, in, out), got shape {shape}"
            raise ValueError(msg)
        strides = _per_axis(self.strides, rank, "strides")
        dilation = _per_axis(self.dilation_rate, rank, "dilation_rate")
        input_shape = _per_axis(self.input_shape, rank, "input_shape")
        spans = dilated_spans(shape[:rank], dilation)
        groups = self.groups
        if self.kind == "depthwise":
            groups = shape[rank]
            shape = (*shape[:rank], 1, shape[rank] * shape[rank + 1])
        options: dict[str, Any] = {
            "input_shape": input_shape,
            "layout": _LAYOUTS[rank],
            "stride": strides,
            "dilation": dilation,
            "groups": groups,
            "transposed": self.kind == "transpose",
            "output_padding": 0,
        }
        padding: Any = self.padding
        if self.padding == "causal":
            if rank != 1:
                msg = f"padding='causal' is for 1-D convolutions, got a {rank}-D kernel"
                raise ValueError(msg)
            padding = ((spans[0] - 1, 0),)
        elif self.kind == "transpose" and self.padding != "circular":
            extra = (
                None
                if self.output_padding is None
                else _per_axis(self.output_padding, rank, "output_padding")
            )
            padding, options["output_padding"] = transposed_padding(spans, strides, self.padding, extra)
        options["padding"] = padding
        core = {key: value for key, value in options.items() if key != "input_shape"}
        conv_spec(shape, input_shape, **core)  # the core's own checks, now
        return shape, options

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
        shape, options = self.convsv_options(kernel_shape)
        core = {key: value for key, value in options.items() if key != "input_shape"}
        spec = conv_spec(shape, options["input_shape"], **core)
        if any(w > n for w, n in zip(spec.dilated_size, spec.grid, strict=True)):
            msg = f"the kernel's dilated size {spec.dilated_size} exceeds the feature map {spec.grid}"
            raise ValueError(msg)

    def _project_array(self, kernel: Any, return_info: bool) -> Any:
        """Project an array-API kernel (NumPy, JAX, PyTorch) in its own namespace."""
        xp = array_api_compat.array_namespace(kernel)
        original = tuple(kernel.shape)
        shape, options = self.convsv_options(original)
        input_shape = options.pop("input_shape")
        if shape != original:
            kernel = xp.reshape(kernel, shape)
        result = clip_operator_norm(
            kernel, input_shape, self.max_norm, return_info=return_info, **options, **self.clip_options
        )
        new, info = result if return_info else (result, None)
        if shape != original:
            new = xp.reshape(new, original)
        return (new, info) if return_info else new

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
        value = kernel.value if isinstance(kernel, keras.Variable) else kernel
        backend = keras.backend.backend()
        if backend == "jax":
            new, info = _jitted_projection(self._config_key(), True)(value)
            return new, info
        if backend == "torch":
            value = value.detach()
        elif backend != "numpy":
            value = to_numpy(value)
        new, info = self._project_array(value, return_info=True)
        return new, info

    def __call__(self, w: Any) -> Any:
        """The projected kernel, as a backend tensor (traced inside the train step)."""
        backend = keras.backend.backend()
        value = keras.ops.convert_to_tensor(w)
        if backend == "jax":  # compiled once per configuration, inlined when traced in a train step
            return _jitted_projection(self._config_key(), False)(keras.ops.stop_gradient(value))
        if backend in ("torch", "numpy"):
            return self._project_array(keras.ops.stop_gradient(value), return_info=False)
        if backend != "tensorflow":
            return keras.ops.convert_to_tensor(self._project_array(to_numpy(value), return_info=False))
        import tensorflow as tf

        if tf.executing_eagerly():  # (tf.numpy_function would convert with np.array, which NumPy 2 flags)
            return tf.convert_to_tensor(self._project_array(to_numpy(value), return_info=False))
        if _in_xla_context():
            msg = (
                "OperatorNormConstraint runs its projection in NumPy on the TensorFlow backend "
                "(tf.numpy_function), which XLA cannot compile: compile the model with "
                "jit_compile=False, or use convsv.keras.OperatorNormClipping, which projects "
                "between steps"
            )
            raise RuntimeError(msg)
        out = tf.numpy_function(
            lambda array: np.asarray(self._project_array(array, return_info=False), dtype=array.dtype),
            [value],
            Tout=value.dtype,
            stateful=False,
        )
        out.set_shape(value.shape)
        return out

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
        value = to_numpy(kernel)
        if value.dtype.kind == "f":
            value = value.astype(np.float64)
        shape, options = self.convsv_options(value.shape)
        input_shape = options.pop("input_shape")
        return float(operator_norm(np.reshape(value, shape), input_shape, **options, **norm_options))

    def _config_key(self) -> tuple[tuple[str, Any], ...]:
        return tuple((key, _hashable(item)) for key, item in self.get_config().items())

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-serialisable).

        Returns
        -------
        dict
            Keyword arguments that rebuild this constraint.
        """
        return {
            "max_norm": self.max_norm,
            "input_shape": self.input_shape,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "output_padding": self.output_padding,
            "kind": self.kind,
            **self.clip_options,
        }

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
        kinds = [kind for attr, kind, _ in _kernels_of(layer) if attr == "kernel"]
        if not kinds:
            msg = (
                f"{type(layer).__name__} is not a Keras Conv1D/2D/3D, DepthwiseConv1D/2D or "
                "Conv1D/2D/3DTranspose layer"
            )
            raise TypeError(msg)
        if input_shape is None:
            input_shape = _input_spatial(layer)
        return _constraint_for(layer, kinds[0], max_norm, input_shape, clip_options)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _rank_of(constraint: OperatorNormConstraint) -> int | None:
    """The rank the tuple-valued options imply, if any does."""
    for value in (
        constraint.input_shape,
        constraint.strides,
        constraint.dilation_rate,
        constraint.output_padding,
    ):
        if isinstance(value, tuple):
            return len(value)
    return None


def _kernels_of(layer: Any) -> list[tuple[str, str, Any]]:
    """``(attribute, kind, variable)`` for each kernel of a supported convolution layer (else empty)."""
    layers = keras.layers
    if isinstance(layer, layers.SeparableConv1D | layers.SeparableConv2D):
        return [
            ("depthwise_kernel", "depthwise", getattr(layer, "depthwise_kernel", None)),
            ("pointwise_kernel", "pointwise", getattr(layer, "pointwise_kernel", None)),
        ]
    if isinstance(layer, layers.DepthwiseConv1D | layers.DepthwiseConv2D):
        kind = "depthwise"
    elif isinstance(layer, layers.Conv1DTranspose | layers.Conv2DTranspose | layers.Conv3DTranspose):
        kind = "transpose"
    elif isinstance(layer, layers.Conv1D | layers.Conv2D | layers.Conv3D):
        kind = "conv"
    else:
        return []
    return [("kernel", kind, getattr(layer, "kernel", None))]


def _constraint_for(
    layer: Any, kind: str, max_norm: float, input_shape: Any, clip_options: Mapping[str, Any]
) -> OperatorNormConstraint:
    if kind == "pointwise":  # a 1x1 convolution: its norm does not depend on the map
        return OperatorNormConstraint(max_norm, 1, kind="conv", padding="circular", **clip_options)
    return OperatorNormConstraint(
        max_norm,
        input_shape,
        strides=tuple(layer.strides),
        padding=layer.padding,
        dilation_rate=tuple(layer.dilation_rate),
        groups=int(getattr(layer, "groups", 1)) if kind == "conv" else 1,
        output_padding=getattr(layer, "output_padding", None) if kind == "transpose" else None,
        kind=kind,
        **clip_options,
    )


def _input_spatial(layer: Any) -> tuple[int, ...]:
    """A built layer's input spatial shape, from its build shape or its symbolic input."""
    shape = None
    config = layer.get_build_config() if layer.built else None
    if config and "input_shape" in config:
        shape = config["input_shape"]
    else:
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            shape = None
    if shape is None:
        msg = (
            f"no input shape for layer {layer.name!r}: build the model first (call it once or give it an "
            "Input), or pass input_shapes={name: spatial shape}"
        )
        raise ValueError(msg)
    shape = tuple(shape)
    spatial = shape[2:] if layer.data_format == "channels_first" else shape[1:-1]
    if any(n is None for n in spatial):
        msg = (
            f"layer {layer.name!r} has an input of unknown spatial size {shape}: pass "
            "input_shapes={name: spatial shape}"
        )
        raise ValueError(msg)
    return tuple(int(n) for n in spatial)


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


def _all_layers(model: Any) -> Iterator[Any]:
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer


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
    input_shapes : mapping, optional
        Layer name to that layer's input spatial shape; read from the built
        layers otherwise.
    layers : sequence of str or keras.layers.Layer, optional
        Only these layers (names or layers); default every supported
        convolution.
    **clip_options
        ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``.

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
    max_norm = positive_bound(max_norm)
    clip_options = _check_clip_options(max_norm, clip_options)
    given = dict(input_shapes or {})
    if layers is None:
        chosen = [layer for layer in _all_layers(model) if _kernels_of(layer)]
    else:
        by_name = {layer.name: layer for layer in _all_layers(model)}
        chosen = []
        for item in layers:
            layer = by_name.get(item) if isinstance(item, str) else item
            if layer is None:
                msg = f"no layer named {item!r} in the model"
                raise ValueError(msg)
            if not _kernels_of(layer):
                msg = (
                    f"layer {layer.name!r} ({type(layer).__name__}) is not a supported convolution: "
                    "Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D or Conv1D/2D/3DTranspose"
                )
                raise TypeError(msg)
            chosen.append(layer)
    unknown = sorted(set(given) - {layer.name for layer in chosen})
    if unknown:
        msg = f"input_shapes names layer(s) {unknown} that are not among the convolutions clipped"
        raise ValueError(msg)
    found = []
    for layer in chosen:
        shape = given[layer.name] if layer.name in given else _input_spatial(layer)
        bound = (
            math.sqrt(max_norm)
            if isinstance(layer, keras.layers.SeparableConv1D | keras.layers.SeparableConv2D)
            else max_norm
        )
        for attr, kind, variable in _kernels_of(layer):
            if variable is None:
                msg = f"layer {layer.name!r} is not built: build the model first"
                raise ValueError(msg)
            constraint = _constraint_for(layer, kind, bound, shape, clip_options)
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
    input_shapes : mapping, optional
        Layer name to that layer's input spatial shape, for layers whose
        input size the model does not fix.
    layers : sequence of str or keras.layers.Layer, optional
        Only these layers; default every supported convolution.
    **clip_options
        ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``: as in
        :func:`convsv.clip_operator_norm`.

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
    Zero padding (``"valid"``, ``"same"``, ``"causal"``): the circular layer
    on the padded map is projected; its norm bounds the zero-padded layer's.
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


class OperatorNormClipping(keras.callbacks.Callback):  # type: ignore[misc]
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
    input_shapes : mapping, optional
        Layer name to that layer's input spatial shape, for layers whose
        input size the model does not fix.
    layers : sequence of str or keras.layers.Layer, optional
        Only these layers; default every supported convolution.
    **clip_options
        ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``: as in
        :func:`convsv.clip_operator_norm`.

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
        self.max_norm = positive_bound(max_norm)
        self.every = every
        self.input_shapes = dict(input_shapes or {})
        self.layers = None if layers is None else list(layers)
        self.clip_options = _check_clip_options(self.max_norm, clip_options)
        self.steps = 0
        self.last_report: list[LayerReport] = []
        self._last_batch = -1

    def _kernels(self) -> list[tuple[str, str, Any, OperatorNormConstraint]]:
        return conv_kernels(
            self.model, self.max_norm, input_shapes=self.input_shapes, layers=self.layers, **self.clip_options
        )

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
