"""Time to compute every singular value of a convolutional layer, against its channel count.

Reproduces Figure 1 of Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers"
(ICLR 2019): a ``k x k`` kernel with ``c`` input and ``c`` output channels, random standard
normal entries, on an ``n x n`` feature map with wrap-around padding (the paper's left panel is
3x3 on 16x16, its right panel 11x11 on 64x64). For each channel count it times

- the full matrix method: ``np.linalg.svd(convsv.conv_matrix(K, (n, n)), compute_uv=False)``,
  while the matrix side ``c n^2`` is at most ``--dense-limit``;
- the paper's NumPy two-liner:
  ``np.linalg.svd(np.fft.fft2(K, (n, n), axes=(0, 1)), compute_uv=False)``;
- ``convsv.singular_values`` on every installed backend and device (numpy, torch, jax, cupy;
  torch-cuda and jax-gpu where there is a GPU), and ``convsv.operator_norm`` (the norm only).

Every time is the median of up to ``--repeats`` calls after one warm-up call (untimed: it holds
JAX's compilation), fewer once the timed calls have taken ``--budget`` seconds, read with
``time.perf_counter`` after the GPU has finished. Every result is checked against the two-liner
run in float64: a spectrum that differs by more than 1e-4 (float32) or 1e-10 (float64) of the
largest singular value fails the run, after the results are written.

Writes ``DIR/results.json`` (the machine, thread settings, load average, every measurement) and
``DIR/timing.png`` (log-log time against channels, one line per method), and prints a markdown
table with each time's speed-up over the two-liner.

    python experiments/timing.py --quick                      # seconds: a smoke run
    python experiments/timing.py --threads 1                  # the left panel, one core
    python experiments/timing.py --kernel 11 --size 64 --channels 16,32,64,128 --dense-limit 0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Thread pinning and the machine's description, shared with benchmarks/run.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as benchmark_run

#: ``--backends`` names: a library, or a library on a GPU.
BACKENDS = ("numpy", "torch", "torch-cuda", "jax", "jax-gpu", "cupy")
#: Largest allowed difference from the float64 two-liner, relative to the largest singular value.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: ``operator_norm`` is Gram iteration on a GPU, certified to its ``tol`` only (1e-6 in float64).
NORM_TOLERANCE = {"float32": 1e-4, "float64": 1e-5}
QUICK = {"kernel": 3, "size": 8, "channels": [4, 8], "repeats": 1, "budget": 1.0}
FULL = {"kernel": 3, "size": 16, "channels": [16, 32, 64, 128, 256], "repeats": 5, "budget": 10.0}

_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def channel_list(text: str) -> list[int]:
    try:
        channels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not channels or min(channels) < 1:
        msg = f"expected positive channel counts, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return sorted(set(channels))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="timing.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kernel", type=int, help="kernel side k (default 3)")
    parser.add_argument(
        "--size", type=int, help="feature map side n (default 16, the paper's left panel; quick 8)"
    )
    parser.add_argument(
        "--channels",
        type=channel_list,
        help="comma-separated channel counts (default 16,32,64,128,256; quick 4,8)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="kernel dtype (default float32)"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 5; quick 1)")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of timed calls after which a measurement stops (default 10; quick 1)",
    )
    parser.add_argument(
        "--dense-limit",
        type=int,
        default=4096,
        help="largest matrix side c*n*n for the full matrix method, 0 for none (default 4096: ~30 s a call)",
    )
    parser.add_argument(
        "--backends",
        help=f"comma-separated, among {','.join(BACKENDS)} (default: every one installed and present)",
    )
    parser.add_argument(
        "--norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time operator_norm, the norm only (default on)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="pin every method to this many cores and threads (default: the library defaults)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the kernels (default 0)")
    parser.add_argument("--out", type=Path, default=Path("timing"), help="output directory (default timing/)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a run of seconds")
    args = parser.parse_args(argv)

    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("kernel", "size", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.budget < 0 or args.dense_limit < 0:
        parser.error("--budget and --dense-limit must not be negative")
    if args.backends is not None:
        args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
        unknown = [name for name in args.backends if name not in BACKENDS]
        if unknown or not args.backends:
            parser.error(f"unknown backends {unknown}; choose among {','.join(BACKENDS)}")
    return args


class UserError(Exception):
    """A problem with the request, reported as one line, exit status 1."""


@dataclass
class Target:
    """One backend on one device: how to move a NumPy kernel there, wait for it, and read results."""

    name: str
    device: str
    put: Callable[[Any], Any]
    sync: Callable[[Any], Any]
    to_host: Callable[[Any], Any]


def no_sync(_: Any) -> None:
    """Host arrays are ready when the call returns."""


def identity(x: Any) -> Any:
    return x


def numpy_target() -> Target:
    """NumPy on the host: also where the two-liner and the full matrix method run."""
    return Target("numpy", benchmark_run.cpu_model(), identity, no_sync, identity)


def torch_targets(threads: int | None) -> dict[str, Target | str]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    targets: dict[str, Target | str] = {
        "torch": Target("torch", benchmark_run.cpu_model(), torch.from_numpy, no_sync, lambda x: x.numpy())
    }
    if not torch.cuda.is_available():
        targets["torch-cuda"] = "torch sees no CUDA device"
        return targets
    targets["torch-cuda"] = Target(
        "torch-cuda",
        torch.cuda.get_device_name(),
        lambda k: torch.from_numpy(k).cuda(),
        lambda _: torch.cuda.synchronize(),
        lambda x: x.cpu().numpy(),
    )
    return targets


def jax_targets(dtype: str) -> dict[str, Target | str]:
    import jax
    import numpy as np

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    targets: dict[str, Target | str] = {}
    for name, platform_name in (("jax", "cpu"), ("jax-gpu", "gpu")):
        try:
            device = jax.devices(platform_name)[0]
        except RuntimeError:
            targets[name] = f"jax has no {platform_name} device"
            continue
        put = lambda k, device=device: jax.device_put(k, device)  # noqa: E731
        device_name = benchmark_run.cpu_model() if platform_name == "cpu" else device.device_kind
        targets[name] = Target(name, device_name, put, jax.block_until_ready, np.asarray)
    return targets


def cupy_targets() -> dict[str, Target | str]:
    import cupy

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        count = 0
    if not count:
        return {"cupy": "cupy sees no CUDA device"}
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    sync = lambda _: cupy.cuda.get_current_stream().synchronize()  # noqa: E731
    return {"cupy": Target("cupy", name, cupy.asarray, sync, cupy.asnumpy)}


def find_targets(requested: list[str] | None, dtype: str, threads: int | None) -> list[Target]:
    """The requested targets (default: all present); a requested one that is absent is a UserError."""
    wanted = requested or list(BACKENDS)
    found: dict[str, Target | str] = {"numpy": numpy_target()}
    loaders = {
        "torch": lambda: torch_targets(threads),
        "jax": lambda: jax_targets(dtype),
        "cupy": cupy_targets,
    }
    for library, load in loaders.items():
        if not any(name.split("-")[0] == library for name in wanted):
            continue
        if importlib.util.find_spec(library) is None:
            found.update(
                {name: f"{library} is not installed" for name in BACKENDS if name.startswith(library)}
            )
        else:
            found.update(load())
    targets = []
    for name in wanted:
        target = found[name]
        if isinstance(target, Target):
            targets.append(target)
        elif requested:
            msg = f"--backends {name}: {target}"
            raise UserError(msg)
        else:
            log(f"skipping {name}: {target}")
    return targets


def measure(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int, budget: float) -> tuple:
    """``(result, stats)``: one warm-up call, then up to ``repeats`` timed calls within ``budget`` s."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = call()
        sync(result)
        times.append(time.perf_counter() - start)
        if sum(times[1:]) >= budget:
            break
    timed = times[1:]
    stats = {"median_s": statistics.median(timed), "min_s": min(timed), "runs": len(timed)}
    return result, {**stats, "warmup_s": times[0]}


