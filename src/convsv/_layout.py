"""Kernel layouts, layer options and feature-map shapes, validated and normalised once.

Every public function turns its arguments into one frozen :class:`ConvSpec`
and a kernel in *spatial-first* order ``(*spatial, in/groups, out)`` (the
paper's HWIO); nothing downstream looks at the user's layout again.

A spec always describes the *forward* convolution whose kernel the array is.
A transposed layer is that convolution's adjoint: the same singular values,
with input and output swapped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from . import _checks
from ._lib import Array, Namespace, device_of, namespace_of, working_dtype
from ._limits import check_grid

# layout -> (number of spatial axes, channels last?)
LAYOUTS: dict[str, tuple[int, bool]] = {
    "WIO": (1, True),
    "HWIO": (2, True),
    "DHWIO": (3, True),
    "OIW": (1, False),
    "OIHW": (2, False),
    "OIDHW": (3, False),
}

Pads = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ConvSpec:
    """The forward convolution's static description: sizes only, no arrays.

    ``pads`` is ``None`` for circular padding, else the zeros added before and
    after each spatial axis. ``grid`` is the circular grid the FFT runs on:
    the input map itself for circular padding, the padded map (rounded up to
    a multiple of the stride) for zero padding.
    """

    kernel_size: tuple[int, ...]
    conv_input: tuple[int, ...]
    conv_output: tuple[int, ...]
    grid: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: Pads | None
    transposed: bool
    channels_last: bool

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.kernel_size)

    @property
    def circular(self) -> bool:
        """Whether the layer pads circularly (exact spectrum) rather than with zeros."""
        return self.pads is None

    @property
    def dilated_size(self) -> tuple[int, ...]:
        """Spatial extent of the kernel with its dilation: ``(k - 1) * d + 1``."""
        return dilated_spans(self.kernel_size, self.dilation)

    @property
    def group_in(self) -> int:
        """Input channels per group."""
        return self.in_channels // self.groups

    @property
    def group_out(self) -> int:
        """Output channels per group."""
        return self.out_channels // self.groups

    @property
    def phases(self) -> int:
        """``prod(stride)``: input positions per output position."""
        return math.prod(self.stride)

    @property
    def freq_grid(self) -> tuple[int, ...]:
        """The output frequencies of the circular layer on ``grid``: ``grid / stride``."""
        return tuple(n // s for n, s in zip(self.grid, self.stride, strict=True))

    @property
    def n_blocks(self) -> int:
        """Number of per-frequency blocks, ``prod(freq_grid)``."""
        return math.prod(self.freq_grid)

    @property
    def layer_input(self) -> tuple[int, ...]:
        """Spatial shape of what the layer (transposed or not) consumes."""
        return self.conv_output if self.transposed else self.conv_input

    @property
    def layer_output(self) -> tuple[int, ...]:
        """Spatial shape of what the layer produces."""
        return self.conv_input if self.transposed else self.conv_output

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the forward convolution's dense matrix: ``(out * N_out, in * N_in)``."""
        return self.out_channels * math.prod(self.conv_output), self.in_channels * math.prod(self.conv_input)

    def circular_twin(self) -> ConvSpec:
        """The circular layer on ``grid`` that contains this one (this one, if circular).

        A zero-padded layer is that layer with its input restricted to the map
        and its output to the valid positions (a compression), so the twin's
        norm bounds it from above.
        """
        if self.pads is None:
            return self
        return dataclasses.replace(self, conv_input=self.grid, conv_output=self.freq_grid, pads=None)

    def with_grid(self, grid: tuple[int, ...]) -> ConvSpec:
        """The circular layer with a full-size kernel on ``grid`` (what a frequency-domain clip returns)."""
        return ConvSpec(
            kernel_size=grid,
            conv_input=grid,
            conv_output=tuple(n // s for n, s in zip(grid, self.stride, strict=True)),
            grid=grid,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            groups=self.groups,
            stride=self.stride,
            dilation=(1,) * self.ndim,
            pads=None,
            transposed=self.transposed,
            channels_last=self.channels_last,
        )


def dilated_spans(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Each spatial axis' extent of a dilated kernel, ``(k - 1) * d + 1``."""
    return tuple((int(k) - 1) * int(d) + 1 for k, d in zip(kernel_size, dilation, strict=True))


def why_not_circulant(
    pads: Sequence[tuple[int, int]],
    spans: Sequence[int],
    stride: Sequence[int],
    input_shape: Sequence[int] | None = None,
) -> str | None:
    """Why wrap-around padding ``pads`` does not make a circulant layer, or ``None`` when it does.

    A framework's circular padding wraps the map around and then runs a
    valid convolution. That is the circular layer (up to a cyclic shift of
    the input, which changes no singular value) exactly when every output is
    ``input / stride``: when each axis pads ``span - stride`` to ``span - 1``
    zeros in all and, where the map is known, the stride divides it. Other
    pads repeat or drop rows of the circular layer, which has other singular
    values. The one rule for every framework's translator.
    """
    for axis, ((before, after), w, s) in enumerate(zip(pads, spans, stride, strict=True)):
        fewest = max(w - s, 0)
        if not fewest <= before + after <= w - 1:
            allowed = f"{w - 1}" if fewest == w - 1 else f"{fewest} to {w - 1}"
            return (
                f"circular padding {tuple(tuple(p) for p in pads)} is not a circulant map: on axis "
                f"{axis} (kernel span {w}, stride {s}) the output is input / stride only with {allowed} "
                f"padded positions in all, not {before + after}"
            )
        if input_shape is not None and input_shape[axis] % s:
            return (
                f"circular padding with stride {s} on an axis of {input_shape[axis]} is not a circulant "
                "map: the stride must divide the map"
            )
    return None


def normalize_shape(value: object, ndim: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """A bare int or one int per spatial axis -> a tuple of ``ndim`` ints ``>= minimum``.

    Any ordered iterable of integers works (a tuple, ``torch.Size``, a NumPy array); not a set.
    """
    return _checks.shape(value, name, ndim, minimum)


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow/Keras "same": output ``ceil(n / s)``, the extra zero on the right."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _explicit_pads(padding: object, ndim: int) -> Pads:
    """An int, one int per axis, or one ``(before, after)`` pair per axis (tuples, lists or arrays)."""
    if _checks.is_scalar_int(padding):
        p = _checks.size(padding, "padding", minimum=0)
        return ((p, p),) * ndim
    expected = "'circular', 'same', 'valid', an int or per-axis ints"
    if padding is None or isinstance(padding, (AbstractSet, Mapping)):
        msg = f"`padding` must be {expected}, got {type(padding).__name__}"
        raise TypeError(msg)
    try:
        entries: tuple[Any, ...] = tuple(padding)  # type: ignore[arg-type]
    except TypeError:
        msg = f"`padding` must be {expected}, got {type(padding).__name__}"
        raise TypeError(msg) from None
    if len(entries) != ndim:
        msg = f"`padding` has {len(entries)} entries but the kernel has {ndim} spatial axes"
        raise ValueError(msg)
    pads = []
    for entry in entries:
        if _checks.is_scalar_int(entry):
            p = _checks.size(entry, "padding", minimum=0)
            pads.append((p, p))
        else:
            a, b = _checks.shape(entry, "padding", 2, minimum=0)
            pads.append((a, b))
    return tuple(pads)


def _kernel_axes(kernel_shape: tuple[int, ...], layout: object) -> tuple[tuple[int, ...], int, int, bool]:
    """``(spatial sizes, in / groups, out, channels last?)`` of a kernel of ``kernel_shape`` in ``layout``."""
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
        return tuple(kernel_shape[:ndim]), kernel_shape[ndim], kernel_shape[ndim + 1], True
    return tuple(kernel_shape[2:]), kernel_shape[1], kernel_shape[0], False


def _circular_geometry(
    given: tuple[int, ...], strides: tuple[int, ...], transposed: bool, extra: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(conv_input, conv_output)`` of a circular layer whose input is ``given``."""
    if any(extra):
        msg = "`output_padding` is for zero padding; a circular transposed layer's output is input * stride"
        raise ValueError(msg)
    conv_input = tuple(m * s for m, s in zip(given, strides, strict=True)) if transposed else given
    for n, s in zip(conv_input, strides, strict=True):
        if n % s:
            msg = f"`stride` {strides} must divide the feature map {conv_input} for circular padding"
            raise ValueError(msg)
    return conv_input, tuple(n // s for n, s in zip(conv_input, strides, strict=True))


def _transposed_input(
    given: tuple[int, ...],
    padding: str | Pads,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    span: tuple[int, ...],
    extra: tuple[int, ...],
) -> tuple[int, ...]:
    """The forward convolution's input map: the output of a zero-padded transposed layer on ``given``."""
    # PyTorch's rule (its C++ shape check): the extra rows sit within one stride or one dilation.
    if any(e >= max(s, d) for e, s, d in zip(extra, strides, dilations, strict=True)):
        msg = (
            f"`output_padding` {extra} does not fit: it must be smaller than either the stride "
            f"{strides} or the dilation {dilations} on every axis (as in PyTorch)"
        )
        raise ValueError(msg)
    if padding == "same":
        return tuple(m * s + e for m, s, e in zip(given, strides, extra, strict=True))
    pad_sums = [0] * len(given) if isinstance(padding, str) else [a + b for a, b in padding]  # str: valid
    conv_input = tuple(
        (m - 1) * s - p + w + e for m, s, p, w, e in zip(given, strides, pad_sums, span, extra, strict=True)
    )
    if min(conv_input) <= 0:
        msg = f"the transposed layer's output would be {conv_input}: not a valid size"
        raise ValueError(msg)
    return conv_input


def _padded_geometry(
    given: tuple[int, ...],
    padding: object,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    span: tuple[int, ...],
    transposed: bool,
    extra: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...], Pads]:
    """``(conv_input, conv_output, pads)`` of a zero-padded layer whose input is ``given``."""
    ndim = len(given)
    if isinstance(padding, str) and padding not in ("same", "valid"):
        msg = f"`padding` must be 'circular', 'same', 'valid', an int or per-axis ints, got {padding!r}"
        raise ValueError(msg)
    mode = padding if isinstance(padding, str) else _explicit_pads(padding, ndim)  # no array meets "same"
    conv_input = _transposed_input(given, mode, strides, dilations, span, extra) if transposed else given
    if mode == "same":
        pads = tuple(_same_pads(n, w, s) for n, w, s in zip(conv_input, span, strides, strict=True))
    elif mode == "valid":
        pads = ((0, 0),) * ndim
    else:
        pads = mode  # type: ignore[assignment]
    conv_output = tuple(
        (n + a + b - w) // s + 1 for n, (a, b), w, s in zip(conv_input, pads, span, strides, strict=True)
    )
    if min(conv_output) <= 0:
        msg = (
            f"the layer's output would be empty: map {conv_input} with padding {pads} is smaller "
            f"than the dilated kernel {span}"
        )
        raise ValueError(msg)
    if transposed and mode != "same" and all(o >= m for o, m in zip(conv_output, given, strict=True)):
        # An output_padding of at least the stride (below the dilation) makes the forward
        # convolution longer than `given`; the transposed layer reads only its first outputs
        # (PyTorch's), the adjoint of the forward convolution restricted to them.
        conv_output = given
    if transposed and conv_output != given:
        msg = (
            f"`output_padding` {extra} does not fit: the forward convolution of a {conv_input} map "
            f"gives {conv_output}, not the input_shape {given}"
        )
        raise ValueError(msg)
    return conv_input, conv_output, pads


def conv_spec(
    kernel_shape: tuple[int, ...],
    input_shape: object,
    layout: str,
    stride: object = 1,
    dilation: object = 1,
    groups: object = 1,
    transposed: object = False,
    padding: object = "circular",
    output_padding: object = 0,
) -> ConvSpec:
    """Validate the arguments shared by every public function."""
    ksize, group_in, c_out, channels_last = _kernel_axes(kernel_shape, layout)
    ndim = len(ksize)
    if not isinstance(transposed, bool):
        msg = f"`transposed` must be a bool, got {transposed!r}"
        raise TypeError(msg)
    n_groups = _checks.integer(groups, "groups")
    if c_out % n_groups:
        role = "the transposed layer's input" if transposed else "output"
        msg = f"`groups`={n_groups} must divide the {role} channels ({c_out})"
        raise ValueError(msg)
    strides = normalize_shape(stride, ndim, "stride")
    dilations = normalize_shape(dilation, ndim, "dilation")
    given = normalize_shape(input_shape, ndim, "input_shape")
    extra = normalize_shape(output_padding, ndim, "output_padding", minimum=0)
    if any(extra) and not transposed:
        msg = "`output_padding` only applies to transposed layers (transposed=True)"
        raise ValueError(msg)
    span = dilated_spans(ksize, dilations)
    pads: Pads | None
    if isinstance(padding, str) and padding == "circular":
        pads = None
        conv_input, conv_output = _circular_geometry(given, strides, transposed, extra)
        grid = conv_input
    else:
        conv_input, conv_output, pads = _padded_geometry(
            given, padding, strides, dilations, span, transposed, extra
        )
        grid = tuple(-(-(n + a + b) // s) * s for n, (a, b), s in zip(conv_input, pads, strides, strict=True))
    spec = ConvSpec(
        kernel_size=ksize,
        conv_input=conv_input,
        conv_output=conv_output,
        grid=grid,
        in_channels=group_in * n_groups,
        out_channels=c_out,
        groups=n_groups,
        stride=strides,
        dilation=dilations,
        pads=pads,
        transposed=transposed,
        channels_last=channels_last,
    )
    check_grid(spec)  # before anything the size of the grid is allocated
    return spec


def to_spatial_first(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """The kernel as ``(*spatial, in/groups, out)``, whatever the user's layout."""
    if spec.channels_last:
        return kernel
    d = spec.ndim
    # (out, in, *spatial) -> (*spatial, in, out)
    return xp.permute_dims(kernel, (*range(2, d + 2), 1, 0))


def from_spatial_first(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """A spatial-first ``(*spatial, in/groups, out)`` kernel back in the user's layout."""
    if spec.channels_last:
        return kernel
    d = spec.ndim
    return xp.permute_dims(kernel, (d + 1, d, *range(d)))


def parse(
    kernel: object, input_shape: object, layout: object, xp: object, *layer: object, **options: object
) -> tuple[Array, ConvSpec, Namespace]:
    """The common front door of every public function: ``(kernel as an array, spec, namespace)``.

    ``layer`` and ``options`` are :func:`conv_spec`'s stride, dilation, ...
    (positional, in its order, or by name). The kernel stays in the user's
    layout and dtype; :func:`working_kernel` turns it into what the maths takes.
    """
    array, namespace = namespace_of(kernel, xp)
    spec = conv_spec(tuple(array.shape), input_shape, layout, *layer, **options)  # type: ignore[arg-type]
    return array, spec, namespace


def working_kernel(kernel: Array, spec: ConvSpec, xp: Namespace) -> Array:
    """A kernel in ``spec``'s layout as the maths takes it: spatial-first, in its working dtype."""
    dtype = working_dtype(xp, kernel.dtype, device_of(kernel))
    if dtype != kernel.dtype:
        kernel = xp.astype(kernel, dtype)
    return to_spatial_first(kernel, spec, xp)


def user_kernel(kernel: Array, spec: ConvSpec, xp: Namespace, user_dtype: Any) -> Array:
    """A spatial-first working-dtype kernel back in ``spec``'s layout and the user's dtype.

    Floating and complex kernels keep their dtype (float16 stays float16);
    integer kernels cannot hold a projection and come back in the working float.
    """
    out = from_spatial_first(kernel, spec, xp)
    if xp.isdtype(user_dtype, ("real floating", "complex floating")) and out.dtype != user_dtype:
        out = xp.astype(out, user_dtype)
    return out
