"""Keras spectral normalisation by the layer's own operator norm: ``convsv.keras.SpectralNormalization``.

Keras' ``keras.layers.SpectralNormalization`` divides a kernel by the largest
singular value of the kernel reshaped into a ``(-1, filters)`` matrix, which is
not the norm of a convolution (Sedghi, Gupta & Long, ICLR 2019). This one runs
the warm-started power steps of :mod:`convsv._power_steps` on the layer's real
linear map: the layer's own ``call`` (its strides, padding, dilation, groups,
transposition) without bias and activation, on one sample of the input size,
with the adjoint from the backend's autodiff (``jax.vjp``, ``torch.func.vjp``,
``tf.GradientTape``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import keras
from keras import ops

from . import _power_steps as power_steps
from ._checks import integer, real
from ._checks import shape as shape_of
from ._frameworks.keras import kernels_of
from ._keras_backends import vjp
from ._power_steps import WARM_STEPS, Vectors, unit

#: The array-API names the power step uses, from ``keras.ops`` (TensorFlow's tensors are not
#: array-API arrays).
OPS = SimpleNamespace(
    asarray=lambda x, dtype=None: ops.convert_to_tensor(x, dtype=keras.backend.standardize_dtype(dtype)),
    zeros_like=ops.zeros_like,
    where=ops.where,
    maximum=ops.maximum,
    sum=ops.sum,
    concat=lambda arrays: ops.concatenate(arrays, axis=0),
    reshape=ops.reshape,
    matmul=ops.matmul,
    matrix_transpose=lambda x: ops.swapaxes(x, -1, -2),
    linalg=SimpleNamespace(vector_norm=lambda x: ops.sqrt(ops.sum(ops.square(x))), eigh=ops.eigh),
)

_UNMODELLED = (
    "bias_regularizer",
    "activity_regularizer",
    "kernel_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


def _linear_part(layer: Any) -> Any:
    """A copy of ``layer`` without bias, activation, regularisers or constraints.

    It computes in the kernel's dtype (not a mixed-precision policy's). Its ``call`` is the
    layer's own; its kernel is replaced at each use (``stateless_call``).
    """
    config = layer.get_config()
    config.update(name=f"{layer.name}_linear_part", use_bias=False, activation=None, dtype=layer.kernel.dtype)
    config.update({key: None for key in _UNMODELLED if key in config})
    return type(layer).from_config(config)


def _sample_shape(
    layer: Any, input_shape: tuple[Any, ...], spatial: tuple[int, ...] | None
) -> tuple[int, ...]:
    """One input sample's shape (no batch axis): the build shape, with ``spatial`` if given."""
    if isinstance(layer, keras.layers.Dense):
        return (int(input_shape[-1]),)  # the same matrix on every other axis: the norm is its norm
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    channels = input_shape[1] if first else input_shape[-1]
    given = tuple(input_shape[2:] if first else input_shape[1:-1])
    if spatial is None:
        if any(n is None for n in given):
            msg = (
                f"convsv.keras.SpectralNormalization: the input of layer {layer.name!r} has unknown spatial "
                f"size {tuple(input_shape)}; pass input_shape= (the spatial shape whose norm is normalised)"
            )
            raise ValueError(msg)
        spatial = tuple(int(n) for n in given)
    elif len(spatial) != len(given):
        msg = f"`input_shape` must have {len(given)} spatial sizes for layer {layer.name!r}, got {spatial}"
        raise ValueError(msg)
    return (int(channels), *spatial) if first else (*spatial, int(channels))


def _traced(value: Any) -> bool:
    """Whether ``value`` is symbolic (a JAX tracer, a TensorFlow graph tensor), not eager."""
    try:
        bool(value)
    except Exception:  # each backend raises its own error for a symbolic truth value
        return True
    return False