def spectrum_difference(values: Any, reference: Any) -> float:
    """``max |a - b| / max b`` over both spectra flattened and sorted: relative to the norm."""
    import numpy as np

    a, b = np.sort(np.ravel(values)).astype(np.float64), np.sort(np.ravel(reference)).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / np.max(b))


def time_channels(args: argparse.Namespace, targets: list[Target], channels: int, rng: Any) -> list[dict]:
    """Every method on one ``k x k x c x c`` kernel, each checked against the float64 two-liner."""
    import numpy as np

    import convsv

    k, n = args.kernel, args.size
    kernel = rng.standard_normal((k, k, channels, channels))
    reference = np.linalg.svd(np.fft.fft2(kernel, (n, n), axes=(0, 1)), compute_uv=False)
    kernel = kernel.astype(args.dtype)
    rows = []

    def record(method: str, target: Target, call: Callable[[], Any], norm_only: bool = False) -> None:
        log(f"c={channels}: {method} on {target.name}")
        result, stats = measure(call, target.sync, args.repeats, args.budget)
        values = target.to_host(result)
        row = {"channels": channels, "method": method, "backend": target.name, **stats}
        if norm_only:
            row["norm_rel_diff"] = float(abs(float(values) - reference.max()) / reference.max())
            row["ok"] = row["norm_rel_diff"] <= NORM_TOLERANCE[args.dtype]
        else:
            row["spectrum_diff"] = spectrum_difference(values, reference)
            row["ok"] = row["spectrum_diff"] <= TOLERANCE[args.dtype]
        rows.append(row)

    host = numpy_target()
    side = channels * n * n
    if side <= args.dense_limit:
        record(
            "dense SVD",
            host,
            lambda: np.linalg.svd(convsv.conv_matrix(kernel, n, max_entries=None), compute_uv=False),
        )
    else:
        log(f"c={channels}: dense SVD skipped, matrix side {side} > --dense-limit {args.dense_limit}")
        rows.append(
            {
                "channels": channels,
                "method": "dense SVD",
                "backend": "numpy",
                "skipped": f"matrix side {side} > {args.dense_limit}",
            }
        )
    record(
        "two-liner", host, lambda: np.linalg.svd(np.fft.fft2(kernel, (n, n), axes=(0, 1)), compute_uv=False)
    )
    for target in targets:
        on_device = target.put(kernel)
        target.sync(on_device)
        record("convsv.singular_values", target, lambda x=on_device: convsv.singular_values(x, n))
        if args.norm:
            record(
                "convsv.operator_norm", target, lambda x=on_device: convsv.operator_norm(x, n), norm_only=True
            )
    return rows


