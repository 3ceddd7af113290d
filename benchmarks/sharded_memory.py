"""Memory and time per rank of a large layer's norm, spectrum and projection, split over gloo ranks.

A 3x3 convolution's kernel, a ``DTensor`` split over the output channels of
1, 2 or 4 CPU processes (gloo), goes through ``convsv.operator_norm``,
``convsv.singular_values`` and ``convsv.clip_operator_norm``; each rank
builds and decomposes its share of the frequency rows. Every rank reports
the growth of its resident memory's high-water mark during the call (peak
RSS minus the RSS before it, from a fresh process per measurement, after a
small warm-up call) and the call's wall time; the table shows the largest
over the ranks, and each against one rank's. Each rank is pinned to one core
(``rank % cores``): with more ranks than cores the times share cores, the
memory does not. The results are checked against the one-rank run.

    python benchmarks/sharded_memory.py                     # 128 channels, 64 x 64, 1/2/4 ranks
    python benchmarks/sharded_memory.py --channels 64 --grid 32 --ranks 1 2
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("operator_norm", "singular_values", "clip_operator_norm")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rank(rank: int, world: int, task: str, channels: int, grid: int, init: str, out: str) -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % len(os.sched_getaffinity(0))]})
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

    import convsv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    kernel = distribute_tensor(torch.randn(channels, channels, 3, 3) / 10, mesh, [Shard(0)])
    options = {"layout": "OIHW", "padding": "circular"}
    calls = {
        "operator_norm": lambda g: convsv.operator_norm(kernel, g, **options),
        "singular_values": lambda g: convsv.singular_values(kernel, g, **options),
        "clip_operator_norm": lambda g: convsv.clip_operator_norm(
            kernel, g, 1.0, method="alternating", iterations=2, **options
        ),
    }
    calls[task](8)  # warm-up: libraries loaded, pools started
    dist.barrier()
    before = _rss_bytes()
    start = time.perf_counter()
    result = calls[task](grid)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    if isinstance(result, DTensor):
        result = result.full_tensor()
    if rank == 0:
        torch.save({"result": result}, Path(out) / "result.pt")
    torch.save({"bytes": peak - before, "seconds": seconds}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _measure(world: int, task: str, channels: int, grid: int) -> dict[str, object]:
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        init = str(Path(out) / "init")
        mp.spawn(_rank, args=(world, task, channels, grid, init, out), nprocs=world)
        ranks = [torch.load(Path(out) / f"rank{r}.pt") for r in range(world)]
        result = torch.load(Path(out) / "result.pt")["result"]
    return {
        "bytes": max(r["bytes"] for r in ranks),
        "seconds": max(r["seconds"] for r in ranks),
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    args = parser.parse_args(argv)
    import torch

    print(f"3x3 kernel, {args.channels} -> {args.channels} channels, {args.grid}x{args.grid} map, float32")
    print(f"{'call':<20}{'ranks':>6}{'peak MiB/rank':>15}{'vs 1 rank':>11}{'seconds':>9}{'vs 1 rank':>11}")
    for task in args.tasks:
        first = None
        for world in args.ranks:
            row = _measure(world, task, args.channels, args.grid)
            first = first or row
            torch.testing.assert_close(row["result"], first["result"], rtol=1e-4, atol=1e-5)
            mib, seconds = row["bytes"] / 2**20, row["seconds"]
            memory_ratio, time_ratio = row["bytes"] / first["bytes"], seconds / first["seconds"]
            print(f"{task:<20}{world:>6}{mib:>15.1f}{memory_ratio:>11.2f}{seconds:>9.2f}{time_ratio:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
