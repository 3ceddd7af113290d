"""Kernel layouts and feature-map shapes, validated and normalised once.

Every public function turns its ``(kernel, input_shape, layout)`` arguments into
one frozen :class:`ConvSpec` and a kernel in *spatial-first* order
``(*spatial, in, out)`` (the paper's HWIO); nothing downstream looks at the
user's layout again.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._lib import Array, Namespace, device_of, namespace_of, working_dtype

# layout -> (number of spatial axes, channels last?)
LAYOUTS: dict[str, tuple[int, bool]] = {
    "WIO": (1, True),
    "HWIO": (2, True),
    "DHWIO": (3, True),
    "OIW": (1, False),
    "OIHW": (2, False),
    "OIDHW": (3, False),
}


@dataclass(frozen=True)
class ConvSpec:
    """A convolution's static description: sizes only, no arrays."""

    kernel_size: tuple[int, ...]
    input_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    channels_last: bool

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.kernel_size)

    @property
    def n_positions(self) -> int:
        """Number of positions (and of frequencies) on the feature map."""
        return math.prod(self.input_shape)


def _size(value: object, name: str) -> int:
    if isinstance(value, bool):
        msg = f"`{name}` must contain integers, got a bool"
        raise TypeError(msg)
    try:
        size = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        msg = f"`{name}` must contain integers, got {type(value).__name__}"
        raise TypeError(msg) from None
    if size <= 0:
        msg = f"`{name}` must contain positive sizes, got {size}"
        raise ValueError(msg)
    return size


def normalize_shape(value: object, ndim: int, name: str) -> tuple[int, ...]:
    """A bare int or one int per spatial axis -> a tuple of ``ndim`` positive ints.

    Any iterable of integers works (a tuple, ``torch.Size``, a NumPy array).
    """
    if isinstance(value, (str, bytes)):
        msg = f"`{name}` must be an int or a sequence of ints, got {type(value).__name__}"
        raise TypeError(msg)
    try:
        items: tuple[object, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:  # not iterable: one size for every axis
        items = (value,) * ndim
    sizes = tuple(_size(v, name) for v in items)
    if len(sizes) != ndim:
        msg = f"`{name}` has {len(sizes)} entries but the kernel has {ndim} spatial axes"
        raise ValueError(msg)
    return sizes


def conv_spec(kernel_shape: tuple[int, ...], input_shape: int | Sequence[int], layout: str) -> ConvSpec:
    """Validate the arguments shared by every public function."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        msg = f"`layout` must be one of {sorted(LAYOUTS)}, got {layout!r}"
        raise ValueError(msg)
    ndim, channels_last = LAYOUTS[layout]
    if len(kernel_shape) != ndim + 2:
        msg = (
            f"`kernel` has {len(kernel_shape)} axes {tuple(kernel_shape)} but layout "
            f"{layout!r} needs {ndim + 2} ({ndim} spatial, in, out)"
        )
        raise ValueError(msg)
    if any(s is None for s in kernel_shape):
        msg = f"`kernel` must have a static shape, got {tuple(kernel_shape)}"
        raise ValueError(msg)
    if min(kernel_shape) <= 0:
        msg = f"`kernel` must have positive sizes on every axis, got shape {tuple(kernel_shape)}"
        raise ValueError(msg)
    if channels_last:
        spatial, (c_in, c_out) = kernel_shape[:ndim], kernel_shape[ndim:]
    else:
        (c_out, c_in), spatial = kernel_shape[:2], kernel_shape[2:]
    return ConvSpec(
        kernel_size=tuple(spatial),
        input_shape=normalize_shape(input_shape, ndim, "input_shape"),
        in_channels=c_in,
        out_channels=c_out,
        channels_last=channels_last,
    )


def to_spatial_first(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The kernel as ``(*spatial, in, out)``, whatever the user's layout."""
    if spec.channels_last:
        return kernel
    d = spec.ndim
    # (out, in, *spatial) -> (*spatial, in, out)
    return xp.permute_dims(kernel, (*range(2, d + 2), 1, 0))


def from_spatial_first(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """A spatial-first ``(*spatial, in, out)`` kernel back in the user's layout."""
    if spec.channels_last:
        return kernel
    d = spec.ndim
    return xp.permute_dims(kernel, (d + 1, d, *range(d)))


class Parsed(NamedTuple):
    """A validated kernel: spatial-first, in its working dtype, with what produced it."""

    kernel: Array
    spec: ConvSpec
    xp: Namespace
    dtype: Any  # the dtype the user passed


def parse(kernel: object, input_shape: int | Sequence[int], layout: str, xp: Namespace | None) -> Parsed:
    """The common front door of every public function."""
    array, xp = namespace_of(kernel, xp)
    spec = conv_spec(tuple(array.shape), input_shape, layout)
    user_dtype = array.dtype
    dtype = working_dtype(xp, user_dtype, device_of(array))
    if dtype != user_dtype:
        array = xp.astype(array, dtype)
    return Parsed(to_spatial_first(array, spec, xp), spec, xp, user_dtype)
