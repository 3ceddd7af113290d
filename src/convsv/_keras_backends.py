"""The Keras constraint's projection and norm, run on whichever backend Keras uses.

Each function takes a kernel as Keras gives it, a checked layer description
(:class:`~convsv._frameworks.keras.KerasConv`) and checked options, and calls
the spec-level :func:`convsv._clipping.clip` or :func:`convsv._values.norm`
on the spec the description builds once per kernel shape:

- JAX: one compiled projection per description, options and
  ``return_info``, which a jitted train step inlines;
- PyTorch (and Keras' NumPy backend): in the kernel's own namespace, on its
  device;
- TensorFlow: its tensors are not array-API arrays, so in NumPy on the host,
  through ``tf.numpy_function`` inside a traced step, which XLA cannot
  compile (a ``RuntimeError`` says what to do instead).

Keras and the backends are imported by the calls that need them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from ._clipping import ClipInfo, clip
from ._frameworks.keras import KerasConv, to_numpy
from ._options import ClipOptions, NormOptions
from ._values import norm

#: What the XLA route of the TensorFlow backend cannot do, and what to do instead.
XLA_REFUSAL = (
    "OperatorNormConstraint runs its projection in NumPy on the TensorFlow backend "
    "(tf.numpy_function), which XLA cannot compile: compile the model with "
    "jit_compile=False, or use convsv.keras.OperatorNormClipping, which projects "
    "between steps"
)


def project_array(
    kernel: Any, conv: KerasConv, options: ClipOptions, return_info: bool
) -> tuple[Any, ClipInfo | None]:
    """Project an array-API kernel (NumPy, JAX, PyTorch) in its own namespace: ``(kernel, info or None)``."""
    xp = array_api_compat.array_namespace(kernel)
    original = tuple(int(n) for n in kernel.shape)
    shape, spec = conv.spec(original)
    if shape != original:  # a depthwise kernel, as the grouped kernel the spec describes
        kernel = xp.reshape(kernel, shape)
    new, info = clip(kernel, spec, xp, options, return_info)
    if shape != original:
        new = xp.reshape(new, original)
    return new, info


@functools.lru_cache(maxsize=64)
def _jitted(conv: KerasConv, options: ClipOptions, return_info: bool) -> Any:
    """One compiled projection per layer and options (eager JAX would dispatch op by op)."""
    import jax

    return jax.jit(lambda kernel: project_array(kernel, conv, options, return_info))


def project(kernel: Any, conv: KerasConv, options: ClipOptions) -> tuple[Any, ClipInfo]:
    """Project a Keras kernel (tensor or variable) eagerly: ``(kernel, info)``.

    The kernel comes back as a backend tensor on the kernel's device (a NumPy
    array on the TensorFlow backend).
    """
    import keras

    value = kernel.value if isinstance(kernel, keras.Variable) else kernel
    backend = keras.backend.backend()
    if backend == "jax":
        new, info = _jitted(conv, options, True)(value)
    else:
        if backend == "torch":
            value = value.detach()
        elif backend != "numpy":
            value = to_numpy(value)
        new, info = project_array(value, conv, options, return_info=True)
    assert info is not None  # (asked for)
    return new, info


def constrain(w: Any, conv: KerasConv, options: ClipOptions) -> Any:
    """The projected kernel as a backend tensor, eagerly or traced inside a train step."""
    import keras

    backend = keras.backend.backend()
    value = keras.ops.convert_to_tensor(w)
    if backend == "jax":  # compiled once per configuration, inlined when traced in a train step
        return _jitted(conv, options, False)(keras.ops.stop_gradient(value))[0]
    if backend in ("torch", "numpy"):
        return project_array(keras.ops.stop_gradient(value), conv, options, return_info=False)[0]
    if backend == "tensorflow":
        return _tensorflow(value, conv, options)
    return keras.ops.convert_to_tensor(project_array(to_numpy(value), conv, options, return_info=False)[0])


def _tensorflow(value: Any, conv: KerasConv, options: ClipOptions) -> Any:
    """TensorFlow: NumPy on the host, eagerly or through ``tf.numpy_function`` in a traced step."""
    import tensorflow as tf

    def projected(array: Any) -> Any:
        return np.asarray(project_array(array, conv, options, return_info=False)[0], dtype=array.dtype)

    if tf.executing_eagerly():  # (tf.numpy_function would convert with np.array, which NumPy 2 flags)
        return tf.convert_to_tensor(project_array(to_numpy(value), conv, options, return_info=False)[0])
    if _in_xla_context():
        raise RuntimeError(XLA_REFUSAL)
    out = tf.numpy_function(projected, [value], Tout=value.dtype, stateful=False)
    out.set_shape(value.shape)
    return out


def _in_xla_context() -> bool:
    """Whether TensorFlow is tracing a function for XLA (``jit_compile=True``)."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow internals moved
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def layer_norm(kernel: Any, conv: KerasConv, norm_options: Mapping[str, Any]) -> float:
    """The operator norm of the layer ``conv`` describes with this kernel, in float64 NumPy on the host.

    ``norm_options`` are :func:`convsv.operator_norm`'s ``method``, ``tol``,
    ``iterations``, ``chunk_size`` and ``max_memory``.
    """
    options = NormOptions(**norm_options)
    value = to_numpy(kernel)
    if value.dtype.kind == "f":
        value = value.astype(np.float64)
    shape, spec = conv.spec(value.shape)
    xp = array_api_compat.array_namespace(value)
    return float(norm(np.reshape(value, shape), spec, xp, options))


def vjp() -> Any:
    """The backend's ``vjp(f, x) -> (f(x), cotangent -> (gradient,))``, as ``jax.vjp`` is called."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.vjp
    if backend == "torch":
        import torch

        return torch.func.vjp
    if backend == "tensorflow":
        return _tensorflow_vjp
    msg = (
        f"convsv.keras.SpectralNormalization runs on the JAX, PyTorch and TensorFlow backends, not {backend}"
    )
    raise NotImplementedError(msg)


def _tensorflow_vjp(f: Any, x: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    return y, lambda cotangent: (tape.gradient(y, x, output_gradients=cotangent),)
