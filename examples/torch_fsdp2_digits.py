"""Train a small CNN on scikit-learn's digits sharded with FSDP2 over CPU processes, every norm bounded.

Each of ``--ranks`` processes (gloo, on the CPU) holds a shard of every
weight (``torch.distributed.fsdp.fully_shard``) and trains on its own half of
each batch. After every ``--every`` optimizer steps,
:class:`convsv.torch.OperatorNormClipper` projects each convolution onto the
operator-norm ball: every rank gathers the whole kernel, projects it and
keeps its shard of the result. At the end the script gathers the weights,
checks that every rank holds the same ones, and prints the test accuracy and
each layer's norm, recomputed by :func:`convsv.operator_norm`.

    python examples/torch_fsdp2_digits.py --ranks 2 --steps 100 --every 10 --max-norm 1.0

The same code runs on GPUs with the NCCL backend under ``torchrun``.
"""

from __future__ import annotations

import argparse
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import convsv
from convsv.torch import OperatorNormClipper, conv_layers, layer_options


def data(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits as (n, 1, 8, 8) float tensors in [0, 1] and labels; 75% train, 25% test."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    cut = int(0.75 * len(labels))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def model() -> nn.Module:
    """Two convolutions (the second stride 2) and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter gathered on this rank (a collective: every rank calls it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def train(rank: int, args: argparse.Namespace, port: int) -> None:
    """One rank: shard the model, train with the clipper, report on rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(args.seed)  # the same initial weights and batches on every rank
    x_train, y_train, x_test, y_test = data(args.seed)
    net = model()
    for layer in (net[0], net[2], net[5]):
        fully_shard(layer)
    fully_shard(net)  # each weight is now a DTensor holding this rank's shard
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    shapes = {"0": (8, 8), "2": (8, 8)}  # each convolution's input size: given, or recorded by a pass
    clipper = OperatorNormClipper(
        net,
        args.max_norm,
        every=args.every,
        input_shapes=shapes,
        method="extrapolated",
        iterations=50,
        tol=1e-5,
    )
    clipper.attach(optimizer)  # every rank projects after the same steps, as it steps

    for _ in range(args.steps):
        batch = torch.randint(0, len(y_train), (args.batch_size,)).chunk(args.ranks)[rank]  # this rank's part
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
        optimizer.step()
    clipper()  # a last projection, so the final weights satisfy the bound whatever --steps is

    with torch.no_grad():  # every rank runs the forward pass: FSDP2 gathers the weights for it
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    weights = {name: whole(layer.weight).detach() for name, layer in conv_layers(net)}
    everyone: list[dict[str, torch.Tensor]] = [{} for _ in range(args.ranks)]
    dist.all_gather_object(everyone, weights)
    if rank == 0:
        same = all(torch.equal(other[name], w) for other in everyone for name, w in weights.items())
        print(f"test accuracy: {accuracy:.3f}")
        print(f"every rank holds the same weights: {same}")
        for name, layer in conv_layers(net):
            options = layer_options(layer, shapes[name])
            norm = convsv.operator_norm(weights[name].double(), shapes[name], **options)
            print(f"layer {name}: operator norm {float(norm):.6f} (bound {args.max_norm})")
    dist.destroy_process_group()


def free_port() -> int:
    """A TCP port no process listens on, for the ranks to meet at."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    """Parse the options and start one process per rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="processes, each with a shard (default 2)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--every", type=int, default=10, help="project every N steps (default 10)")
    parser.add_argument("--max-norm", type=float, default=1.0, help="operator-norm bound (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=64, help="across all ranks (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.multiprocessing.spawn(train, args=(args, free_port()), nprocs=args.ranks)


if __name__ == "__main__":
    main()
