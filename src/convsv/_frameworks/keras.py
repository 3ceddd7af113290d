"""Keras convolutions in convsv's terms (Keras is imported only by a call that needs it).

One translation, for :mod:`convsv.keras` and for ``convsv analyze``:

- :func:`kernels_of` says which layers are convolutions, which kernels they
  hold and of what kind; :func:`layer_fields` and :func:`input_spatial` read
  a built layer's options and input size;
- :func:`conv_options` turns a Keras kernel shape and layer options into
  the shape to give the kernel and convsv's options (layout, stride,
  dilation, groups, padding, transposition);
- :class:`KerasConv` is the constraint's frozen description of one layer:
  checked once when it is made, it gives the validated
  :class:`~convsv._layout.ConvSpec` of each kernel shape, built once.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np

from .._layout import ConvSpec, conv_spec, dilated_spans
from .._lib import to_host
from .._options import settle

Pads = tuple[tuple[int, int], ...]

#: Spatial rank -> the layout of a Keras kernel (always channels last: ``(*k, in, out)``).
LAYOUTS = {1: "WIO", 2: "HWIO", 3: "DHWIO"}
PADDINGS = ("valid", "same", "causal", "circular")
KINDS = ("conv", "depthwise", "transpose")


# --- reading layers ------------------------------------------------------------------------------------


def kernels_of(layer: Any) -> list[tuple[str, str, Any]]:
    """``(attribute, kind, variable)`` for each kernel of a supported convolution layer (else empty).

    ``kind`` is one of :data:`KINDS`, or ``"pointwise"`` for a separable
    layer's second, 1x1, kernel. ``variable`` is ``None`` on an unbuilt layer.
    """
    import keras

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


def layer_fields(layer: Any, kind: str, input_shape: int | Sequence[int] | None) -> dict[str, Any]:
    """The :class:`KerasConv` fields (the constraint's layer arguments) of one kernel of a built layer.

    ``kind`` is as :func:`kernels_of` gives it. A ``"pointwise"`` kernel is a
    1x1 convolution, whose norm does not depend on the map: the circular
    layer on a one-pixel map.
    """
    if kind == "pointwise":
        return {"input_shape": 1, "padding": "circular"}
    return {
        "input_shape": input_shape,
        "strides": tuple(layer.strides),
        "padding": layer.padding,
        "dilation_rate": tuple(layer.dilation_rate),
        "groups": int(getattr(layer, "groups", 1)) if kind == "conv" else 1,
        "output_padding": getattr(layer, "output_padding", None) if kind == "transpose" else None,
        "kind": kind,
    }


def input_spatial(layer: Any) -> tuple[int, ...]:
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


def to_numpy(x: Any) -> Any:
    """A Keras variable or tensor as a host NumPy array.

    Through the variable's value: ``np.array(variable)`` warns on NumPy 2 (its
    ``__array__`` takes no ``copy``), and so do ``get_weights()`` and
    ``convert_to_numpy(variable)``.
    """
    import keras

    return to_host(x.value if isinstance(x, keras.Variable) else x)


def all_layers(model: Any) -> Iterator[Any]:
    """Every layer of a model, nested and subclassed models' included, each once."""
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def convolutions(model: Any, layers: Sequence[Any] | None) -> list[Any]:
    """The supported convolutions of a model: those ``layers`` names (names or layers), or all of them.

    A ``ValueError`` for a name the model does not have, a ``TypeError`` for
    a layer :func:`kernels_of` does not know.
    """
    if layers is None:
        return [layer for layer in all_layers(model) if kernels_of(layer)]
    by_name = {layer.name: layer for layer in all_layers(model)}
    chosen = []
    for item in layers:
        layer = by_name.get(item) if isinstance(item, str) else item
        if layer is None:
            msg = f"no layer named {item!r} in the model"
            raise ValueError(msg)
        if not kernels_of(layer):
            msg = (
                f"layer {layer.name!r} ({type(layer).__name__}) is not a supported convolution: "
                "Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D or Conv1D/2D/3DTranspose"
            )
            raise TypeError(msg)
        chosen.append(layer)
    return chosen


