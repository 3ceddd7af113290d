"""Sections 4.2-4.4 of Sedghi, Gupta & Long (ICLR 2019): clipping a ResNet-32's convolutions on CIFAR-10.

The paper trains He et al.'s 32-layer CIFAR ResNet and, every 100 steps, projects every
convolution onto an operator-norm ball by clipping the layer's exact singular values. With
batch norm this improved the test error from 6.2% to 5.3% (Section 4.2); without batch norm
the regulariser helped too (Section 4.3); clipping instead the singular values of the kernel
reshaped into a matrix did as well only at its best bound, 0.2 (Section 4.4). This script
trains the same network for each setting (``--settings``), with and without batch norm
(``--batch-norm``), and records the test error after every epoch, the final operator norms
and the time the projections took. The network, the settings and the training loop are in
``clipping.py`` beside this file.

The data is CIFAR-10's python version, read from a local directory: nothing is downloaded.
Get https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it
(``tar xzf cifar-10-python.tar.gz`` gives ``cifar-10-batches-py/``).

Run::

    python experiments/cifar10_clipping.py --data cifar-10-batches-py --device cuda   # full: hours on a GPU
    python experiments/cifar10_clipping.py --data cifar-10-batches-py --quick         # smoke run: seconds

Writes ``results.json`` (rewritten after each run, so an interrupted run keeps what it has) and
``cifar10-clipping.png`` (test error against epoch, as the paper's Figure 2) in ``--out``, and
prints a markdown table of the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from clipping import cifar_resnet, parse_settings, positive_int, settings_type, train_run
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import convsv

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
GET_CIFAR10 = (
    f"download the CIFAR-10 python version from {CIFAR10_URL} and extract it "
    "(tar xzf cifar-10-python.tar.gz gives cifar-10-batches-py/)"
)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CHANNELS, SIZE, CLASSES = 3, 32, 10
CROP_PADDING = 4  # He et al.'s augmentation: pad by 4 pixels, crop 32x32 at random, flip half

DEFAULT_SETTINGS = "baseline,convsv:0.5,convsv:1.0,convsv:1.5,convsv:2.0,reshaped:0.2"
QUICK = {
    "depth": 8,
    "width": 4,
    "train_limit": 128,
    "test_limit": 100,
    "epochs": 1,
    "batch_size": 16,
    "every": 4,
}
QUICK_SETTINGS = "baseline,convsv:1.0"


class ExperimentError(Exception):
    """A user error: shown as one ``error:`` line, exit status 1."""


# --- the data -----------------------------------------------------------------------------------------


# The only globals a CIFAR-10 batch file refers to: what rebuilds a NumPy array.
_ARRAY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1.x pickles, as the real files are
        ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 bytes
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and NumPy arrays only, so a batch file cannot run other code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            msg = f"refusing to load {module}.{name}"
            raise pickle.UnpicklingError(msg)
        return super().find_class(module, name)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} of shape {value.shape}"
    return type(value).__name__


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        with path.open("rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        msg = f"{path}: not a CIFAR-10 python batch file ({err or type(err).__name__})"
        raise ExperimentError(msg) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        msg = f"{path}: not a CIFAR-10 python batch file (expected a dict with b'data' and b'labels')"
        raise ExperimentError(msg)
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (CHANNELS * SIZE**2,):
        msg = f"{path}: b'data' should be uint8 of shape (N, {CHANNELS * SIZE**2}), is {_describe(data)}"
        raise ExperimentError(msg)
    if labels.shape != (len(data),) or (labels.size and labels.dtype.kind not in "iu"):
        msg = f"{path}: b'labels' should be {len(data)} integers, one per image, is {_describe(labels)}"
        raise ExperimentError(msg)
    if labels.size and not (labels.min() >= 0 and labels.max() < CLASSES):
        msg = f"{path}: labels should be 0 to {CLASSES - 1}, found {labels.min()} to {labels.max()}"
        raise ExperimentError(msg)
    # Each row holds the image's red plane, then green, then blue, each 32 rows of 32 pixels.
    return data.reshape(-1, CHANNELS, SIZE, SIZE), labels.astype(np.int64)


def find_data(path: Path) -> Path:
    """The directory holding the batch files: ``path`` itself or its ``cifar-10-batches-py``."""
    if path.is_file():
        msg = f"--data {path}: is a file, not a directory; {GET_CIFAR10}"
        raise ExperimentError(msg)
    if not path.is_dir():
        msg = f"--data {path}: no such directory; {GET_CIFAR10}"
        raise ExperimentError(msg)
    if not (path / TEST_FILE).exists() and (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (path / name).is_file()]
    if missing:
        msg = (
            f"--data {path}: missing {', '.join(missing)} (CIFAR-10's python version has data_batch_1 "
            f"to data_batch_5 and test_batch); {GET_CIFAR10}"
        )
        raise ExperimentError(msg)
    return path


def load_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training images and labels (the five data batches in order), then the test batch's."""
    directory = find_data(path)
    train = [read_batch(directory / name) for name in TRAIN_FILES]
    x_test, y_test = read_batch(directory / TEST_FILE)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random 32x32 crop of each image zero-padded by 4 pixels, mirrored left-right half the time."""
    count = len(images)
    padded = torch.nn.functional.pad(images, (CROP_PADDING,) * 4)
    top, left = torch.randint(0, 2 * CROP_PADDING + 1, (2, count, 1), generator=generator)
    rows = top + torch.arange(SIZE)
    cols = left + torch.arange(SIZE)
    flip = torch.rand(count, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # reading the columns backwards mirrors
    device = images.device
    return padded[
        torch.arange(count, device=device)[:, None, None, None],
        torch.arange(CHANNELS, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        cols.to(device)[:, None, None, :],
    ]


class Normalise:
    """uint8 images to float32, less the training set's per-channel mean, over its standard deviation."""

    def __init__(self, train_images: np.ndarray, device: torch.device) -> None:
        # From each channel's histogram of the 256 values: exact, and no float copy of the data set.
        values = np.arange(256) / 255
        mean, std = [], []
        for channel in range(CHANNELS):
            counts = np.bincount(train_images[:, channel].ravel(), minlength=256)
            mean.append(counts @ values / counts.sum())
            std.append(math.sqrt(counts @ (values - mean[-1]) ** 2 / counts.sum()))
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std


