"""The zero-padded norm of this checkout against another version of convsv, in one process, call by call.

Two checkouts timed one after the other see a machine whose speed drifts; here
both versions are imported side by side (the other one's package copied under
the name ``convsv_baseline``) and their calls alternate, so each ratio is
taken pair by pair. Layers are He-initialised float32 3x3 kernels with
``padding=1``, on PyTorch tensors, one thread.

    git worktree add /tmp/baseline 753e836
    python benchmarks/compare_versions.py /tmp/baseline
    python benchmarks/compare_versions.py /tmp/baseline --layers 64@32,256@8 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import convsv  # noqa: E402


def baseline(checkout: Path) -> object:
    """The other checkout's convsv, as ``convsv_baseline`` (its modules import each other relatively)."""
    source = checkout / "src" / "convsv"
    if not (source / "__init__.py").is_file():
        msg = f"{checkout} has no src/convsv"
        raise SystemExit(msg)
    folder = Path(tempfile.mkdtemp(prefix="convsv-baseline-"))
    shutil.copytree(source, folder / "convsv_baseline")
    sys.path.insert(0, str(folder))
    import convsv_baseline

    return convsv_baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout (or worktree) of the version to compare with")
    parser.add_argument(
        "--layers", default="16@16,64@32,128@16,256@8,512@4", help="CHANNELS@MAP, comma-separated"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed pairs per layer (after one warm-up each)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    old = baseline(args.checkout)
    rng = np.random.default_rng(0)
    print(f"this checkout / {args.checkout}: zero-padded operator_norm, torch float32, padding=1, one thread")
    print("| layer | baseline ms | this ms | ratio median (min, max) |")
    print("|---|---:|---:|---:|")
    for layer in args.layers.split(","):
        channels, size = (int(n) for n in layer.split("@"))
        kernel = torch.from_numpy(
            (rng.standard_normal((3, 3, channels, channels)) * np.sqrt(2 / (9 * channels))).astype(np.float32)
        )
        times: dict[str, list[float]] = {"old": [], "new": []}
        for module in (old, convsv):
            module.operator_norm(kernel, (size, size), padding=1)  # type: ignore[attr-defined]
        for _ in range(args.repeats):
            for name, module in (("old", old), ("new", convsv)):
                start = time.perf_counter()
                module.operator_norm(kernel, (size, size), padding=1)  # type: ignore[attr-defined]
                times[name].append(time.perf_counter() - start)
        ratios = np.asarray(times["new"]) / np.asarray(times["old"])
        old_ms, new_ms = 1e3 * np.median(times["old"]), 1e3 * np.median(times["new"])
        spread = f"{np.median(ratios):.2f} ({ratios.min():.2f}, {ratios.max():.2f})"
        print(f"| {channels}@{size} | {old_ms:.0f} | {new_ms:.0f} | {spread} |")


if __name__ == "__main__":
    main()
