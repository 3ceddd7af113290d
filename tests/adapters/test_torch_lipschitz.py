"""The whole-network Lipschitz certificate (:func:`convsv._lipschitz.lipschitz_bound`).

Three kinds of check, none using the code under test for its expectations:
soundness (the certificate is never below a local Lipschitz constant found
here, from full Jacobians and from gradient ascent on difference quotients),
exactness on linear models (it equals the largest singular value of the
model's own dense matrix, built from its outputs on one-hot inputs), and a
named error for every construct without a rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import convsv
from convsv._lipschitz import lipschitz_bound
from convsv._lipschitz_maps import GELU_LIPSCHITZ

F64 = torch.float64
EXACT = 1e-6  # relative: the float64 certificate against the dense matrix's norm


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on these tiny models a second thread's hand-off costs more than the work
    (measured: a 2x8x8 conv in 0.008 ms on one thread, 20 ms on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bn(channels: int, seed: int, dims: int = 2) -> nn.Module:
    """A batch norm with random running statistics and affine parameters (scales from ~0.2 to ~3)."""
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims](channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 1.8 + 0.2)
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.weight.copy_(torch.randn(channels, generator=generator) * 1.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
    return bn


def _dense(model: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of an affine ``model`` on inputs of ``shape`` (no batch axis): outputs on one-hot inputs."""
    size = math.prod(shape)
    basis = torch.eye(size, dtype=F64).reshape(size, *shape)
    with torch.no_grad():
        out = model(basis) - model(torch.zeros(1, *shape, dtype=F64))
    return out.reshape(size, -1).T.numpy()


def _norm(matrix: np.ndarray) -> float:
    return float(np.linalg.norm(matrix, 2))


def _local_constants(model: nn.Module, shape: tuple[int, ...], points: int, seed: int) -> float:
    """Largest ||J(x)||_2 (full Jacobian, SVD) at ``points`` random inputs, and the best difference quotient.

    The quotient ``||f(x) - f(y)|| / ||x - y||`` is pushed up by Adam from
    pairs of random inputs: a check that needs no derivative of the model.
    """
    generator = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(points):
        x = torch.randn(1, *shape, dtype=F64, generator=generator) * 2
        jacobian = torch.autograd.functional.jacobian(model, x).reshape(-1, x.numel())
        best = max(best, _norm(jacobian.numpy()))
    x = torch.randn(4, *shape, dtype=F64, generator=generator).requires_grad_()
    y = (x.detach() + 0.1 * torch.randn(4, *shape, dtype=F64, generator=generator)).requires_grad_()
    optimiser = torch.optim.Adam([x, y], lr=0.02)
    for _ in range(150):
        ratio = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = max(best, float(ratio.detach().max()))
        optimiser.zero_grad()
        (-ratio.sum()).backward()
        optimiser.step()
    return best


# --- random models of each supported kind ------------------------------------------------------------


class Block(nn.Module):
    """A ResNet basic block with batch norms; a strided 1x1 shortcut when ``stride > 1``."""

    def __init__(self, c_in: int, c_out: int, stride: int, seed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(c_out, seed)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out, seed + 1)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _bn(c_out, seed + 2))
            if stride > 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


def _sequential(seed: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        _bn(4, seed),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
        _bn(4, seed + 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(4, 3, 2, stride=2),
        nn.Tanh(),
    )


def _residual(seed: int) -> nn.Module:
    return nn.Sequential(Block(2, 2, 1, seed), Block(2, 4, 2, seed + 3))


def _pooling(seed: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.GELU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows: constant sqrt(4) = 2
        nn.Conv2d(3, 3, 3, padding=1),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
    )


def _head(seed: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 8),
        _bn(8, seed, dims=1),
        nn.Dropout(0.5),
        nn.SiLU(),
        nn.Linear(8, 3),
    )


