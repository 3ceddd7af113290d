"""Reading a TorchScript archive (``torch.jit.save``) for ``convsv analyze``, without running it.

``torch.jit.load`` is not used: loading an archive runs code stored in it --
the ``__setstate__`` methods of its TorchScript classes, which may call any
TorchScript operator, files included. PyTorch's documentation of
``torch.jit.load`` says never to load an archive from an untrusted source, and
``torch.load(weights_only=True)`` refuses TorchScript archives since PyTorch
2.6 for that reason. The archive is read as data instead:

- ``data.pkl``, the module tree, goes through a restricted unpickler: every
  class or function it names becomes an inert record of that name and the
  values stored with it (nothing is imported, no ``__setstate__`` runs), save
  two kinds that are rebuilt by this module's own code: tensors, from the
  bytes in ``data/`` with their offsets and strides checked against them, and
  TorchScript's typed-list wrappers, unwrapped.
- A convolution's options come from the TorchScript source in ``code/``,
  parsed with :mod:`ast` and read with :func:`ast.literal_eval` -- never
  compiled or run. A scripted ``torch.nn`` convolution keeps stride, padding,
  dilation, groups, padding mode and output padding as constants of its class;
  a traced one as the literal arguments of the ``torch._convolution`` call in
  its ``forward`` (and of the ``torch.pad`` before it, for circular padding).
  A traced ``forward`` that does anything else is not guessed at: the layer is
  reported as unreadable.

Only ``torch.nn``'s own convolution classes are layers. Each is translated by
:func:`convsv._frameworks.torch.conv_options`, the rule for a ``torch.nn``
module. The archive stores no feature-map sizes, and finding them would mean
running it: every layer is analysed on ``--input-size``.
"""

from __future__ import annotations

import ast
import io
import math
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._frameworks import torch as torch_layers
from ._models import ConvLayer, Model, ModelError, _need, _unreadable, expand_size, torch_conv

CONV_CLASS = re.compile(
    r"__torch__\.torch\.nn\.modules\.conv(?:\.___torch_mangle_\d+)?\.(Conv(?:Transpose)?[123]d)"
)
STORAGES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# torch.jit._pickle's wrappers of typed lists and dicts: the value is their first argument.
WRAPPERS = {"build_intlist", "build_floatlist", "build_boollist", "build_doublelist", "build_tensorlist"}
NOT_RUN = "convsv reads TorchScript archives without running them"
SIZES_NOTE = (
    "a TorchScript archive stores no feature-map sizes and convsv does not run it to find them: every "
    "layer is analysed on --input-size (for each layer's own map, analyse the torch.nn module saved with "
    "torch.save(model), or an ONNX export)"
)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with ``constants.pkl`` beside ``data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _prefix(archive.namelist()) is not None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _prefix(names: Sequence[str]) -> str | None:
    """The archive's top folder (``torch.jit.save`` names it after the file)."""
    for name in names:
        folder, _, rest = name.partition("/")
        if rest == "constants.pkl" and f"{folder}/data.pkl" in names:
            return folder
    return None


class Stored:
    """An object of a class the archive names: its qualified name and what was stored, nothing run."""

    qualname = ""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _StorageKind:
    dtype: str


