"""Whole networks' Lipschitz constants: convsv's certificate, the layer-by-layer product, lower bounds.

Two networks:

- a small ResNet trained on scikit-learn's bundled ``load_digits`` (8x8 grey images, a fixed
  stratified 75/25 split): a 3x3 stem convolution to 16 channels with batch norm and ReLU,
  three basic blocks (16 channels; 32 with stride 2 and a 1x1 convolution + batch norm
  shortcut; 32), global average pooling and a linear head (:func:`digits_resnet`);
- a torchvision-style ResNet-18 (``imagenet_resnet.py``), randomly initialised, its batch
  norms given random affine weights and the running statistics of random inputs
  (:func:`imagenet_resnet.randomise_batch_norms`), on a 1x3x224x224 input.

For each, in eval mode, l2 norms:

- ``certificate``: ``convsv.torch.lipschitz_bound(model, x).upper`` (batch norm folded into
  the convolution beside it, one norm for both);
- ``naive``: the layer-by-layer bound: every convolution bounded on its own by the upper
  end of ``convsv.operator_norm_bounds`` (its exact norm, or its circular twin's for zero
  padding), every batch norm by ``max |gamma / sqrt(var + eps)|``, every linear layer by its
  matrix norm, composed by hand along the architecture (:func:`composed_bound`): a chain
  multiplies, a residual block adds its shortcut's bound to its branch's, nothing is folded;
- ``reshaped``: the same composition with each convolution's kernel reshaped to a
  ``(out, in * k * k)`` matrix and its largest singular value taken instead, what
  ``torch.nn.utils.spectral_norm``-style estimates use: not a bound on anything;
- lower bounds, each a value the network attains: ``lipschitz_bound``'s own (power
  iteration on the Jacobian at 16 inputs), this script's ratio ``||f(x) - f(y)|| / ||x - y||``
  maximised by gradient ascent over pairs ``(x, y)`` (:func:`pair_ascent`), and for the
  digits network the exact Jacobian norm at every test image (:func:`jacobian_norms`).

Gradient ascent on ``||J(x) v||`` over ``x`` itself would not move: in a network of ReLUs,
max pools and affine layers ``J(x)`` is constant between activation boundaries, so its
gradient in ``x`` is zero almost everywhere. The pair ratio changes with both points.

Run ``python experiments/network_lipschitz.py --out experiments/results`` (``--quick``: two
epochs, a ResNet-10 at 32x32, few samples; seconds). It prints two markdown tables and writes
``network_lipschitz.json`` and ``network_lipschitz.md`` to ``--out`` (default
``network-lipschitz``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clipping
import imagenet_resnet
import numpy as np
import torch
from torch import nn

import convsv
from convsv.torch import lipschitz_bound

ConvNorm = Callable[[nn.Conv2d], float]


# --- the networks --------------------------------------------------------------------------------------


def digits_resnet() -> nn.Sequential:
    """The digits network: stem, three basic blocks (one downsampling), average pool, linear head."""
    block = imagenet_resnet.BasicBlock
    shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        block(16, 16, 1, None),
        block(16, 32, 2, shortcut),
        block(32, 32, 1, None),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def digits_data() -> tuple[torch.Tensor, ...]:
    """``x_train, y_train, x_test, y_test``: the bundled digits scaled to [0, 1], a fixed stratified split."""
    from sklearn.datasets import load_digits  # here: the benchmarks import this module without scikit-learn
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None] / 16.0
    split = train_test_split(images, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    x_train, x_test, y_train, y_test = (torch.as_tensor(a) for a in split)
    return x_train, y_train.long(), x_test, y_test.long()


def train(model: nn.Module, data: tuple[torch.Tensor, ...], epochs: int, seed: int) -> float:
    """Adam (lr 3e-3, batches of 32) for ``epochs``; returns the test accuracy in eval mode."""
    x_train, y_train, x_test, y_test = data
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=order).split(32):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


# --- the layer-by-layer bounds ----------------------------------------------------------------------------


def conv_bounds(
    model: nn.Module, example: torch.Tensor, tol: float = 1e-2
) -> dict[nn.Conv2d, tuple[float, float]]:
    """``convsv.operator_norm_bounds`` of every convolution on its input's shape: ``(attained, upper)``.

    The upper end is the layer's exact norm (circular padding) or its circular twin's on the
    padded map (zero padding), a certified bound; the lower end is a norm the layer attains
    on a unit vector, iterated to ``tol`` (a looser ``tol`` only lowers it; on the CPU the
    upper end does not depend on it).
    """
    shapes = input_shapes(model, example)
    bounds = {}
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        padding = "circular" if conv.padding_mode == "circular" else tuple(conv.padding)
        lower, upper = convsv.operator_norm_bounds(
            conv.weight.detach().double(),
            shapes[conv],
            layout="OIHW",
            stride=tuple(conv.stride),
            dilation=tuple(conv.dilation),
            groups=conv.groups,
            padding=padding,
            tol=tol,
        )
        bounds[conv] = (float(lower), float(upper))
    return bounds


def reshaped_norm(conv: nn.Conv2d) -> float:
    """The largest singular value of the kernel reshaped to ``(out, in * k * k)``, from its Gram matrix."""
    matrix = conv.weight.detach().double().flatten(1)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(torch.linalg.eigvalsh(gram)[-1].sqrt())


def bn_scale(bn: nn.BatchNorm2d) -> float:
    """``max |gamma / sqrt(running_var + eps)|``: eval batch norm's norm as a layer on its own."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return float(scale.abs().max())


