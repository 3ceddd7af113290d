"""The PyTorch adapter, checked against PyTorch's own layers and against the core.

Ground truth for the layer mapping is the dense matrix of the PyTorch layer
itself (applied to every basis input, in float64); norms after a projection
are recomputed by the core from the weights read back.
"""

from __future__ import annotations

import math
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import convsv
import convsv.torch
from convsv.torch import (
    OperatorNormClipper,
    clip_operator_norm_,
    conv_layers,
    layer_options,
    parametrize_operator_norm,
)

from .digits import digits

CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}  # float32 reaches 1e-5, not 1e-6
BOUND = 1.0 + 1e-5  # max_norm * (1 + tol), with float32 round-off
EXAMPLES = Path(__file__).parents[2] / "examples"


def _dense(layer: nn.Module, input_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of ``layer`` (bias removed), column by column from basis inputs, in float64."""
    layer = layer.double()
    c_in = layer.in_channels
    size = c_in * math.prod(input_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, c_in, *input_shape)
    with torch.no_grad():
        bias, layer.bias = layer.bias, None
        out = layer(basis)
        layer.bias = bias
    return out.reshape(size, -1).T.numpy()


LAYERS = {
    "conv1d-stride2-pad1": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (10,)),
    "conv2d-groups2-dilation2-same": (
        lambda: nn.Conv2d(4, 6, 3, dilation=2, groups=2, padding="same"),
        (6, 5),
    ),
    "conv2d-depthwise-valid": (lambda: nn.Conv2d(3, 3, 3, groups=3), (6, 6)),
    "conv2d-circular-stride2": (
        lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular"),
        (6, 8),
    ),
    # Circulant with fewer zeros than span - 1: stride 2 on a span of 4 needs 2 or 3 in all.
    "conv2d-circular-stride2-k4-pad1": (
        lambda: nn.Conv2d(2, 3, 4, stride=2, padding=1, padding_mode="circular"),
        (6, 8),
    ),
    "conv2d-circular-same-even": (
        lambda: nn.Conv2d(2, 2, (3, 4), padding="same", padding_mode="circular"),
        (5, 6),
    ),
    "conv3d-stride2": (lambda: nn.Conv3d(2, 2, 2, stride=2), (4, 4, 4)),
    "convtranspose1d-groups": (lambda: nn.ConvTranspose1d(4, 2, 3, stride=2, groups=2), (5,)),
    "convtranspose2d-stride2-outpad": (
        lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1),
        (4, 4),
    ),
}


@pytest.mark.parametrize("name", [n for n, (_, shape) in LAYERS.items() if shape is not None])
def test_layer_options_give_the_layers_singular_values(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    dense = np.linalg.svd(_dense(layer, shape), compute_uv=False)
    options = layer_options(layer, shape)
    values = convsv.singular_values(layer.weight.detach().double(), shape, **options).numpy()
    values = np.sort(values.ravel())[::-1]
    m = min(len(values), len(dense))
    np.testing.assert_allclose(values[:m], dense[:m], atol=1e-10)
    assert np.all(np.abs(values[m:]) < 1e-10)
    assert np.all(dense[m:] < 1e-10)


@pytest.mark.parametrize("padding", [0, 2, (1, 0)], ids=["fewer", "more", "fewer-on-one-axis"])
def test_circular_padding_that_is_not_a_circulant_map_is_refused(padding):
    # Fewer zeros than span - 1 drop rows of the circular layer, more repeat some: other singular
    # values (the layer's own dense matrix shows it), so analysing it as circular would be wrong.
    layer = nn.Conv2d(2, 2, 3, padding=padding, padding_mode="circular")
    for shape in (None, (6, 6)):  # the rule does not depend on the map
        with pytest.raises(ValueError, match="is not a circulant map: on axis"):
            layer_options(layer, shape)
    torch.manual_seed(0)
    dense = np.linalg.svd(_dense(layer, (6, 6)), compute_uv=False)
    circular = convsv.singular_values(layer.weight.detach(), (6, 6), layout="OIHW").numpy()
    assert dense.size != circular.size or not np.allclose(np.sort(circular.ravel())[::-1], dense)


def test_a_circular_stride_must_divide_the_map():
    layer = nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular")
    assert layer_options(layer)["padding"] == "circular"  # no map given: only the padding is checked
    with pytest.raises(ValueError, match="stride 2 on an axis of 7 is not a circulant map"):
        layer_options(layer, (7, 8))


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_unmodelled_padding_modes_are_refused(mode):
    with pytest.raises(ValueError, match=f"padding_mode='{mode}' is not modelled"):
        layer_options(nn.Conv2d(2, 2, 3, padding=1, padding_mode=mode))


def test_input_shapes_come_from_one_pass_in_eval_mode():
    # A strided conv, batch norm, a transposed conv: its input sizes by the conv arithmetic.
    layers = [nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 2, 3, stride=2)]
    model = nn.Sequential(*layers)
    model.train()
    statistics = model[1].running_mean.clone()
    shapes = convsv.torch.input_shapes(model, torch.ones(1, 1, 17, 12))
    assert shapes == {"0": (17, 12), "2": ((17 - 3) // 2 + 1, (12 - 3) // 2 + 1)}
    assert model.training  # mode restored
    assert torch.equal(model[1].running_mean, statistics)  # eval mode: statistics untouched
    # Unbatched input, a tuple unpacked into the call.
    assert convsv.torch.input_shapes(nn.Conv1d(2, 2, 3), (torch.ones(2, 9),)) == {"": (9,)}
    with pytest.raises(TypeError, match=r"`module` must be a torch\.nn\.Module, got dict"):
        convsv.torch.input_shapes({"conv": nn.Conv1d(2, 2, 3)}, torch.ones(2, 9))


def test_layer_options_refuse_other_layers():
    with pytest.raises(TypeError, match=r"expected a torch\.nn Conv or ConvTranspose layer, got Linear"):
        layer_options(nn.Linear(2, 2))


def _model() -> nn.Sequential:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 2, stride=2),
    )
    with torch.no_grad():
        for _, layer in conv_layers(net):
            layer.weight.mul_(4.0)  # well above the bound
    return net


SHAPES = {"0": (8, 8), "2": (8, 8), "4": (4, 4)}


def _norms(net: nn.Module, shapes) -> dict[str, float]:
    """Each conv's exact norm, recomputed by the core from the weights (zero padding: the layer's own)."""
    norms = {}
    for name, layer in conv_layers(net):
        options = layer_options(layer, shapes[name])
        weight = layer.weight.detach().double()
        norms[name] = float(convsv.operator_norm(weight, shapes[name], tol=1e-8, **options))
    return norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_projection_keeps_the_parameters(dtype):
    net = _model().to(dtype)
    net[2].weight.requires_grad_(False)
    params = {name: (p, p.data_ptr(), p.requires_grad) for name, p in net.named_parameters()}
    before = {name: layer.weight.detach().clone() for name, layer in conv_layers(net)}
    report = clip_operator_norm_(net, 1.0, input_shapes=SHAPES, **CLIP)
    for name, p in net.named_parameters():
        original, pointer, grad = params[name]
        assert p is original
        assert p.data_ptr() == pointer
        assert p.requires_grad == grad
        assert p.dtype == dtype
        assert p.device.type == "cpu"
    assert [r.name for r in report] == ["0", "2", "4"]
    for r in report:
        layer = dict(conv_layers(net))[r.name]
        options = layer_options(layer, SHAPES[r.name])
        # The report's norms are each layer's own (the tight projection's; zero padding included).
        own = convsv.operator_norm(before[r.name].double(), SHAPES[r.name], tol=1e-8, **options)
        assert float(r.norm_before) == pytest.approx(float(own), rel=2e-5)
        assert float(r.norm_after) <= BOUND
        assert float(r.norm_before) > 2
    assert all(norm <= BOUND for norm in _norms(net, SHAPES).values())
    assert all(not torch.equal(before[n], layer.weight) for n, layer in conv_layers(net))


def test_projection_under_no_grad_and_from_an_example_input():
    net = _model()
    with torch.no_grad():
        clip_operator_norm_(net, 1.0, example_input=torch.zeros(1, 2, 8, 8), **CLIP)
    assert all(norm <= BOUND for norm in _norms(net, SHAPES).values())
    # The hooks the example pass used are gone.
    assert all(not layer._forward_pre_hooks for _, layer in conv_layers(net))


def test_inside_the_bound_nothing_moves():
    net = _model()
    clip_operator_norm_(net, 100.0, input_shapes=SHAPES, **CLIP)
    fresh = _model()
    for (_, a), (_, b) in zip(conv_layers(net), conv_layers(fresh), strict=True):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def _unchanged_after(error, match, shapes, extra=None, max_norm=1.0):
    """``clip_operator_norm_`` raises, and no parameter of the model changed."""
    net = _model()
    if extra is not None:
        net.insert(*extra)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(error, match=match):
        clip_operator_norm_(net, max_norm, input_shapes=shapes)
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_errors_come_before_any_weight_changes():
    _unchanged_after(ValueError, r"no input shape for layer\(s\) \['4'\]", {"0": 8, "2": 8})
    _unchanged_after(ValueError, "max_norm", SHAPES, max_norm=-1.0)
    _unchanged_after(ValueError, "`max_norm` must be a finite positive number", SHAPES, max_norm=0.0)
    _unchanged_after(ValueError, "has 1 entries but the kernel has 2 spatial axes", {**SHAPES, "2": (8,)})
    reflect = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    _unchanged_after(ValueError, "padding_mode='reflect'", {**SHAPES, "5": 8}, extra=(5, reflect))
    # A circular layer whose stride does not divide its map, first in the model.
    strided = nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular")
    shapes = {"0": 7, "1": 8, "3": 8, "5": 4}
    _unchanged_after(ValueError, "the stride must divide the map", shapes, extra=(0, strided))


def test_clipper_projects_every_nth_step_and_detaches():
    net = _model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # the weights change only by projection
    with pytest.raises(ValueError, match="`every` must be a positive int"):
        OperatorNormClipper(net, 1.0, every=0)
    with pytest.raises(ValueError, match="`max_norm` must be a finite positive number"):
        OperatorNormClipper(net, float("nan"))
    clipper = OperatorNormClipper(net, 1.0, every=3, **CLIP)
    handle = clipper.attach(optimizer)
    projected_at = []
    for step in range(1, 8):
        previous = clipper.last_report
        optimizer.zero_grad()
        net(torch.randn(2, 2, 8, 8)).sum().backward()  # records the input shapes
        optimizer.step()
        if clipper.last_report is not previous:
            projected_at.append(step)
            assert all(norm <= BOUND for norm in _norms(net, SHAPES).values())
    assert projected_at == [3, 6]
    assert clipper.steps == 7
    handle.remove()
    clipper.remove()
    assert all(not layer._forward_pre_hooks for _, layer in conv_layers(net))
    report = clipper.last_report
    for _ in range(3):
        optimizer.step()
    assert clipper.last_report is report
    assert clipper.steps == 7


def test_clipper_refuses_unsupported_layers_at_construction():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate"))
    with pytest.raises(ValueError, match="padding_mode='replicate'"):
        OperatorNormClipper(net, 1.0)


def test_parametrization_bounds_the_weight_and_is_differentiable():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular").double()
    with torch.no_grad():
        conv.weight.mul_(4.0)
    parametrize_operator_norm(conv, 1.0, (6, 6), **{**CLIP, "tol": 1e-9})  # float64: tight
    norm = convsv.operator_norm(conv.weight.detach(), (6, 6), **layer_options(conv, (6, 6)))
    assert float(norm) <= 1 + 1e-9
    # Gradients reach the unconstrained weight, and match finite differences (one projection step).
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular").double()
    parametrize_operator_norm(conv, 0.5, (5, 5))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    conv(x).square().sum().backward()
    original = conv.parametrizations.weight.original
    assert original.grad is not None
    assert bool(original.grad.abs().sum() > 0)
    projection = conv.parametrizations.weight[0]
    weight = original.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: projection(w).square().sum(), (weight,))


def test_parametrization_refuses_bad_configuration_at_registration():
    with pytest.raises(ValueError, match="max_norm"):
        parametrize_operator_norm(nn.Conv2d(1, 1, 3, padding=1), 0.0 - 1, 8)
    with pytest.raises(ValueError, match="`input_shape` has 3 entries but the kernel has 2 spatial axes"):
        parametrize_operator_norm(nn.Conv2d(1, 1, 3, padding=1), 1.0, (8, 8, 8))


def _digits_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def _train(clip_every: int | None, steps: int = 60, max_norm: float = 1.0):
    """Adam on the digits; returns (test accuracy, norms after each projection, final norms)."""
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in digits(seed=0))
    x_train, x_test = x_train[:, None], x_test[:, None]
    net = _digits_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    shapes = {"0": (8, 8), "2": (8, 8), "4": (4, 4)}
    checked = []
    if clip_every is not None:
        clipper = OperatorNormClipper(net, max_norm, every=clip_every, **CLIP)
        clipper.attach(optimizer)

        def check(*_):  # registered after the clipper: runs after it, on the same step
            if clipper.steps % clip_every == 0:
                checked.append(_norms(net, shapes))

        optimizer.register_step_post_hook(check)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(y_train), (64,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
    return accuracy, checked, _norms(net, shapes)


@pytest.mark.slow
def test_digits_training_with_and_without_the_clipper():
    accuracy, checked, _ = _train(clip_every=5)
    assert len(checked) == 12
    for norms in checked:
        assert all(norm <= BOUND for norm in norms.values()), norms
    assert accuracy > 0.6, accuracy  # chance is 0.1
    free_accuracy, _, free_norms = _train(clip_every=None)
    assert max(free_norms.values()) > 1.5, free_norms  # unconstrained, the bound is exceeded
    assert free_accuracy > 0.6


def _run_ranks(mode: str, world: int, tmp_path: Path) -> None:
    worker = Path(__file__).with_name("torch_worker.py")
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), mode, str(rank), str(world), str(init), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_bounded_weights(tmp_path):
    _run_ranks("ddp", 2, tmp_path)
    states = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    shapes = {"0": (8, 8), "2": (8, 8)}
    for name, shape in shapes.items():
        layer = (
            nn.Conv2d(1, 4, 3, padding=1)
            if name == "0"
            else nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2)
        )
        options = layer_options(layer, shape)
        norm = convsv.operator_norm(states[0][f"{name}.weight"].double(), shape, tol=1e-8, **options)
        assert float(norm) <= BOUND


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weights_stay_on_the_device_without_synchronising():
    net = _model().cuda()
    pointers = [layer.weight.data_ptr() for _, layer in conv_layers(net)]
    with warnings.catch_warnings():  # torch warns that the debug mode is a prototype
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")  # any device-to-host copy raises
    try:
        report = clip_operator_norm_(net, 1.0, input_shapes=SHAPES, method="extrapolated", iterations=20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [layer.weight.data_ptr() for _, layer in conv_layers(net)] == pointers
    assert all(r.norm_after.is_cuda for r in report)
    assert all(norm <= 1 + 1e-4 for norm in _norms(net, SHAPES).values())


def test_the_tutorial_script_runs_and_bounds_every_layer(capsys):
    script = runpy.run_path(str(EXAMPLES / "torch_digits.py"), run_name="example")
    script["main"](["--steps", "20", "--every", "10", "--max-norm", "0.8"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("test accuracy: ") for line in lines), lines
    norms = [float(line.split()[4]) for line in lines if line.startswith("layer ")]
    assert len(norms) == 3, lines
    assert all(norm <= 0.8 * BOUND for norm in norms), lines
