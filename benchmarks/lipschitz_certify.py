"""Time ``convsv.torch.lipschitz_bound`` on whole networks: the certificate, and the lower bound apart.

Networks (``models.py``), each with seeded random batch-norm weights and the running
statistics of random inputs (``models.randomise_batch_norms``), so that folding matters:

- ResNet-18 (torchvision's, random initialisation) on a 1x3x224x224 input;
- the CIFAR ResNet-32 of ``models.resnet32`` (option-A shortcuts: subsample and pad the new
  channels with zeros) on 1x3x32x32;
- the same ResNet-32 with option-B shortcuts (a strided 1x1 convolution and batch norm,
  ``models.cifar_resnet_b``).

Timed, each the median of ``--repeats`` calls (``time.perf_counter``, no warm-up call; fewer
once a measurement's calls took ``--budget`` seconds, at least one):

- the certificate: ``lipschitz_bound(model, x, lower_bound_samples=0)``;
- the lower bound: ``convsv._lipschitz._local_lower(model, x, 4, 30, 0)``, the function
  ``lipschitz_bound`` calls for it, with its default samples, iterations and seed (the
  public call computes the certificate first, so its time would include it).

Also printed, untimed: the graph's node count, the lower bound, and the naive
layer-by-layer bound (every convolution, batch norm and linear layer bounded on its own,
composed along the architecture, nothing folded; ``experiments/network_lipschitz.py``'s
``composed_bound``). A network ``lipschitz_bound`` refuses gets a row with its message.

Run ``python benchmarks/lipschitz_certify.py`` (``--quick``: ResNet-18 at 32x32 and
ResNet-8s, one call each, a smoke run). ``--out FILE`` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import torch

import convsv
from convsv._lipschitz import _local_lower
from convsv.torch import lipschitz_bound

SAMPLES, ITERATIONS = 4, 30  # lipschitz_bound's defaults


def median_time(call: Callable[[], Any], repeats: int, budget: float) -> tuple[float, int, Any]:
    """The median seconds of up to ``repeats`` calls, how many ran, and the last call's result.

    The calls stop once they took ``budget`` seconds together (at least one runs).
    """
    times, result = [], None
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times), result


def naive_bound(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The layer-by-layer bound of ``experiments/network_lipschitz.py`` (convolutions' upper ends only)."""
    lipschitz = models._experiment("network_lipschitz")
    bounds = lipschitz.conv_bounds(model, x, tol=0.5)  # the tolerance of the unused lower ends
    return lipschitz.composed_bound(model, x, lambda conv: bounds[conv][1])


def measure(
    name: str, model: torch.nn.Module, x: torch.Tensor, repeats: int, budget: float
) -> dict[str, Any]:
    """One row: the certificate's and the lower bound's times and values, or why it was refused."""
    print(f"{name} at {'x'.join(map(str, x.shape))}", file=sys.stderr)
    start = time.perf_counter()
    row: dict[str, Any] = {"model": name, "input": list(x.shape), "naive": naive_bound(model, x)}
    row["naive_seconds"] = time.perf_counter() - start
    try:
        seconds, calls, report = median_time(
            lambda: lipschitz_bound(model, x, lower_bound_samples=0), repeats, budget
        )
    except TypeError as error:
        row["refused"] = str(error)
        print(f"  refused: {error}", file=sys.stderr)
        return row
    row |= {"nodes": len(report.nodes), "upper": report.upper}
    row |= {"certificate_seconds": seconds, "certificate_calls": calls}
    seconds, calls, lower = median_time(
        lambda: _local_lower(model, x, SAMPLES, ITERATIONS, 0), repeats, budget
    )
    row |= {"lower": lower, "lower_seconds": seconds, "lower_calls": calls}
    print(f"  certificate {row['certificate_seconds']:.2f} s, lower bound {seconds:.2f} s", file=sys.stderr)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | input | nodes | upper (certificate) | lower | upper / lower | certificate (s) "
        "| lower bound (s) | calls | naive layer-by-layer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = "x".join(map(str, r["input"]))
        if "refused" in r:
            lines.append(
                f"| {r['model']} | {shape} | refused: {r['refused']} | | | | | | | {r['naive']:.4g} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {shape} | {r['nodes']} | {r['upper']:.4g} | {r['lower']:.4g} "
            f"| {r['upper'] / r['lower']:.3g} | {r['certificate_seconds']:.2f} | {r['lower_seconds']:.2f} "
            f"| {r['certificate_calls']}, {r['lower_calls']} | {r['naive']:.4g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 32x32, ResNet-8s, one call each")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 3; quick: 1)")
    parser.add_argument(
        "--budget", type=float, default=60, help="no more calls once a measurement's took this many seconds"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the rows and the settings to this JSON file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    size, depth = (32, 8) if args.quick else (224, 32)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    torch.manual_seed(0)
    networks = [
        ("ResNet-18", models.resnet18(), (3, size, size)),
        (f"CIFAR ResNet-{depth}, option A", models.cifar_resnet(depth), (3, 32, 32)),
        (f"CIFAR ResNet-{depth}, option B", models.cifar_resnet_b(depth), (3, 32, 32)),
    ]
    rows = []
    for seed, (name, model, shape) in enumerate(networks):
        models.randomise_batch_norms(model, shape, seed=seed)
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
        rows.append(measure(name, model, x, repeats, args.budget))
    settings = {
        "repeats": repeats,
        "budget_seconds": args.budget,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "convsv": convsv.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
    }
    print(
        f"torch {settings['torch']}, {settings['torch_threads']} thread(s), median of up to {repeats} calls "
        f"(fewer once they took {args.budget:g} s); "
        f"load average {load[0]:.2f} at start, {settings['load_average_end'][0]:.2f} at end\n"
    )
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
