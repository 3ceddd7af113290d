"""experiments/resnet_spectra.py (the paper's Appendix C) and its torchvision ResNets.

Ground truths: torchvision's documented parameter counts, and each layer's matrix built
densely by applying ``torch.nn.functional.conv2d`` to one-hot inputs, and its singular values
from ``torch.linalg.svdvals``.
"""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import resnet_spectra
import torch
import torch.nn.functional as F
from imagenet_resnet import resnet

# torchvision's documentation (the weights' `num_params`), e.g. ResNet50_Weights.IMAGENET1K_V2.
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Three resnet18 layers at a 32x32 input, with the map each sees (small, so that the dense matrices
# are): a 3x3, a strided 3x3 and a strided 1x1 shortcut.
CHECKED_LAYERS = {"layer3.0.conv2": 2, "layer4.0.conv1": 2, "layer4.0.downsample.0": 2}


def shapes_of(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in resnet(arch).state_dict().items()}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMETERS))
def test_parameter_counts_are_torchvisions(arch):
    with torch.device("meta"):
        model = resnet(arch)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[arch]


def test_parameter_names_and_strides_are_torchvisions():
    shapes = shapes_of("resnet50")
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.running_var"] == (256,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048)
    # ResNet v1.5: a downsampling bottleneck strides in its 3x3 convolution.
    stage = resnet("resnet50").layer2[0]
    assert (stage.conv1.stride, stage.conv2.stride, stage.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    # A basic-block network's first stage keeps its width: no shortcut convolution.
    assert "layer1.0.downsample.0.weight" not in shapes_of("resnet18")


def dense_spectrum(weight: torch.Tensor, size: int, stride: int, padding: str) -> np.ndarray:
    """Singular values of the layer's matrix, from the convolution of every one-hot input."""
    c_in, k = weight.shape[1], weight.shape[-1]
    n = c_in * size * size
    basis = torch.eye(n, dtype=torch.float64).reshape(n, c_in, size, size)
    padded = F.pad(basis, (k // 2,) * 4, mode=padding) if k > 1 else basis
    columns = F.conv2d(padded, weight.double(), stride=stride).reshape(n, -1)
    return torch.linalg.svdvals(columns).numpy()


def check_layers(result: dict, model: torch.nn.Module) -> dict[str, float]:
    """The reported norms, smallest values and counts of CHECKED_LAYERS against dense matrices."""
    rows = {row["name"]: row for row in result["layers"]}
    norms = {}
    for name, size in CHECKED_LAYERS.items():
        layer = model.get_submodule(name)
        s = dense_spectrum(layer.weight.detach(), size, layer.stride[0], "circular")
        row = rows[name]
        assert row["input_shape"] == [size, size]
        assert row["singular_value_count"] == s.size
        assert row["operator_norm"] == pytest.approx(s[0], rel=1e-4)
        assert row["smallest_singular_value"] == pytest.approx(s[-1], rel=1e-3, abs=1e-5)
        norms[name] = row["operator_norm"]
    return norms


def test_quick_run_is_a_labelled_random_init(run_script, tmp_path):
    result = run_script("resnet_spectra.py", "--quick", "--out", "out")
    data = json.loads((tmp_path / "out" / "spectra.json").read_text())
    assert data["random_init"] is True
    assert data["checkpoint"] is None
    assert "random initialisation" in data["weights"]
    assert (data["arch"], data["input_size"], len(data["layers"])) == ("resnet18", 32, 20)
    # The script's initialisation is torchvision's, from --seed (default 0).
    torch.manual_seed(0)
    check_layers(data, resnet("resnet18"))
    image = matplotlib.image.imread(tmp_path / "out" / "spectra.png")
    assert image.shape[0] > 300
    assert np.ptp(image[..., :3]) > 0.5
    assert "random initialisation" in result.stdout
    assert "layer4.1.conv2" in result.stdout
    assert "[20/20] layer4.1.conv2" in result.stderr


def test_checkpoint_weights_are_the_ones_analysed(run_script, tmp_path):
    torch.manual_seed(1)
    trained = resnet("resnet18")
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if name.endswith("conv1.weight"):
                param.mul_(1.5).add_(0.01)
    state = {f"module.{key}": value for key, value in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 90}, tmp_path / "trained.pth")
    run_script("resnet_spectra.py", "--quick", "--checkpoint", "trained.pth", "--out", "out")
    data = json.loads((tmp_path / "out" / "spectra.json").read_text())
    assert data["random_init"] is False
    assert data["weights"] == "checkpoint trained.pth"
    norms = check_layers(data, trained)
    # ...and not those of the random initialisation the run without a checkpoint reports.
    torch.manual_seed(0)
    random_layer = resnet("resnet18").layer4[0].conv1.weight.detach()
    random_norm = dense_spectrum(random_layer, 2, 2, "circular")[0]
    assert abs(norms["layer4.0.conv1"] / random_norm - 1) > 0.1


def test_mismatched_checkpoint_names_the_keys(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = resnet("resnet18").state_dict()
    state["fc.weight"] = state["fc.weight"][:10]
    torch.save(state, "resnet18.pth")
    assert resnet_spectra.main(["--arch", "resnet34", "--checkpoint", "resnet18.pth"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --checkpoint resnet18.pth does not match resnet34: missing keys: ")
    assert "missing keys: layer1.2.conv1.weight" in message
    assert "shapes differ: fc.weight (checkpoint (10, 512), resnet34 (1000, 512))" in message
    assert "\n" not in message
    assert not (tmp_path / "resnet-spectra").exists()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--checkpoint", "nowhere.pth"], 1, "error: --checkpoint nowhere.pth: no such file"),
        (["--quick", "--backend", "torch", "--device", "cuda:7"], 1, "error: device 'cuda:7'"),
        (["--arch", "resnet19"], 2, "invalid choice: 'resnet19'"),
        (["--input-size", "100"], 2, "--input-size 100: must be a positive multiple of 32"),
    ],
)
def test_user_errors(args, status, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = resnet_spectra.main(args)
    except SystemExit as exit:  # argparse
        code = exit.code
    assert code == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "resnet-spectra").exists()


def test_bounds_contain_the_zero_padded_norm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1, bias=False))
    rows, _ = resnet_spectra.layer_spectra(model, 8, lambda k: k, bounds=True)
    lower, upper = rows[0]["zero_padded_norm_bounds"]
    norm = dense_spectrum(model[0].weight.detach(), 8, 1, "constant")[0]
    assert lower <= norm * (1 + 1e-5)
    assert norm <= upper * (1 + 1e-5)
    assert upper == pytest.approx(norm, rel=0.2)  # bounds that say something


def test_mismatch_suggests_the_architecture_that_fits(capsys, tmp_path):
    torch.save(resnet("resnet18").state_dict(), tmp_path / "resnet18.pth")
    code = resnet_spectra.main(["--arch", "resnet50", "--checkpoint", str(tmp_path / "resnet18.pth")])
    assert code == 1
    assert "does not match resnet50 (it fits --arch resnet18): missing keys: " in capsys.readouterr().err
