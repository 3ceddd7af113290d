"""The ``convsv`` command line.

``convsv spectrum [KERNEL.npy] --input-size H W`` prints a summary of a
layer's exact spectrum; with no file it uses a built-in example kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, operator_norm_bounds, singular_values
from ._layout import LAYOUTS

BACKENDS = ("numpy", "torch", "jax")


def example_kernel() -> Any:
    """The built-in example: a 3x3, 16 -> 16 kernel with He-normal weights (seed 0), HWIO."""
    import numpy as np

    rng = np.random.default_rng(0)
    fan_in = 3 * 3 * 16
    return rng.standard_normal((3, 3, 16, 16)) * np.sqrt(2.0 / fan_in)


def summarize(values: Any) -> dict[str, Any]:
    """Summary statistics of a layer's singular values (a NumPy array in, plain numbers out)."""
    import numpy as np

    s = np.sort(np.ravel(values))[::-1]
    largest, smallest = float(s[0]), float(s[-1])
    return {
        "count": int(s.size),
        "operator_norm": largest,
        "smallest": smallest,
        "condition_number": largest / smallest if smallest > 0 else float("inf"),
        "stable_rank": float(np.sum(s**2) / largest**2) if largest > 0 else 0.0,
        "at_least_one": int(np.sum(s >= 1.0)),
    }


def reshaped_norm(kernel: Any, layout: str) -> float:
    """What reshape-based ``spectral_norm`` wrappers compute: the ``(k^d c_in) x c_out`` matrix's norm."""
    import numpy as np

    spatial_first = kernel if LAYOUTS[layout][1] else np.moveaxis(kernel, (0, 1), (-1, -2))
    return float(np.linalg.norm(np.reshape(spatial_first, (-1, spatial_first.shape[-1])), 2))


def _padding(text: str) -> str | int:
    if text in ("circular", "same", "valid"):
        return text
    try:
        return int(text)
    except ValueError:
        msg = f"expected circular, same, valid or an int, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _to_backend(kernel: Any, backend: str) -> Any:
    if backend == "torch":
        import torch

        return torch.asarray(kernel)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(kernel)
    return kernel


def _to_numpy(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "detach"):  # torch
        values = values.detach().cpu()
    return np.asarray(values)


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
        "--backend", choices=BACKENDS, default="numpy", help="array library to compute with"
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
    return parser


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
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is in the [cli] extra
        parser.error("the command line needs NumPy: pip install 'convsv[cli]'")

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
    array = _to_backend(kernel, args.backend)
    try:
        bounds = [
            _to_numpy(b) for b in operator_norm_bounds(array, input_shape, layout=args.layout, **options)
        ]
        dtype = str(bounds[0].dtype)
        try:
            stats = summarize(_to_numpy(singular_values(array, input_shape, layout=args.layout, **options)))
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
    try:
        if args.format == "json":
            json.dump(info, sys.stdout, indent=2)
            print()
        else:
            print(f"convsv {__version__}: {source}")
            _print_table(info, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `convsv spectrum | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