def max_pool_constant(pool: nn.MaxPool2d, shape: tuple[int, ...]) -> float:
    """``sqrt`` of the most windows one pixel is in (a window's max moves at most as its largest entry)."""
    worst = 1
    for axis, n in enumerate(shape):
        k, s, p = (
            v if isinstance(v, int) else v[axis] for v in (pool.kernel_size, pool.stride, pool.padding)
        )
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            msg = "dilated or ceil-mode max pooling is not modelled here"
            raise TypeError(msg)
        outputs = (n + 2 * p - k) // s + 1
        worst *= max(sum(o * s - p <= i < o * s - p + k for o in range(outputs)) for i in range(n))
    return math.sqrt(worst)


def input_shapes(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """The spatial shape of each module's input on ``example`` (its last call's, for a reused module)."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: shapes.__setitem__(m, tuple(args[0].shape[2:])))
        for m in model.modules()
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def composed_bound(model: nn.Module, example: torch.Tensor, conv_norm: ConvNorm) -> float:
    """The layer-by-layer bound of ``model``, convolution ``c`` bounded by ``conv_norm(c)``, nothing folded.

    Written out for the layers of these ResNets: a chain multiplies its layers' bounds, a basic
    block ``relu(branch(x) + shortcut(x))`` is bounded by ``L(branch) + L(shortcut)`` (an
    identity shortcut 1, option A's subsample-and-pad 1), ReLU and flatten by 1, max pooling
    by :func:`max_pool_constant`, a global average pool over ``m`` pixels by ``1 / sqrt(m)``.
    """
    shapes = input_shapes(model, example)

    def bound(m: nn.Module) -> float:
        if isinstance(m, nn.Sequential):
            return math.prod(bound(child) for child in m)
        if isinstance(m, nn.Conv2d):
            return conv_norm(m)
        if isinstance(m, nn.BatchNorm2d):
            return bn_scale(m)
        if isinstance(m, nn.Linear):
            return float(torch.linalg.matrix_norm(m.weight.detach().double(), 2))
        if isinstance(m, (nn.ReLU, nn.Flatten, nn.Identity, clipping.Shortcut)):
            return 1.0
        if isinstance(m, nn.MaxPool2d):
            return max_pool_constant(m, shapes[m])
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return 1.0 / math.sqrt(math.prod(shapes[m]))
        if isinstance(m, (imagenet_resnet.BasicBlock, clipping.BasicBlock)):
            branch = bound(m.conv1) * bound(m.bn1) * bound(m.conv2) * bound(m.bn2)
            shortcut = m.shortcut if isinstance(m, clipping.BasicBlock) else m.downsample
            return branch + (1.0 if shortcut is None else bound(shortcut))
        if isinstance(m, imagenet_resnet.ResNet):
            stages = [m.conv1, m.bn1, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4, m.avgpool, m.fc]
            return math.prod(bound(stage) for stage in stages)
        msg = f"no layer-by-layer rule for {type(m).__name__}"
        raise TypeError(msg)

    return bound(model)


# --- lower bounds -------------------------------------------------------------------------------------


def jacobian_norms(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The exact norm of the Jacobian at each input (one sample each), in float64."""
    net = copy.deepcopy(model).double().eval()
    state = {k: v.detach() for k, v in (*net.named_parameters(), *net.named_buffers())}

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, state, (x[None],))[0]

    jacobians = torch.func.vmap(torch.func.jacrev(f))(inputs.double())
    return torch.linalg.matrix_norm(jacobians.reshape(len(inputs), -1, inputs[0].numel()), 2)


def pair_ascent(model: nn.Module, starts: torch.Tensor, steps: int, seed: int) -> float:
    """The largest ``||f(x) - f(y)|| / ||x - y||`` found by Adam over pairs, one run per start point.

    Each run starts at ``x = start``, ``y = x + d`` with ``d`` random of 1% of the start's
    size, and moves both points (steps of 1% of the start's root-mean-square entry). The best
    pair found is evaluated again in float64, and that ratio returned: every pair's ratio is
    at most the Lipschitz constant, whatever the network's smoothness.
    """
    generator = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).eval().requires_grad_(False)
    best, best_pair = 0.0, None
    for start in starts:
        x = start[None].clone().requires_grad_()
        size = float(start.norm())
        d = torch.randn(x.shape, generator=generator)
        d = (0.01 * size / float(d.norm()) * d).requires_grad_()
        optimizer = torch.optim.Adam([x, d], lr=0.01 * size / math.sqrt(start.numel()))
        for _ in range(steps):
            out = net(torch.cat([x, x + d]))
            ratio = (out[1] - out[0]).norm() / d.norm()
            if float(ratio.detach()) > best:
                best, best_pair = float(ratio.detach()), (x.detach().clone(), d.detach().clone())
            optimizer.zero_grad()
            (-ratio).backward()
            optimizer.step()
    assert best_pair is not None
    net, (x, d) = net.double(), (t.double() for t in best_pair)
    with torch.no_grad():
        return float((net(x + d) - net(x)).norm() / d.norm())


