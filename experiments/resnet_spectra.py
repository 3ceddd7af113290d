"""Appendix C of Sedghi, Gupta & Long (ICLR 2019): the singular values of every convolution of a ResNet.

The paper plots the exact spectra of the convolutional layers of a pre-trained ImageNet
ResNet: each layer's singular values sorted (its Figure 5), as ratios to the layer's largest
(Figure 6), and against the rank normalised by the number of singular values (Figure 7).
This script draws the same three panels for a torchvision ResNet (18, 34, 50, 101 or 152),
from a local torchvision checkpoint or, without one, randomly initialised (and labelled so on
the plot and in the JSON). torchvision is not needed: ``imagenet_resnet.py`` beside this file
defines the architectures with torchvision's parameter names.

Each layer's spectrum is that of the convolution with circular padding on the feature map it
sees at ``--input-size`` (the paper's setting), from :func:`convsv.singular_values` with the
layer's options as :func:`convsv.torch.layer_options` reads them. ``--bounds`` adds certified
bounds on each layer's norm as it really computes, padding with zeros (much slower).
``convsv analyze`` computes the same spectra for a saved model; this script uses its pieces
(:mod:`convsv.analysis`) for the backend, the per-layer statistics, the plot and the checkpoint.

Run::

    python experiments/resnet_spectra.py                      # random-init ResNet-50 at 224 (~2 min)
    python experiments/resnet_spectra.py --checkpoint resnet50-0676ba61.pth
    python experiments/resnet_spectra.py --quick              # ResNet-18 at 32x32: seconds

Writes ``spectra.json`` and ``spectra.png`` in ``--out`` and prints a table of the layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from imagenet_resnet import ARCHITECTURES, ResNet, resnet

import convsv
from convsv.analysis import BACKENDS, array_converter, checkpoint_contents, plot_spectra, summarize
from convsv.torch import conv_layers, input_shapes, layer_options

# A ResNet halves its map five times (stem conv, max-pool, three strided stages).
SIZE_MULTIPLE = 32
# Appendix C: "most of the layers have at least 10000 singular values that are at least 1".
PAPER_COUNT = 10_000


class ExperimentError(Exception):
    """A user error: shown as one ``error:`` line, exit status 1."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Appendix C of Sedghi et al. (ICLR 2019): the singular values of every convolution "
        "of a torchvision ResNet, from a local checkpoint or randomly initialised.",
        epilog="Outputs: OUT/spectra.json (one entry per layer) and OUT/spectra.png (Figures 5-7).",
    )
    parser.add_argument(
        "--arch", choices=list(ARCHITECTURES), help="the ResNet (default resnet50; resnet18 with --quick)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="a torchvision state dict (.pth), also inside {'state_dict': ...} or with 'module.' prefixes; "
        "without it the network is randomly initialised",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help=f"the N x N input image, a multiple of {SIZE_MULTIPLE} (default 224; 32 with --quick)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, help="array library for the spectra (default numpy on the CPU)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or gpu")
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="also certified bounds on each layer's norm with the zero padding it really has (slow)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("resnet-spectra"), help="output directory (default resnet-spectra/)"
    )
    parser.add_argument("--quick", action="store_true", help="resnet18 on a 32x32 input: a few seconds")
    args = parser.parse_args(argv)
    args.arch = args.arch or ("resnet18" if args.quick else "resnet50")
    args.input_size = args.input_size or (32 if args.quick else 224)
    if args.input_size <= 0 or args.input_size % SIZE_MULTIPLE:
        parser.error(
            f"--input-size {args.input_size}: must be a positive multiple of {SIZE_MULTIPLE}, so that every "
            "stride divides its layer's feature map (the exact spectrum is the circular layer's)"
        )
    return args


# --- the network --------------------------------------------------------------------------------------


