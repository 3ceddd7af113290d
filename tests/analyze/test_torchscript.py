"""``convsv analyze`` on TorchScript archives (``torch.jit.script`` / ``torch.jit.trace``, then ``save``).

convsv reads them without ``torch.jit.load`` (which runs code stored in the archive). Every layer
is analysed on ``--input-size``; the references are the same model saved as a ``torch.nn`` module
(its rows, at each layer's own map size) and each convolution as a ``torch.nn`` layer of its own on
the ``--input-size`` map (its dense matrix and ``convsv.singular_values``, see ``common``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile

import pytest

from .common import (
    analyze,
    analyze_error,
    analyze_json,
    check_rows,
    need,
    torch_layers,
    torch_module_file,
    torch_net,
)

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def dilated_net():
    """Dilations, padding="same" with an even kernel, a dilated transposed layer."""
    torch = need("torch")
    nn = torch.nn
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, dilation=2, padding=2),
        nn.Conv2d(4, 3, (2, 3), dilation=(1, 2), padding="same"),
        nn.ConvTranspose2d(3, 2, 3, stride=2, dilation=2, padding=1),
    ).eval()


def save_archive(net, path, how):
    """``net`` scripted or traced (on a 1x3x8x8 input), saved with ``torch.jit.save``."""
    torch = need("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings, padding="same" with an even kernel
        archive = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(1, 3, 8, 8))
    archive.save(str(path))
    return path


def each_layer_alone(net, size):
    """Every conv of ``net`` as a torch.nn layer of its own on a ``size`` map (dense-matrix reference)."""
    torch = need("torch")
    expected = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            (alone,) = torch_layers(torch.nn.Sequential(m), size, channels=m.in_channels)
            if m.padding == "same":  # PyTorch pads the dilated span minus one, the odd one out after
                alone.pads = [[0, 1], [2, 2]]
            expected.append(dataclasses.replace(alone, name=name))
    return expected


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("make", [lambda: torch_net(1), dilated_net], ids=["torch_net", "dilated"])
def test_archive_rows_are_the_modules(capsys, tmp_path, how, make):
    net = make()
    path = save_archive(net, tmp_path / ("archive.pt" if how == "script" else "archive.jit"), how)
    module = torch_module_file(tmp_path, net)
    rows = analyze_json(capsys, path, "--input-size", "8")
    check_rows(rows, each_layer_alone(net, (8, 8)))
    assert all(row["assumed_options"] is False and row["note"] is None for row in rows)
    # At each layer's own map (which the module's forward pass finds), the rows are the module's.
    for expected in analyze_json(capsys, module, "--input-size", "8"):
        size = [str(n) for n in expected["input_shape"]]
        (row,) = analyze_json(capsys, path, "--input-size", *size, "--layers", expected["name"])
        assert {**row, "norm_product": None} == {**expected, "norm_product": None}
    table, _ = analyze(capsys, path, "--input-size", "8", "--no-progress")
    assert "(TorchScript, " in table
    assert "note: a TorchScript archive stores no feature-map sizes" in table


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("mode", ["circular", "reflect"])
def test_layers_the_module_reader_refuses_are_refused_alike(capsys, tmp_path, how, mode):
    """One translation: padding 2 around 3x3 is no circulant map, reflect padding is not modelled."""
    torch = need("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=2, padding_mode=mode)
    )
    path = save_archive(net, tmp_path / "archive.pt", how)
    refused = analyze_error(
        capsys, torch_module_file(tmp_path, net), "--input-size", "8", message="layer '1'"
    )
    assert analyze_error(capsys, path, "--input-size", "8", message="layer '1'") == refused
    (row,) = analyze_json(capsys, path, "--input-size", "8", "--layers", "0")
    check_rows([row], each_layer_alone(net[:1], (8, 8)))


def test_archive_needs_an_input_size(capsys, tmp_path):
    path = save_archive(torch_net(0), tmp_path / "model.pt", "script")
    message = "the feature-map size of layer 'conv' is not fixed by this TorchScript file (it stores none"
    analyze_error(capsys, path, message=message, plot=tmp_path / "p.png")


def test_frozen_archive(capsys, tmp_path):
    """torch.jit.freeze inlines the weights into the code: refused, saying what to save instead."""
    torch = need("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        frozen = torch.jit.freeze(torch.jit.script(net))
    path = tmp_path / "frozen.pt"
    frozen.save(str(path))
    message = f"{path}: no torch.nn convolution modules in this TorchScript archive (a frozen or inlined"
    err = analyze_error(capsys, path, "--input-size", "8", message=message)
    assert "torch.save(model), its state_dict, or an ONNX export" in err


def test_a_conv_the_trace_never_called(capsys, tmp_path):
    torch = need("torch")
    nn = torch.nn

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.used(x)

    net = Unused().eval()
    path = save_archive(net, tmp_path / "unused.pt", "trace")
    analyze_error(
        capsys, path, "--input-size", "8", message="layer 'spare' on a 8x8 map: it was not called when"
    )
    (row,) = analyze_json(capsys, path, "--input-size", "8", "--layers", "used")
    check_rows([row], each_layer_alone(nn.Sequential(net.used), (8, 8)), names=["used"])


def tripwire_net():
    """A conv, then a module whose TorchScript ``__setstate__`` raises: loading it runs that."""
    torch = need("torch")

    class Armed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.armed = True

        def forward(self, x):
            return x

        @torch.jit.export
        def __getstate__(self) -> tuple[bool, bool]:
            return (self.armed, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[bool, bool]) -> None:
            self.armed, self.training = state[0], state[1]
            if self.armed:
                raise RuntimeError("code stored in the archive ran")  # noqa: EM101

    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), Armed()).eval()


def test_code_in_the_archive_is_not_run(capsys, tmp_path, monkeypatch):
    torch = need("torch")
    net = tripwire_net()
    path = save_archive(net, tmp_path / "tripwire.pt", "script")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated
        with pytest.raises(Exception, match="code stored in the archive ran"):
            torch.jit.load(str(path), map_location="cpu")

    def refuse(*args, **kwargs):
        pytest.fail("convsv called a loader that runs the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    rows = analyze_json(capsys, path, "--input-size", "8")
    check_rows(rows, each_layer_alone(net[:1], (8, 8)))


def rewrite(path, target, **replace):
    """A copy of the zip archive ``path`` with the entries named ``*/KEY`` replaced."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            key = info.filename.split("/", 1)[-1]
            copy.writestr(
                info.filename, replace.get(key.replace("/", "_").replace(".", "_"), source.read(info))
            )
    return target


