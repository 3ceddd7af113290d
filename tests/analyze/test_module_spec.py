"""``convsv analyze STATE_DICT --module PACKAGE.MODULE:CALLABLE``: models of the user's own classes.

A checkpoint that pickles such a model is refused (it would run stored code);
its state dict with the class named on the command line is read. The norms are
checked against the dense matrices of the model's own convolutions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from .common import analyze, analyze_error, analyze_json, need

pytestmark = pytest.mark.backend("numpy")

SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A class of the user's own, with a residual connection."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.mix = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.mix(y)
        return self.head(y.mean((2, 3)))


def build():
    return Net()


def wider():
    net = Net()
    net.head = nn.Linear(4, 3)
    return net


def not_a_module():
    return 3
'''


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """``usermodels_spec.py`` in the current directory, a trained-looking instance, its two checkpoints."""
    torch = need("torch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usermodels_spec.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermodels_spec

    torch.manual_seed(0)
    net = usermodels_spec.build()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.3, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    net.eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    torch.save(net, tmp_path / "whole.pt")
    yield net
    monkeypatch.delitem(__import__("sys").modules, "usermodels_spec")


def _dense_norm(torch, conv, size):
    """The norm of ``conv`` (bias aside) on ``size`` maps, from its outputs on one-hot inputs."""
    shape = (conv.in_channels, *size)
    basis = torch.eye(math.prod(shape)).reshape(-1, *shape)
    with torch.no_grad():
        columns = (conv(basis) - conv(torch.zeros(1, *shape))).reshape(len(basis), -1).T
    return float(np.linalg.norm(columns.double().numpy(), 2))


def test_state_dict_with_its_module(capsys, user_model):
    torch = need("torch")
    for file in ("net.pt", "checkpoint.pth"):
        rows = analyze_json(capsys, file, "--module", "usermodels_spec:build", "--input-size", "6", "7")
        assert [row["name"] for row in rows] == ["conv", "mix"]
        for row, conv in zip(rows, (user_model.conv, user_model.mix), strict=True):
            assert row["input_shape"] == [6, 7]
            assert row["groups"] == conv.groups
            assert row["operator_norm"] == pytest.approx(_dense_norm(torch, conv, (6, 7)), rel=1e-5)


def test_state_dict_with_its_module_certifies_the_network(capsys, user_model):
    torch = need("torch")
    from convsv.torch import lipschitz_bound

    result = analyze_json(
        capsys, "net.pt", "--module", "usermodels_spec:build", "--network", "--input-size", "6"
    )
    expected = lipschitz_bound(user_model, torch.zeros(1, 3, 6, 6), lower_bound_samples=0).upper
    assert result["upper"] == expected
    assert 0 < result["lower"] <= result["upper"]


def test_a_pickled_class_of_ones_own_points_to_module(capsys, user_model):
    err = analyze_error(capsys, "whole.pt", "--input-size", "6", message="does not unpickle")
    assert "--module" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usermodels_spec", "give PACKAGE.MODULE:CALLABLE"),
        ("no_such_package_here:build", "building the model failed: ModuleNotFoundError"),
        ("usermodels_spec:missing", "building the model failed: AttributeError"),
        ("usermodels_spec:not_a_module", "returned a int, not a torch.nn.Module"),
        ("usermodels_spec:wider", "does not fit the model --module 'usermodels_spec:wider' builds"),
    ],
)
def test_module_errors(capsys, user_model, spec, message):
    analyze_error(capsys, "net.pt", "--module", spec, "--input-size", "6", message=message)


def test_module_needs_a_state_dict(capsys, user_model, tmp_path):
    analyze_error(capsys, "whole.pt", "--module", "usermodels_spec:build", message="does not unpickle")
    np.savez(tmp_path / "k.npz", conv=np.ones((3, 3, 2, 2)))
    analyze_error(capsys, "k.npz", "--module", "usermodels_spec:build", message="not a .npz file's")
    analyze_error(
        capsys, "k.npz", "--module", "usermodels_spec:build", "--network", message="not a .npz file's"
    )
    with pytest.raises(SystemExit):
        analyze(capsys, "--module", "usermodels_spec:build")
    assert "--module needs MODEL" in capsys.readouterr().err
