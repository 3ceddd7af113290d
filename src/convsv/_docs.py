"""Docstring pieces shared by the public functions (one text for each layer option)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

LAYER_PARAMETERS = """\
    stride : int or sequence of int, optional
        Step between output positions, per spatial axis (default 1). With
        circular padding it must divide the feature map.
    dilation : int or sequence of int, optional
        Spacing between kernel taps, per spatial axis (default 1).
    groups : int, optional
        Number of channel groups (default 1); the kernel's input-channel axis
        then holds ``in_channels / groups``. ``groups == in_channels`` is a
        depthwise convolution.
    transposed : bool, optional
        The layer is the transposed convolution with this kernel, stored as
        the framework stores it (PyTorch ``ConvTranspose`` weight
        ``(in, out / groups, *k)`` with ``layout="OIHW"``; Keras
        ``Conv*DTranspose`` kernel ``(*k, out, in)`` with ``layout="HWIO"``),
        and ``input_shape`` is that layer's input. It is the adjoint of the
        convolution with the same kernel: same singular values.
    padding : {"circular", "same", "valid"}, int or sequence, optional
        ``"circular"`` (default): wrap-around, anchored at the top-left
        corner; the spectrum is exact. Anything else is zero padding:
        ``"valid"`` (none), ``"same"`` (output ``ceil(n / stride)``, the odd
        zero after, as TensorFlow; PyTorch's ``"same"`` for stride 1), an int
        or one int per axis (that many zeros on both sides, as PyTorch), or
        one ``(before, after)`` pair per axis.
    output_padding : int or sequence of int, optional
        Extra size on one side of a zero-padded transposed layer's output, as
        PyTorch's ``output_padding`` (default 0).
"""


def fill_layer_doc(func: F) -> F:
    """Put :data:`LAYER_PARAMETERS` where a docstring says ``{layer_parameters}``."""
    if func.__doc__:  # None under python -OO
        func.__doc__ = func.__doc__.replace("    {layer_parameters}\n", LAYER_PARAMETERS)
    return func
