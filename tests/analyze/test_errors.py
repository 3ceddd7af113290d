"""``convsv analyze``'s errors: one message, status 1, nothing on stdout, no plot."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from .common import analyze, analyze_error, analyze_json, check_rows, need, torch_layers, torch_module_file

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def test_missing_file(capsys, tmp_path):
    analyze_error(capsys, tmp_path / "missing.pt", message="no such file", plot=tmp_path / "p.png")


def test_directory(capsys, tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    analyze_error(capsys, folder, message="is a directory", plot=tmp_path / "p.png")


def test_unknown_extension(capsys, tmp_path):
    path = tmp_path / "model.xyz"
    path.write_bytes(b"not a model")
    analyze_error(capsys, path, message="unknown model format '.xyz'", plot=tmp_path / "p.png")


FORMATS = {".pt": "PyTorch checkpoint", ".onnx": "ONNX", ".npz": "NumPy .npz", ".keras": "Keras",
           ".safetensors": "safetensors"}  # fmt: skip


FORMAT_MODULES = {
    ".pt": "torch",
    ".onnx": "onnx",
    ".npz": "numpy",
    ".keras": "keras",
    ".safetensors": "safetensors",
}


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_corrupt_file(capsys, tmp_path, request, suffix):
    if suffix == ".keras":
        request.getfixturevalue("keras")
    need(FORMAT_MODULES[suffix])
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    analyze_error(
        capsys,
        path,
        "--input-size",
        "8",
        message=f"not a readable {FORMATS[suffix]} file",
        plot=tmp_path / "p.png",
    )


@pytest.fixture
def valid_file(request, tmp_path):
    """A readable model file of each format, to cut short."""
    suffix = request.param
    if suffix == ".pt":
        return request.getfixturevalue("torch_files")[1]["module1"]
    if suffix == ".onnx":
        return request.getfixturevalue("onnx_files")["static"]
    if suffix == ".keras":
        return request.getfixturevalue("keras_files")[1]["static"]
    rng = np.random.default_rng(2)
    arrays = {f"conv{i}": rng.standard_normal((3, 3, 8, 8)).astype(np.float32) for i in range(4)}
    path = tmp_path / f"valid{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        need("safetensors.numpy").save_file(arrays, path)
    return path


@pytest.mark.parametrize("valid_file", list(FORMATS), indirect=True)
def test_truncated_file(capsys, tmp_path, valid_file):
    data = valid_file.read_bytes()
    path = tmp_path / f"truncated{valid_file.suffix}"
    path.write_bytes(data[: len(data) // 2])
    analyze(capsys, valid_file, "--input-size", "8", "--format", "csv")  # the whole file is fine
    analyze_error(
        capsys,
        path,
        "--input-size",
        "8",
        message=f"not a readable {FORMATS[valid_file.suffix]} file (corrupt or truncated?)",
        plot=tmp_path / "p.png",
    )


def test_npy_file_named_npz(capsys, tmp_path):
    path = tmp_path / "kernel.npz"
    with path.open("wb") as file:
        np.save(file, np.ones((3, 3, 2, 2)))
    analyze_error(capsys, path, "--input-size", "8", message="holds a single array", plot=tmp_path / "p.png")


def test_torch_module_without_convolutions(capsys, tmp_path):
    torch = need("torch")
    path = torch_module_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(4, 2)))
    analyze_error(
        capsys, path, "--input-size", "8", message="no convolutional layers found", plot=tmp_path / "p.png"
    )


def test_npz_without_convolutions(capsys, tmp_path):
    path = tmp_path / "dense.npz"
    np.savez(path, w1=np.ones((4, 3)), w2=np.ones((2, 4)), b=np.ones(2))
    analyze_error(
        capsys, path, "--input-size", "8", message="no convolutional layers found", plot=tmp_path / "p.png"
    )


def test_dynamic_onnx_needs_an_input_size(capsys, tmp_path, onnx_files):
    analyze_error(capsys, onnx_files["dynamic"], message="give --input-size", plot=tmp_path / "p.png")


def test_state_dict_needs_an_input_size(capsys, tmp_path, torch_files):
    _, paths = torch_files
    analyze_error(capsys, paths["state_dict"], message="give --input-size", plot=tmp_path / "p.png")


def test_a_stride_that_does_not_divide_the_map(capsys, tmp_path):
    # A zero-padded layer needs no map its stride divides: its own norm, and the circular layer on
    # the padded map (9 x 11) rounded up to a multiple of the stride (10 x 11).
    torch = need("torch")
    conv = torch.nn.Conv2d(3, 4, 3, stride=(2, 1), padding=1)
    path = torch_module_file(tmp_path, torch.nn.Sequential(conv))
    (row,) = analyze_json(capsys, path, "--input-size", "7", "9")
    (expected,) = torch_layers(torch.nn.Sequential(conv), (7, 9))
    assert expected.twin_input == (10, 11)
    check_rows([row], [expected])


def test_a_circular_stride_must_divide_the_map(capsys, tmp_path):
    torch = need("torch")
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular")
    path = torch_module_file(tmp_path, torch.nn.Sequential(conv))
    message = "layer '0' on a 7x7 map: circular padding with stride 2 on an axis of 7 is not a circulant map"
    analyze_error(capsys, path, "--input-size", "7", message=message, plot=tmp_path / "p.png")


@pytest.mark.parametrize("mode", ["circular", "reflect"])
def test_layers_the_adapters_refuse_are_refused_with_the_same_reason(capsys, tmp_path, mode):
    # One translation for convsv.torch and analyze: padding 2 around a 3x3 kernel is not a
    # circulant map, and reflect padding is not modelled. --layers leaves such a layer out.
    torch = need("torch")
    from convsv.torch import layer_options

    odd = torch.nn.Conv2d(4, 4, 3, padding=2, padding_mode=mode)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), odd)
    with pytest.raises(ValueError, match=r"circulant|not modelled") as refused:
        layer_options(odd, (8, 8))
    path = torch_module_file(tmp_path, net)
    message = f"layer '1' on a 8x8 map: {refused.value} (--layers can leave it out)"
    analyze_error(capsys, path, "--input-size", "8", message=message)
    (row,) = analyze_json(capsys, path, "--input-size", "8", "--layers", "0")
    check_rows([row], torch_layers(torch.nn.Sequential(net[0]), (8, 8)))


def test_layers_matching_nothing(capsys, tmp_path, torch_files):
    _, paths = torch_files
    analyze_error(
        capsys,
        paths["module1"],
        "--input-size",
        "8",
        "--layers",
        "nothing*",
        message="--layers 'nothing*' matches none of the layers (conv, depthwise",
        plot=tmp_path / "p.png",
    )


# A user's own nn.Module subclass, made importable from this module (pickle saves classes by name).
CustomNet: Any = None


def test_custom_module_class_is_not_unpickled(capsys, tmp_path, monkeypatch):
    torch = need("torch")

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    Custom.__qualname__ = Custom.__name__ = "CustomNet"
    monkeypatch.setattr(sys.modules[__name__], "CustomNet", Custom)
    path = torch_module_file(tmp_path, Custom())
    analyze_error(capsys, path, "--input-size", "8", message="does not unpickle", plot=tmp_path / "p.png")


@pytest.fixture
def plain_npz(tmp_path, rng):
    path = tmp_path / "kernel.npz"
    np.savez(path, conv=rng.standard_normal((3, 3, 2, 2)))
    return path


def test_unknown_device(capsys, tmp_path, plain_npz):
    analyze_error(
        capsys, plain_npz, "--input-size", "4", "--device", "nonsense", message="expected cpu, cuda",
        plot=tmp_path / "p.png",
    )  # fmt: skip


def test_cuda_device_without_a_gpu(capsys, tmp_path, plain_npz):
    torch = need("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    analyze_error(
        capsys,
        plain_npz,
        "--input-size",
        "4",
        "--device",
        "cuda",
        message="device 'cuda'",
        plot=tmp_path / "p.png",
    )


def test_exit_status_of_the_process(tmp_path):
    missing = tmp_path / "missing.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "convsv", "analyze", str(missing)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"convsv analyze: error: {missing}: no such file\n"
    result = subprocess.run(
        [sys.executable, "-m", "convsv", "analyze", "--format", "xml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid choice: 'xml'" in result.stderr
