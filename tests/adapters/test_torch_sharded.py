"""The PyTorch adapter and the core on sharded weights: FSDP2 (``fully_shard``) and ``DTensor`` kernels.

Two gloo ranks on the CPU, started once for the module (``torch_sharded_worker.py``, through
``torch_worker.py``). The weights each rank ends with are gathered there and compared here with a
single-process run, and their norms are read from the layer's own dense matrix (its outputs on
one-hot inputs, float64), not from convsv.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from filelock import FileLock  # a dependency of torch
from torch import nn

import convsv.torch
from convsv.torch import clip_operator_norm_, spectral_norm

from .test_torch import _dense, _run_ranks
from .torch_sharded_worker import parametrized_run
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


@pytest.fixture(scope="module")
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of two FSDP2 ranks saved: one run for every test here, and for every xdist worker
    of a session (starting the processes is most of its time). The ``DTensor`` kernels' checks run
    in it too: a failure there fails every test here."""
    if not hasattr(request.config, "workerinput"):  # not an xdist worker: this session's own folder
        out = tmp_path_factory.mktemp("fsdp")
        _run_ranks("fsdp", 2, out)
    else:  # the folder the session's workers share (pytest-xdist's recipe)
        out = tmp_path_factory.getbasetemp().parent / "fsdp-ranks"
        with FileLock(f"{out}.lock"):
            if not (out / "done").exists():
                out.mkdir(exist_ok=True)
                _run_ranks("fsdp", 2, out)
                (out / "done").touch()
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.slow
def test_fsdp2_projection_equals_the_unsharded_one_on_every_rank(ranks):
    """Also, in the worker: DTensor kernels of four layouts in, the same layouts out, plain norms."""
    clipped = [saved["clip"] for saved in ranks]
    reference = model()
    report = clip_operator_norm_(reference, 1.0, input_shapes=SHAPES, **CLIP)
    expected = reference.state_dict()
    for saved in clipped:
        assert saved["weights"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(saved["weights"][key], value, rtol=1e-5, atol=1e-6)
        assert [name for name, _, _ in saved["norms"]] == ["0", "2"]
        for (_, before, after), r in zip(saved["norms"], report, strict=True):
            assert before == pytest.approx(float(r.norm_before), rel=1e-5)
            assert after == pytest.approx(float(r.norm_after), rel=1e-5)
    for key in expected:
        assert torch.equal(clipped[0]["weights"][key], clipped[1]["weights"][key]), key
    for name in CONVS:
        assert _true_norm(name, clipped[0]["weights"][f"{name}.weight"]) <= BOUND
        assert _true_norm(name, model().state_dict()[f"{name}.weight"]) > 2  # the projection had work to do


@pytest.mark.slow
def test_fsdp2_trains_a_parametrized_layer_as_one_process_does(ranks):
    """parametrize_operator_norm, then fully_shard; every rank on the same data."""
    unsharded = parametrized_run(sharded=False)
    for saved in ranks:
        torch.testing.assert_close(saved["parametrized"]["output"], unsharded["output"])
        for key, value in unsharded["state"].items():
            torch.testing.assert_close(saved["parametrized"]["state"][key], value)


@pytest.mark.slow
def test_fsdp2_training_with_the_clipper_keeps_every_conv_bounded(ranks):
    trained = [saved["train"] for saved in ranks]
    assert len(trained[0]) == len(trained[1]) == 3  # after steps 2, 4 and 6: each a projection
    for step, states in enumerate(zip(*trained, strict=True)):
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), key
        for name in CONVS:
            norm = _true_norm(name, states[0][f"{name}.weight"])
            assert norm <= BOUND, (step, name, norm)
            if step == 0:  # the initial weights were 5x too large: the first projection lands on the bound
                assert norm > 0.99, (name, norm)
    assert not torch.equal(trained[0][0]["0.weight"], trained[0][-1]["0.weight"])  # it trained


@pytest.mark.slow
def test_fsdp2_spectral_norm_ranks_agree_and_the_layers_have_norm_one(ranks):
    """Each rank seeded apart before the vectors are made: FSDP2 broadcasts no buffers."""
    normalised = [saved["spectral"] for saved in ranks]
    for key in normalised[0]["state"]:
        assert torch.equal(normalised[0]["state"][key], normalised[1]["state"][key]), key
    assert torch.equal(normalised[0]["output"], normalised[1]["output"])
    # The same model in one process, with the gathered state: the same output, norm 1.
    net = model()
    spectral_norm(net[0], input_shape=8)
    spectral_norm(net[2], input_shape=8)
    net.load_state_dict(normalised[0]["state"])
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(torch.ones(2, 1, 8, 8)), normalised[0]["output"])
        for i, name in enumerate(CONVS):
            weight = net[int(name)].weight  # normalised by the stored vectors
            norm = _true_norm(name, weight)
            assert norm == pytest.approx(1.0, abs=1e-3), (name, norm)
            lower, upper = normalised[0]["bounds"][i]  # norm_bounds() of the sharded layer, in the worker
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


@pytest.mark.slow
def test_the_fsdp2_tutorial_script_runs_and_bounds_every_layer():
    """``examples/torch_fsdp2_digits.py``, two gloo ranks: the same weights on both, every norm bounded."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "torch_fsdp2_digits.py"
    argv = ["--ranks", "2", "--steps", "20", "--every", "10", "--max-norm", "0.8"]
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert "every rank holds the same weights: True" in lines, lines
    norms = [float(line.split()[4]) for line in lines if line.startswith("layer ")]
    assert len(norms) == 2, lines
    assert all(0.79 <= norm <= 0.8 * BOUND for norm in norms), lines
