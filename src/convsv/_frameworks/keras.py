"""Keras convolutions in convsv's terms (Keras is imported only by a call that needs it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._lib import to_host

Pads = tuple[tuple[int, int], ...]


def _transposed_axis(span: int, stride: int, padding: str, extra: int | None) -> tuple[int, int, int]:
    """One axis of :func:`transposed_padding`: ``(before, after, extra)``."""
    if padding == "valid":
        extra = max(span, stride) - span if extra is None else extra
        left, right = span - 1, span - 1 + extra
    else:
        total = stride + span - 2 if extra is None else span + span % 2 - 2 + extra
        left = min(total // 2 + total % 2, span - 1)
        right = total - left
    before = span - 1 - left
    after = max(span - 1 - right, 0)
    return before, after, 1 + right + after - span


def transposed_padding(
    spans: Sequence[int], strides: Sequence[int], padding: str, output_padding: Sequence[int] | None
) -> tuple[Pads, tuple[int, ...]]:
    """A Keras ``Conv*DTranspose`` as the adjoint of a zero-padded convolution: ``(pads, output_padding)``.

    Keras (every backend) pads the stride-dilated input by ``left``/``right``
    (from ``padding`` and ``output_padding``) and correlates with the flipped
    kernel; that is the adjoint of the convolution whose input has
    ``span - 1 - left`` zeros before it, and whose size exceeds the stride
    grid by convsv's ``output_padding``. The one model of it, for the
    constraint and for ``convsv analyze``.
    """
    extras = (None,) * len(spans) if output_padding is None else tuple(output_padding)
    axes = [_transposed_axis(w, s, padding, e) for w, s, e in zip(spans, strides, extras, strict=True)]
    return tuple((a, b) for a, b, _ in axes), tuple(e for _, _, e in axes)


def to_numpy(x: Any) -> Any:
    """A Keras variable or tensor as a host NumPy array.

    Through the variable's value: ``np.array(variable)`` warns on NumPy 2 (its
    ``__array__`` takes no ``copy``), and so do ``get_weights()`` and
    ``convert_to_numpy(variable)``.
    """
    import keras

    return to_host(x.value if isinstance(x, keras.Variable) else x)
