"""experiments/clipping.py against independent references.

Network sizes come from He et al. (2016)'s table, singular values from NumPy's SVD, and
operator norms from the dense matrix of each layer, built by applying the PyTorch layer
itself to every one-hot input in float64.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from clipping import (  # noqa: E402
    Setting,
    cifar_resnet,
    clip_reshaped_,
    operator_norms,
    parse_settings,
    reshaped_norms,
    train_run,
)
from torch import nn  # noqa: E402


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def dense_norm(layer: nn.Conv2d, input_shape: tuple[int, int]) -> float:
    """Largest singular value of the layer's matrix: the layer applied to every one-hot input."""
    layer = copy.deepcopy(layer).double()
    n = layer.in_channels * input_shape[0] * input_shape[1]
    one_hots = torch.eye(n, dtype=torch.float64).reshape(n, layer.in_channels, *input_shape)
    with torch.no_grad():
        # Subtracting the response to zero removes the bias: what is left is the linear map.
        columns = layer(one_hots) - layer(torch.zeros_like(one_hots[:1]))
    return float(np.linalg.svd(columns.reshape(n, -1).numpy(), compute_uv=False)[0])


def test_resnet32_is_he_et_al_option_a():
    model = cifar_resnet(32)
    assert len(convs(model)) == 31  # 6n + 1 convolutions; option A shortcuts have none
    assert sum(p.numel() for p in model.parameters()) == 464_154  # 0.46 M in He et al.'s table
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_size_and_no_batch_norm_variant():
    assert round(sum(p.numel() for p in cifar_resnet(20).parameters()) / 1e6, 2) == 0.27  # He et al.
    plain = cifar_resnet(20, batch_norm=False, width=8, in_channels=1, num_classes=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(conv.bias is not None for conv in convs(plain).values())
    assert convs(plain)["0"].in_channels == 1
    assert plain(torch.zeros(1, 1, 8, 8)).shape == (1, 4)


@pytest.mark.parametrize("depth", [0, 7, 31, 33, "32", True])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="6n"):
        cifar_resnet(depth)


def test_parse_settings():
    settings = parse_settings("baseline, convsv:0.5,reshaped:0.2,convsv:1")
    assert settings == [
        Setting("baseline", None),
        Setting("convsv", 0.5),
        Setting("reshaped", 0.2),
        Setting("convsv", 1.0),
    ]
    assert [s.label for s in settings] == ["baseline", "convsv 0.5", "reshaped 0.2", "convsv 1.0"]


@pytest.mark.parametrize(
    "text", ["convsv", "baseline:1", "spectral:0.2", "convsv:-1", "convsv:abc", "reshaped:nan", "convsv:0"]
)
def test_parse_settings_names_the_bad_item(text):
    with pytest.raises(ValueError, match=f"bad setting '{text}'"):
        parse_settings(f"baseline,{text}")


def test_parse_settings_refuses_repeats():
    with pytest.raises(ValueError, match="repeated"):
        parse_settings("convsv:1,convsv:1.0")