# --- one network ----------------------------------------------------------------------------------------


def measure(
    model: nn.Module, example: torch.Tensor, starts: torch.Tensor, samples: int, iterations: int, steps: int
) -> dict[str, Any]:
    """Every bound of one network on inputs of ``example``'s shape, and the seconds each took."""
    model.eval()
    row: dict[str, Any] = {"input": list(example.shape), "seconds": {}}

    def timed(name: str, compute: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = compute()
        row["seconds"][name] = time.perf_counter() - start
        print(f"  {name}: {row['seconds'][name]:.1f} s", file=sys.stderr)
        return value

    report = timed(
        "lipschitz_bound",
        lambda: lipschitz_bound(
            model, example, lower_bound_samples=samples, lower_bound_iterations=iterations
        ),
    )
    row["certificate"], row["lower_lipschitz_bound"] = report.upper, report.lower
    row["nodes"] = len(report.nodes)
    bounds = timed("operator_norm_bounds", lambda: conv_bounds(model, example))
    row["naive"] = composed_bound(model, example, lambda conv: bounds[conv][1])
    row["reshaped"] = composed_bound(model, example, reshaped_norm)
    # Per convolution: the reshaped norm against the norm the layer attains (a lower bound on it).
    below = [
        bounds[conv][0] / reshaped_norm(conv) for conv in bounds if reshaped_norm(conv) < bounds[conv][0]
    ]
    row["convolutions"], row["reshaped_below_attained"] = len(bounds), len(below)
    row["attained_over_reshaped_max"] = max(below, default=None)
    row["lower_pairs"] = timed("pair_ascent", lambda: pair_ascent(model, starts, steps, seed=0))
    row["lower_bound_samples"], row["lower_bound_iterations"], row["pair_steps"] = samples, iterations, steps
    row["pair_starts"] = len(starts)
    return row


def best_lower(row: dict[str, Any]) -> float:
    return max(row[k] for k in ("lower_lipschitz_bound", "lower_pairs", "lower_jacobian") if row.get(k))


def table(rows: list[dict[str, Any]]) -> str:
    """Two markdown tables of the rows: the bounds, then the lower bounds apart and the reshaped product."""
    bounds = [
        "| network | input | test accuracy | naive layer-by-layer | convsv certificate | naive / certificate "
        "| best lower bound | certificate / best lower |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    estimates = [
        "| network | lower: lipschitz_bound | lower: pairs | lower: exact Jacobians at the test images "
        "| reshaped product | reshaped / best lower "
        "| convolutions whose reshaped norm is below what they attain |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        low, shape = best_lower(r), "x".join(map(str, r["input"]))
        accuracy = "-" if r.get("test_accuracy") is None else f"{100 * r['test_accuracy']:.1f}%"
        bounds.append(
            f"| {r['network']} | {shape} | {accuracy} | {r['naive']:.4g} | {r['certificate']:.4g} "
            f"| {r['naive'] / r['certificate']:.3g} | {low:.4g} | {r['certificate'] / low:.3g} |"
        )
        jacobian = "-" if r.get("lower_jacobian") is None else f"{r['lower_jacobian']:.4g}"
        factor = r["attained_over_reshaped_max"]
        below = f"{r['reshaped_below_attained']} of {r['convolutions']}"
        below += "" if factor is None else f", by up to {factor:.3g}x"
        estimates.append(
            f"| {r['network']} | {r['lower_lipschitz_bound']:.4g} | {r['lower_pairs']:.4g} | {jacobian} "
            f"| {r['reshaped']:.4g} | {r['reshaped'] / low:.3g} | {below} |"
        )
    return "\n".join(bounds) + "\n\n" + "\n".join(estimates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="digits training epochs (default 15)")
    parser.add_argument("--size", type=int, default=224, help="ResNet-18's input size (default 224)")
    parser.add_argument("--samples", type=int, default=16, help="lipschitz_bound's lower_bound_samples")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, a ResNet-10 at 32x32, few samples")
    parser.add_argument("--out", type=Path, default=Path("network-lipschitz"))
    args = parser.parse_args()
    epochs, size, samples = (2, 32, 2) if args.quick else (args.epochs, args.size, args.samples)
    iterations, steps = (5, 10) if args.quick else (30, 100)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = []

    print("digits ResNet: training", file=sys.stderr)
    torch.manual_seed(0)
    data = digits_data()
    model = digits_resnet()
    start = time.perf_counter()
    accuracy = train(model, data, epochs, seed=0)
    seconds = time.perf_counter() - start
    x_test = data[2]
    jacobians = jacobian_norms(model, x_test)
    starts = x_test[torch.argsort(jacobians, descending=True)[:4]]  # the steepest test images
    row = measure(model, x_test[:1], starts, samples, iterations, steps)
    row |= {"network": "digits ResNet (trained)", "test_accuracy": accuracy, "epochs": epochs}
    row |= {"lower_jacobian": float(jacobians.max()), "jacobian_inputs": len(x_test)}
    row["seconds"]["training"] = seconds
    rows.append(row)

    # --quick: one block per stage (a "ResNet-10"), the same layers at half the cost.
    name, blocks = ("ResNet-10", [1, 1, 1, 1]) if args.quick else ("ResNet-18", [2, 2, 2, 2])
    print(f"{name} (random) at {size}x{size}", file=sys.stderr)
    torch.manual_seed(0)
    model = imagenet_resnet.randomise_batch_norms(
        imagenet_resnet.ResNet(blocks, False), (3, size, size), seed=0
    )
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    starts = torch.cat([example, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))])
    row = measure(model, example, starts[: 1 if args.quick else 2], samples, iterations, steps // 4)
    rows.append(row | {"network": f"{name} (random, batch norms randomised)", "test_accuracy": None})

    text = table(rows)
    machine = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"quick": args.quick, "machine": machine, "rows": rows}
    (args.out / "network_lipschitz.json").write_text(json.dumps(result, indent=1))
    (args.out / "network_lipschitz.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
