"""The ``convsv`` command line.

``convsv analyze [MODEL]`` reports the exact spectra of a model's
convolutions (PyTorch, safetensors, Keras, ONNX or ``.npz`` files); with no
file it analyses a small CNN trained on scikit-learn's digits that ships with
the package. ``convsv spectrum [KERNEL.npy] --input-size H W`` summarises one
kernel's spectrum.

Exit status: 0 on success, 1 when a model cannot be read or analysed, 2 for
a malformed command line. On failure only the error is written.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__, operator_norm_bounds, singular_values
from ._analysis import Progress, analyze, reshaped_norm, resolve_sizes, summarize
from ._devices import BACKENDS, converter
from ._layout import LAYOUTS
from ._lib import to_host
from ._models import ModelError, load_model
from ._output import format_csv, format_table, plot_spectra

SPECTRUM_BACKENDS = ("numpy", "torch", "jax")
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
        help="summarise the exact spectrum of one kernel",
        description=(
            "Summarise the exact singular values of a convolution with circular padding. "
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
    spectrum.add_argument(
        "--backend", choices=SPECTRUM_BACKENDS, default="numpy", help="array library to compute with"
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
    spectrum.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _analyze_parser(commands)
    return parser


def _analyze_parser(commands: Any) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="exact spectra of every convolution in a model file",
        description=(
            "Report, layer by layer, the exact singular values of a model's convolutions: the "
            "operator norm (circular padding, exact), certified bounds for zero-padded layers, the "
            "smallest singular value, condition number, stable rank and how many singular values are "
            "at least 1, and the product of the layers' norms. Without MODEL, a small CNN trained on "
            "scikit-learn's digits that ships with convsv, with its plots written to "
            f"{DEFAULT_PLOT}. Exit status 1 when the model cannot be read or analysed."
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
    analyze.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    analyze.add_argument("--plot", metavar="FILE", help="write the paper's Figures 5-7 (PNG, PDF or SVG)")
    analyze.add_argument("--layers", metavar="PATTERN", help="only layers whose name matches this glob")
    analyze.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help="kernel axes for formats without layer information (.npz default HWIO, state dicts and "
        "safetensors OIHW); the spatial rank is taken from each kernel",
    )
    analyze.add_argument(
        "--backend", choices=BACKENDS, help="array library to compute with (default: numpy on the CPU)"
    )
    analyze.add_argument(
        "--device", default="cpu", help="cpu (default), cuda, cuda:N or gpu: computes with torch, cupy or jax"
    )
    analyze.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _analyze(args: argparse.Namespace) -> int:
    """``convsv analyze``: everything is computed before anything is written."""
    input_size = args.input_size
    if input_size is not None and min(input_size) <= 0:
        msg = f"--input-size must be positive, got {input_size}"
        raise ModelError(msg)
    plot = args.plot
    if args.model is None:
        source = resources.files("convsv") / "data" / "digits_cnn.npz"
        with resources.as_file(source) as path:
            model = load_model(path, input_size, args.layout)
        model.source = "convsv's bundled digits CNN (experiments/train_digits_cnn.py)"
        plot = plot or DEFAULT_PLOT
    else:
        model = load_model(args.model, input_size, args.layout)
    if args.layers:
        chosen = [layer for layer in model.layers if fnmatch.fnmatchcase(layer.name, args.layers)]
        if not chosen:
            names = ", ".join(layer.name for layer in model.layers[:8])
            more = ", ..." if len(model.layers) > 8 else ""
            msg = f"--layers {args.layers!r} matches none of the layers ({names}{more})"
            raise ModelError(msg)
        model.layers = chosen
    resolve_sizes(model, input_size)
    backend, to_backend = converter(args.backend, args.device)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    rows, spectra = analyze(model, to_backend, Progress(len(model.layers), show))
    title = f"{Path(model.source).name if args.model else 'bundled digits CNN'}: {len(rows)} conv layers"
    if plot:
        plot_spectra(rows, spectra, plot, title)
    if args.format == "json":
        # One layer per line: valid JSON that stays readable for models with many layers.
        text = "[\n" + ",\n".join(f"  {json.dumps(row, allow_nan=False)}" for row in rows) + "\n]\n"
    elif args.format == "csv":
        text = format_csv(rows)
    else:
        where = f"{backend} on {args.device}"
        header = f"convsv {__version__}: {model.source} ({model.format}, {len(rows)} conv layers, {where})"
        text = format_table(model, rows, header)
    _write(text)
    if plot:
        print(f"wrote {plot}", file=sys.stderr)
    return 0


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `convsv analyze | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_table(info: dict[str, Any], out: Any) -> None:
    layer = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    rows = [
        ("kernel", f"{info['kernel_shape']} ({info['layout']})"),
        ("layer", layer),
        ("feature map", " x ".join(map(str, info["input_shape"]))),
        ("computed in", f"{info['backend']}, {info['dtype']}"),
    ]
    lower, upper = info["norm_bounds"]
    if info["options"]["padding"] == "circular":
        rows.append(("operator norm (exact)", f"{upper:.6g}"))
    else:
        rows.append(("operator norm (Lanczos)", f"{info['operator_norm']:.6g}"))
        rows.append(("certified bounds", f"[{lower:.6g}, {upper:.6g}]"))
    if info.get("count") is not None:
        rows += [
            ("singular values", f"{info['count']}"),
            ("smallest singular value", f"{info['smallest']:.6g}"),
            ("condition number", f"{info['condition_number']:.6g}"),
            ("stable rank", f"{info['stable_rank']:.6g}"),
            ("singular values >= 1", f"{info['at_least_one']}"),
        ]
    rows.append(
        ("reshaped-kernel norm", f"{info['reshaped_norm']:.6g}  (what spectral_norm wrappers compute)")
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        import numpy  # noqa: F401
    except ImportError:  # pragma: no cover - numpy is in the [cli] extra
        parser.error("the command line needs NumPy: pip install 'convsv[cli]'")
    if args.command == "analyze":
        try:
            return _analyze(args)
        except ModelError as err:
            print(f"convsv analyze: error: {err}", file=sys.stderr)
            return 1
    return _spectrum(parser, args)


def _spectrum(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``convsv spectrum``: one kernel's summary."""
    import numpy as np

    if args.kernel is None:
        kernel, source = example_kernel(), "built-in example"
        input_size = args.input_size or [32]
    else:
        if args.input_size is None:
            parser.error("--input-size is required with a kernel file")
        try:
            kernel = np.load(args.kernel, allow_pickle=False)
        except (OSError, ValueError) as err:
            parser.error(f"cannot read kernel {args.kernel!r}: {err}")
        source, input_size = args.kernel, args.input_size
    input_shape: int | list[int] = input_size[0] if len(input_size) == 1 else input_size
    options = {
        "stride": args.stride[0] if len(args.stride) == 1 else args.stride,
        "dilation": args.dilation[0] if len(args.dilation) == 1 else args.dilation,
        "groups": args.groups,
        "padding": args.padding,
        "transposed": args.transposed,
    }
    try:
        array = converter(args.backend, "cpu")[1](kernel)
    except ModelError as err:  # the backend is not installed
        parser.error(str(err))
    try:
        bounds = [to_host(b) for b in operator_norm_bounds(array, input_shape, layout=args.layout, **options)]
        dtype = str(bounds[0].dtype)
        try:
            stats = summarize(to_host(singular_values(array, input_shape, layout=args.layout, **options)))
        except ValueError:
            if args.padding == "circular":
                raise
            # Zero padding on a layer too large for a dense SVD: the norms only.
            stats = {"operator_norm": float(bounds[0])}
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    lower, upper = (float(b) for b in bounds)
    ndim = kernel.ndim - 2
    info = {
        "source": source,
        "kernel_shape": list(kernel.shape),
        "layout": args.layout,
        "options": options,
        "input_shape": list(input_size) * (ndim if len(input_size) == 1 else 1),
        "backend": args.backend,
        "dtype": dtype,
        "norm_bounds": [lower, upper],
        **stats,
        "reshaped_norm": reshaped_norm(kernel, args.layout),
    }
    if args.format == "json":
        _write(json.dumps(info, indent=2) + "\n")
    else:
        table = io.StringIO()
        _print_table(info, table)
        _write(f"convsv {__version__}: {source}\n{table.getvalue()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
