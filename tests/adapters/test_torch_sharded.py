"""The PyTorch adapter and the core on sharded weights: FSDP2 (``fully_shard``) and ``DTensor`` kernels.

Two gloo ranks on the CPU (``torch_sharded_worker.py``, started through ``torch_worker.py``). The
weights each rank ends with are gathered there and compared here with a single-process run, and
their norms are read from the layer's own dense matrix (its outputs on one-hot inputs, float64),
not from convsv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import convsv.torch
from convsv.torch import clip_operator_norm_, spectral_norm

from .test_torch import _dense, _run_ranks
from .torch_worker import model

CLIP = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}
BOUND = 1.0 + 1e-5  # max_norm * (1 + tol), with float32 round-off
SHAPES = {"0": 8, "2": 8}
CONVS = {
    "0": lambda: nn.Conv2d(1, 4, 3, padding=1),
    "2": lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
}


def _true_norm(name: str, weight: torch.Tensor) -> float:
    """The largest singular value of convolution ``name`` with ``weight``, on its 8 x 8 input."""
    layer = CONVS[name]()
    with torch.no_grad():
        layer.weight.copy_(weight)
    return float(np.linalg.svd(_dense(layer, (8, 8)), compute_uv=False)[0])


def _ranks(mode: str, tmp_path: Path) -> list:
    _run_ranks(mode, 2, tmp_path)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.slow
def test_fsdp2_projection_equals_the_unsharded_one_on_every_rank(tmp_path):
    """Also, in the worker: DTensor kernels of four layouts in, the same layouts out, plain norms."""
    ranks = _ranks("fsdp-clip", tmp_path)
    reference = model()
    report = clip_operator_norm_(reference, 1.0, input_shapes=SHAPES, **CLIP)
    expected = reference.state_dict()
    for saved in ranks:
        assert saved["weights"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(saved["weights"][key], value, rtol=1e-5, atol=1e-6)
        assert [name for name, _, _ in saved["norms"]] == ["0", "2"]
        for (_, before, after), r in zip(saved["norms"], report, strict=True):
            assert before == pytest.approx(float(r.norm_before), rel=1e-5)
            assert after == pytest.approx(float(r.norm_after), rel=1e-5)
    for key in expected:
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key
    for name in CONVS:
        assert _true_norm(name, ranks[0]["weights"][f"{name}.weight"]) <= BOUND
        assert _true_norm(name, model().state_dict()[f"{name}.weight"]) > 2  # the projection had work to do


@pytest.mark.slow
def test_fsdp2_training_with_the_clipper_keeps_every_conv_bounded(tmp_path):
    ranks = _ranks("fsdp-train", tmp_path)
    assert len(ranks[0]) == len(ranks[1]) == 3  # after steps 2, 4 and 6: each a projection
    for step, states in enumerate(zip(*ranks, strict=True)):
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), key
        for name in CONVS:
            norm = _true_norm(name, states[0][f"{name}.weight"])
            assert norm <= BOUND, (step, name, norm)
            if step == 0:  # the initial weights were 5x too large: the first projection lands on the bound
                assert norm > 0.99, (name, norm)
    assert not torch.equal(ranks[0][0]["0.weight"], ranks[0][-1]["0.weight"])  # it trained


@pytest.mark.slow
def test_fsdp2_spectral_norm_ranks_agree_and_the_layers_have_norm_one(tmp_path):
    """Each rank seeded apart before the vectors are made: FSDP2 broadcasts no buffers."""
    ranks = _ranks("fsdp-spectral", tmp_path)
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    assert torch.equal(ranks[0]["output"], ranks[1]["output"])
    # The same model in one process, with the gathered state: the same output, norm 1.
    net = model()
    spectral_norm(net[0], input_shape=8)
    spectral_norm(net[2], input_shape=8)
    net.load_state_dict(ranks[0]["state"])
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(torch.ones(2, 1, 8, 8)), ranks[0]["output"])
        for i, name in enumerate(CONVS):
            weight = net[int(name)].weight  # normalised by the stored vectors
            norm = _true_norm(name, weight)
            assert norm == pytest.approx(1.0, abs=1e-3), (name, norm)
            lower, upper = ranks[0]["bounds"][i]  # norm_bounds() of the sharded layer, in the worker
            assert lower == pytest.approx(norm, rel=1e-4)
            assert upper >= lower


def test_fsdp1_models_get_a_clear_error():
    """FSDP1 flattens the parameters: no kernel to read. (A stand-in of the class, by its name.)"""
    wrapper = type("FullyShardedDataParallel", (nn.Module,), {})()
    wrapper.add_module("net", model())
    with pytest.raises(TypeError, match=r"FSDP1 .*fully_shard"):
        clip_operator_norm_(wrapper, 1.0, input_shapes=SHAPES)
    with pytest.raises(TypeError, match="FSDP1"):
        list(convsv.torch.conv_layers(wrapper))
