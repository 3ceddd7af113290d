"""The ``convsv`` command line.

``convsv analyze [MODEL]`` reports the exact spectra of a model's
convolutions (PyTorch, safetensors, Keras, ONNX or ``.npz`` files); with no
file it analyses a small CNN trained on scikit-learn's digits that ships with
the package. ``convsv spectrum [KERNEL.npy] --input-size H W`` reports one
kernel's layer the same way, as a model of one layer. ``convsv analyze MODEL
--network`` certifies the whole network's Lipschitz constant from its graph
(PyTorch modules and ONNX files).

Exit status: 0 on success, 1 when a model cannot be read or analysed, 2 for
a malformed command line. On failure only the error is written.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from ._analysis import Progress, analyze, resolve_sizes
from ._devices import BACKENDS, converter
from ._layout import LAYOUTS, conv_spec
from ._models import ConvLayer, Model, ModelError, load_model
from ._output import format_csv, format_table, plot_model

DEFAULT_PLOT = "digits-cnn-spectra.png"


def example_kernel() -> Any:
    """The built-in example: a 3x3, 16 -> 16 kernel with He-normal weights (seed 0), HWIO."""
    import numpy as np

    rng = np.random.default_rng(0)
    fan_in = 3 * 3 * 16
    return rng.standard_normal((3, 3, 16, 16)) * np.sqrt(2.0 / fan_in)


def _padding(text: str) -> str | int:
    if text in ("circular", "same", "valid"):
        return text
    try:
        return int(text)
    except ValueError:
        msg = f"expected circular, same, valid or an int, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convsv",
        description="Exact singular values of convolutional layers (Sedghi, Gupta & Long, ICLR 2019).",
    )
    parser.add_argument("--version", action="version", version=f"convsv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    spectrum = commands.add_parser(
        "spectrum",
        help="the exact spectrum of one kernel's layer, reported as analyze reports a model's",
        description=(
            "Report the exact singular values of one convolution (circular padding by default), "
            "as `convsv analyze` reports each layer of a model: the same table, JSON and CSV. "
            "Without KERNEL, a built-in 3x3, 16->16 He-initialised kernel on a 32x32 map."
        ),
    )
    spectrum.add_argument("kernel", nargs="?", help="a .npy file holding the kernel")
    spectrum.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="feature-map size, one per spatial axis or one for all (default: 32 for the example)",
    )
    spectrum.add_argument(
        "--layout", choices=sorted(LAYOUTS), default="HWIO", help="kernel axes (default HWIO)"
    )
    layer = spectrum.add_argument_group("layer options (as in convsv.singular_values)")
    layer.add_argument("--stride", type=int, nargs="+", default=[1], metavar="S")
    layer.add_argument("--dilation", type=int, nargs="+", default=[1], metavar="D")
    layer.add_argument("--groups", type=int, default=1)
    layer.add_argument(
        "--padding",
        type=_padding,
        default="circular",
        help="circular (default, exact), same, valid or an int",
    )
    layer.add_argument("--transposed", action="store_true", help="the kernel is a transposed convolution's")
    _output_options(spectrum)
    spectrum.set_defaults(usage=spectrum)
    _analyze_parser(commands)
    return parser


def _output_options(command: argparse.ArgumentParser) -> None:
    """What both commands share: how to print, what to compute with, the figure and the progress bar."""
    command.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    figure = command.add_mutually_exclusive_group()
    figure.add_argument("--plot", metavar="FILE", help="write the paper's Figures 5-7 (PNG, PDF or SVG)")
    figure.add_argument(
        "--no-plot",
        action="store_true",
        help="write no figure (analyze of the bundled model writes one unasked)",
    )
    command.add_argument(
        "--backend", choices=BACKENDS, help="array library to compute with (default: numpy on the CPU)"
    )
    command.add_argument(
        "--device", default="cpu", help="cpu (default), cuda, cuda:N or gpu: computes with torch, cupy or jax"
    )
    command.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _analyze_parser(commands: Any) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="exact spectra of every convolution in a model file",
        description=(
            "Report, layer by layer, the exact singular values of a model's convolutions: the "
            "operator norm (circular padding, exact), certified bounds for zero-padded layers, the "
            "smallest singular value, condition number, stable rank and how many singular values are "
            "at least 1, and the product of the layers' norms. Without MODEL, a small CNN trained on "
            "scikit-learn's digits that ships with convsv; with the table format its plots are written to "
            f"{DEFAULT_PLOT} unless --no-plot or --plot FILE says otherwise. Exit status 1 when the model "
            "cannot be read or analysed."
        ),
    )
    analyze.add_argument(
        "model",
        nargs="?",
        help="a .pt/.pth (state dict or torch.nn module, loaded with weights_only=True; or a "
        "TorchScript archive, .jit too, read without running it), .safetensors, .keras, .onnx or .npz file",
    )
    analyze.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="spatial size of the model's input, one per axis or one for all; needed unless the file "
        "fixes it (ONNX with a static input, Keras, .npz/safetensors with a convsv header)",
    )
    analyze.add_argument("--layers", metavar="PATTERN", help="only layers whose name matches this glob")
    analyze.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help="kernel axes for formats without layer information (.npz default HWIO, state dicts and "
        "safetensors OIHW); the spatial rank is taken from each kernel",
    )
    analyze.add_argument(
        "--module",
        metavar="PACKAGE.MODULE:CALLABLE",
        help="the callable that builds the model whose state dict MODEL (.pt/.pth) holds, e.g. "
        "torchvision.models:resnet18: imported (the current directory first) and called without "
        "arguments, then given the state dict; this runs that code",
    )
    analyze.add_argument(
        "--network",
        action="store_true",
        help="certify the whole network's Lipschitz constant (l2, eval mode) from its graph: batch norm "
        "folded, residuals composed, a local lower bound beside it (a .pt/.pth holding a torch.nn.Module, "
        "or an .onnx file; computes with PyTorch on the CPU)",
    )
    _output_options(analyze)
    analyze.set_defaults(usage=analyze)


def _analyze(args: argparse.Namespace) -> int:
    """``convsv analyze``: a model file's convolutions."""
    input_size = args.input_size
    if input_size is not None and min(input_size) <= 0:
        msg = f"--input-size must be positive, got {input_size}"
        raise ModelError(msg)
    if args.module and args.model is None:
        msg = "--module needs MODEL: the state dict of the model it builds"
        raise UsageError(msg)
    if args.network:
        return _network(args)
    if args.model is None:
        source = resources.files("convsv") / "data" / "digits_cnn.npz"
        with resources.as_file(source) as path:
            model = load_model(path, input_size, args.layout)
        model.source = "convsv's bundled digits CNN (experiments/train_digits_cnn.py)"
        # The main job shows its figures; output meant for other programs writes no file unasked.
        if args.format == "table" and not args.no_plot:
            args.plot = args.plot or DEFAULT_PLOT
    else:
        model = load_model(args.model, input_size, args.layout, args.module)
    if args.layers:
        chosen = [layer for layer in model.layers if fnmatch.fnmatchcase(layer.name, args.layers)]
        if not chosen:
            names = ", ".join(layer.name for layer in model.layers[:8])
            more = ", ..." if len(model.layers) > 8 else ""
            msg = f"--layers {args.layers!r} matches none of the layers ({names}{more})"
            raise ModelError(msg)
        model.layers = chosen
    resolve_sizes(model, input_size)
    return _report(model, args, Path(model.source).name if args.model else "bundled digits CNN")


