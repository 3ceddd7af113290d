"""``convsv analyze MODEL --network``: a whole network's certified Lipschitz bound, from its graph.

PyTorch modules are traced by ``torch.fx`` and ONNX files translated into the
same kind of graph (:mod:`convsv._onnx_network`); both are certified by
:func:`convsv._lipschitz.certify_graph`. Files that hold only weights (state
dicts, ``.npz``, ``.safetensors``) have no graph to read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._models import ModelError, _need, build_module, expand_size, load_checkpoint, model_file

#: The seed of the example input (its values start the lower bound; the certificate holds for any).
EXAMPLE_SEED = 0


def _example_shape(module: Any, input_size: Sequence[int] | None, path: Path) -> tuple[int, ...]:
    """``(1, channels, *input_size)`` from the module's first convolution, or ``(1, in_features)``."""
    import torch

    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear):
            return (1, layer.in_features)
        if isinstance(layer, torch.nn.modules.conv._ConvNd):
            if input_size is None:
                msg = (
                    f"{path}: --network needs --input-size for a PyTorch module "
                    f"(its first layer, {name!r}, is a convolution)"
                )
                raise ModelError(msg)
            channels = layer.out_channels if layer.transposed else layer.in_channels
            return (1, channels, *expand_size(input_size, layer.weight.ndim - 2, f"layer {name!r}"))
    msg = f"{path}: the module has no convolution or linear layer to take its input's shape from"
    raise ModelError(msg)


def certify_file(
    path: Path, input_size: Sequence[int] | None, module_spec: str | None = None
) -> tuple[Any, str, list[str]]:
    """``(report, format, notes)`` for the model file at ``path``; a :class:`ModelError` if unusable.

    ``module_spec`` (``--module``) names the callable that builds the model of a state dict.
    """
    torch = _need("torch", "the network certificate (--network)")
    from ._lipschitz import certify_graph, lipschitz_bound
    from ._torchscript import is_torchscript

    path, _ = model_file(path)
    suffix = path.suffix.lower()
    if module_spec is not None and suffix not in (".pt", ".pth"):
        msg = f"{path}: --module names the model of a state dict (.pt/.pth), not a {path.suffix} file's"
        raise ModelError(msg)
    generator = torch.Generator().manual_seed(EXAMPLE_SEED)
    try:
        if suffix == ".onnx":
            from ._onnx_network import onnx_network

            graph_module, shape, notes = onnx_network(path, input_size)
            example = torch.randn(shape, generator=generator)
            return certify_graph(graph_module, example), "ONNX", notes
        if suffix in (".pt", ".pth") and not is_torchscript(path):
            module = load_checkpoint(path) if module_spec is None else build_module(module_spec, path)
            if not isinstance(module, torch.nn.Module):
                msg = (
                    f"{path}: holds a {type(module).__name__} (weights without the graph); --network needs "
                    "a saved torch.nn.Module (torch.save(model)), the class that builds the model named with "
                    "--module, or an ONNX export"
                )
                raise ModelError(msg)
            example = torch.randn(_example_shape(module, input_size, path), generator=generator)
            return lipschitz_bound(module, example), "PyTorch module", []
    except (TypeError, ValueError) as err:  # the certificate's: they name the node
        msg = f"{path}: {err}"
        raise ModelError(msg) from None
    msg = (
        f"{path}: --network reads a model's graph: a .pt/.pth holding a torch.nn.Module, or an .onnx "
        "file (TorchScript archives, state dicts, .npz, .safetensors and .keras files are not read as graphs)"
    )
    raise ModelError(msg)


def _rows(report: Any) -> list[dict[str, Any]]:
    return [asdict(node) for node in report.nodes]


def network_json(report: Any, source: str, format_: str) -> str:
    """The report as JSON: the bounds, then one node per line."""
    head = {"source": source, "format": format_, "upper": report.upper, "lower": report.lower}
    lines = [f"  {json.dumps(row, allow_nan=False)}" for row in _rows(report)]
    body = json.dumps(head, allow_nan=False)[:-1]
    return body + ', "nodes": [\n' + ",\n".join(lines) + "\n]}\n"


def network_csv(report: Any) -> str:
    """One line per graph node: name, kind, constant, bound, how."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["name", "kind", "constant", "bound", "how"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rows(report))
    return buffer.getvalue()
