"""PyTorch convolutions (``torch.nn.Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``) in convsv's terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._layout import dilated_spans, why_not_circulant
from .._lib import to_host

LAYOUTS = {1: "OIW", 2: "OIHW", 3: "OIDHW"}


def conv_options(layer: Any, input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """``layout``, ``stride``, ``dilation``, ``groups``, ``transposed``, ``padding`` (and ``output_padding``).

    ``layer`` is a ``torch.nn`` convolution, or anything with the attributes
    read here (the command line's reader of TorchScript archives passes a
    :class:`convsv._torchscript.StoredConv`, the options as the archive
    stores them): one rule for every PyTorch convolution.

    Zero padding is passed as PyTorch gives it (``"same"`` and ``"valid"``
    mean what they mean in PyTorch, whose stride is then 1). Circular padding
    is ``"circular"`` when it makes a circulant layer
    (:func:`~convsv._layout.why_not_circulant`; the stride's divisibility is
    checked where ``input_shape`` is known); otherwise, and for
    ``"reflect"``/``"replicate"``, a ``ValueError`` says why it is not modelled.
    """
    d = int(layer.weight.ndim) - 2
    options: dict[str, Any] = {
        "layout": LAYOUTS[d],
        "stride": tuple(layer.stride),
        "dilation": tuple(layer.dilation),
        "groups": int(layer.groups),
        "transposed": bool(layer.transposed),
    }
    if layer.transposed:  # PyTorch pads transposed layers with zeros only
        options["padding"] = tuple(layer.padding)
        options["output_padding"] = tuple(layer.output_padding)
        return options
    if layer.padding_mode == "zeros":
        options["padding"] = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        return options
    if layer.padding_mode != "circular":
        msg = (
            f"padding_mode={layer.padding_mode!r} is not modelled: convsv handles zero padding and "
            "circular padding that makes a circulant map"
        )
        raise ValueError(msg)
    # (before, after) per axis, first axis first: PyTorch stores the pairs last axis first.
    flat = layer._reversed_padding_repeated_twice
    pads = [(flat[2 * (d - 1 - axis)], flat[2 * (d - 1 - axis) + 1]) for axis in range(d)]
    spans = dilated_spans(layer.kernel_size, layer.dilation)
    reason = why_not_circulant(pads, spans, layer.stride, input_shape)
    if reason is not None:
        raise ValueError(reason)
    options["padding"] = "circular"
    return options


def to_numpy(tensor: Any) -> Any:
    """A host NumPy copy, half precision as float32 (NumPy's linear algebra has no float16)."""
    if str(tensor.dtype) in ("torch.float16", "torch.bfloat16"):
        tensor = tensor.float()
    return to_host(tensor)


def record_input_shapes(layers: Sequence[tuple[str, Any]], shapes: dict[str, tuple[int, ...]]) -> list[Any]:
    """Forward pre-hooks that store each layer's latest input spatial shape in ``shapes``.

    The last ``ndim`` axes: PyTorch convolutions also take unbatched inputs.
    Returns the hooks' handles (``handle.remove()`` takes one off).
    """

    def recorder(name: str, ndim: int) -> Callable[..., None]:
        def hook(_: Any, args: tuple[Any, ...]) -> None:
            shapes[name] = tuple(int(n) for n in args[0].shape[-ndim:])

        return hook

    return [
        layer.register_forward_pre_hook(recorder(name, int(layer.weight.ndim) - 2)) for name, layer in layers
    ]


def forward_input_shapes(
    root: Any, layers: Sequence[tuple[str, Any]], example_input: Any
) -> dict[str, tuple[int, ...]]:
    """Each of ``layers``' input spatial shapes, from one forward pass of ``root`` on ``example_input``.

    The pass runs in eval mode (batch-norm statistics untouched) under
    ``torch.no_grad``; the module's mode is restored and the hooks removed
    even when it raises. A tuple ``example_input`` is unpacked into the call.
    """
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    handles = record_input_shapes(layers, shapes)
    training = root.training
    try:
        root.eval()
        with torch.no_grad():
            root(*example_input) if isinstance(example_input, tuple) else root(example_input)
    finally:
        root.train(training)
        for handle in handles:
            handle.remove()
    return shapes
