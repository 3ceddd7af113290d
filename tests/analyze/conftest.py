"""The analyze tests' model files, written once per session: PyTorch, ONNX and Keras."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

from .common import keras_model, need, torch_layers, torch_net


@pytest.fixture(scope="session")
def torch_files(tmp_path_factory):
    """Whole modules (output_padding 0 and 1), a state dict and a checkpoint wrapper, on disk."""
    torch = need("torch")
    root = tmp_path_factory.mktemp("torch")
    nets = {op: torch_net(op) for op in (0, 1)}
    paths = {}
    for op, net in nets.items():
        paths[f"module{op}"] = root / f"module{op}.pt"
        torch.save(net, paths[f"module{op}"])
    paths["state_dict"] = root / "weights.pth"
    torch.save(nets[1].state_dict(), paths["state_dict"])
    paths["checkpoint"] = root / "checkpoint.pt"
    torch.save({"state_dict": nets[1].state_dict(), "epoch": 3}, paths["checkpoint"])
    return nets, paths


@pytest.fixture(scope="session")
def expected8(torch_files):
    """The PyTorch modules' layers on an 8x8 input, by output_padding."""
    nets, _ = torch_files
    return {op: torch_layers(net, (8, 8)) for op, net in nets.items()}


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory, torch_files):
    """Exports of the modules: output_padding 1 with dynamic spatial axes, output_padding 0 static."""
    torch = need("torch")
    need("onnx")
    nets, _ = torch_files
    root = tmp_path_factory.mktemp("onnx")
    paths = {"dynamic": root / "dynamic.onnx", "static": root / "static.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            nets[1],
            (torch.zeros(1, 3, 8, 8),),
            str(paths["dynamic"]),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
        )
        torch.onnx.export(nets[0], (torch.zeros(1, 3, 8, 8),), str(paths["static"]), dynamo=False)
    return paths


@pytest.fixture(scope="session")
def keras():
    """Keras on JAX unless a backend is chosen already (the ground truth is Keras' own layers)."""
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        need("jax")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KERAS_BACKEND", "jax")  # read once, when keras is first imported
            return need("keras")
    return need("keras")


@pytest.fixture(scope="session")
def keras_files(keras, tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    model = keras_model(keras, (12, 12))
    rng = np.random.default_rng(3)
    weights = [0.3 * rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in model.weights]
    model.set_weights(weights)  # biases too: the reference subtracts them
    dynamic = keras_model(keras, (None, None))
    dynamic.set_weights(weights)
    paths = {"static": root / "static.keras", "dynamic": root / "dynamic.keras"}
    with warnings.catch_warnings():
        # Keras' saving calls np.array(variable), which NumPy 2 deprecates (no `copy` keyword).
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept", DeprecationWarning)
        model.save(paths["static"])
        dynamic.save(paths["dynamic"])
    return model, paths