class TrainBatches:
    """``train_batches`` for ``clipping.train_run``: each epoch a new shuffle, crops and flips."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, normalise: Normalise, batch_size: int, seed: int
    ) -> None:
        self.images, self.labels, self.normalise = images, labels, normalise
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Seeded by epoch: every setting sees the same batches in the same order.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.images), generator=generator).to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.normalise(augment(self.images[index], generator)), self.labels[index]


def lr_schedule(kind: str, lr: float, epochs: int) -> Callable[[int], float]:
    """The learning rate of each (0-based) epoch."""
    if kind == "step":  # He et al.: divided by 10 at 50% and at 75% of training
        return lambda epoch: lr * 0.1 ** ((epoch >= 0.5 * epochs) + (epoch >= 0.75 * epochs))
    return lambda epoch: lr * 0.95**epoch  # the paper's Section 4.3: times 0.95 each epoch


# --- the command line ---------------------------------------------------------------------------------


def device_name(text: str) -> str:
    """argparse type for --device: cpu, cuda or cuda:N (whether it is there is checked later)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        msg = f"{text!r} is not a device: use cpu, cuda or cuda:N"
        raise argparse.ArgumentTypeError(msg)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sections 4.2-4.4 of Sedghi et al. (ICLR 2019): train He et al.'s CIFAR ResNet-32 on "
        "CIFAR-10 with and without batch norm, projecting every convolution onto an operator-norm ball "
        "(convsv:BOUND) or clipping its reshaped kernel (reshaped:BOUND) every --every steps.",
        epilog=f"Data: nothing is downloaded; {GET_CIFAR10}. "
        "Outputs: OUT/results.json (config, machine, every run's per-epoch history, final norms and "
        "timings; rewritten after each run) and OUT/cifar10-clipping.png (test error against epoch, "
        "one panel per batch-norm choice, like the paper's Figure 2).",
    )
    parser.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="the extracted cifar-10-batches-py directory"
    )
    parser.add_argument(
        "--settings",
        type=settings_type,
        help="comma-separated baseline, convsv:BOUND (exact operator-norm projection), reshaped:BOUND "
        f"(clip the c_out x c_in*k*k matrix) (default {DEFAULT_SETTINGS}; {QUICK_SETTINGS} with --quick)",
    )
    parser.add_argument(
        "--batch-norm",
        choices=("on", "off", "both"),
        default="both",
        help="train with batch norm, without it (Section 4.3), or both (default)",
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        help="the ResNet's depth, 6n + 2 (default 32, the paper's; 8 with --quick)",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        help="channels of the first stage, doubled in each of the next two (default 16, He et al.'s; "
        "4 with --quick)",
    )
    parser.add_argument(
        "--every",
        type=positive_int,
        help="project after every N-th optimizer step (default 100, as the paper)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, help="epochs per run (default 250, as the paper's Section 4.2)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="minibatch size (default 128)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    parser.add_argument(
        "--lr-schedule",
        choices=("step", "exponential"),
        default="step",
        help="step (default): He et al.'s, divided by 10 at 50%% and 75%% of the epochs; exponential: the "
        "paper's Section 4.3, multiplied by 0.95 after every epoch",
    )
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument(
        "--weight-decay", type=float, default=1e-4, help="SGD weight decay (default 1e-4, He et al.'s)"
    )
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation and the batches (default 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("cifar10-clipping"),
        help="output directory (default cifar10-clipping/)",
    )
    parser.add_argument(
        "--train-limit", type=positive_int, metavar="N", help="train on the first N training images only"
    )
    parser.add_argument(
        "--test-limit", type=positive_int, metavar="N", help="test on the first N test images only"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, seconds on a CPU: a ResNet-8 of width 4, "
        f"128 training and 100 test images, 1 epoch, batches of 16, projection every 4 steps, "
        f"{QUICK_SETTINGS} (options given explicitly still apply)",
    )
    args = parser.parse_args(argv)
    defaults = {
        "depth": 32,
        "width": 16,
        "epochs": 250,
        "batch_size": 128,
        "every": 100,
        **(QUICK if args.quick else {}),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.settings is None:
        args.settings = parse_settings(QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS)
    if (args.depth - 2) % 6 or args.depth < 8:
        parser.error(f"--depth {args.depth}: must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr {args.lr}: must be a positive number")
    for name in ("momentum", "weight_decay"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be a number >= 0")
    return args


def torch_device(text: str) -> torch.device:
    """The device, or ExperimentError if this machine does not have it."""
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            msg = f"--device {text}: this PyTorch ({torch.__version__}) sees no CUDA device; use --device cpu"
            raise ExperimentError(msg)
        if device.index is not None and device.index >= torch.cuda.device_count():
            msg = f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            raise ExperimentError(msg)
    return device


# --- the experiment -----------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    """What the timings were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "convsv": convsv.__version__,
    }


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: the numbers the paper compares."""
    return [
        {
            "setting": run["setting"],
            "batch_norm": run["batch_norm"],
            "test_error": run["test_error"],
            "diverged": run["diverged"],
            "max_operator_norm": run["max_operator_norm"],
            "max_reshaped_norm": run["max_reshaped_norm"],
            "projection_fraction": run["projection_seconds"] / run["train_seconds"],
        }
        for run in runs
    ]


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | batch norm | final test error | max operator norm | max reshaped norm | projecting |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        error = _number(100 * row["test_error"], ".2f") + "%" + (" (diverged)" if row["diverged"] else "")
        lines.append(
            f"| {row['setting']} | {'on' if row['batch_norm'] else 'off'} | {error} | "
            f"{_number(row['max_operator_norm'], '.3f')} | {_number(row['max_reshaped_norm'], '.3f')} | "
            f"{100 * row['projection_fraction']:.1f}% |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test error against epoch, one line per setting, one panel per batch-norm choice."""
    panels = sorted({run["batch_norm"] for run in runs}, reverse=True)
    figure = Figure(figsize=(6 * len(panels), 4.5), layout="constrained")
    figure.suptitle(title)
    for axes, batch_norm in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for run in runs:
            if run["batch_norm"] == batch_norm:
                epochs = [entry["epoch"] for entry in run["history"]]
                errors = [100 * entry["test_error"] for entry in run["history"]]
                style = {"color": "gray"} if run["method"] == "baseline" else {}
                axes.plot(
                    epochs, errors, marker="." if len(epochs) < 20 else None, label=run["setting"], **style
                )
        axes.set_title(f"batch norm {'on' if batch_norm else 'off'}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("test error (%)")
        axes.grid(alpha=0.3)
        axes.legend()
    FigureCanvasAgg(figure).print_png(str(path))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (batch norm, setting) pair; write results.json after each and the plot at the end."""
    device = torch_device(args.device)  # before loading anything: a missing GPU fails at once
    x_train, y_train, x_test, y_test = load_cifar10(args.data)
    x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    if not (len(x_train) and len(x_test)):
        msg = f"--data {args.data}: holds {len(x_train)} training and {len(x_test)} test images"
        raise ExperimentError(msg)
    normalise = Normalise(x_train, device)
    batches = TrainBatches(
        torch.from_numpy(x_train).to(device),
        torch.from_numpy(y_train).to(device),
        normalise,
        args.batch_size,
        args.seed,
    )
    test_data = (normalise(torch.from_numpy(x_test).to(device)), torch.from_numpy(y_test).to(device))
    lr_at = lr_schedule(args.lr_schedule, args.lr, args.epochs)
    batch_norms = {"on": [True], "off": [False], "both": [True, False]}[args.batch_norm]
    config = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key != "settings"
    } | {"settings": [setting.label for setting in args.settings]}
    result: dict[str, Any] = {
        "experiment": f"Sedghi, Gupta & Long (ICLR 2019), Sections 4.2-4.4: ResNet-{args.depth} on CIFAR-10",
        "config": config,
        "data": {"train_images": len(x_train), "test_images": len(x_test)},
        "machine": machine(device),
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    runs = len(batch_norms) * len(args.settings)
    print(
        f"{len(x_train)} training and {len(x_test)} test images; {runs} runs of {args.epochs} epoch(s) "
        f"of a ResNet-{args.depth} of width {args.width} on {device}",
        file=sys.stderr,
    )
    for batch_norm in batch_norms:
        for setting in args.settings:
            torch.manual_seed(args.seed)  # the same initial weights for every setting
            model = cifar_resnet(args.depth, batch_norm=batch_norm, width=args.width)
            start = time.perf_counter()
            tag = f"[batch norm {'on' if batch_norm else 'off'}]"

            def log(line: str, tag: str = tag, start: float = start) -> None:
                print(f"{tag} {line} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

            record = train_run(
                model,
                batches,
                test_data,
                setting,
                epochs=args.epochs,
                lr_at=lr_at,
                momentum=args.momentum,
                weight_decay=args.weight_decay,
                every=args.every,
                device=device,
                log=log,
            )
            result["runs"].append({"batch_norm": batch_norm, **record})
            result["summary"] = summary_rows(result["runs"])
            write_json(result, args.out / "results.json")
    title = f"ResNet-{args.depth} (width {args.width}) on CIFAR-10, {len(x_train)} training images"
    plot(result["runs"], args.out / "cifar10-clipping.png", title)
    return result


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write through a temporary file: an interrupted write leaves the previous results whole."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ExperimentError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown_table(result["summary"]))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'cifar10-clipping.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
