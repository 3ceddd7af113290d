"""Argument checks shared by every public function: one place, one wording.

Each check names the argument, says what it must be and what it got
(``TypeError`` for the wrong kind of value, ``ValueError`` for a value out of
range) and returns the value as a plain Python ``int``, ``float`` or tuple,
so NumPy scalars (``np.int64(3)``, ``np.float32(0.5)``) and 0-d arrays work
wherever Python numbers do, and what reaches the maths (and ``jax.jit``'s
static arguments) is always the same Python value. Booleans are refused
where numbers are expected: ``True`` is an ``int`` to Python but never a
meaningful size or tolerance.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any


def _is_bool(value: object) -> bool:
    """A Python, NumPy (``np.True_``) or 0-d array boolean."""
    return isinstance(value, bool) or "bool" in str(getattr(value, "dtype", ""))


def _given(value: object) -> str:
    """How a message shows what was passed: its repr, or an array's shape."""
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) > 0:
        return f"an array of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int_text(minimum: int | None, maximum: int | None) -> str:
    if maximum is not None:
        return f"an int from {minimum} to {maximum}"
    return {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")


def integer(
    value: object,
    name: str,
    minimum: int | None = 1,
    maximum: int | None = None,
    *,
    expected: str | None = None,
) -> int:
    """``value`` as a Python int in ``[minimum, maximum]``: anything with ``__index__`` but a bool.

    ``expected`` is the message's "must be ..." text (by default "a positive
    int", "a non-negative int" or "an int from a to b").
    """
    msg = f"`{name}` must be {expected or _int_text(minimum, maximum)}, got {_given(value)}"
    if _is_bool(value):
        raise TypeError(msg)
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(msg) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(msg)
    return number


def optional_integer(value: object, name: str, minimum: int = 1) -> int | None:
    """``None``, or :func:`integer` ``>= minimum``; the message says that ``None`` is allowed."""
    if value is None:
        return None
    return integer(value, name, minimum, expected=f"None or {_int_text(minimum, None)}")


def real(
    value: object,
    name: str,
    expected: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite Python float (``at_least <= value``, ``above < value``, ``value < below``).

    Accepts Python and NumPy reals and 0-d real arrays; refuses bools,
    strings, complex numbers, arrays with axes and traced JAX values (which
    have no value yet). NaN and infinities are never accepted.
    ``expected`` is the message's "must be ..." text.
    """
    msg = f"`{name}` must be {expected}, got {_given(value)}"
    kind = str(getattr(value, "dtype", ""))
    if (
        _is_bool(value)
        or isinstance(value, (str, bytes))
        or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real))
        or "complex" in kind
        or len(getattr(value, "shape", ())) > 0
    ):
        raise TypeError(msg)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        msg = f"`{name}` must be {expected} (a Python number, not a traced value), got {_given(value)}"
        raise TypeError(msg) from None
    if (
        not math.isfinite(number)
        or (at_least is not None and not number >= at_least)
        or (above is not None and not number > above)
        or (below is not None and not number < below)
    ):
        raise ValueError(msg)
    return number


def optional_real(value: object, name: str, expected: str, **limits: Any) -> float | None:
    """``None``, or :func:`real` (``expected`` should say that ``None`` is allowed)."""
    return None if value is None else real(value, name, expected, **limits)


def choice(value: object, name: str, options: Sequence[str]) -> str:
    """One of the strings ``options`` (compared only when ``value`` is a str: arrays compare elementwise)."""
    if not isinstance(value, str) or value not in options:
        msg = f"`{name}` must be one of {tuple(options)}, got {_given(value)}"
        raise ValueError(msg)
    return value


def namespace(xp: object) -> Any:
    """``None`` or an array namespace (a module such as ``numpy``; anything with ``asarray``)."""
    if xp is not None and not callable(getattr(xp, "asarray", None)):
        msg = (
            "`xp` must be None or an array namespace (a module such as numpy, torch or "
            f"array_api_strict, not its name), got {_given(xp)}"
        )
        raise TypeError(msg)
    return xp


def is_scalar_int(value: object) -> bool:
    """Whether ``value`` is one integer (or a bool, which :func:`size` then refuses), not a sequence."""
    return _is_bool(value) or (len(getattr(value, "shape", ())) == 0 and hasattr(type(value), "__index__"))


def size(value: object, name: str, minimum: int = 1) -> int:
    """One entry of a shape option: an int ``>= minimum`` (a size, a stride, a pad)."""
    if _is_bool(value):
        msg = f"`{name}` must contain integers, got a bool"
        raise TypeError(msg)
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        msg = f"`{name}` must contain integers, got {type(value).__name__}"
        raise TypeError(msg) from None
    if number < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        msg = f"`{name}` must contain {kind} sizes, got {number}"
        raise ValueError(msg)
    return number


def shape(value: object, name: str, ndim: int, minimum: int = 1) -> tuple[int, ...]:
    """A bare int or one int per axis -> a tuple of ``ndim`` Python ints ``>= minimum``.

    Any ordered iterable of integers works (a tuple, a list, ``torch.Size``,
    a NumPy array); a str, a set (its order is arbitrary) or a mapping does not.
    """
    if isinstance(value, (str, bytes, AbstractSet, Mapping)):
        msg = f"`{name}` must be an int or a sequence of ints, got {type(value).__name__}"
        raise TypeError(msg)
    try:
        items: tuple[Any, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:  # not iterable (an int, a 0-d array): one size for every axis
        items = (value,) * ndim
    sizes = tuple(size(v, name, minimum) for v in items)
    if len(sizes) != ndim:
        msg = f"`{name}` has {len(sizes)} entries but the kernel has {ndim} spatial axes"
        raise ValueError(msg)
    return sizes