KINDS = {"sequential": _sequential, "residual": _residual, "pooling": _pooling, "linear-head": _head}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", list(KINDS))
def test_certificate_is_above_local_constants(kind: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = KINDS[kind](seed).double().eval()
    shape = (2, 8, 8)
    example = torch.randn(1, *shape, dtype=F64)
    report = lipschitz_bound(model, example, lower_bound_samples=3, lower_bound_iterations=20)
    local = _local_constants(model, shape, points=6, seed=seed)
    assert report.lower is not None
    assert 0 < report.lower <= report.upper
    assert 0 < local <= report.upper


def test_float32_model_is_certified_in_float64() -> None:
    """The norms are taken in float64 from the float32 weights: the float32 and float64 copies agree."""
    torch.manual_seed(2)
    model = _residual(2).eval()
    example = torch.randn(1, 2, 8, 8)
    single = lipschitz_bound(model, example, lower_bound_samples=2, lower_bound_iterations=10)
    double = lipschitz_bound(model.double(), example.double(), lower_bound_samples=0)
    assert single.upper == pytest.approx(double.upper, rel=1e-12)
    assert single.lower is not None
    assert 0 < single.lower <= single.upper


def test_training_mode_is_restored_and_eval_is_certified() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _bn(2, 0), nn.Dropout(0.9)).double()
    model.train()
    report = lipschitz_bound(model, torch.randn(1, 1, 5, 5, dtype=F64), lower_bound_samples=0)
    assert model.training
    assert report.lower is None
    assert report.upper >= _norm(_dense(model.eval(), (1, 5, 5)))


# --- exactness on linear models ------------------------------------------------------------------


class Residual(nn.Module):
    """``x + f(x)`` (or ``x - f(x)``) for a linear ``f``."""

    def __init__(self, f: nn.Module, subtract: bool = False) -> None:
        super().__init__()
        self.f, self.subtract = f, subtract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.f(x) if self.subtract else self.f(x) + x


class SkipBlock(nn.Module):
    """``skip(x) + bn(dropout(conv(x)))`` with ``skip = nn.Identity()``: in eval mode, still ``(I + A) x``."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Identity()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")
        self.drop = nn.Dropout(0.3)
        self.bn = _bn(3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.bn(self.drop(self.conv(x)))


LINEAR = {
    "conv-bn": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), _bn(3, 0)),
        (2, 6, 6),
    ),
    "bn-conv-bn-strided": (
        lambda: nn.Sequential(
            _bn(2, 1), nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="circular"), _bn(4, 2)
        ),
        (2, 6, 8),
    ),
    "grouped-conv-bn": (
        lambda: nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="circular"), _bn(6, 3)),
        (4, 5, 5),
    ),
    "residual-conv": (
        lambda: Residual(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")),
        (3, 6, 6),
    ),
    "residual-conv-bn": (
        lambda: Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"), _bn(3, 5))),
        (3, 6, 6),
    ),
    "residual-minus-dilated": (
        lambda: Residual(nn.Conv2d(2, 2, 3, padding=2, dilation=2, padding_mode="circular"), subtract=True),
        (2, 7, 6),
    ),
    "residual-even-same": (
        lambda: Residual(nn.Conv2d(2, 2, (3, 4), padding="same", padding_mode="circular")),
        (2, 5, 6),
    ),
    "residual-grouped": (
        lambda: Residual(nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="circular")),
        (4, 5, 5),
    ),
    "residual-linear": (lambda: Residual(nn.Linear(6, 6)), (6,)),
    "residual-through-identity-and-dropout": (lambda: SkipBlock(), (3, 5, 6)),
    "linear-bn1d": (lambda: nn.Sequential(nn.Linear(5, 4), _bn(4, 6, 1), nn.Linear(4, 3)), (5,)),
    "avgpool-conv": (
        lambda: nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")),
        (2, 8, 8),
    ),
    "avgpool-conv-strided-bn": (
        lambda: nn.Sequential(
            nn.AvgPool2d((2, 3)),
            nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular"),
            _bn(3, 7),
        ),
        (2, 8, 12),
    ),
    "adaptive-avgpool-conv": (
        lambda: nn.Sequential(
            nn.AdaptiveAvgPool2d(3), nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
        ),
        (1, 9, 6),
    ),
    "avgpool-padded-ceil": (
        lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        (2, 7, 8),
    ),
    "avgpool-divisor": (lambda: nn.AvgPool2d(3, stride=2, divisor_override=4), (1, 7, 8)),
    "adaptive-avgpool-uneven": (lambda: nn.AdaptiveAvgPool2d((3, 5)), (2, 7, 8)),
    "mean-scale-cat": (lambda: Mixed(), (2, 4, 4)),
    "broadcast-add": (lambda: Broadcast(), (2, 4, 4)),
    "upsample-nearest": (lambda: nn.Upsample(scale_factor=2), (2, 3, 4)),
    "upsample-nearest-fractional": (lambda: nn.Upsample(scale_factor=1.7), (1, 5, 4)),
    "upsample-bilinear-aligned": (
        lambda: nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
        (2, 4, 6),
    ),
    "upsample-trilinear": (lambda: nn.Upsample(scale_factor=(2, 1.5, 1), mode="trilinear"), (1, 3, 4, 2)),
    "interpolate-bilinear-size": (lambda: Functional("interpolate"), (1, 4, 5)),
    "functional-linear": (lambda: Functional("linear"), (5,)),
    "functional-conv1x1-bn": (lambda: nn.Sequential(Functional("conv1x1"), _bn(3, 8)), (2, 4, 5)),
}


class Functional(nn.Module):
    """One layer called as a function with a stored weight: ``F.linear``, ``F.conv2d``, ``F.interpolate``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        generator = torch.Generator().manual_seed(len(kind))
        shape = {"linear": (3, 5), "conv1x1": (3, 2, 1, 1)}.get(kind, (1,))
        self.weight = nn.Parameter(torch.randn(shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, self.weight, self.weight.new_ones(3))
        if self.kind == "conv1x1":
            return F.conv2d(x, self.weight)
        return F.interpolate(x, size=(7, 9), mode="bilinear")


class FunctionalNet(nn.Module):
    """Convolutions, pooling and a linear head, as functions of stored weights or as modules."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.functional = functional
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.maxpool, self.avgpool = nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2)
        self.adaptive, self.head = nn.AdaptiveAvgPool2d(2), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.functional:
            y = self.maxpool(self.up(torch.relu(self.conv(self.avgpool(x)))))
            return self.head(self.adaptive(y).flatten(1))
        c, u = self.conv, self.up
        y = F.conv2d(F.avg_pool2d(x, 2), c.weight, c.bias, 2, 1, 1, 2)
        y = F.conv_transpose2d(torch.relu(y), u.weight, u.bias, stride=2, padding=1, output_padding=1)
        y = F.max_pool2d(y, 3, 2, 1)
        return F.linear(F.adaptive_avg_pool2d(y, 2).flatten(1), self.head.weight, self.head.bias)


def test_functional_layers_are_certified_as_their_modules() -> None:
    x = torch.randn(1, 4, 12, 12)
    as_modules = lipschitz_bound(FunctionalNet(False), x, lower_bound_samples=0)
    as_functions = lipschitz_bound(FunctionalNet(True), x, lower_bound_samples=0)
    assert as_functions.upper == as_modules.upper
    constants = [node.constant for node in as_functions.nodes if node.constant not in (None, 1.0)]
    assert constants == [node.constant for node in as_modules.nodes if node.constant not in (None, 1.0)]
    assert "folded into conv2d" in [node.how for node in as_functions.nodes]  # the pool, as for modules


class Mixed(nn.Module):
    """Spatial mean, a constant scale, broadcasting and concatenation: ``[2 m(x), m(x) / 4 + 1]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3))
        return torch.cat([2.0 * m, m / 4 + 1.0], dim=1)