# --- Keras options in convsv's terms -------------------------------------------------------------------


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
    grid by convsv's ``output_padding``.
    """
    extras = (None,) * len(spans) if output_padding is None else tuple(output_padding)
    axes = [_transposed_axis(w, s, padding, e) for w, s, e in zip(spans, strides, extras, strict=True)]
    return tuple((a, b) for a, b, _ in axes), tuple(e for _, _, e in axes)


def _per_axis(value: int | Sequence[int], rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    if len(value) != rank:
        msg = f"`{name}` has {len(value)} entries but the kernel has {rank} spatial axes"
        raise ValueError(msg)
    return tuple(value)


def conv_options(
    kernel_shape: Sequence[int], layer: Mapping[str, Any]
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """A Keras kernel shape and layer options in convsv's terms: ``(shape, options)``.

    ``layer`` holds :class:`KerasConv`'s fields (as :func:`layer_fields` or
    :meth:`KerasConv.config` give them; a missing one takes Keras' default).
    ``shape`` is the shape to give the kernel first: a depthwise kernel
    ``(*k, in, m)`` is the grouped kernel ``(*k, 1, in * m)`` with ``in``
    groups. ``options`` are :func:`~convsv._layout.conv_spec`'s keyword
    arguments (``layout``, ``stride``, ``dilation``, ``groups``,
    ``transposed``, ``padding``, ``output_padding``; ``input_shape`` per
    axis when given): ``"causal"`` is zeros before the map only, a
    transposed layer pads as :func:`transposed_padding` says. Only the ranks
    are checked here; the core checks the rest.
    """
    given = {**KERAS_DEFAULTS, **layer}
    padding, groups = given["padding"], given["groups"]
    shape = tuple(int(n) for n in kernel_shape)
    rank = len(shape) - 2
    if rank not in LAYOUTS:
        msg = f"expected a 1-D, 2-D or 3-D convolution kernel (*k, in, out), got shape {shape}"
        raise ValueError(msg)
    stride = _per_axis(given["strides"], rank, "strides")
    dilation = _per_axis(given["dilation_rate"], rank, "dilation_rate")
    options: dict[str, Any] = {}
    if given["input_shape"] is not None:
        options["input_shape"] = _per_axis(given["input_shape"], rank, "input_shape")
    spans = dilated_spans(shape[:rank], dilation)
    kind = given["kind"]
    if kind == "depthwise":
        groups = shape[rank]
        shape = (*shape[:rank], 1, shape[rank] * shape[rank + 1])
    options |= {
        "layout": LAYOUTS[rank],
        "stride": stride,
        "dilation": dilation,
        "groups": groups,
        "transposed": kind == "transpose",
        "padding": padding,
        "output_padding": 0,
    }
    if padding == "causal":
        if rank != 1:
            msg = f"padding='causal' is for 1-D convolutions, got a {rank}-D kernel"
            raise ValueError(msg)
        options["padding"] = ((spans[0] - 1, 0),)
    elif kind == "transpose" and padding != "circular":
        extra = given["output_padding"]
        extra = None if extra is None else _per_axis(extra, rank, "output_padding")
        options["padding"], options["output_padding"] = transposed_padding(spans, stride, padding, extra)
    return shape, options


# --- the constraint's description of a layer -----------------------------------------------------------


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


def _checked_sizes(conv: KerasConv) -> dict[str, Any]:
    """The size fields, checked in argument order; sequences as tuples."""
    checked: dict[str, Any] = {
        "input_shape": _sizes(conv.input_shape, "input_shape"),
        "strides": _sizes(conv.strides, "strides"),
        "dilation_rate": _sizes(conv.dilation_rate, "dilation_rate"),
        "groups": _sizes(conv.groups, "groups"),
    }
    if not isinstance(checked["groups"], int):
        msg = f"`groups` must be a positive int, got {conv.groups!r}"
        raise ValueError(msg)
    extra = conv.output_padding
    checked["output_padding"] = None if extra is None else _sizes(extra, "output_padding", 0)
    return checked


@dataclass(frozen=True)
class KerasConv:
    """One Keras convolution as the constraint sees it: its input size and options, checked once.

    The fields are :class:`convsv.keras.OperatorNormConstraint`'s arguments
    of the same names (ints stay ints, the same on every axis; sequences
    become tuples), checked against each other when the object is made.
    Frozen and hashable: the JAX projection is compiled once per
    description and options, and :meth:`spec` is built once per kernel shape.
    """

    input_shape: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str = "valid"
    dilation_rate: int | Sequence[int] = 1
    groups: int = 1
    output_padding: int | Sequence[int] | None = None
    kind: str = "conv"

    def __post_init__(self) -> None:
        settle(self, **_checked_sizes(self))
        if self.kind not in KINDS:
            msg = f"`kind` must be one of {KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        padding = self.padding.lower() if isinstance(self.padding, str) else self.padding
        if padding not in PADDINGS:
            msg = f"`padding` must be one of {PADDINGS}, got {self.padding!r}"
            raise ValueError(msg)
        settle(self, padding=padding)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """The options that only some kinds, paddings or ranks take."""
        if self.kind != "conv" and self.groups != 1:
            msg = f"`groups` is for kind='conv' (a {self.kind} kernel's groups follow from its shape)"
            raise ValueError(msg)
        if self.kind != "transpose" and self.output_padding is not None:
            msg = "`output_padding` is for kind='transpose'"
            raise ValueError(msg)
        if self.padding == "causal" and (self.kind == "transpose" or self.rank not in (None, 1)):
            msg = "padding='causal' is for 1-D convolutions (Conv1D)"
            raise ValueError(msg)
        if self.padding == "circular" and self.kind != "transpose":
            rank = self.rank or 1  # all ints: the same on every axis
            shape = _per_axis(self.input_shape, rank, "input_shape")
            steps = _per_axis(self.strides, rank, "strides")
            if any(n % s for n, s in zip(shape, steps, strict=True)):
                msg = (
                    f"`strides` {self.strides} must divide the feature map {self.input_shape} "
                    "for circular padding"
                )
                raise ValueError(msg)

    @property
    def rank(self) -> int | None:
        """The number of spatial axes the tuple-valued fields imply (``None`` when all are ints)."""
        for value in (self.input_shape, self.strides, self.dilation_rate, self.output_padding):
            if isinstance(value, tuple):
                return len(value)
        return None

    def config(self) -> dict[str, Any]:
        """The fields by name, in order: the constraint's layer arguments."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def convsv_options(self, kernel_shape: Sequence[int]) -> tuple[tuple[int, ...], dict[str, Any]]:
        """:func:`conv_options` of a kernel of this layer, checked by the core (``input_shape`` included)."""
        self.spec(kernel_shape)  # the core's own checks (built once per kernel shape)
        return conv_options(kernel_shape, self.config())

    def spec(self, kernel_shape: Sequence[int]) -> tuple[tuple[int, ...], ConvSpec]:
        """``(shape to give the kernel, its layer's ConvSpec)``, built once per kernel shape."""
        return _spec(self, tuple(int(n) for n in kernel_shape))


#: Keras' defaults for the options a layer description leaves out (the input size has none).
KERAS_DEFAULTS = {f.name: None if f.default is MISSING else f.default for f in fields(KerasConv)}


@functools.lru_cache(maxsize=256)
def _spec(conv: KerasConv, kernel_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ConvSpec]:
    shape, options = conv_options(kernel_shape, conv.config())
    return shape, conv_spec(shape, options.pop("input_shape"), **options)
