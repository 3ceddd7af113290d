"""The Keras constraint: one convolution's kernel held in an operator-norm ball after every update.

:class:`OperatorNormConstraint` is public as ``convsv.keras.OperatorNormConstraint``;
it describes its layer with a frozen :class:`~convsv._frameworks.keras.KerasConv`
and runs the projection on the backend through :mod:`convsv._keras_backends`.
:class:`Projecting` is what it shares with the training callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from ._clipping import ClipInfo
from ._frameworks.keras import KerasConv, input_spatial, kernels_of, layer_fields
from ._keras_backends import constrain, layer_norm, project
from ._options import CLIP_OPTIONS, ClipOptions, positive_bound


def clip_config(options: ClipOptions) -> dict[str, Any]:
    """The adapter's projection options as keyword arguments (JSON-serialisable)."""
    return {name: getattr(options, name) for name in CLIP_OPTIONS}


class Projecting:
    """What the constraint and the callback hold alike: one checked :class:`~convsv._options.ClipOptions`."""

    _options: ClipOptions

    @property
    def max_norm(self) -> float:
        """The bound on the operator norm."""
        return self._options.max_norm

    @property
    def clip_options(self) -> dict[str, Any]:
        """The projection options: ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``."""
        return clip_config(self._options)


def _described(name: str, doc: str) -> Any:
    """A read-only attribute of the constraint's layer description (a frozen :class:`KerasConv`)."""
    return property(lambda self: getattr(self._conv, name), doc=doc)


@keras.saving.register_keras_serializable(package="convsv")
class OperatorNormConstraint(Projecting, keras.constraints.Constraint):  # type: ignore[misc]
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
