"""Train a small CNN on scikit-learn's 8x8 digits with every convolution's operator norm bounded.

The paper's schedule: after every ``--every`` optimizer steps, each
convolution is projected onto the operator-norm ball of radius
``--max-norm`` by :class:`convsv.torch.OperatorNormClipper`. At the end the
script prints the test accuracy and each layer's norm, recomputed from the
trained weights by :func:`convsv.operator_norm`.

    python examples/torch_digits.py --steps 300 --every 10 --max-norm 1.0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import convsv
from convsv.torch import OperatorNormClipper, conv_layers, layer_options


def data(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits as (n, 1, 8, 8) float tensors in [0, 1] and labels; 75% train, 25% test."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    cut = int(0.75 * len(labels))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


def model() -> nn.Module:
    """Three convolutions: plain, stride 2 (8x8 -> 4x4), depthwise; then a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the options, train, and print the accuracy and the norms."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--every", type=int, default=10, help="project every N steps (default 10)")
    parser.add_argument("--max-norm", type=float, default=1.0, help="operator-norm bound (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = data(args.seed)
    net = model()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    # Input sizes are recorded from the model's forward passes. The tolerance makes
    # each projection land on the bound, not just near it (float32 allows about 1e-5).
    clipper = OperatorNormClipper(
        net, args.max_norm, every=args.every, method="extrapolated", iterations=50, tol=1e-5
    )
    clipper.attach(optimizer)

    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(y_train), (args.batch_size,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.3f}")
    clipper()  # a last projection, so the final weights satisfy the bound whatever --steps is

    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    print(f"test accuracy: {accuracy:.3f}")
    shapes = clipper.recorded
    for name, layer in conv_layers(net):
        options = layer_options(layer, shapes[name])
        norm = convsv.operator_norm(layer.weight.detach().double(), shapes[name], **options)
        print(f"layer {name}: operator norm {float(norm):.6f} (bound {args.max_norm})")


if __name__ == "__main__":
    main()