def mismatches(arch: str, state: Mapping[str, Any]) -> list[str]:
    """How ``state`` differs from ``arch``'s state dict: missing and unexpected keys, differing shapes."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {key: tuple(value.shape) for key, value in resnet(arch).state_dict().items()}
    # torch fills in a missing batch-norm counter (older torchvision checkpoints have none).
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (checkpoint {tuple(v.shape)}, {arch} {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(getattr(v, "shape", ())) != expected[k]
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 4 else ""
            problems.append(f"{what}: {', '.join(keys[:4])}{more}")
    return problems


def load_checkpoint(model: ResNet, arch: str, path: Path) -> None:
    """Load a torchvision state dict into ``model``; ``ExperimentError`` says what does not fit."""
    if not path.is_file():
        msg = f"--checkpoint {path}: no such file"
        raise ExperimentError(msg)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = f"--checkpoint {path}: not a PyTorch checkpoint of tensors: {detail}"
        raise ExperimentError(msg) from None
    body = checkpoint_contents(saved)
    if not isinstance(body, Mapping):
        msg = f"--checkpoint {path}: holds a {type(body).__name__}, not a state dict"
        raise ExperimentError(msg)
    # DataParallel and DistributedDataParallel save their module's keys under "module.".
    state = {key.removeprefix("module."): value for key, value in body.items()}
    problems = mismatches(arch, state)
    if problems:
        fits = [other for other in sorted(ARCHITECTURES) if other != arch and not mismatches(other, state)]
        hint = f" (it fits --arch {fits[0]})" if fits else ""
        msg = f"--checkpoint {path} does not match {arch}{hint}: {'; '.join(problems)}"
        raise ExperimentError(msg)
    model.load_state_dict(state, strict=True)


# --- the experiment -----------------------------------------------------------------------------------


def layer_spectra(
    model: torch.nn.Module, input_size: int, to_backend: Any, bounds: bool
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One JSON row and the circular layer's singular values (NumPy) for each convolution, in order."""
    sizes = input_shapes(model, torch.zeros(1, 3, input_size, input_size))
    convs = list(conv_layers(model))
    rows, spectra = [], []
    start = time.perf_counter()
    for done, (name, layer) in enumerate(convs, 1):
        options = layer_options(layer)
        size = sizes[name]
        kernel = to_backend(layer.weight.detach().numpy())
        values = convsv.singular_values(kernel, size, **{**options, "padding": "circular"})
        stats = summarize(values)
        row = {
            "name": name,
            "kernel_shape": list(layer.weight.shape),
            "layout": options["layout"],
            "stride": list(options["stride"]),
            "zero_padding": list(options["padding"]),
            "input_shape": list(size),
            "operator_norm": stats["largest_singular_value"],
            "smallest_singular_value": stats["smallest_singular_value"],
            "singular_value_count": stats["singular_value_count"],
            "singular_values_at_least_one": stats["singular_values_at_least_one"],
            "stable_rank": stats["stable_rank"],
        }
        if bounds:
            lower, upper = convsv.operator_norm_bounds(kernel, size, **options)
            row["zero_padded_norm_bounds"] = [float(lower), float(upper)]
        rows.append(row)
        spectra.append(values)
        elapsed = time.perf_counter() - start
        print(f"  [{done}/{len(convs)}] {name}  ({elapsed:.1f} s)", file=sys.stderr, flush=True)
    return rows, spectra


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compute the spectra, write the plot to ``args.out`` and return the results."""
    try:  # a device that is not there fails now
        backend, to_backend = array_converter(args.backend, args.device)
    except ValueError as err:
        raise ExperimentError(str(err)) from None
    torch.manual_seed(args.seed)
    model = resnet(args.arch)
    random_init = args.checkpoint is None
    if random_init:
        weights = f"random initialisation (torchvision's, seed {args.seed}), not pre-trained"
    else:
        load_checkpoint(model, args.arch, args.checkpoint)
        weights = f"checkpoint {args.checkpoint.name}"
    size = f"{args.input_size}x{args.input_size}"
    print(f"{args.arch}, {weights}: spectra at {size}, {backend} on {args.device}", file=sys.stderr)
    start = time.perf_counter()
    rows, spectra = layer_spectra(model, args.input_size, to_backend, args.bounds)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    plot = args.out / "spectra.png"
    names = [row["name"] for row in rows]
    plot_spectra(
        spectra, plot, names=names, title=f"{args.arch} at {size}, {weights}: {len(rows)} convolutions"
    )
    return {
        "experiment": "Sedghi, Gupta & Long (ICLR 2019), Appendix C: the spectra of a ResNet's convolutions",
        "arch": args.arch,
        "random_init": random_init,
        "weights": weights,
        "checkpoint": None if random_init else str(args.checkpoint),
        "seed": args.seed if random_init else None,
        "input_size": args.input_size,
        "spectrum_of": "each convolution with circular padding on its input map (the paper's setting)",
        "backend": backend,
        "device": args.device,
        "seconds": seconds,
        "convsv_version": convsv.__version__,
        "torch_version": torch.__version__,
        "plot": plot.name,
        "layers": rows,
    }


def to_json(result: dict[str, Any]) -> str:
    """Indented JSON with one line per layer, so that files of 150 layers stay readable."""
    head = json.dumps({k: v for k, v in result.items() if k != "layers"}, indent=1, allow_nan=False)
    layers = ",\n".join(f"  {json.dumps(row, allow_nan=False)}" for row in result["layers"])
    return f'{head[:-2]},\n "layers": [\n{layers}\n ]\n}}\n'


def summary(result: dict[str, Any]) -> str:
    """A table of the layers and the paper's two observations about them."""
    rows = result["layers"]
    size = f"{result['input_size']}x{result['input_size']}"
    lines = [f"{result['arch']} at {size}, {result['weights']}", ""]
    bounds = "zero_padded_norm_bounds" in rows[0]
    columns = f"{'layer':<22} {'kernel':>16} {'stride':>6} {'map':>7} {'norm':>8} {'s_min':>10} {'#s':>7}"
    lines.append(columns + f" {'#s>=1':>7}" + ("  zero-padded norm in" if bounds else ""))
    for r in rows:
        kernel, stride = "x".join(map(str, r["kernel_shape"])), "x".join(map(str, r["stride"]))
        line = (
            f"{r['name']:<22} {kernel:>16} {stride:>6} {'x'.join(map(str, r['input_shape'])):>7} "
            f"{r['operator_norm']:8.4g} {r['smallest_singular_value']:10.4g} {r['singular_value_count']:7d} "
            f"{r['singular_values_at_least_one']:7d}"
        )
        if bounds:
            line += "  [{:.4g}, {:.4g}]".format(*r["zero_padded_norm_bounds"])
        lines.append(line)
    largest = max(rows, key=lambda r: r["operator_norm"])
    many = sum(r["singular_values_at_least_one"] >= PAPER_COUNT for r in rows)
    lines += [
        "",
        "norm, s_min, #s: of the layer with circular padding on its map (the paper's setting).",
        f"Largest norm: {largest['name']} ({largest['operator_norm']:.4g}); "
        "the paper finds the largest norms closest to the input.",
        f"Layers with at least {PAPER_COUNT} singular values >= 1: {many} of {len(rows)} "
        "(the paper: most of the pre-trained ResNet-v2's layers).",
    ]
    if result["random_init"]:
        lines.append("These weights are a random initialisation, not a trained network.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
        path = args.out / "spectra.json"
        path.write_text(to_json(result))
    except (ExperimentError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(result))
    print(f"wrote {path} and {args.out / result['plot']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