def test_globals_in_the_archive_are_not_imported_or_called(capsys, tmp_path, monkeypatch):
    """A data.pkl calling os.system: the unpickler makes it an inert record."""
    torch = need("torch")
    path = save_archive(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "model.pt", "script")
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    payload = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."  # os.system("true")
    evil = rewrite(path, tmp_path / "evil.pt", data_pkl=payload)
    analyze_error(
        capsys, evil, "--input-size", "8", message="no torch.nn convolution modules in this TorchScript"
    )
    assert calls == []


def test_damaged_archives(capsys, tmp_path):
    torch = need("torch")
    path = save_archive(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "model.pt", "script")
    analyze_json(capsys, path, "--input-size", "8")  # the archive itself is fine
    garbage = rewrite(path, tmp_path / "garbage.pt", data_pkl=b"not a pickle")
    analyze_error(capsys, garbage, "--input-size", "8", message="not a readable TorchScript file")
    # The weight (4, 3, 3, 3) with strides (28, 9, 3, 1) instead of (27, ...) reads past its 108 values.
    data = zipfile.ZipFile(path).read("model/data.pkl")
    assert data.count(b"K\x1bK\tK\x03K\x01") == 1
    past = rewrite(
        path, tmp_path / "past.pt", data_pkl=data.replace(b"K\x1bK\tK\x03K\x01", b"K\x1cK\tK\x03K\x01")
    )
    analyze_error(capsys, past, "--input-size", "8", message="a tensor reaching past the end of its storage")
    missing = rewrite(path, tmp_path / "missing.pt", data_0=b"\x00" * 8)
    analyze_error(
        capsys, missing, "--input-size", "8", message="storage 0 holds 8 bytes, not 108 float32 values"
    )
