"""experiments/network_lipschitz.py: its quick run as a user runs it, its bounds against independent routes.

Ground truths: each layer's matrix built from its outputs on one-hot inputs (its norm by
``numpy.linalg.svd``), and the windows of a max pool counted on an image of pixel indices.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
import imagenet_resnet  # noqa: E402
from network_lipschitz import (  # noqa: E402
    composed_bound,
    conv_bounds,
    jacobian_norms,
    max_pool_constant,
    pair_ascent,
    reshaped_norm,
)
from torch import nn  # noqa: E402

F64 = torch.float64


def dense(model: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of an affine ``model`` on inputs of ``shape`` (no batch axis), from one-hot inputs."""
    size = math.prod(shape)
    basis = torch.eye(size, dtype=F64).reshape(size, *shape)
    with torch.no_grad():
        out = model(basis) - model(torch.zeros(1, *shape, dtype=F64))
    return out.reshape(size, -1).T.numpy()


def norm(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_var.copy_(torch.rand(channels, generator=generator, dtype=F64) * 2 + 0.1)
        bn.running_mean.copy_(torch.randn(channels, generator=generator, dtype=F64))
        bn.weight.copy_(torch.randn(channels, generator=generator, dtype=F64))
    return bn.eval()


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "n"), [(3, 2, 1, 7), (3, 2, 1, 8), (2, 2, 0, 6), (3, 1, 1, 5)]
)
def test_max_pool_constant_counts_the_windows_of_each_pixel(kernel, stride, padding, n):
    index = torch.arange(n * n, dtype=F64).reshape(1, 1, n, n)
    padded = nn.functional.pad(index, (padding,) * 4, value=-1.0)
    windows = nn.functional.unfold(padded, kernel, stride=stride).flatten()
    counts = np.bincount(windows[windows >= 0].long().numpy(), minlength=n * n)
    pool = nn.MaxPool2d(kernel, stride, padding)
    assert max_pool_constant(pool, (n, n)) == pytest.approx(math.sqrt(counts.max()), rel=1e-15)


def test_composed_bound_of_a_linear_chain_is_the_product_of_the_layers_dense_norms():
    """Circular convolutions (conv_bounds' upper end is then the exact norm), batch norms and a
    linear layer: the product of each layer's dense norm, and at least the whole chain's."""
    torch.manual_seed(0)
    conv1 = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False).double()
    conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular").double()
    layers = [conv1, random_bn(3, 1), conv2, random_bn(4, 2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5).double()]
    model = nn.Sequential(*layers).eval()
    shapes = [(2, 6, 6), (3, 6, 6), (3, 6, 6), (4, 3, 3), (4, 3, 3), (36,)]
    product = math.prod(norm(dense(layer, shape)) for layer, shape in zip(layers, shapes, strict=True))
    bounds = conv_bounds(model, torch.zeros(1, 2, 6, 6, dtype=F64))
    bound = composed_bound(model, torch.zeros(1, 2, 6, 6, dtype=F64), lambda c: bounds[c][1])
    assert bound == pytest.approx(product, rel=1e-9)
    assert bound >= norm(dense(model, (2, 6, 6))) * (1 - 1e-12)
    for conv, shape in ((conv1, (2, 6, 6)), (conv2, (3, 6, 6))):  # both ends exact for circular layers
        assert bounds[conv] == pytest.approx((norm(dense(conv, shape)),) * 2, rel=1e-6)


def test_a_basic_block_adds_its_shortcut_to_its_branch():
    torch.manual_seed(1)
    shortcut = nn.Sequential(nn.Conv2d(2, 4, 1, stride=2, bias=False), random_bn(4, 3)).double()
    block = imagenet_resnet.BasicBlock(2, 4, 2, shortcut).double().eval()
    block.bn1, block.bn2 = random_bn(4, 4), random_bn(4, 5)
    x = torch.zeros(1, 2, 6, 6, dtype=F64)
    bounds = conv_bounds(block, x)
    parts = [bounds[block.conv1][1], dense_bn(block.bn1), bounds[block.conv2][1], dense_bn(block.bn2)]
    expected = math.prod(parts) + bounds[shortcut[0]][1] * dense_bn(shortcut[1])
    assert composed_bound(block, x, lambda c: bounds[c][1]) == pytest.approx(expected, rel=1e-12)
    # Zero-padded convolutions: the upper end bounds the layer's dense norm, the lower end is attained.
    low, high = bounds[block.conv1]
    assert low <= norm(dense(block.conv1, (2, 6, 6))) * (1 + 1e-9) <= high * (1 + 1e-9)


def dense_bn(bn: nn.BatchNorm2d) -> float:
    return norm(dense(bn, (bn.num_features, 2, 2)))


def test_reshaped_norm_is_the_largest_singular_value_of_the_reshaped_kernel():
    torch.manual_seed(2)
    for conv in (nn.Conv2d(3, 8, 3), nn.Conv2d(16, 4, 3), nn.Conv2d(5, 5, 1)):
        matrix = conv.weight.detach().double().reshape(conv.out_channels, -1).numpy()
        assert reshaped_norm(conv) == pytest.approx(norm(matrix), rel=1e-12)


def test_the_lower_bounds_of_a_linear_map_reach_its_norm_from_below():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    exact = norm(dense(model.double(), (1, 4, 4)))
    model = model.float()
    points = torch.randn(3, 1, 4, 4)
    assert jacobian_norms(model, points).numpy() == pytest.approx([exact] * 3, rel=1e-12)
    found = pair_ascent(model, points[:2], steps=100, seed=0)
    assert 0.99 * exact <= found <= exact * (1 + 1e-9)


def test_quick_run_certifies_both_networks(run_script, tmp_path):
    result = run_script("network_lipschitz.py", "--quick", "--out", "out")
    saved = json.loads((tmp_path / "out" / "network_lipschitz.json").read_text())
    rows = saved["rows"]
    assert [r["network"].split(" ")[0] for r in rows] == ["digits", "ResNet-10"]
    assert rows[0]["test_accuracy"] > 0.9
    for r in rows:
        lowers = [r[k] for k in ("lower_lipschitz_bound", "lower_pairs", "lower_jacobian") if k in r]
        assert 0 < max(lowers) < r["certificate"], r
        # Folding batch norm into the convolution beside it can only tighten the product.
        assert r["certificate"] <= r["naive"] * (1 + 1e-9), r
        # Some convolution's reshaped norm is below the norm the layer attains: not a bound.
        assert r["reshaped_below_attained"] >= 1, r
    table = (tmp_path / "out" / "network_lipschitz.md").read_text()
    assert table.strip() == result.stdout.strip()
    assert table.count("\n| digits ResNet") == table.count("\n| ResNet-10") == 2  # a row in each table
