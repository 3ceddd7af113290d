"""``convsv analyze`` on PyTorch modules, state dicts and safetensors files (see ``common``)."""

from __future__ import annotations

import pytest

from .common import (
    analyze,
    analyze_error,
    analyze_json,
    assumed_layers,
    check_rows,
    header,
    need,
    state_dict_arrays,
    torch_layers,
)

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


@pytest.mark.parametrize("output_padding", [0, 1])
def test_torch_module(capsys, torch_files, expected8, output_padding):
    _, paths = torch_files
    rows = analyze_json(capsys, paths[f"module{output_padding}"], "--input-size", "8")
    expected = expected8[output_padding]
    check_rows(rows, expected)
    assert [row["input_shape"] for row in rows] == [[8, 8], [8, 8], [4, 4], [4, 4], [7 + output_padding] * 2]
    assert all(row["note"] is None for row in rows)


# PyTorch warns that an even kernel with padding="same" copies the input (a performance note).
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
def test_torch_dilation_and_same_padding(capsys, tmp_path):
    torch = need("torch")
    nn = torch.nn
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, dilation=2, padding=2),
        nn.Conv2d(3, 2, (2, 3), dilation=(1, 2), padding="same"),
        nn.ConvTranspose2d(2, 2, 3, stride=2, dilation=2, padding=1),
    ).eval()
    path = tmp_path / "dilated.pt"
    torch.save(net, path)
    rows = analyze_json(capsys, path, "--input-size", "8")
    expected = torch_layers(net, (8, 8), channels=2)
    # padding="same": PyTorch pads the dilated span minus one, the odd one out after.
    expected[1].pads = [[0, 1], [2, 2]]
    check_rows(rows, expected)
    assert [row["dilation"] for row in rows] == [[2, 2], [1, 2], [2, 2]]
    assert rows[2]["output_shape"] == [17, 17]


@pytest.mark.parametrize("kind", ["state_dict", "checkpoint"])
def test_torch_state_dict_takes_options_as_assumed(capsys, torch_files, kind):
    nets, paths = torch_files
    rows = analyze_json(capsys, paths[kind], "--input-size", "8")
    check_rows(rows, assumed_layers(state_dict_arrays(nets[1]), (8, 8)))
    table, _ = analyze(capsys, paths[kind], "--input-size", "8", "--no-progress")
    assert "PyTorch state dict" in table
    assert "note: PyTorch state dict stores no layer options" in table
    assert all(" ? " in line for line in table.splitlines() if line.startswith(("conv ", "depthwise ")))


def test_state_dict_of_keras_shaped_kernels_is_refused(capsys, tmp_path):
    """An HWIO array in a state dict, read as PyTorch's OIHW, would be a 3x16 kernel: refused."""
    torch = need("torch")
    path = tmp_path / "keras_shaped.pt"
    torch.save({"conv.weight": torch.ones(3, 3, 2, 16)}, path)
    analyze_error(capsys, path, "--input-size", "8", message="pass --layout HWIO")


def test_safetensors_without_header(capsys, tmp_path, torch_files):
    safetensors = need("safetensors.numpy")
    nets, _ = torch_files
    arrays = state_dict_arrays(nets[1])
    path = tmp_path / "weights.safetensors"
    safetensors.save_file(arrays, path)
    rows = analyze_json(capsys, path, "--input-size", "8")
    check_rows(rows, assumed_layers(arrays, (8, 8)))
    table, _ = analyze(capsys, path, "--input-size", "8", "--no-progress")
    assert "note: safetensors stores no layer options" in table


def test_safetensors_with_header_matches_the_module(capsys, tmp_path, torch_files, expected8):
    safetensors = need("safetensors.numpy")
    nets, paths = torch_files
    expected = expected8[1]
    path = tmp_path / "described.safetensors"
    meta = header(expected, key=lambda name: f"{name}.weight")
    safetensors.save_file(state_dict_arrays(nets[1]), path, metadata={"convsv": meta})
    rows = analyze_json(capsys, path)  # the header fixes every map size
    check_rows(rows, expected, names=[f"{exp.name}.weight" for exp in expected])
    module_rows = analyze_json(capsys, paths["module1"], "--input-size", "8")
    for row, module_row in zip(rows, module_rows, strict=True):
        assert {**row, "name": module_row["name"]} == module_row
