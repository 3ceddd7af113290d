"""The FSDP2 and ``DTensor`` mode of ``torch_worker.py``: one rank of a gloo run, on the CPU.

``fsdp`` runs every case in one process group (starting the processes is most of the time) and
saves what each gives to ``OUT_DIR/rank{RANK}.pt``; ``test_torch_sharded.py`` compares it with
a single process. The model is ``torch_worker.model()``, sharded with ``fully_shard`` (each
convolution, then the root), trained, where it is, 6 SGD steps on batches that differ by rank.

- ``check_dtensor_kernels`` (checked here): ``DTensor`` kernels of several placements come back
  from the public functions as ``DTensor`` s with the same mesh and placements (projections), or
  as plain tensors (norms), equal to the unsharded results; differentiable under autograd.
  ``check_parametrizing_a_sharded_layer_is_refused``: spectral_norm or parametrize_operator_norm
  after ``fully_shard`` is a ``TypeError`` saying to parametrize first.
  ``check_rows_split_over_ranks``: each rank computes its share of the frequency rows; the
  combined results equal the unsharded ones.
- ``clip``: :func:`~convsv.torch.clip_operator_norm_` once: the gathered weights, the norms.
- ``parametrized``: a layer under :func:`~convsv.torch.parametrize_operator_norm`, sharded and
  trained on the same data on every rank (``parametrized_run``).
- ``train``: an :class:`~convsv.torch.OperatorNormClipper` every 2 steps: the gathered weights
  after each projection.
- ``spectral``: :func:`~convsv.torch.spectral_norm` on both convolutions, applied with each rank
  seeded apart: the gathered state, an eval-mode output and ``norm_bounds()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

import convsv
import convsv._spectrum
from convsv.torch import OperatorNormClipper, clip_operator_norm_, parametrize_operator_norm, spectral_norm

CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}
SHAPES = {"0": 8, "2": 8}
Model = Callable[[], nn.Module]


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


def check_rows_split_over_ranks(world: int) -> None:
    """Outside autograd each rank builds and decomposes only its share of the frequency rows (the
    shares, gathered, cover every row once), and the combined results equal the unsharded ones:
    spectra, norms by every method, every projection method, in chunks and whole."""
    torch.manual_seed(2)
    mesh = init_device_mesh("cpu", (world,))
    seen: list[tuple[int, range]] = []
    share_rows = convsv._spectrum.rows_share

    def spy(count: int) -> range:
        seen.append((count, share_rows(count)))
        return seen[-1][1]

    circular: dict[str, Any] = {"layout": "OIHW", "padding": "circular"}
    clip_methods = [
        {"method": method, "iterations": 30, "tol": 1e-6, "chunk_size": 8}
        for method in ("extrapolated", "alternating", "dykstra")
    ]
    cases: list[Callable[[Any], Any]] = [
        *(lambda k, m=m: convsv.operator_norm(k, 9, method=m, **circular) for m in ("eigh", "svd", "gram")),
        lambda k: convsv.operator_norm_bounds(k, 9, layout="OIHW", padding=1),
        lambda k: convsv.singular_values(k, 9, chunk_size=8, **circular),
        lambda k: convsv.singular_values(k, 8, stride=2, **circular),
        *(lambda k, o=o: convsv.clip_operator_norm(k, 9, 1.0, **o, **circular) for o in clip_methods),
        lambda k: convsv.clip_operator_norm(
            k, 9, 1.0, min_norm=0.5, method="alternating", iterations=5, **circular
        ),
        lambda k: convsv.clip_operator_norm(k, 9, 1.0, layout="OIHW", padding=1, iterations=20, tol=1e-6),
        lambda k: convsv.clip_singular_values(k, 9, 1.0, min_norm=0.3, layout="OIHW"),
    ]
    for dtype in (torch.float64, torch.complex128):
        kernel = torch.randn(6, 4, 3, 3, dtype=dtype)
        sharded = distribute_tensor(kernel, mesh, [Shard(0)])
        for case in cases:
            expected = case(kernel)
            seen.clear()
            with mock.patch("convsv._spectrum.rows_share", spy):
                result = case(sharded)
            result = result.full_tensor() if isinstance(result, DTensor) else result
            torch.testing.assert_close(result, expected, rtol=1e-8, atol=1e-10)
            assert seen, "no frequency rows were computed"
            shares: list[list[tuple[int, range]]] = [[] for _ in range(world)]
            torch.distributed.all_gather_object(shares, seen)
            for calls in zip(*shares, strict=True):  # the same call on every rank
                count = calls[0][0]
                assert [row for _, share in calls for row in share] == list(range(count)), calls


def parametrized_run(sharded: bool) -> dict[str, Any]:
    """A circular convolution under ``parametrize_operator_norm``, two SGD steps on the same data on
    every rank (so FSDP2's averaged gradient is the single process's): the state and an output."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        conv.weight.mul_(5.0)
    net = nn.Sequential(parametrize_operator_norm(conv, 1.0, 8))
    if sharded:
        fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 2 * 2 * 8 * 8).reshape(2, 2, 8, 8)
    for _ in range(2):
        optimizer.zero_grad()
        net(x).square().sum().backward()
        optimizer.step()
    with torch.no_grad():
        output = net(x)
    return {"state": gathered(net), "output": output}