def small_model(seed: int = 0, *, batch_norm: bool = True, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = cifar_resnet(8, batch_norm=batch_norm, width=4, in_channels=2)
    with torch.no_grad():
        for conv in convs(model).values():
            conv.weight.mul_(scale)
    return model


def test_clip_reshaped_is_numpy_svd_clipped():
    bound = 0.3
    model = small_model(scale=3.0)
    before = {name: conv.weight.detach().numpy().copy() for name, conv in convs(model).items()}
    clip_reshaped_(model, bound)
    for name, conv in convs(model).items():
        matrix = before[name].reshape(before[name].shape[0], -1)
        u, s, vh = np.linalg.svd(matrix, full_matrices=False)
        assert s[0] > bound  # the test clips something
        expected = (u * np.minimum(s, bound)) @ vh
        after = conv.weight.detach().numpy().reshape(matrix.shape)
        np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
        assert np.linalg.svd(after, compute_uv=False)[0] <= bound * (1 + 1e-5)
    norms = reshaped_norms(model)
    assert set(norms) == set(before)
    assert max(norms.values()) == pytest.approx(bound, rel=1e-5)


def test_operator_norms_are_the_dense_norms():
    model = small_model(scale=2.0)
    model[1].running_mean.fill_(0.25)
    model.train()
    # The input shape of every convolution, worked out by hand: 8x8 maps, then 4x4, then 2x2.
    shapes = {
        "0": (8, 8),
        "3.conv1": (8, 8),
        "3.conv2": (8, 8),
        "4.conv1": (8, 8),
        "4.conv2": (4, 4),
        "5.conv1": (4, 4),
        "5.conv2": (2, 2),
    }
    norms = operator_norms(model, torch.randn(1, 2, 8, 8))
    assert set(norms) == set(shapes)
    for name, conv in convs(model).items():
        assert norms[name] == pytest.approx(dense_norm(conv, shapes[name]), rel=1e-5), name
    # The forward pass that recorded the shapes left batch norm's statistics and the mode alone.
    assert model.training
    assert torch.all(model[1].running_mean == 0.25)


def random_data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, 8, 8, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    return x, y


def run(setting: Setting, *, epochs: int = 1, every: int = 1, lr: float = 0.05, **options):
    x, y = random_data()
    model = small_model(batch_norm=False)
    record = train_run(
        model,
        lambda epoch: [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)],
        (x[:32], y[:32]),
        setting,
        epochs=epochs,
        lr_at=lambda epoch: lr,
        every=every,
        log=lambda message: None,
        **options,
    )
    return model, record


def test_convsv_projection_bounds_every_layer():
    bound = 0.5
    model, record = run(
        Setting("convsv", bound),
        every=2,  # the 4th and last step is projected
        clip_options={"method": "extrapolated", "iterations": 100, "tol": 1e-6},
    )
    assert record["steps"] == 4
    assert record["projection_seconds"] > 0
    sizes = [8, 8, 8, 8, 4, 4, 2]  # each convolution's input map, in order (as in the test above)
    for (name, conv), size in zip(convs(model).items(), sizes, strict=True):
        # Projected after the last step: the circular layer on the padded map is within the bound,
        # and the zero-padded layer the network applies is no larger.
        assert dense_norm(conv, (size, size)) <= bound * (1 + 1e-5), name
    assert record["max_operator_norm"] <= bound * (1 + 1e-5)
    json.dumps(record, allow_nan=False)


def test_one_paper_step_lowers_the_norms():
    _, baseline = run(Setting("baseline"))
    _, clipped = run(Setting("convsv", 0.5))  # the default: one clip-and-crop step per projection
    assert baseline["max_operator_norm"] > 1.0
    assert clipped["max_operator_norm"] < 0.5 * baseline["max_operator_norm"]
    assert baseline["projection_seconds"] == 0.0


def test_reshaped_projection_and_record():
    bound = 0.2
    model, record = run(Setting("reshaped", bound), epochs=2, every=2)
    for conv in convs(model).values():
        weight = conv.weight.detach().numpy()
        assert np.linalg.svd(weight.reshape(weight.shape[0], -1), compute_uv=False)[0] <= bound * (1 + 1e-5)
    assert record["setting"] == "reshaped 0.2"
    assert (record["method"], record["bound"], record["steps"]) == ("reshaped", bound, 8)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["test_error"] == record["history"][-1]["test_error"]
    assert record["max_reshaped_norm"] == pytest.approx(bound, rel=1e-5)
    assert record["max_operator_norm"] == max(record["operator_norms"].values())
    json.dumps(record, allow_nan=False)


def test_divergence_is_recorded_not_raised():
    _, record = run(Setting("baseline"), epochs=3, lr=1e12)
    assert record["diverged"]
    assert len(record["history"]) < 3
    json.dumps(record, allow_nan=False)  # NaN norms and losses are written as null
