"""Norm and distance across projection steps for a ResNet-sized layer (run by the docs build)."""

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(0)
channels, size = 32, 8  # a 3x3x32x32 layer on 8x8 feature maps
kernel = rng.standard_normal((3, 3, channels, channels)) * np.sqrt(2 / (9 * channels)) * 2
most = 128


def trajectory(method):
    """Norm excess and relative distance after 1, 2, ... steps."""
    norms, dists, steps = [], [], []
    # Dykstra carries state between steps: restart it for each count. The other
    # two are memoryless: one step at a time from the last result.
    counts = [2**j for j in range(8)] if method == "dykstra" else range(1, most + 1)
    out = kernel
    for count in counts:
        if method == "dykstra":
            out, info = convsv.clip_operator_norm(
                kernel, size, 1.0, method=method, iterations=count, return_info=True
            )
        else:
            out, info = convsv.clip_operator_norm(out, size, 1.0, method=method, return_info=True)
        steps.append(count)
        norms.append(max(float(info.norm) - 1.0, 1e-16))
        dists.append(np.linalg.norm(out - kernel) / np.linalg.norm(kernel))
        if norms[-1] < 1e-12:
            break
    return steps, norms, dists


fig, (ax_norm, ax_dist) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
for method, style in [("alternating", "-"), ("extrapolated", "-s"), ("dykstra", "-^")]:
    steps, norms, dists = trajectory(method)
    ax_norm.loglog(steps, norms, style, ms=3, label=method)
    ax_dist.semilogx(steps, dists, style, ms=3, label=method)
ax_norm.set(xlabel="steps", ylabel="operator norm - 1", title="how far above the bound")
ax_dist.set(xlabel="steps", ylabel="distance to the kernel (relative)", title="how far it moved")
ax_norm.legend()
start = float(convsv.operator_norm(kernel, size))
fig.suptitle(
    f"clip_operator_norm to 1: 3x3x{channels}x{channels} kernel of norm {start:.2f} on {size}x{size} maps"
)
