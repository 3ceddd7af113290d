"""One rank of a multi-process run of the PyTorch adapter, started by ``test_torch.py``.

``python torch_worker.py MODE RANK WORLD_SIZE INIT_FILE OUT_DIR``

- ``ddp``: trains a small CNN wrapped in ``DistributedDataParallel`` (gloo, CPU),
  each rank on its own batches, with an :class:`~convsv.torch.OperatorNormClipper`
  attached every 2 steps; saves the final state dict to ``OUT_DIR/rank{RANK}.pt``.
- ``fsdp``: the model sharded with FSDP2's ``fully_shard``, and ``DTensor`` kernels:
  ``torch_sharded_worker.py`` (for ``test_torch_sharded.py``).
- ``spectral``: the same CNN with :func:`~convsv.torch.spectral_norm` on both convolutions, each
  rank seeded differently before the vectors are made (DDP must make them agree), trained in
  ``DistributedDataParallel``; saves the final state dict.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from convsv.torch import OperatorNormClipper, spectral_norm


def model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    with torch.no_grad():  # well above the bound, so every projection changes the weights
        for layer in (net[0], net[2]):
            layer.weight.mul_(5.0)
    return net


def main(mode: str, rank: int, world: int, init_file: str, out: Path) -> None:
    # A rank that fails leaves the others waiting in a collective: an error after a minute, not a hang.
    wait = datetime.timedelta(seconds=60)
    init = f"file://{init_file}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=wait)
    try:
        net = model()
        if mode == "fsdp":
            from torch_sharded_worker import fsdp

            fsdp(model, rank, out)
            return
        if mode == "spectral":
            torch.manual_seed(rank)  # different starting vectors on each rank
            spectral_norm(net[0], input_shape=8)
            spectral_norm(net[2], input_shape=8)
        ddp = nn.parallel.DistributedDataParallel(net)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
        if mode == "ddp":
            clipper = OperatorNormClipper(ddp, 1.0, every=2, method="extrapolated", iterations=50, tol=1e-5)
            clipper.attach(optimizer)
        generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for _ in range(6):
            x = torch.randn(8, 1, 8, 8, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        torch.save(net.state_dict(), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