class Broadcast(nn.Module):
    """``x + mean(x)`` broadcast over the map: ``I + ones / 16``, norm 2, reached by a constant map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean((2, 3), keepdim=True)


@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_model_certificate_is_the_dense_norm(name: str) -> None:
    build, shape = LINEAR[name]
    torch.manual_seed(len(name))
    model = build().double().eval()
    report = lipschitz_bound(model, torch.randn(1, *shape, dtype=F64), lower_bound_iterations=60)
    expected = _norm(_dense(model, shape))
    assert report.upper == pytest.approx(expected, rel=EXACT)
    assert report.lower is not None
    assert 0.99 * report.upper <= report.lower <= report.upper * (1 + 1e-12)  # power iteration converges


def test_transposed_conv_folds_batch_norm_into_its_output_channels() -> None:
    """PyTorch pads transposed layers with zeros only: the certificate is the folded kernel's circular twin.

    The folded kernel is built here channel by channel, checked against the
    model's own outputs, and its bound taken from the core.
    """
    torch.manual_seed(5)
    conv, bn = nn.ConvTranspose1d(4, 6, 3, groups=2, bias=False), _bn(6, 4, 1)
    model = nn.Sequential(conv, bn).double().eval()
    report = lipschitz_bound(model, torch.randn(1, 4, 7, dtype=F64), lower_bound_samples=0)
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    folded = conv.weight.detach().clone()  # (in, out / groups, width)
    for i in range(4):
        for j in range(3):
            folded[i, j] *= scale[(i // 2) * 3 + j]
    x = torch.randn(2, 4, 7, dtype=F64)
    with torch.no_grad():
        linear_part = model(x) - model(torch.zeros_like(x))
    assert torch.allclose(F.conv_transpose1d(x, folded, groups=2), linear_part)
    _, twin = convsv.operator_norm_bounds(folded, (7,), layout="OIW", transposed=True, groups=2, padding=0)
    assert report.upper == pytest.approx(float(twin), rel=1e-12)
    assert report.upper >= _norm(_dense(model, (4, 7)))


ZERO_PADDED = {
    "conv": lambda: nn.Conv2d(3, 3, 3, padding=1),
    "conv-bn-dilated": lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding="same", dilation=2), _bn(3, 8)),
}


@pytest.mark.parametrize("name", list(ZERO_PADDED))
def test_zero_padded_residual_is_sound(name: str) -> None:
    torch.manual_seed(3)
    shape = (3, 6, 6)
    model = Residual(ZERO_PADDED[name]()).double().eval()
    report = lipschitz_bound(model, torch.randn(1, *shape, dtype=F64), lower_bound_samples=0)
    assert report.upper >= _norm(_dense(model, shape))
    assert "identity" in report.nodes[-2].how  # folded: one norm of I + A (its circular twin's)


def test_residual_without_an_identity_tap_is_one_plus_the_norm() -> None:
    """Kernel 2, dilation 3, 'same': one zero before, two after; no tap reads the output's own pixel."""
    torch.manual_seed(4)
    f = nn.Conv2d(2, 2, 2, dilation=3, padding="same", padding_mode="circular").double().eval()
    shape = (2, 6, 8)
    model = Residual(f).eval()
    report = lipschitz_bound(model, torch.randn(1, *shape, dtype=F64), lower_bound_samples=0)
    assert report.upper == pytest.approx(1.0 + _norm(_dense(f, shape)), rel=EXACT)
    assert report.upper >= _norm(_dense(model, shape))
    assert report.nodes[-2].how.startswith("1 + L(f)")


