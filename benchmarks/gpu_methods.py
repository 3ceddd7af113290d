"""Time ``operator_norm``'s methods and the spectrum on each GPU backend.

Each against the paper's two-liner on the same device.

Run by ``benchmarks/gpu_check.sh``; prints one line per layer and backend.
"""

from __future__ import annotations

import time

import numpy as np

import convsv

SHAPES = [(3, 64, 32), (3, 256, 8), (3, 512, 14)]


def median_ms(fn, sync, repeats=3):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def backends():
    import torch

    yield (
        "torch-cuda",
        (lambda a: torch.asarray(a, device="cuda")),
        torch.cuda.synchronize,
        (lambda k, n: torch.linalg.svdvals(torch.fft.fft2(k, s=(n, n), dim=(0, 1)))),
    )
    import cupy

    yield (
        "cupy",
        cupy.asarray,
        cupy.cuda.Device().synchronize,
        (lambda k, n: cupy.linalg.svd(cupy.fft.fft2(k, (n, n), axes=(0, 1)), compute_uv=False)),
    )
    import jax
    import jax.numpy as jnp

    gpu = jax.devices("gpu")[0]
    two = jax.jit(
        lambda k, n: jnp.linalg.svd(jnp.fft.fft2(k, (n, n), axes=(0, 1)), compute_uv=False), static_argnums=1
    )
    yield "jax-gpu", (lambda a: jax.device_put(a, gpu)), (lambda: jnp.zeros(()).block_until_ready()), two


def main():
    rng = np.random.default_rng(0)
    for name, to, sync, two_liner in backends():
        for k, c, n in SHAPES:
            host = rng.standard_normal((k, k, c, c)) * np.sqrt(2 / (k * k * c))
            exact = float(convsv.operator_norm(host, n, method="svd"))
            kernel = to(host.astype(np.float32))
            two = median_ms(lambda kernel=kernel, n=n, f=two_liner: f(kernel, n), sync)
            spectrum = median_ms(lambda kernel=kernel, n=n: convsv.singular_values(kernel, n), sync)
            line = f"{name:10s} 3x3x{c}x{c}@{n}: two-liner {two:8.2f} ms | spectrum {spectrum:8.2f}"
            for method in ("auto", "eigh", "gram", "power"):
                value = float(convsv.operator_norm(kernel, n, method=method))
                ms = median_ms(
                    lambda kernel=kernel, n=n, m=method: convsv.operator_norm(kernel, n, method=m), sync
                )
                line += f" | {method} {ms:7.2f} ({two / ms:5.1f}x, {abs(value - exact) / exact:.0e})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
