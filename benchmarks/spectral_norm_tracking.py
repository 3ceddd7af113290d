"""How closely spectral normalisation holds a convolution at norm 1 while a loss pushes its norm up.

One ``Conv2d(8, 8, 3, padding=1)`` on 8x8 maps is trained to maximise the mean square of its
output, the worst case for a normaliser that estimates the norm with a few power steps per pass:
every step pushes the weights to grow along the directions the estimate does not see. Every 100
steps the true norm (from the dense matrix: the layer's outputs on one-hot inputs) is taken of the
weight the training pass used, and of the layer in eval mode, after the optimizer's step.
``convsv.torch.spectral_norm`` targets the layer's norm; PyTorch's ``spectral_norm`` targets the
norm of the reshaped kernel, so it is shown against its own target and against the layer's norm.

Run::

    python benchmarks/spectral_norm_tracking.py           # 400 steps per setting, about a minute
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from convsv.torch import spectral_norm

SETTINGS = [  # (optimizer, learning rate, power steps per pass)
    ("adam", 1e-3, 1),
    ("adam", 1e-2, 1),
    ("sgd", 5e-2, 1),
    ("adam", 1e-2, 4),
]
SHAPE = (8, 8)


def dense_norm(apply: Callable[[torch.Tensor], torch.Tensor], channels: int) -> float:
    """The largest singular value of a linear map of ``(channels, *SHAPE)`` maps, from its dense matrix."""
    size = channels * int(np.prod(SHAPE))
    basis = torch.eye(size).reshape(size, channels, *SHAPE)
    with torch.no_grad():
        out = apply(basis)
    return float(np.linalg.svd(out.reshape(size, -1).double().numpy(), compute_uv=False)[0])


def train(layer: nn.Module, optimizer: str, lr: float, steps: int, every: int) -> list[tuple[float, ...]]:
    """Every ``every`` steps: the true norm in the training pass and in eval mode; the reshaped norm."""
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(layer.parameters(), lr=lr)
    seen = []
    for step in range(1, steps + 1):
        with parametrize.cached():  # the weight this pass used, read once
            loss = -layer(torch.randn(8, 8, *SHAPE)).square().mean()
            used = layer.weight.detach()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            training = dense_norm(lambda x, w=used: nn.functional.conv2d(x, w, None, 1, 1), 8)
            layer.eval()
            with torch.no_grad():
                weight = layer.weight
            evaluated = dense_norm(lambda x, w=weight: nn.functional.conv2d(x, w, None, 1, 1), 8)
            reshaped = float(torch.linalg.matrix_norm(weight.flatten(1), 2))
            layer.train()
            seen.append((training, evaluated, reshaped))
    return seen


def _row(values: object) -> str:
    return " ".join(f"{v:.3f}" for v in values)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("Every 100 steps: the layer's true norm in the training pass and in eval mode (convsv's")
    print("target), and the reshaped kernel's norm (PyTorch's target) and the layer's true norm in eval")
    print("mode under PyTorch's normalisation.\n")
    columns = ["optimizer", "lr", "steps/pass", "convsv: training pass", "convsv: eval"]
    print("| " + " | ".join([*columns, "PyTorch: reshaped", "PyTorch: layer"]) + " |")
    print("|---|---:|---:|---|---|---|---|")
    for optimizer, lr, steps in SETTINGS:
        torch.manual_seed(0)
        ours = spectral_norm(nn.Conv2d(8, 8, 3, padding=1), n_power_iterations=steps)
        ours_norms = train(ours, optimizer, lr, args.steps, 100)
        torch.manual_seed(0)
        plain = nn.Conv2d(8, 8, 3, padding=1)
        theirs = torch_spectral_norm(plain, n_power_iterations=steps)
        theirs_norms = train(theirs, optimizer, lr, args.steps, 100)
        print(
            f"| {optimizer} | {lr:g} | {steps} | {_row(n[0] for n in ours_norms)} | "
            f"{_row(n[1] for n in ours_norms)} | {_row(n[2] for n in theirs_norms)} | "
            f"{_row(n[1] for n in theirs_norms)} |"
        )


if __name__ == "__main__":
    main()
