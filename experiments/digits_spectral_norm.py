"""Spectral normalisation of a digits classifier: PyTorch's ``spectral_norm`` against convsv's.

A small CNN (three 3x3 convolutions, 1 -> 16 -> 32 (stride 2) -> 32 channels, zero padding, ReLU,
a linear head) is trained on scikit-learn's bundled ``load_digits`` (8x8 grey images, a fixed
stratified 75/25 split) with every convolution normalised by PyTorch's
``torch.nn.utils.parametrizations.spectral_norm`` (the reshaped kernel's norm held at 1) or by
``convsv.torch.spectral_norm`` (the layer's operator norm held at 1); the linear head has
PyTorch's in both arms (exact for a matrix). Each run reports its test error, its time per
training step, and, after training in eval mode, each convolution's true norm, read from the
layer's outputs on one-hot inputs (its dense matrix), never from convsv. The product of the
norms bounds the network's Lipschitz constant (ReLU is 1-Lipschitz; nothing skips a layer).

Run ``python experiments/digits_spectral_norm.py`` (``--quick``: one short seed, seconds). It
prints a markdown table and writes ``spectral-norm.json`` to ``--out`` (default
``digits-spectral-norm``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import convsv
from convsv.torch import spectral_norm

ARMS = {"PyTorch spectral_norm": torch_spectral_norm, "convsv spectral_norm": spectral_norm}
CONVS = [(1, 16, 1), (16, 32, 2), (32, 32, 1)]  # in, out, stride; 3x3, padding 1
MAPS = [(8, 8), (8, 8), (4, 4)]  # each convolution's input map


def model(normalise: Any) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out, stride in CONVS:
        layers += [normalise(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), torch_spectral_norm(nn.Linear(32 * 4 * 4, 10)))


def true_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """The layer's largest singular value, from its outputs on one-hot inputs (bias removed), float64."""
    size = layer.in_channels * int(np.prod(shape))
    basis = torch.eye(size).reshape(size, layer.in_channels, *shape)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros_like(basis[:1]))
    return float(np.linalg.svd(out.reshape(size, -1).double().numpy(), compute_uv=False)[0])


def run(arm: str, seed: int, epochs: int, data: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    net = model(ARMS[arm])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x_train), generator=order).split(32):
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        error = float((net(x_test).argmax(1) != y_test).float().mean())
    convs = [layer for layer in net if isinstance(layer, nn.Conv2d)]
    norms = [true_norm(layer, shape) for layer, shape in zip(convs, MAPS, strict=True)]
    with torch.no_grad():
        reshaped = [float(torch.linalg.matrix_norm(c.weight.flatten(1), 2)) for c in convs]
        certified = [
            float(convsv.operator_norm(c.weight.double(), shape, layout="OIHW", stride=c.stride, padding=1))
            for c, shape in zip(convs, MAPS, strict=True)
        ]
    return {
        "arm": arm,
        "seed": seed,
        "test_error": error,
        "ms_per_step": 1e3 * statistics.median(steps),
        "true_norms": norms,
        "reshaped_norms": reshaped,
        "convsv_norms": certified,
        "conv_norm_product": float(np.prod(norms)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="one seed, two epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("digits-spectral-norm"))
    args = parser.parse_args()
    seeds, epochs = (1, 2) if args.quick else (args.seeds, args.epochs)
    torch.set_num_threads(1)
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None] / 16.0
    split = train_test_split(images, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    x_train, x_test, y_train, y_test = (torch.as_tensor(a) for a in split)
    data = (x_train, y_train.long(), x_test, y_test.long())
    results = []
    for seed in range(seeds):
        for arm in ARMS:
            results.append(run(arm, seed, epochs, data))
            print(f"{arm}, seed {seed}: test error {results[-1]['test_error']:.3f}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spectral-norm.json").write_text(json.dumps({"epochs": epochs, "runs": results}, indent=1))
    print(f"{epochs} epochs, {seeds} seed(s); each convolution's true norm after training (eval mode)\n")
    print("| arm | seed | test error | ms/step | conv1 | conv2 | conv3 | product | reshaped norms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        norms = " | ".join(f"{n:.3f}" for n in r["true_norms"])
        reshaped = ", ".join(f"{n:.3f}" for n in r["reshaped_norms"])
        print(
            f"| {r['arm']} | {r['seed']} | {100 * r['test_error']:.1f}% | {r['ms_per_step']:.2f} | {norms} | "
            f"{r['conv_norm_product']:.3f} | {reshaped} |"
        )


if __name__ == "__main__":
    main()