def test_batch_norm_folding_beats_the_product() -> None:
    """A 1x1 conv with taps (3, 1) and BN scales (1, 2): folded sqrt(9 + 4), product sqrt(10) * 2."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    bn = nn.BatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([3.0, 1.0]).reshape(2, 1, 1, 1))
        bn.weight.copy_(torch.tensor([1.0, 2.0]))
    model = nn.Sequential(conv, bn).double().eval()
    report = lipschitz_bound(model, torch.randn(1, 1, 4, 4, dtype=F64), lower_bound_samples=0)
    assert report.upper == pytest.approx(math.sqrt(13.0), rel=1e-12)
    assert report.upper < math.sqrt(10.0) * 2.0
    assert report.upper == pytest.approx(_norm(_dense(model, (1, 4, 4))), rel=EXACT)
    rows = {row.name: row for row in report.nodes}
    assert rows["_0"].how == "folded into _1"
    assert rows["_0"].constant is None
    assert rows["_1"].constant == report.upper


def test_resnet_block_is_tighter_than_the_layer_by_layer_product() -> None:
    torch.manual_seed(0)
    block = Block(3, 3, 1, seed=11).double().eval()
    shape = (3, 6, 6)
    report = lipschitz_bound(block, torch.randn(1, *shape, dtype=F64), lower_bound_samples=0)

    def layer(*modules: nn.Module) -> float:
        return _norm(_dense(nn.Sequential(*modules).eval(), shape))

    # Layer by layer, batch norm as its own factor max |scale|.
    scale = [
        float((bn.weight / (bn.running_var + bn.eps).sqrt()).abs().max().detach())
        for bn in (block.bn1, block.bn2)
    ]
    product = 1.0 + layer(block.conv1) * scale[0] * layer(block.conv2) * scale[1]
    folded_exact = 1.0 + layer(block.conv1, block.bn1) * layer(block.conv2, block.bn2)
    assert report.upper < product
    assert report.upper >= folded_exact  # zero padding: the circular twins bound the exact norms


# --- constants -----------------------------------------------------------------------------------


def test_gelu_constant_is_its_largest_slope() -> None:
    x = torch.linspace(-8, 8, 1_600_001, dtype=F64, requires_grad=True)
    (slope,) = torch.autograd.grad(F.gelu(x).sum(), x)
    assert pytest.approx(float(slope.abs().max()), abs=1e-9) == GELU_LIPSCHITZ
    assert pytest.approx(1.1289, abs=1e-4) == GELU_LIPSCHITZ


ACTIVATIONS = {
    "relu": nn.ReLU(),
    "relu6": nn.ReLU6(),
    "hardtanh": nn.Hardtanh(-2.0, 0.5),
    "leaky-small": nn.LeakyReLU(0.2),
    "leaky-steep": nn.LeakyReLU(3.0),
    "elu": nn.ELU(2.0),
    "tanh": nn.Tanh(),
    "sigmoid": nn.Sigmoid(),
    "hardsigmoid": nn.Hardsigmoid(),
    "hardswish": nn.Hardswish(),
    "silu": nn.SiLU(),
    "gelu": nn.GELU(),
    "gelu-tanh": nn.GELU(approximate="tanh"),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_constant_is_its_largest_slope(name: str) -> None:
    """Alone, an activation's certificate is its own constant: above every secant slope, and nearly reached.

    Secants of the forward pass, not autograd: PyTorch's float64 hardsigmoid
    backward returns float32's 1/6, a slope the function does not have.
    """
    activation = ACTIVATIONS[name]
    report = lipschitz_bound(activation, torch.zeros(1, 3, dtype=F64), lower_bound_samples=0)
    x = torch.linspace(-12, 12, 480_001, dtype=F64)
    with torch.no_grad():
        steepest = float((torch.diff(activation(x)) / torch.diff(x)).abs().max())
    assert steepest * (1 - 1e-9) <= report.upper <= steepest * (1 + 1e-4)  # 1e-9: the secants' round-off


def test_overlapping_max_pool_constant_is_attained() -> None:
    """3x3 windows at stride 2 overlap: a pixel is in up to 2 x 2 windows, and moving it moves 4 maxima."""
    model = nn.MaxPool2d(3, stride=2).double()
    report = lipschitz_bound(model, torch.zeros(1, 1, 7, 7, dtype=F64), lower_bound_samples=0)
    assert report.upper == pytest.approx(2.0)
    x = torch.zeros(1, 1, 7, 7, dtype=F64)
    y = x.clone()
    y[0, 0, 2, 2] = 1.0  # in the windows starting at rows 0, 2 and columns 0, 2
    assert float((model(y) - model(x)).norm()) == pytest.approx(2.0)


# --- errors --------------------------------------------------------------------------------------


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.recurrent = nn.LSTM(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recurrent(x)[0]


class Squares(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * x


class Sorted(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=-1).values


class Gathered(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, [0, 0, 1]]


class TrainingDropout(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.5, training=True)


class ComputedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight / self.weight.std())  # weight standardisation: computed


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


ERRORS = {
    "lstm": (WithLSTM, (1, 2, 4), TypeError, ["'recurrent'", "LSTM"]),
    "product": (Squares, (1, 4), TypeError, ["'mul'", "mul"]),
    "sort": (Sorted, (1, 4), TypeError, ["'sort'", "sort"]),
    "gather": (Gathered, (1, 4), TypeError, ["'getitem'", "getitem"]),
    "dropout-training": (TrainingDropout, (1, 4), ValueError, ["'dropout'", "training"]),
    "reflect": (
        lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")),
        (1, 1, 5, 5),
        ValueError,
        ["'_0'", "Conv2d", "reflect"],
    ),
    "no-running-stats": (
        lambda: nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)),
        (2, 4),
        ValueError,
        ["'_0'", "BatchNorm1d", "running statistics"],
    ),
    "softmax": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)),
        (1, 4),
        TypeError,
        ["'_1'", "Softmax"],
    ),
    "two-inputs": (TwoInputs, (1, 4), TypeError, ["'y'", "input"]),
    "computed-weight": (ComputedWeight, (1, 2, 5, 5), TypeError, ["'conv2d'", "computed"]),
    "bicubic": (
        lambda: nn.Upsample(scale_factor=2, mode="bicubic"),
        (1, 1, 4, 4),
        ValueError,
        ["'_0'", "bicubic"],
    ),
    "reflect-pad": (
        lambda: nn.Sequential(nn.ReflectionPad2d(1)),
        (1, 1, 4, 4),
        TypeError,
        ["'_0'", "ReflectionPad2d"],
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_unsupported_node_is_a_named_error(name: str) -> None:
    build, shape, error, words = ERRORS[name]
    with pytest.raises(error) as info:
        lipschitz_bound(build(), torch.randn(*shape), lower_bound_samples=0)
    for word in words:
        assert word in str(info.value)