class _Held:
    """A tensor, or a tensor's storage, that this module built.

    Held out of reach of the pickle's ``BUILD``, which would call the tensor's own ``__setstate__``.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def __setstate__(self, state: Any) -> None:
        msg = "the archive stores a state for a tensor"
        raise pickle.UnpicklingError(msg)


def _unwrap(value: Any, *_: Any) -> Any:
    return value


class _Unpickler(pickle.Unpickler):
    """``data.pkl`` with every global replaced by an inert record or convsv's own code."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, torch: Any) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.torch = archive, prefix, torch
        self.records: dict[str, type[Stored]] = {}
        self.storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch" and name in STORAGES:
            return _StorageKind(STORAGES[name])
        if module == "torch.jit._pickle" and (name in WRAPPERS or name == "restore_type_tag"):
            return _unwrap
        if module == "collections" and name == "OrderedDict":
            return dict
        qualname = f"{module}.{name}"
        if qualname not in self.records:
            self.records[qualname] = type(name, (Stored,), {"qualname": qualname})
        return self.records[qualname]

    def persistent_load(self, pid: Any) -> Any:
        """A tensor's storage, ``('storage', kind, key, location, numel)``: ``data/KEY``'s bytes."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            msg = f"unknown persistent id {pid!r:.80}"
            raise pickle.UnpicklingError(msg)
        _, kind, key, _, numel = pid
        if not (
            isinstance(kind, _StorageKind)
            and kind.dtype in STORAGES.values()
            and isinstance(key, str)
            and type(numel) is int
        ):
            msg = f"unknown storage {pid!r:.80}"
            raise pickle.UnpicklingError(msg)
        if key not in self.storages:
            dtype = getattr(self.torch, kind.dtype)
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            if len(raw) != numel * dtype.itemsize:
                msg = f"storage {key} holds {len(raw)} bytes, not {numel} {kind.dtype} values"
                raise pickle.UnpicklingError(msg)
            flat = (
                self.torch.frombuffer(bytearray(raw), dtype=dtype)
                if raw
                else self.torch.empty(0, dtype=dtype)
            )
            self.storages[key] = _Held(flat)
        return self.storages[key]

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Any:
        """``torch._utils._rebuild_tensor_v2``, for a storage of this archive, bounds checked."""
        if not (
            isinstance(storage, _Held)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(type(n) is int and n >= 0 for n in (offset, *size, *stride))
        ):
            msg = "a tensor with an invalid storage, offset, size or stride"
            raise pickle.UnpicklingError(msg)
        flat = storage.tensor
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if math.prod(size) and last >= flat.numel():
            msg = "a tensor reaching past the end of its storage"
            raise pickle.UnpicklingError(msg)
        return _Held(flat.as_strided(size, stride, offset).clone())


def _modules(obj: Any, prefix: str, seen: set[int]) -> Iterator[tuple[str, Stored]]:
    """Each stored object and those in its attributes, named like ``named_modules`` (``a.b``), once."""
    if not isinstance(obj, Stored) or id(obj) in seen:
        return
    seen.add(id(obj))
    yield prefix, obj
    if isinstance(obj.state, dict):
        for key, value in obj.state.items():
            yield from _modules(value, f"{prefix}.{key}" if prefix else str(key), seen)


@dataclass
class StoredConv:
    """A ``torch.nn`` convolution as an archive stores it: the attributes ``conv_options`` reads."""

    weight: Any
    stride: tuple[int, ...]
    padding: Any  # a tuple of ints, or "same" / "valid"
    dilation: tuple[int, ...]
    groups: int
    transposed: bool
    output_padding: tuple[int, ...]
    padding_mode: str
    _reversed_padding_repeated_twice: list[int]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])


def _literals(body: Sequence[ast.stmt]) -> dict[str, Any]:
    """The names a class or function body sets to a literal (``stride: ... = (1, 1)``, ``_2 = [0, 0]``)."""
    found = {}
    for statement in body:
        target: ast.expr
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                found[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return found


def _scripted(cls: ast.ClassDef, state: dict[str, Any]) -> dict[str, Any] | None:
    """A scripted convolution's options: its class's constants, ``transposed`` from its attributes."""
    constants = _literals(cls.body)
    names = ("stride", "padding", "dilation", "groups", "output_padding", "padding_mode")
    if not all(name in constants for name in names):
        return None
    fields = {name: constants[name] for name in names}
    fields["transposed"] = state.get("transposed")
    fields["_reversed_padding_repeated_twice"] = state.get("_reversed_padding_repeated_twice")
    return fields


CONV_CALLS = ("torch._convolution", "torch._convolution_mode")


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "torch":
        return f"torch.{func.attr}"
    return ast.unparse(func)


def _argument(call: ast.Call, index: int, known: dict[str, Any]) -> Any:
    """A call's positional argument ``index``: a literal, or a name the function set to one."""
    try:
        node = call.args[index]
        return known[node.id] if isinstance(node, ast.Name) and node.id in known else ast.literal_eval(node)
    except (IndexError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        msg = f"argument {index} of its traced {_call_name(call)} call is not a literal ({NOT_RUN})"
        raise ValueError(msg) from None


def _traced(cls: ast.ClassDef) -> dict[str, Any]:
    """A traced convolution's options: the literal arguments of the calls of its ``forward``."""
    forward = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward"), None)
    if forward is None:
        msg = f"it was not called when the model was traced, so its options are not stored ({NOT_RUN})"
        raise ValueError(msg)
    known = _literals(forward.body)
    named = [(_call_name(node), node) for node in ast.walk(forward) if isinstance(node, ast.Call)]
    convs = [call for name, call in named if name in CONV_CALLS]
    pads = [call for name, call in named if name == "torch.pad"]
    if len(convs) != 1 or len(pads) > 1 or len(named) != 1 + len(pads):
        calls = ", ".join(name for name, _ in named)
        msg = f"its traced forward does more than pad and convolve ({calls:.80}; {NOT_RUN})"
        raise ValueError(msg)
    conv = convs[0]
    if _call_name(conv) == "torch._convolution":
        stride, padding, dilation, transposed, extra, groups = (
            _argument(conv, i, known) for i in range(3, 9)
        )
    else:  # _convolution_mode(input, weight, bias, stride, padding: str, dilation, groups)
        stride, padding, dilation, groups = (_argument(conv, i, known) for i in range(3, 7))
        transposed, extra = False, None  # no output padding
    fields = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    fields |= {"transposed": transposed, "output_padding": extra, "padding_mode": "zeros"}
    fields["_reversed_padding_repeated_twice"] = None  # no padding before the convolution
    if pads:
        fields["_reversed_padding_repeated_twice"] = _argument(pads[0], 1, known)
        fields["padding_mode"] = _argument(pads[0], 2, known)
    return fields


def _options(cls: ast.ClassDef, weight: Any, state: dict[str, Any]) -> StoredConv:
    """The convolution's attributes, checked for their types; a ``ValueError`` says what is wrong."""
    fields = _scripted(cls, state) or _traced(cls)
    d = int(weight.ndim) - 2

    def ints(value: Any, count: int) -> tuple[int, ...]:
        if not (
            isinstance(value, (tuple, list)) and len(value) == count and all(type(n) is int for n in value)
        ):
            msg = f"its stored options are not what a torch.nn convolution stores ({value!r:.40})"
            raise ValueError(msg)
        return tuple(value)

    padding, transposed = fields["padding"], fields["transposed"]
    if type(transposed) is not bool:
        msg = f"its stored options are not what a torch.nn convolution stores (transposed={transposed!r:.40})"
        raise ValueError(msg)
    return StoredConv(
        weight,
        ints(fields["stride"], d),
        padding if padding in ("same", "valid") else ints(padding, d),
        ints(fields["dilation"], d),
        ints([fields["groups"]], 1)[0],
        transposed,
        ints(fields["output_padding"] or [0] * d, d),
        str(fields["padding_mode"]),
        list(ints(fields["_reversed_padding_repeated_twice"] or [0] * 2 * d, 2 * d)),
    )


class _Sources:
    """The classes of the archive's TorchScript source, parsed (never compiled) on first use."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self.archive, self.prefix = archive, prefix
        self.parsed: dict[str, ast.Module | None] = {}

    def find(self, qualname: str) -> ast.ClassDef | None:
        module, _, name = qualname.rpartition(".")
        file = f"{self.prefix}/code/{module.replace('.', '/')}.py"
        if file not in self.parsed:
            try:
                self.parsed[file] = ast.parse(self.archive.read(file).decode("utf-8"))
            except KeyError:
                self.parsed[file] = None
        tree = self.parsed[file]
        classes = [] if tree is None else [c for c in tree.body if isinstance(c, ast.ClassDef)]
        return next((c for c in classes if c.name == name), None)


def _conv(name: str, obj: Stored, sources: _Sources, size: Sequence[int] | None, path: Path) -> ConvLayer:
    """One stored ``torch.nn`` convolution as a layer, on ``size`` (``--input-size``) when given."""
    state = obj.state if isinstance(obj.state, dict) else {}
    weight = state.get("weight")
    weight = weight.tensor if isinstance(weight, _Held) else None
    if weight is None or not 3 <= weight.ndim <= 5:
        msg = f"{path}: layer {name!r} ({obj.qualname}) stores no convolution weight convsv can read"
        raise ModelError(msg)
    shape = expand_size(size, weight.ndim - 2, f"layer {name!r}") if size is not None else None
    cls = sources.find(obj.qualname)
    try:
        if cls is None:
            msg = f"the archive has no TorchScript source for its class {obj.qualname}"
            raise ValueError(msg)
        conv = _options(cls, weight, state)
    except ValueError as err:  # the layer's reason, as for a padding mode convsv does not model
        kernel = torch_layers.to_numpy(weight)
        return ConvLayer(name, kernel, torch_layers.LAYOUTS[kernel.ndim - 2], {}, shape, unmodelled=str(err))
    return torch_conv(name, conv, shape)


def read_torchscript(path: Path, input_size: Sequence[int] | None) -> Model:
    """The ``torch.nn`` convolutions of a TorchScript archive (see the module's docstring)."""
    torch = _need("torch", "TorchScript archives")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _prefix(archive.namelist()) or ""
            names = set(archive.namelist())
            order = (
                archive.read(f"{prefix}/byteorder").decode() if f"{prefix}/byteorder" in names else "little"
            )
            if order != "little":
                msg = f"{path}: a {order}-endian TorchScript archive; convsv reads little-endian ones"
                raise ModelError(msg)
            root = _Unpickler(archive.read(f"{prefix}/data.pkl"), archive, prefix, torch).load()
            sources = _Sources(archive, prefix)
            convs = [(n, m) for n, m in _modules(root, "", set()) if CONV_CLASS.fullmatch(m.qualname)]
            layers = [_conv(name, obj, sources, input_size, path) for name, obj in convs]
    except ModelError:
        raise
    except Exception as err:  # zip, pickle and parsing errors of a damaged archive
        raise _unreadable(path, "TorchScript", err) from None
    if not layers:
        msg = (
            f"{path}: no torch.nn convolution modules in this TorchScript archive (a frozen or inlined "
            "archive keeps its weights as constants of its code, which convsv does not read): analyse "
            "the torch.nn module saved with torch.save(model), its state_dict, or an ONNX export"
        )
        raise ModelError(msg)
    model = Model(str(path), "TorchScript", layers)
    model.notes.append(SIZES_NOTE)
    model.unsized = "it stores none, and convsv does not run the model to find them"
    return model
