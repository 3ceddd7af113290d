"""Docstring pieces shared by the public functions (one text for each option they share)."""

from __future__ import annotations

import textwrap
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
        PyTorch's ``output_padding`` (default 0), with PyTorch's rule: smaller
        than the stride or the dilation on every axis.
"""


MEMORY_PARAMETERS = """\
    chunk_size : int, optional
        Circular padding: compute at most this many frequencies' matrices at
        once (rounded down to whole rows of the first spatial axis, at least
        one row). Default: no limit but ``max_memory``.
    max_memory : int, optional
        Circular padding: about how many bytes the frequency matrices in
        flight may take (with the decomposition's copies), again in whole
        rows of the first spatial axis. Zero padding: how many bytes the
        Lanczos vectors may take (at least 16 are kept; fewer vectors mean
        more restarts), and the per-frequency matrices of the FFT route
        (where they do not fit, the layer is applied tap by tap). Default
        ``2**30`` (1 GiB); ``None`` for no limit. Results do not depend on
        either option beyond round-off and ``tol``. What no chunking shrinks
        -- the spectrum :func:`singular_values` returns, one row of frequency
        matrices, 16 Lanczos vectors (``k + 16`` for the ``k`` largest) with
        the padded maps -- is refused with a ``ValueError`` above
        ``max(max_memory, 2**34)`` bytes (16 GiB) rather than exhaust memory:
        a smaller ``max_memory`` makes chunks smaller, a larger one raises
        that limit, ``None`` lifts it.
"""


def shared_text(**texts: str) -> Callable[[F], F]:
    """Fill each line ``{name}`` of a docstring (indented four spaces) with ``texts[name]``, so indented."""

    def fill(documented: F) -> F:
        doc = documented.__doc__
        if doc:  # None under python -OO
            for name, text in texts.items():
                block = textwrap.indent(textwrap.dedent(text).strip("\n"), "    ") + "\n"
                doc = doc.replace(f"    {{{name}}}\n", block)
            documented.__doc__ = doc
        return documented

    return fill


#: For the public functions: ``{layer_parameters}`` and ``{memory_parameters}``.
fill_layer_doc = shared_text(layer_parameters=LAYER_PARAMETERS, memory_parameters=MEMORY_PARAMETERS)

#: The training adapters' ``**clip_options`` (torch, keras).
CLIP_OPTIONS_PARAMETER = """\
**clip_options
    ``method``, ``iterations``, ``tol``, ``min_norm``, ``bound``: as in
    :func:`convsv.clip_operator_norm`.
"""