@keras.saving.register_keras_serializable(package="convsv")
class SpectralNormalization(keras.layers.Wrapper):  # type: ignore[misc]
    """A convolution whose kernel is divided by the layer's operator norm, estimated as it trains.

    A drop-in for ``keras.layers.SpectralNormalization`` on convolutions: the
    same construction and training use, but the divisor is the operator norm
    of the layer as it computes -- its strides, padding, dilation, groups and
    transposition, on the input size -- not the norm of the kernel reshaped
    into a matrix. In training each call takes ``power_iterations`` locally
    optimal power steps (as :func:`convsv.torch.spectral_norm` does) on the
    layer's own map and stores the vectors; outside training the stored
    vectors are used, first brought up to date (``WARM_STEPS`` steps) if the
    kernel changed since they were last updated. The divisor ``<u, A(kernel)
    v>`` is differentiable in the kernel with ``u`` and ``v`` held fixed.

    Unlike Keras' wrapper, the layer's ``kernel`` is never overwritten: it
    holds the raw weights the optimizer updates, and the layer is applied with
    the normalised kernel (:meth:`normalized_kernel`). Keras' in-place write
    is lost on the JAX backend, whose train step keeps only non-trainable
    state.

    Parameters
    ----------
    layer : keras.layers.Layer
        A ``Conv1D/2D/3D``, ``Conv1D/2D/3DTranspose``,
        ``DepthwiseConv1D/2D`` or ``Dense`` layer (built or not).
    power_iterations : int, optional
        Power steps per training call (default 1).
    input_shape : int or sequence of int, optional
        The spatial shape of the layer's input whose norm is normalised.
        Default: the spatial shape the layer is built on, which must then be
        known. Inputs of another size are normalised by this size's norm.
    eps : float, optional
        Floor of the vectors' norms and of the divisor (default 1e-12).
    **kwargs
        ``keras.layers.Layer`` arguments (``name``...).

    Raises
    ------
    TypeError
        If ``layer`` is not one of the layers above.
    ValueError
        For a bad ``power_iterations``, ``eps`` or ``input_shape``, or an
        input of unknown spatial size and no ``input_shape`` (when built).

    See Also
    --------
    convsv.torch.spectral_norm : The same for PyTorch.
    OperatorNormConstraint : Projects the kernel onto a norm ball instead.

    Examples
    --------
    >>> import keras, numpy as np
    >>> import convsv
    >>> from convsv.keras import SpectralNormalization
    >>> keras.utils.set_random_seed(0)
    >>> layer = SpectralNormalization(keras.layers.Conv2D(4, 3, padding="same"))
    >>> x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    >>> y = layer(x, training=True)  # one power step from a cold start; each call takes another
    >>> kernel = np.asarray(layer.normalized_kernel())
    >>> bool(abs(convsv.operator_norm(kernel, 8, layout="HWIO", padding="same") - 1) < 2e-2)
    True
    """

    def __init__(
        self,
        layer: Any,
        power_iterations: int = 1,
        *,
        input_shape: Any = None,
        eps: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, **kwargs)
        kinds = [kind for _, kind, _ in kernels_of(layer)]
        dense = isinstance(layer, keras.layers.Dense)
        if kinds not in (["conv"], ["depthwise"], ["transpose"]) and not dense:
            msg = (
                "convsv.keras.SpectralNormalization normalises Conv, ConvTranspose, DepthwiseConv and Dense "
                f"layers, got {type(layer).__name__}"
            )
            raise TypeError(msg)
        self.power_iterations = integer(power_iterations, "power_iterations")
        self.eps = real(eps, "eps", "a positive float", above=0.0)
        self.spatial = None
        if input_shape is not None and not dense:
            self.spatial = shape_of(input_shape, "input_shape", len(layer.kernel_size))

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        layer = self.layer
        sample = _sample_shape(layer, tuple(input_shape), self.spatial)
        linear = _linear_part(layer)
        linear.build((1, *sample))
        object.__setattr__(self, "_linear", linear)  # not tracked: its kernel is a stand-in, never saved
        image = linear.compute_output_shape((1, *sample))

        def state(name: str, shape: tuple[int, ...], initializer: str = "zeros") -> Any:
            return self.add_weight(shape, initializer, layer.kernel.dtype, trainable=False, name=name)

        self.vector_u = state("vector_u", image)
        self.vector_v = state("vector_v", (1, *sample), "random_normal")
        self.vector_p = state("vector_p", (1, *sample))
        # The kernel the vectors were last stepped for: outside training, a kernel that moved since
        # (the optimizer's step) has them brought up to date first.
        self.kernel_seen = state("kernel_seen", tuple(layer.kernel.shape))
        kernel = ops.stop_gradient(layer.kernel.value)
        v = unit(self.vector_v.value, self.eps, OPS)
        u = unit(self._apply(v, kernel), self.eps, OPS)
        self._store(self._steps(kernel, (u, v, self.vector_p.value), WARM_STEPS), kernel)

    # -- the layer's map and the power steps ----------------------------------------------------------

    def _apply(self, x: Any, kernel: Any) -> Any:
        """The layer's linear map with this kernel, on a batch of inputs."""
        return self._linear.stateless_call([kernel], [], x)[0]

    def _steps(self, kernel: Any, vectors: Vectors, count: int) -> Vectors:
        """``count`` locally optimal steps from ``(u, v, p)`` on the layer with ``kernel`` (held constant)."""
        return power_steps.steps(vectors, count, self._map(kernel), vjp(), self.eps, OPS)

    def _refresh(self, kernel: Any, vectors: Vectors) -> Vectors:
        """:func:`convsv._power_steps.refresh`, with a fixed random map (evaluations repeat)."""
        r = keras.random.normal(ops.shape(vectors[1]), seed=0, dtype=vectors[1].dtype)
        return power_steps.refresh(vectors, r, self._map(kernel), vjp(), self.eps, OPS)

    def _map(self, kernel: Any) -> Any:
        return lambda x: self._apply(x, kernel)

    def _store(self, vectors: Vectors, kernel: Any) -> None:
        variables = (self.vector_u, self.vector_v, self.vector_p, self.kernel_seen)
        for variable, value in zip(variables, (*vectors, kernel), strict=True):
            variable.assign(value)

    def _divisor(self, kernel: Any) -> Any:
        """``<u, A(kernel) v>`` with the stored vectors, differentiable in ``kernel``."""
        u, v = ops.stop_gradient(self.vector_u.value), ops.stop_gradient(self.vector_v.value)
        return ops.maximum(ops.sum(u * self._apply(v, kernel)), self.eps)

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, inputs: Any, training: bool = False) -> Any:
        kernel = self.layer.kernel.value
        self._update(ops.stop_gradient(kernel), training)
        return self._call_layer(inputs, kernel / self._divisor(kernel))

    def _update(self, kernel: Any, training: bool) -> None:
        """Training: ``power_iterations`` steps; otherwise a refresh if the kernel moved since the last."""
        vectors = (self.vector_u.value, self.vector_v.value, self.vector_p.value)
        if training:
            vectors = self._steps(kernel, vectors, self.power_iterations)
        else:
            moved = ops.any(ops.not_equal(kernel, self.kernel_seen.value))
            if _traced(moved):
                vectors = ops.cond(moved, lambda: self._refresh(kernel, vectors), lambda: vectors)
            elif moved:
                vectors = self._refresh(kernel, vectors)
        self._store(vectors, kernel)

    def _call_layer(self, inputs: Any, kernel: Any) -> Any:
        """The wrapped layer's own ``call`` (bias, activation and all) with ``kernel`` for its kernel."""
        layer = self.layer

        def values(variables: list[Any]) -> list[Any]:
            return [kernel if variable is layer.kernel else variable.value for variable in variables]

        trainable, state = values(layer.trainable_variables), values(layer.non_trainable_variables)
        return layer.stateless_call(trainable, state, inputs)[0]

    def normalized_kernel(self) -> Any:
        """The kernel as the layer uses it outside training (the vectors brought up to date if it moved).

        Returns
        -------
        Tensor
            ``kernel / <u, A(kernel) v>``, a backend tensor in Keras' layout
            (``(*kernel_size, in, out)``; a transposed layer's
            ``(*kernel_size, out, in)``), outside any gradient.
        """
        kernel = ops.stop_gradient(self.layer.kernel.value)
        self._update(kernel, training=False)
        return kernel / self._divisor(kernel)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = {"power_iterations": self.power_iterations, "input_shape": self.spatial, "eps": self.eps}
        return {**super().get_config(), **config}
