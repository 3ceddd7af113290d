"""How closely spectral normalisation holds a convolution at norm 1 while a loss pushes its norm up.

One ``Conv2d(8, 8, 3, padding=1)`` on 8x8 maps is trained to maximise the mean square of its
output, the worst case for a normaliser that estimates the norm with a few power steps per pass:
every step pushes the weights to grow along the directions the estimate does not see. Every 100
steps the layer is read in eval mode and its true norm taken from its dense matrix (its outputs
on one-hot inputs, float64). ``convsv.torch.spectral_norm`` targets that norm; PyTorch's
``spectral_norm`` targets the norm of the reshaped kernel, so both are shown against their own
target (and PyTorch's against the layer's norm too).

Run::

    python benchmarks/spectral_norm_tracking.py           # 400 steps per setting, about a minute
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from convsv.torch import spectral_norm

SETTINGS = [  # (optimizer, learning rate, power steps per pass)
    ("adam", 1e-3, 1),
    ("adam", 1e-2, 1),
    ("sgd", 5e-2, 1),
    ("adam", 1e-2, 4),
]
SHAPE = (8, 8)


def layer_norm(layer: nn.Module) -> float:
    """The largest singular value of the layer as it computes in eval mode, from its dense matrix."""
    layer.eval()
    size = layer.in_channels * int(np.prod(SHAPE))
    basis = torch.eye(size).reshape(size, layer.in_channels, *SHAPE)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros_like(basis[:1]))
    layer.train()
    return float(np.linalg.svd(out.reshape(size, -1).double().numpy(), compute_uv=False)[0])


def reshaped_norm(layer: nn.Module) -> float:
    layer.eval()
    with torch.no_grad():
        value = float(torch.linalg.matrix_norm(layer.weight.flatten(1), 2))
    layer.train()
    return value


def train(layer: nn.Module, optimizer: str, lr: float, steps: int, every: int) -> list[tuple[float, float]]:
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(layer.parameters(), lr=lr)
    snapshots = []
    for step in range(1, steps + 1):
        loss = -layer(torch.randn(8, 8, *SHAPE)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            snapshots.append((layer_norm(layer), reshaped_norm(layer)))
    return snapshots


def _row(values: object) -> str:
    return " ".join(f"{v:.3f}" for v in values)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("Every 100 steps, in eval mode: the layer's true norm (convsv's target), the reshaped")
    print("kernel's norm (PyTorch's target) and the layer's true norm under PyTorch's normalisation.\n")
    print("| optimizer | lr | power steps | convsv: layer | PyTorch: reshaped | PyTorch: layer |")
    print("|---|---:|---:|---|---|---|")
    for optimizer, lr, steps in SETTINGS:
        torch.manual_seed(0)
        ours = spectral_norm(nn.Conv2d(8, 8, 3, padding=1), n_power_iterations=steps)
        ours_norms = train(ours, optimizer, lr, args.steps, 100)
        torch.manual_seed(0)
        theirs = nn.utils.parametrizations.spectral_norm(
            nn.Conv2d(8, 8, 3, padding=1), n_power_iterations=steps
        )
        theirs_norms = train(theirs, optimizer, lr, args.steps, 100)
        print(
            f"| {optimizer} | {lr:g} | {steps} | {_row(n for n, _ in ours_norms)} | "
            f"{_row(r for _, r in theirs_norms)} | {_row(n for n, _ in theirs_norms)} |"
        )


if __name__ == "__main__":
    main()
