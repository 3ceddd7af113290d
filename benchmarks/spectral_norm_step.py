"""The training step's time with convsv's spectral normalisation on every convolution, against PyTorch's.

A small CNN (three 3x3 convolutions, 3 -> 32 -> 64 -> 64 channels, zero padding, ReLU, a linear
head), batch 32 of 32x32 inputs, one SGD step: with no normalisation, with PyTorch's
``torch.nn.utils.parametrizations.spectral_norm`` on every convolution, and with
``convsv.torch.spectral_norm`` (one power step per pass, each layer's own map). The three
models' steps alternate, round after round, so every ratio is taken on the same machine state;
the table gives the median time per step and the median of the per-round ratios.

Run::

    python benchmarks/spectral_norm_step.py               # 30 rounds, about a minute
    python benchmarks/spectral_norm_step.py --rounds 5    # a quick look
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from report import step_ratios
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from convsv.torch import spectral_norm


def cnn(normalise: Callable[[nn.Module], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        normalise(nn.Conv2d(3, 32, 3, padding=1)), nn.ReLU(),
        normalise(nn.Conv2d(32, 64, 3, padding=1)), nn.ReLU(),
        normalise(nn.Conv2d(64, 64, 3, padding=1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 32 * 32, 10),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    models = {
        "none": cnn(lambda layer: layer),
        "PyTorch spectral_norm": cnn(torch_spectral_norm),
        "convsv spectral_norm": cnn(spectral_norm),
    }
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    steps = {}
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> float:
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

        for _ in range(3):  # warm-up: the first passes set up convsv's vectors and PyTorch's kernels
            step()
        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds\n")
    print("\n".join(step_ratios(times, "PyTorch spectral_norm", "PyTorch's spectral_norm")))


if __name__ == "__main__":
    main()
