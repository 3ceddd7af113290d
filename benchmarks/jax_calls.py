"""First and second eager calls of each public function on JAX arrays: compiled as one program, or op by op.

For a concrete JAX array each public function runs its spec-level function
under ``jax.jit`` (``_lib.compiled_for_jax``, cached on the layer's spec and
options): the first call for a layer compiles one program, later calls reuse
it. This script times both calls of each function, side by side with the
same call under ``jax.disable_jit()`` (eager JAX, which compiles every
operation apart for each new shape), on a circular and a zero-padded layer,
and prints the ratios. JAX's caches are cleared between the two routes, so
neither inherits the other's programs.

    python benchmarks/jax_calls.py            # 3x3, 16 -> 16 channels on 16x16
    python benchmarks/jax_calls.py --quick    # 3x3, 4 -> 4 on 8x8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import convsv


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def calls(kernel: Any, size: int) -> dict[str, Callable[[Callable[..., Any]], Any]]:
    """Each public function's call on ``kernel`` (circular and zero-padded), given the function."""
    circular: dict[str, Any] = {}
    zero = {"padding": 1}
    return {
        "singular_values circular": lambda f: f(kernel, size, **circular),
        "singular_values zero (k=4)": lambda f: f(kernel, size, k=4, **zero),
        "operator_norm circular": lambda f: f(kernel, size, **circular),
        "operator_norm zero": lambda f: f(kernel, size, **zero),
        "operator_norm_bounds zero": lambda f: f(kernel, size, **zero),
        "clip_operator_norm circular": lambda f: f(kernel, size, 1.0, **circular),
        "clip_operator_norm zero": lambda f: f(kernel, size, 1.0, **zero),
        "clip_singular_values circular": lambda f: f(kernel, size, 1.0),
    }


def measure(kernel: Any, size: int, compiled: bool) -> dict[str, tuple[float, float]]:
    """``(first call, second call)`` seconds per function."""
    jax.clear_caches()
    times = {}
    for label, call in calls(kernel, size).items():
        run = functools.partial(call, getattr(convsv, label.split()[0]))
        with contextlib.nullcontext() if compiled else jax.disable_jit():
            times[label] = (_timed(run), _timed(run))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small layer (4 channels on 8x8)")
    args = parser.parse_args(argv)
    channels, size = (4, 8) if args.quick else (16, 16)
    rng = np.random.default_rng(0)
    kernel = jax.numpy.asarray(rng.standard_normal((3, 3, channels, channels)) / (3 * channels**0.5))
    platform = jax.devices()[0].platform
    print(f"jax {jax.__version__} on {platform}; 3x3, {channels} -> {channels} channels on {size}x{size}")
    eager = measure(kernel, size, compiled=False)
    compiled = measure(kernel, size, compiled=True)
    print("| call | first: eager, compiled (s) | second: eager, compiled (s) | second: eager / compiled |")
    print("|---|---:|---:|---:|")
    for label, (first, second) in compiled.items():
        e_first, e_second = eager[label]
        ratio = e_second / second
        print(f"| {label} | {e_first:.2f}, {first:.2f} | {e_second:.4f}, {second:.4f} | {ratio:.0f}x |")


if __name__ == "__main__":
    main()