def _batches(rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(6):
        yield torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def clipped(model: Model) -> dict[str, Any]:
    """``clip_operator_norm_`` on the sharded model, once."""
    net = model()
    shard(net)
    assert isinstance(net[0].weight, DTensor)
    report = clip_operator_norm_(net, 1.0, input_shapes=SHAPES, **CLIP)
    assert isinstance(net[0].weight, DTensor)
    assert tuple(net[0].weight.placements) == (Shard(0),)
    assert all(type(r.norm_after) is torch.Tensor for r in report)
    return {
        "weights": gathered(net),
        "norms": [(r.name, float(r.norm_before), float(r.norm_after)) for r in report],
    }


def trained_with_the_clipper(model: Model, rank: int) -> list[dict[str, torch.Tensor]]:
    """The gathered weights after each of the clipper's projections."""
    net = model()
    shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    clipper = OperatorNormClipper(net, 1.0, every=2, **CLIP)
    clipper.attach(optimizer)
    saved = []
    for step, (x, y) in enumerate(_batches(rank)):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        if (step + 1) % 2 == 0:
            saved.append(gathered(net))
    assert clipper.steps == 6
    assert len(clipper.last_report) == 2
    return saved


def spectrally_normalised(model: Model, rank: int) -> dict[str, Any]:
    """Trained under ``spectral_norm``: the gathered state, an eval-mode output, ``norm_bounds()``."""
    net = model()
    torch.manual_seed(rank)  # different starting vectors on each rank, were they drawn from it
    spectral_norm(net[0], input_shape=8)
    spectral_norm(net[2], input_shape=8)
    shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for x, y in _batches(rank):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        output = net(torch.ones(2, 1, 8, 8))
    bounds = [[float(b) for b in net[i].parametrizations.weight[0].norm_bounds()] for i in (0, 2)]
    return {"state": gathered(net), "output": output, "bounds": bounds}


def check_parametrizing_a_sharded_layer_is_refused(model: Model) -> None:
    """FSDP2 would no longer gather a weight parametrized after ``fully_shard``: a clear error."""
    net = model()
    shard(net)
    for parametrize in (
        lambda layer: spectral_norm(layer, input_shape=8),
        lambda layer: parametrize_operator_norm(layer, 1.0, 8),
    ):
        with pytest.raises(TypeError, match="Parametrize the layers first, then shard the model"):
            parametrize(net[0])


def fsdp(model: Model, rank: int, out: Path) -> None:
    """Every case, in one process group; ``model`` is ``torch_worker.model``."""
    check_dtensor_kernels(torch.distributed.get_world_size())
    check_rows_split_over_ranks(torch.distributed.get_world_size())
    check_parametrizing_a_sharded_layer_is_refused(model)
    saved = {
        "clip": clipped(model),
        "parametrized": parametrized_run(sharded=True),
        "train": trained_with_the_clipper(model, rank),
        "spectral": spectrally_normalised(model, rank),
    }
    torch.save(saved, out / f"rank{rank}.pt")