def label(row: dict) -> str:
    return f"{row['method']} [{row['backend']}]"


def series(rows: list[dict]) -> dict[str, list[dict]]:
    """Measured rows by method and backend, in the order they were run."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(label(row), [])
        if "skipped" not in row:
            grouped[label(row)].append(row)
    return grouped


def markdown_table(rows: list[dict]) -> str:
    """Channels down, methods across: median time and speed-up over the two-liner."""
    two_liner = {row["channels"]: row["median_s"] for row in rows if row["method"] == "two-liner"}
    columns = list(series(rows))
    cells = {(row["channels"], label(row)): row for row in rows}
    lines = ["| channels | " + " | ".join(columns) + " |", "|---:" * (len(columns) + 1) + "|"]
    for channels in sorted(two_liner):
        line = []
        for column in columns:
            row = cells.get((channels, column), {"skipped": ""})
            time_s = row.get("median_s")
            line.append("—" if time_s is None else f"{time_s:.3g} s ({two_liner[channels] / time_s:.2g}x)")
        lines.append(f"| {channels} | " + " | ".join(line) + " |")
    return "\n".join(lines)


def write_plot(rows: list[dict], settings: dict, path: Path) -> None:
    """Log-log time against channels, one line per method and backend, as the paper's Figure 1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    figure = Figure(figsize=(9, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors: dict[str, str] = {}  # one colour per backend of convsv, its norm dashed
    for name, measured in series(rows).items():
        if measured:
            first = measured[0]
            family = first["backend"] if first["method"].startswith("convsv") else first["method"]
            color = colors.setdefault(family, f"C{len(colors)}")
            style = "--" if "operator_norm" in name else "-"
            times = [row["median_s"] for row in measured]
            channels = [row["channels"] for row in measured]
            axes.loglog(channels, times, style, color=color, marker="o", label=name)
    axes.set_xticks(settings["channels"], labels=[str(c) for c in settings["channels"]])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("channels (in = out)")
    axes.set_ylabel("median time (s)")
    k, n, threads = settings["kernel"], settings["size"], settings["threads"] or "default"
    axes.set_title(
        f"All singular values of a {k}x{k} conv on {n}x{n}, {settings['dtype']}, threads: {threads}"
    )
    axes.grid(True, which="major", alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    figure.savefig(path, dpi=110)


def machine(targets: list[Target], args: argparse.Namespace, affinity: list[int]) -> dict:
    """Where this ran: hardware, library versions and thread settings (call last: versions of what loaded)."""
    import convsv

    versions = {
        "python": platform.python_version(),
        "convsv": f"{convsv.__version__} ({benchmark_run.git_commit()})",
    }
    for name in ("numpy", "torch", "jax", "jaxlib", "cupy", "array_api_compat", "matplotlib"):
        if name in sys.modules:
            versions[name] = getattr(sys.modules[name], "__version__", "unknown")
    threads = {
        "requested": args.threads,
        "affinity": affinity,
        "env": {var: os.environ.get(var) for var in benchmark_run.THREAD_VARS},
        "pools": benchmark_run.thread_pools(),
    }
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    return {
        "platform": platform.platform(),
        "cpu_model": benchmark_run.cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(benchmark_run.memory_gib(), 1),
        "devices": {target.name: target.device for target in targets},
        "versions": versions,
        "threads": threads,
    }


def run(args: argparse.Namespace) -> int:
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    if args.threads and not hasattr(os, "sched_setaffinity"):
        msg = "--threads pins cores with os.sched_setaffinity, which this system lacks"
        raise UserError(msg)
    affinity = benchmark_run.set_threads(args.threads) if args.threads else sorted(os.sched_getaffinity(0))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        msg = f"--out {args.out}: {error.strerror}"
        raise UserError(msg) from None
    targets = find_targets(args.backends, args.dtype, args.threads)
    import numpy as np

    rng = np.random.default_rng(args.seed)
    rows = [row for channels in args.channels for row in time_channels(args, targets, channels, rng)]
    settings = {
        name: getattr(args, name)
        for name in (
            "kernel",
            "size",
            "channels",
            "dtype",
            "repeats",
            "budget",
            "dense_limit",
            "norm",
            "threads",
        )
    }
    settings.update(seed=args.seed, quick=args.quick, backends=[target.name for target in targets])
    write_plot(rows, settings, args.out / "timing.png")
    results = {
        "experiment": "Figure 1 of Sedghi, Gupta & Long (ICLR 2019): time for all singular values",
        "command": ["python", "experiments/timing.py", *sys.argv[1:]],
        "settings": settings,
        "reference": "NumPy two-liner in float64; differences are max |a - b| / max b over sorted spectra",
        "machine": machine(targets, args, affinity),
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "total_s": round(time.perf_counter() - _START, 1),
        "measurements": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out / 'results.json'} and {args.out / 'timing.png'}")
    print(markdown_table(rows))
    wrong = [f"{label(row)} at c={row['channels']}" for row in rows if row.get("ok") is False]
    if wrong:
        msg = f"results differ from the two-liner beyond tolerance: {', '.join(wrong)}"
        raise UserError(msg)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
