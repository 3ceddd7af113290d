"""Reading a model's convolutions from the files people have, for ``convsv analyze``.

Each reader turns one file format into a list of :class:`ConvLayer`: the
kernel as a NumPy array in the layout it was stored in, the layer options in
the library's vocabulary, and the spatial size of the layer's input where the
file determines it. Nothing here computes a spectrum, and nothing executes
code stored in a file: PyTorch checkpoints are loaded with
``weights_only=True`` (only ``torch.nn``'s own classes are allowed), Keras
files with ``safe_mode=True``, TorchScript archives read as data by
:mod:`convsv._torchscript` (never ``torch.jit.load``). ONNX models are read
by :mod:`convsv._onnx`.

Formats that store only tensors (PyTorch state dicts, safetensors, ``.npz``)
carry no strides or paddings. Such files may describe their layers in a JSON
header (the ``__convsv__`` array of an ``.npz``, the ``convsv`` key of a
safetensors file's metadata; see ``docs/analyze.md``); otherwise every layer
is taken as a stride-1 circular convolution on ``--input-size`` and the report
says so.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._frameworks import keras as keras_layers
from ._frameworks import torch as torch_layers
from ._layout import LAYOUTS

# The options a stored layer may set, with the values a tensor-only format implies.
ASSUMED_OPTIONS: dict[str, Any] = {
    "stride": 1,
    "dilation": 1,
    "groups": 1,
    "padding": "circular",
    "transposed": False,
    "output_padding": 0,
}
METADATA_FORMAT = "convsv-layers"


class ModelError(Exception):
    """A model file that cannot be analysed; the message is shown to the user as is."""


@dataclass
class ConvLayer:
    """One convolution as stored: kernel, layer options, and input map size (``None``: not known)."""

    name: str
    kernel: Any  # NumPy array in `layout`
    layout: str
    options: dict[str, Any]
    input_shape: tuple[int, ...] | None = None
    assumed: bool = False  # options not stored in the file: ASSUMED_OPTIONS
    note: str = ""
    unmodelled: str = ""  # why convsv cannot analyse this layer exactly (an error if it is analysed)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return int(self.kernel.ndim) - 2


@dataclass
class Model:
    """The convolutions of one file, in forward order, and where they came from."""

    source: str
    format: str
    layers: list[ConvLayer]
    notes: list[str] = field(default_factory=list)
    # Why a layer's feature-map size may be unknown, for the error asking for --input-size.
    unsized: str = "a dynamic or weights-only input size"


def layout_for(ndim: int, channels_last: bool) -> str:
    """The layout name with ``ndim`` spatial axes, channels last (HWIO) or first (OIHW)."""
    return next(name for name, (d, last) in LAYOUTS.items() if d == ndim and last == channels_last)


def expand_size(input_size: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    """``--input-size`` as ``ndim`` sizes: one size stands for every spatial axis."""
    if len(input_size) not in (1, ndim):
        msg = f"--input-size has {len(input_size)} sizes but {what} has {ndim} spatial axes"
        raise ModelError(msg)
    return tuple(input_size) * (ndim if len(input_size) == 1 else 1)


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        msg = f"reading {what} needs the {module!r} package: pip install {module}"
        raise ModelError(msg) from None


def _unreadable(path: Path, kind: str, err: BaseException) -> ModelError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelError(f"{path}: not a readable {kind} file (corrupt or truncated?): {detail}")


# --- tensor-only archives, with or without a convsv header ------------------------------------------


def _from_header(header: str, arrays: Mapping[str, Any], path: Path) -> list[ConvLayer]:
    try:
        meta = json.loads(header)
        if meta.get("format") != METADATA_FORMAT:
            msg = f"'format' is {meta.get('format')!r}, not {METADATA_FORMAT!r}"
            raise ValueError(msg)
        layers = []
        for entry in meta["layers"]:
            name = entry["name"]
            if name not in arrays:
                msg = f"layer {name!r} has no array of that name"
                raise ValueError(msg)
            options = {key: entry.get(key, value) for key, value in ASSUMED_OPTIONS.items()}
            shape = entry.get("input_shape")
            layers.append(
                ConvLayer(name, arrays[name], entry["layout"], options, tuple(shape) if shape else None)
            )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        msg = f"{path}: its convsv layer header is invalid: {err}"
        raise ModelError(msg) from None
    return layers


def _guess_layers(arrays: Mapping[str, Any], layout: str | None, channels_last: bool) -> list[ConvLayer]:
    """Every 3-D to 5-D array is a kernel (a state dict's only if named ``*.weight``)."""
    last = LAYOUTS[layout][1] if layout else channels_last
    layers = []
    for key, array in arrays.items():
        if not 3 <= array.ndim <= 5:
            continue
        name = key.removesuffix(".weight")
        layout_name = layout_for(array.ndim - 2, last)
        layers.append(ConvLayer(name, array, layout_name, dict(ASSUMED_OPTIONS), assumed=True))
    return layers


#: Kernels wider than this are rare (AlexNet's stem is 11x11): a guessed layout that puts a wider
#: extent on a spatial axis, where the other layout has a small square kernel, is the wrong guess.
WIDEST_USUAL_KERNEL = 11


def _check_guessed_layout(path: Path, arrays: Mapping[str, Any], last: bool) -> None:
    """Refuse a guessed layout that makes a kernel's spatial shape absurd and the other makes it usual."""
    for key, array in arrays.items():
        if not 4 <= array.ndim <= 5:  # 1-D kernels have long taps, and no square to tell by
            continue
        guessed, other = (array.shape[:-2], array.shape[2:]) if last else (array.shape[2:], array.shape[:-2])
        if max(guessed) > WIDEST_USUAL_KERNEL and len(set(other)) == 1 and other[0] <= WIDEST_USUAL_KERNEL:
            d = array.ndim - 2
            names = layout_for(d, last), layout_for(d, not last)
            msg = (
                f"{path}: array {key!r} of shape {tuple(array.shape)} read as {names[0]} would be a "
                f"{'x'.join(map(str, guessed))} kernel, as {names[1]} a {'x'.join(map(str, other))} one: "
                f"the file stores no layout, so pass --layout {names[1]} "
                f"(or --layout {names[0]} if that is right)"
            )
            raise ModelError(msg)


def _tensor_archive(
    path: Path, fmt: str, arrays: Mapping[str, Any], header: str | None, layout: str | None, last: bool
) -> Model:
    if header is not None:
        return Model(str(path), fmt, _from_header(header, arrays, path))
    if layout is None:
        _check_guessed_layout(path, arrays, last)
    model = Model(str(path), fmt, _guess_layers(arrays, layout, last))
    if model.layers:
        model.notes.append(
            f"{fmt} stores no layer options: every layer is taken as a stride-1, ungrouped, circular "
            f"convolution on --input-size, kernels in {model.layers[0].layout}-style layout (--layout)"
        )
    return model


def read_npz(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    import numpy as np

    try:
        # np.load leaves a file it opened itself open when the archive is corrupt: open it here.
        with open(path, "rb") as file:
            archive = np.load(file, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                msg = "it holds a single array (.npy), not an archive of named arrays"
                raise ValueError(msg)
            with archive:
                arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable(path, "NumPy .npz", err) from None
    header = arrays.pop("__convsv__", None)
    return _tensor_archive(path, "npz", arrays, None if header is None else str(header), layout, last=True)


def read_safetensors(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    _need("safetensors", "safetensors files")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as archive:
            header = (archive.metadata() or {}).get("convsv")
            arrays = {key: archive.get_tensor(key) for key in archive.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise _unreadable(path, "safetensors", err) from None
    # safetensors files mostly come from PyTorch: channels first unless told otherwise.
    return _tensor_archive(path, "safetensors", arrays, header, layout, last=False)


# --- PyTorch ------------------------------------------------------------------------------------------


def _torch_module(module: Any, input_size: Sequence[int] | None, path: Path) -> list[ConvLayer]:
    import torch

    convs = [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd)
        and not isinstance(m.weight, torch.nn.parameter.UninitializedParameter)
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    if convs and input_size is not None:
        # The map sizes come from running the model on zeros, recording each conv's input.
        first = convs[0][1]
        channels = first.out_channels if first.transposed else first.in_channels
        size = expand_size(input_size, first.weight.ndim - 2, f"layer {convs[0][0]!r}")
        x = torch.zeros((1, channels, *size), dtype=first.weight.dtype)
        try:
            shapes = torch_layers.forward_input_shapes(module, convs, x)
        except Exception as err:
            msg = (
                f"{path}: running the model on a zero input of shape {tuple(x.shape)} (to find each "
                f"layer's feature-map size) failed: {err}"
            )
            raise ModelError(msg) from None
    return [torch_conv(name, m, shapes.get(name)) for name, m in convs]


def torch_conv(name: str, layer: Any, shape: tuple[int, ...] | None) -> ConvLayer:
    """A PyTorch convolution as a layer, translated as the adapter translates it.

    ``layer`` is a ``torch.nn`` module or one read from a TorchScript archive
    (:class:`convsv._torchscript.StoredConv`): :func:`convsv._frameworks.torch.conv_options`
    reads the attributes they share, the rule :func:`convsv.torch.layer_options` follows.
    """
    kernel = torch_layers.to_numpy(layer.weight)
    try:
        options = torch_layers.conv_options(layer, shape)
    except ValueError as err:
        layout = torch_layers.LAYOUTS[kernel.ndim - 2]
        return ConvLayer(name, kernel, layout, {}, shape, unmodelled=str(err))
    layout = options.pop("layout")
    options.setdefault("output_padding", 0)
    return ConvLayer(name, kernel, layout, options, shape)


def checkpoint_contents(obj: Any) -> Any:
    """The module or state dict inside a PyTorch checkpoint's usual wrappers.

    Training scripts save ``{"state_dict": ..., "epoch": ...}``,
    ``{"model": ...}``, ``{"model_state_dict": ...}``, ``{"module": ...}``
    or ``{"net": ...}``, sometimes nested; a bare module or state dict is
    returned as it is.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned.

    Returns
    -------
    object
        The innermost value under one of those keys that is not itself an
        array (``obj`` when there is none).

    Examples
    --------
    >>> import numpy as np
    >>> from convsv.analysis import checkpoint_contents
    >>> state = {"conv.weight": np.ones((4, 3, 3, 3))}
    >>> checkpoint_contents({"epoch": 90, "state_dict": {"model": state}}) is state
    True
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            value = obj.get(key)
            if value is not None and not (hasattr(value, "shape") and hasattr(value, "dtype")):
                return checkpoint_contents(value)
    return obj


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def read_torch(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    from . import _torchscript  # which imports this module

    if _torchscript.is_torchscript(path):
        return _torchscript.read_torchscript(path, input_size)
    torch = _need("torch", "PyTorch checkpoints")
    body = load_checkpoint(path)
    if isinstance(body, torch.nn.Module):
        return Model(str(path), "PyTorch module", _torch_module(body, input_size, path))
    if isinstance(body, Mapping):
        arrays = {
            key: torch_layers.to_numpy(value)
            for key, value in body.items()
            if _is_tensor(value) and (key.endswith("weight") or "." not in key)
        }
        return _tensor_archive(path, "PyTorch state dict", arrays, None, layout, last=False)
    msg = f"{path}: holds a {type(body).__name__}, neither a torch.nn.Module nor a state dict"
    raise ModelError(msg)


def build_module(spec: str, path: Path) -> Any:
    """``--module PACKAGE.MODULE:CALLABLE``: the model its callable builds, with the state dict at ``path``.

    The one place convsv runs a user's code, because the user names it: the
    callable is imported (the current directory first on the path, as
    ``python -m`` has it) and called without arguments, and the checkpoint,
    still read with ``weights_only=True``, must hold the state dict it takes.
    """
    from ._torchscript import is_torchscript  # which imports this module

    torch = _need("torch", "PyTorch checkpoints")
    if is_torchscript(path):
        msg = f"{path}: a TorchScript archive holds its own code; --module is for state dicts"
        raise ModelError(msg)
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        msg = f"--module {spec!r}: give PACKAGE.MODULE:CALLABLE, e.g. torchvision.models:resnet18"
        raise ModelError(msg)
    sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
        model = found()
    except Exception as err:
        msg = f"--module {spec!r}: building the model failed: {type(err).__name__}: {err}"
        raise ModelError(msg) from None
    finally:
        sys.path.remove(os.getcwd())
    if not isinstance(model, torch.nn.Module):
        msg = f"--module {spec!r}: returned a {type(model).__name__}, not a torch.nn.Module"
        raise ModelError(msg)
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        msg = f"{path}: --module takes a state dict; this checkpoint holds a {type(state).__name__}"
        raise ModelError(msg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or mis-shaped keys, as PyTorch lists them
        lines = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        msg = f"{path}: does not fit the model --module {spec!r} builds: {lines}"
        raise ModelError(msg) from None
    return model.eval()


def read_torch_with(spec: str, path: Path, input_size: Sequence[int] | None) -> Model:
    """``convsv analyze STATE_DICT --module SPEC``: the convolutions of the model ``SPEC`` builds."""
    return Model(str(path), "PyTorch module", _torch_module(build_module(spec, path), input_size, path))


def load_checkpoint(path: Path) -> Any:
    """What a (non-TorchScript) PyTorch checkpoint holds, unwrapped; only ``torch.nn``'s classes are built."""
    torch = _need("torch", "PyTorch checkpoints")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:
        raise _unreadable(path, "PyTorch checkpoint", err) from None
    foreign = [name for name in unsafe if not name.startswith("torch.nn.modules.")]
    if foreign:
        msg = (
            f"{path}: the checkpoint holds Python objects convsv does not unpickle "
            f"({', '.join(foreign[:3])}); "
            "it loads with weights_only=True and allows only torch.nn's own modules. "
            "Save model.state_dict() and name the class that builds the model with --module "
            "(e.g. --module mypackage.models:ResNet), or export to ONNX"
        )
        raise ModelError(msg)
    allowed = []
    for name in unsafe:  # torch.nn's own layer classes: building them runs no stored code
        module_name, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module_name), attr))
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise _unreadable(path, "PyTorch checkpoint", err) from None
    return checkpoint_contents(obj)


# --- Keras --------------------------------------------------------------------------------------------


def _import_keras() -> Any:
    if "KERAS_BACKEND" not in os.environ:
        # Keras defaults to TensorFlow; use whichever backend is installed.
        for backend in ("tensorflow", "jax", "torch"):
            if importlib.util.find_spec(backend) is not None:
                os.environ["KERAS_BACKEND"] = backend
                break
    return _need("keras", "Keras models")


def _keras_layers(keras: Any, layer: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every layer, nested models' layers included, named ``outer/inner``."""
    found = []
    for sub in getattr(layer, "layers", []):
        name = f"{prefix}{sub.name}"
        if isinstance(sub, keras.Model) or (hasattr(sub, "layers") and not hasattr(sub, "kernel")):
            found += _keras_layers(keras, sub, f"{name}/")
        else:
            found.append((name, sub))
    return found


def _spatial(shape: Any, channels_first: bool) -> tuple[int, ...] | None:
    spatial = tuple(shape[2:] if channels_first else shape[1:-1])
    return spatial if all(isinstance(n, int) and n > 0 for n in spatial) else None


def _keras_conv(name: str, layer: Any) -> list[ConvLayer]:
    """A Keras layer's convolution kernels, translated as :mod:`convsv.keras` translates them."""
    kernels = keras_layers.kernels_of(layer)
    if not kernels:
        return []
    first = layer.data_format == "channels_first"
    try:
        size_in = _spatial(layer.input.shape, first)
        size_out = _spatial(layer.output.shape, first)
    except (AttributeError, ValueError):  # not built on a symbolic input, or shared
        size_in = size_out = None
    found = []
    for _, kind, variable in kernels:  # a separable layer: "depthwise", then "pointwise"
        kernel = keras_layers.to_numpy(variable)
        label = f"{name}/{kind}" if len(kernels) > 1 else name
        if kind == "pointwise":  # the 1x1 convolution sees the depthwise output, the layer's output size
            options = {**ASSUMED_OPTIONS, "padding": "valid"}
            found.append(ConvLayer(label, kernel, layout_for(kernel.ndim - 2, True), options, size_out))
            continue
        fields = keras_layers.layer_fields(layer, kind, None)
        shape, options = keras_layers.conv_options(kernel.shape, fields)
        layout = options.pop("layout")
        found.append(ConvLayer(label, kernel.reshape(shape), layout, options, size_in))
    return found


def read_keras(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    keras = _import_keras()
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file
        raise _unreadable(path, "Keras", err) from None
    if input_size is not None and model.inputs:
        # Rebuild the graph on an input of the requested size to get every layer's map size.
        shape = tuple(model.inputs[0].shape[1:])
        size = expand_size(input_size, len(shape) - 1, "the model's input")
        # Channels are the one axis a model needs fixed; Keras defaults to channels last.
        first = shape[-1] is None and shape[0] is not None
        channels = shape[0] if first else shape[-1]
        new_shape = (channels, *size) if first else (*size, channels)
        try:
            clone = keras.models.clone_model(model, input_tensors=keras.Input(shape=new_shape))
            clone.set_weights([keras_layers.to_numpy(w) for w in model.weights])  # a clone has fresh weights
        except Exception as err:
            msg = f"{path}: cannot rebuild the model on an input of shape {new_shape}: {err}"
            raise ModelError(msg) from None
        model = clone
    layers = []
    for name, layer in _keras_layers(keras, model):
        layers += _keras_conv(name, layer)
    return Model(str(path), "Keras", layers)


# --- ONNX ---------------------------------------------------------------------------------------------


def read_onnx(path: Path, input_size: Sequence[int] | None, layout: str | None) -> Model:
    """ONNX models: :mod:`convsv._onnx` (imported here, as it imports this module)."""
    from ._onnx import read_onnx as read

    return read(path, input_size, layout)


# --- dispatch -----------------------------------------------------------------------------------------

Reader = Callable[[Path, "Sequence[int] | None", "str | None"], Model]
READERS: dict[str, Reader] = {
    ".pt": read_torch,
    ".pth": read_torch,
    ".jit": read_torch,
    ".safetensors": read_safetensors,
    ".keras": read_keras,
    ".onnx": read_onnx,
    ".npz": read_npz,
}


def model_file(path: str | os.PathLike[str]) -> tuple[Path, Reader]:
    """``path`` as a model file that exists, and the reader of its format; a :class:`ModelError` if not."""
    file = Path(path)
    reader = READERS.get(file.suffix.lower())
    if not file.exists():
        msg = f"{file}: no such file"
        raise ModelError(msg)
    if file.is_dir():
        msg = f"{file}: is a directory, not a model file"
        raise ModelError(msg)
    if reader is None:
        known = ", ".join(sorted(READERS))
        msg = f"{file}: unknown model format {file.suffix or '(no extension)'!r}; convsv reads {known}"
        raise ModelError(msg)
    return file, reader


def load_model(
    path: str | os.PathLike[str],
    input_size: Sequence[int] | None,
    layout: str | None,
    module: str | None = None,
) -> Model:
    """Read the convolutions of the model at ``path``; raises :class:`ModelError` for anything unusable.

    ``module`` (``--module``) names the callable that builds the model whose state dict ``path`` holds.
    """
    file, reader = model_file(path)
    if module is None:
        model = reader(file, input_size, layout)
    elif reader is read_torch:
        model = read_torch_with(module, file, input_size)
    else:
        msg = f"{file}: --module names the model of a state dict (.pt/.pth), not a {file.suffix} file's"
        raise ModelError(msg)
    if not model.layers:
        msg = f"{file}: no convolutional layers found in this {model.format} model"
        raise ModelError(msg)
    return model