def _network(args: argparse.Namespace) -> int:
    """``convsv analyze MODEL --network``: the network's certified Lipschitz bound."""
    from ._network import certify_file, network_csv, network_json

    unused = {
        "MODEL": args.model is None,
        "--plot": args.plot,
        "--layers": args.layers,
        "--layout": args.layout,
    }
    unused |= {"--backend": args.backend not in (None, "torch"), "--device": args.device != "cpu"}
    for flag, given in unused.items():
        if given:
            problem = "is needed" if flag == "MODEL" else "is not used"
            msg = f"{flag} {problem} with --network (a model file's graph, certified with PyTorch on the CPU)"
            raise UsageError(msg)
    report, format_, notes = certify_file(Path(args.model), args.input_size, args.module)
    if args.format == "json":
        text = network_json(report, args.model, format_)
    elif args.format == "csv":
        text = network_csv(report)
    else:
        header = f"convsv {__version__}: {args.model} ({format_}, network certificate, torch on cpu)"
        text = "\n".join([header, *(f"note: {note}" for note in notes), str(report)]) + "\n"
    _write(text)
    return 0


def _layers_text(count: int) -> str:
    return f"{count} conv layer{'' if count == 1 else 's'}"


def _report(model: Model, args: argparse.Namespace, name: str) -> int:
    """Analyse ``model`` and write the report: everything is computed before anything is written."""
    backend, to_backend = converter(args.backend, args.device)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    rows, spectra = analyze(model, to_backend, Progress(len(model.layers), show))
    if args.plot:
        plot_model(rows, spectra, args.plot, f"{name}: {_layers_text(len(rows))}")
    if args.format == "json":
        # One layer per line: valid JSON that stays readable for models with many layers.
        text = "[\n" + ",\n".join(f"  {json.dumps(row, allow_nan=False)}" for row in rows) + "\n]\n"
    elif args.format == "csv":
        text = format_csv(rows)
    else:
        where = f"{backend} on {args.device}"
        header = f"convsv {__version__}: {model.source} ({model.format}, {_layers_text(len(rows))}, {where})"
        text = format_table(model, rows, header)
    _write(text)
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `convsv analyze | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the command's own usage, not the top level's
        getattr(args, "usage", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        import numpy  # noqa: F401
    except ImportError:  # pragma: no cover - numpy is in the [cli] extra
        parser.error("the command line needs NumPy: pip install numpy (in a checkout: pip install '.[cli]')")
    try:
        if args.command == "analyze":
            return _analyze(args)
        return _report(_one_layer(args), args, args.kernel or "example kernel")
    except ModelError as err:
        print(f"convsv {args.command}: error: {err}", file=sys.stderr)
        return 1
    except UsageError as err:  # the command line itself: as argparse reports it, status 2
        args.usage.error(str(err))
        return 2  # pragma: no cover - error() exits


class UsageError(Exception):
    """A ``convsv spectrum`` argument that does not fit the kernel: a command-line error (status 2)."""


def _one_layer(args: argparse.Namespace) -> Model:
    """``convsv spectrum``: the kernel and layer of the command line, as a one-layer model."""
    import numpy as np

    if args.kernel is None:
        kernel, source = example_kernel(), "example kernel"
        input_size = args.input_size or [32]
    else:
        if args.input_size is None:
            msg = "--input-size is required with a kernel file"
            raise UsageError(msg)
        try:
            kernel = np.load(args.kernel, allow_pickle=False)
        except (OSError, ValueError) as err:
            msg = f"cannot read kernel {args.kernel!r}: {err}"
            raise UsageError(msg) from None
        source, input_size = args.kernel, args.input_size
    options = {
        "stride": args.stride[0] if len(args.stride) == 1 else args.stride,
        "dilation": args.dilation[0] if len(args.dilation) == 1 else args.dilation,
        "groups": args.groups,
        "padding": args.padding,
        "transposed": args.transposed,
    }
    # One size stands for every spatial axis (a kernel of the wrong rank is the layout's error).
    shape = (input_size[0],) * max(kernel.ndim - 2, 1) if len(input_size) == 1 else tuple(input_size)
    try:  # the layer's own errors are the command line's: status 2, with the usage
        conv_spec(kernel.shape, shape, args.layout, **options)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    layer = ConvLayer(
        Path(args.kernel).stem if args.kernel else "example", kernel, args.layout, options, shape
    )
    return Model(source, "NumPy .npy" if args.kernel else "built-in", [layer])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
