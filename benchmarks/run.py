"""Benchmark convsv against the paper's two-liner, dense SVD and PyTorch's reshape spectral norm.

Every comparison is measured side by side in one run, with the same thread
settings, and written to ``DIR/results.json``, ``DIR/results.md`` and
``DIR/results.png``. See ``benchmarks/README.md``.

    python benchmarks/run.py --quick --out /tmp/bq
    python benchmarks/run.py --suites layers,sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SUITES = ("layers", "sweep", "zeropad", "resnet32", "resnet50")
#: Thread-count variables of the OpenMP, OpenBLAS, MKL, Accelerate and numexpr pools.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small shapes, few repeats: a smoke run under a minute"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="output directory"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per measurement (default 5; quick 1)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed calls after which a measurement stops repeating (default 20; quick 2)",
    )
    parser.add_argument(
        "--suites", default=",".join(SUITES), help=f"comma-separated, among {','.join(SUITES)}"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the torch runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU cores (affinity) and threads of every pool, for all methods alike (default 1)",
    )
    parser.add_argument(
        "--resnet50-timeout",
        type=float,
        default=3600.0,
        help="seconds before the resnet50 subprocess is stopped",
    )
    args = parser.parse_args(argv)
    args.suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose among {','.join(SUITES)}")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.budget = args.budget if args.budget is not None else (2.0 if args.quick else 20.0)
    return args


def set_threads(threads: int) -> list[int]:
    """Restrict this process (and its children) to ``threads`` cores and every thread pool to ``threads``.

    Must run before NumPy and PyTorch are imported. The affinity also bounds
    convsv's own worker pool, which sizes itself by the cores it may use, so the
    two-liner and convsv run on the same cores.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    return sorted(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when the working tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(device: str) -> dict:
    import array_api_compat
    import numpy as np
    import torch

    import convsv

    versions = {
        "python": platform.python_version(),
        "convsv": f"{convsv.__version__} ({git_commit()})",
        "numpy": np.__version__,
        "torch": torch.__version__,
        "array_api_compat": array_api_compat.__version__,
    }
    try:
        import matplotlib

        versions["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib(),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
        "versions": versions,
    }


def thread_pools() -> list[dict]:
    """The BLAS/OpenMP pools loaded and their thread counts, where threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keys = ("user_api", "internal_api", "num_threads", "version", "filepath")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    affinity = set_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import resnet50

    measured = {}
    if "resnet50" in args.suites:
        # First, while this process is small: its resident size at spawn counts in the child's ru_maxrss.
        measured["resnet50"] = resnet50.run_suite(args.device, args.quick, args.resnet50_timeout)

    import report
    import suites
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    info: dict = {
        "machine": {**machine_info(args.device), "loadavg_start": loadavg_start},
        "settings": {
            "quick": args.quick,
            "repeats": args.repeats,
            "budget_s": args.budget,
            "device": args.device,
            "threads": args.threads,
            "affinity": affinity,
            "thread_env": {var: os.environ.get(var) for var in THREAD_VARS},
            "torch_threads": torch.get_num_threads(),
            "thread_pools": thread_pools(),
        },
        "supported": suites.supported_options(),
        "suites": {},
    }
    timer = suites.Timer(args.repeats, args.budget, args.device)
    run = {
        "layers": suites.layers,
        "sweep": suites.sweep,
        "zeropad": suites.zero_padding,
        "resnet32": suites.resnet32_suite,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.suites:
        if name not in measured:
            suites.log(f"suite {name}")
            measured[name] = run[name](timer, args.device, args.quick)
        info["suites"][name] = measured[name]
        # Written after every suite, so a long run that is stopped keeps what it measured.
        (args.out / "results.json").write_text(json.dumps(info, indent=1) + "\n")
    info["total_s"] = time.perf_counter() - start
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "results.json").write_text(json.dumps(info, indent=1) + "\n")
    report.write_markdown(info, args.out / "results.md")
    report.write_plot(info, args.out / "results.png")
    suites.log(f"wrote {args.out}/results.json, results.md, results.png")


if __name__ == "__main__":
    main()
