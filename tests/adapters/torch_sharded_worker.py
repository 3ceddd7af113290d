"""The FSDP2 and ``DTensor`` modes of ``torch_worker.py`` (one rank of a gloo run, on the CPU).

- ``fsdp-clip``: shards :func:`torch_worker.model` with ``fully_shard`` (each convolution, then the
  root), calls :func:`~convsv.torch.clip_operator_norm_` once, and saves the gathered weights and
  the report's norms to ``OUT_DIR/rank{RANK}.pt``. Also checks, here, that ``DTensor`` kernels of
  several placements come back from the public functions as ``DTensor`` s with the same mesh and
  placements (projections) or as plain tensors (norms), equal to the unsharded results.
- ``fsdp-train``: the sharded model trained 6 SGD steps, each rank on its own batches, with an
  :class:`~convsv.torch.OperatorNormClipper` every 2 steps; saves the gathered weights after
  each projection (``OUT_DIR/rank{RANK}.pt``: a list of state dicts).
- ``fsdp-spectral``: :func:`~convsv.torch.spectral_norm` on both convolutions, each rank seeded
  differently before the vectors are made, then sharded and trained; saves the gathered state
  dict and, in eval mode, the output on a fixed input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

import convsv
from convsv.torch import OperatorNormClipper, clip_operator_norm_, spectral_norm

CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}
SHAPES = {"0": 8, "2": 8}


def gathered(net: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on this rank (a collective: every rank calls it)."""
    return {
        key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone()
        for key, value in net.state_dict().items()
    }


def shard(net: nn.Module) -> None:
    fully_shard(net[0])
    fully_shard(net[2])
    fully_shard(net)


def check_dtensor_kernels(world: int) -> None:
    """The public functions on ``DTensor`` kernels: the layout in, the layout out, the plain numbers."""
    torch.manual_seed(1)  # the same kernel on every rank
    kernel = 3 * torch.randn(6, 4, 3, 3, dtype=torch.float64)
    line, grid = init_device_mesh("cpu", (world,)), init_device_mesh("cpu", (world, 1))
    layouts = [
        (line, [Shard(0)]),
        (line, [Shard(1)]),
        (line, [Replicate()]),
        (grid, [Shard(0), Replicate()]),
    ]
    options = {"layout": "OIHW", "stride": 2, "padding": 1}
    expected = convsv.clip_operator_norm(kernel, 8, 1.0, **options, **CLIP)
    norm = convsv.operator_norm(kernel, 8, **options)
    for mesh, placements in layouts:
        sharded = distribute_tensor(kernel, mesh, placements)
        projected = convsv.clip_operator_norm(sharded, 8, 1.0, **options, **CLIP)
        assert isinstance(projected, DTensor), type(projected)
        assert projected.device_mesh == mesh
        assert tuple(projected.placements) == tuple(placements), projected.placements
        torch.testing.assert_close(projected.full_tensor(), expected, rtol=0, atol=1e-12)
        projected, info = convsv.clip_operator_norm(sharded, 8, 1.0, **options, **CLIP, return_info=True)
        assert isinstance(projected, DTensor)
        assert type(info.norm) is torch.Tensor
        for value in (
            convsv.operator_norm(sharded, 8, **options),
            convsv.operator_norm_bounds(sharded, 8, **options)[0],
        ):
            assert type(value) is torch.Tensor, type(value)  # a plain tensor, the same on every rank
            torch.testing.assert_close(value, norm, rtol=1e-9, atol=0)
        values = convsv.singular_values(sharded, 8, layout="OIHW")
        assert type(values) is torch.Tensor
        torch.testing.assert_close(values, convsv.singular_values(kernel, 8, layout="OIHW"))
        full = convsv.clip_singular_values(sharded, 8, 1.0, layout="OIHW")  # the kernel's layout, 8 x 8
        assert isinstance(full, DTensor)
        assert tuple(full.placements) == tuple(placements)
        assert tuple(full.shape) == (6, 4, 8, 8)
        torch.testing.assert_close(
            full.full_tensor(), convsv.clip_singular_values(kernel, 8, 1.0, layout="OIHW")
        )
    # A kernel held as a sum of per-rank terms is projected as the sum, and comes back replicated.
    partial = DTensor.from_local(kernel / world, line, [Partial()])
    projected = convsv.clip_operator_norm(partial, 8, 1.0, **options, **CLIP)
    assert tuple(projected.placements) == (Replicate(),)
    torch.testing.assert_close(projected.full_tensor(), expected, rtol=0, atol=1e-12)
    # Under autograd the projection is differentiable in the sharded kernel.
    leaf = distribute_tensor(kernel, line, [Shard(0)]).requires_grad_(True)
    projected = convsv.clip_operator_norm(leaf, 8, 1.0, layout="OIHW", padding="circular")
    projected.sum().backward()
    assert isinstance(leaf.grad, DTensor)
    reference = kernel.clone().requires_grad_(True)
    convsv.clip_operator_norm(reference, 8, 1.0, layout="OIHW", padding="circular").sum().backward()
    torch.testing.assert_close(leaf.grad.full_tensor(), reference.grad)


def fsdp(mode: str, net: nn.Module, rank: int, out: Path) -> None:
    world = torch.distributed.get_world_size()
    saved: Any
    if mode == "fsdp-clip":
        shard(net)
        assert isinstance(net[0].weight, DTensor)
        report = clip_operator_norm_(net, 1.0, input_shapes=SHAPES, **CLIP)
        assert isinstance(net[0].weight, DTensor)
        assert tuple(net[0].weight.placements) == (Shard(0),)
        assert all(type(r.norm_after) is torch.Tensor for r in report)
        saved = {
            "weights": gathered(net),
            "norms": [(r.name, float(r.norm_before), float(r.norm_after)) for r in report],
        }
        check_dtensor_kernels(world)
    elif mode == "fsdp-train":
        shard(net)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        clipper = OperatorNormClipper(net, 1.0, every=2, **CLIP)
        clipper.attach(optimizer)
        saved = []
        generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for step in range(6):
            x = torch.randn(8, 1, 8, 8, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
            if (step + 1) % 2 == 0:
                saved.append(gathered(net))
        assert clipper.steps == 6
        assert len(clipper.last_report) == 2
    elif mode == "fsdp-spectral":
        torch.manual_seed(rank)  # different starting vectors on each rank
        spectral_norm(net[0], input_shape=8)
        spectral_norm(net[2], input_shape=8)
        shard(net)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(100 + rank)
        for _ in range(6):
            x = torch.randn(8, 1, 8, 8, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            output = net(torch.ones(2, 1, 8, 8))
        bounds = [[float(b) for b in net[i].parametrizations.weight[0].norm_bounds()] for i in (0, 2)]
        saved = {"state": gathered(net), "output": output, "bounds": bounds}
    else:
        msg = f"unknown mode {mode}"
        raise ValueError(msg)
    torch.save(saved, out / f"rank{rank}.pt")
