"""experiments/digits_spectral_norm.py: its quick run as a user runs it, and its true-norm reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
from digits_spectral_norm import MAPS, true_norm  # noqa: E402


def test_true_norm_is_the_dense_matrix_norm():
    """The script's reader against a written-out dense matrix of the same layer (its own route)."""
    from _reference import general_dense

    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    kernel = layer.weight.detach().double().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    dense = general_dense(kernel, (6, 6), stride=(2, 2), dilation=(1, 1), groups=1, pads=((1, 1),) * 2)
    assert true_norm(layer, (6, 6)) == pytest.approx(np.linalg.svd(dense, compute_uv=False)[0], rel=1e-5)


def test_quick_run_normalises_every_convolution(run_script, tmp_path):
    result = run_script("digits_spectral_norm.py", "--quick", "--out", "out")
    runs = json.loads((tmp_path / "out" / "spectral-norm.json").read_text())["runs"]
    assert [r["arm"] for r in runs] == ["PyTorch spectral_norm", "convsv spectral_norm"]
    ours = runs[1]
    # convsv's holds each layer's true norm (read from the layer's outputs) at 1, in eval mode.
    assert ours["true_norms"] == pytest.approx([1.0] * len(MAPS), abs=0.02)
    assert ours["convsv_norms"] == pytest.approx(ours["true_norms"], rel=1e-4)
    # PyTorch's holds the reshaped kernel near 1 and leaves the layer's norm well above it.
    assert max(runs[0]["true_norms"]) > 1.3
    assert result.stdout.count("| convsv spectral_norm |") == 1
