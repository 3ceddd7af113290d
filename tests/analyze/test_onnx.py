"""``convsv analyze`` on ONNX models, against ONNX's reference implementation (see ``common``)."""

from __future__ import annotations

import numpy as np
import pytest

from .common import (
    Expected,
    analyze,
    analyze_error,
    analyze_json,
    check_rows,
    need,
    onnx_layers,
    onnx_reference,
)

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


@pytest.mark.parametrize("size", [8, 12])
def test_onnx_dynamic_input_sizes_follow(capsys, torch_files, onnx_files, size):
    nets, _ = torch_files
    rows = analyze_json(capsys, onnx_files["dynamic"], "--input-size", size)
    check_rows(rows, onnx_layers(nets[1], (size, size)))
    assert rows[0]["input_shape"] == [size, size]
    assert rows[1]["groups"] == 4
    assert rows[1]["stride"] == [2, 2]


def test_onnx_static_input(capsys, tmp_path, torch_files, onnx_files):
    onnx = need("onnx")
    nets, _ = torch_files
    rows = analyze_json(capsys, onnx_files["static"])
    check_rows(rows, onnx_layers(nets[0], (8, 8)))
    # --input-size resizes a static input too, also where the file stores every value's 8x8 shapes.
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_files["static"])))
    assert len(inferred.graph.value_info) > 5
    path = tmp_path / "inferred.onnx"
    onnx.save(inferred, str(path))
    rows = analyze_json(capsys, path, "--input-size", "12")
    check_rows(rows, onnx_layers(nets[0], (12, 12)))


def test_onnx_weights_in_a_constant_node(capsys, tmp_path, torch_files, onnx_files):
    onnx = need("onnx")
    nets, _ = torch_files
    model = onnx.load(str(onnx_files["dynamic"]))
    (init,) = [init for init in model.graph.initializer if init.name == "depthwise.weight"]
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [init.name], value=init))
    model.graph.initializer.remove(init)
    onnx.checker.check_model(model)
    assert "depthwise.weight" not in {i.name for i in model.graph.initializer}
    path = tmp_path / "constant.onnx"
    onnx.save(model, str(path))
    rows = analyze_json(capsys, path, "--input-size", "8")
    check_rows(rows, onnx_layers(nets[1], (8, 8)))
    assert rows == analyze_json(capsys, onnx_files["dynamic"], "--input-size", "8")


def test_onnx_auto_pad_same(capsys, tmp_path):
    """SAME_UPPER / SAME_LOWER: the extra padding after or before, for Conv and ConvTranspose."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    weights = {
        "a": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
        "b": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
        "c": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),  # ConvTranspose: (in, out, k, k)
    }
    nodes = [
        helper.make_node("Conv", ["x", "a"], ["ya"], name="upper", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Conv", ["ya", "b"], ["yb"], name="lower", auto_pad="SAME_LOWER"),
        helper.make_node(
            "ConvTranspose", ["yb", "c"], ["y"], name="up", auto_pad="SAME_LOWER", strides=[2, 2]
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "same",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "same.onnx"
    onnx.save(model, str(path))
    rows = analyze_json(capsys, path)
    apply = {node.name: onnx_reference(onnx, node, weights[node.input[1]]) for node in nodes}
    # 3 taps, stride 2 on 8: one padding row; 2 taps, stride 1: one; the transposed layer's forward
    # convolution maps its 8x8 output back to 4x4, one padding row: before it for SAME_LOWER.
    expected = [
        Expected("upper", weights["a"], "OIHW", (8, 8), (4, 4), apply["upper"], 2, stride=(2, 2),
                 pads=[[0, 1], [0, 1]]),
        Expected("lower", weights["b"], "OIHW", (4, 4), (4, 4), apply["lower"], 3, pads=[[1, 0], [1, 0]]),
        Expected("up", weights["c"], "OIHW", (4, 4), (8, 8), apply["up"], 4, stride=(2, 2), transposed=True,
                 pads=[[1, 0], [1, 0]]),
    ]  # fmt: skip
    check_rows(rows, expected)


def small_model(onnx, nodes, inputs, output, weights, rank=4):
    """A one-output ONNX model (opset 17) of ``nodes``, its ``weights`` initializers, checked."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "small",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None] * rank)],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_onnx_input_size_resizes_the_first_input_only(capsys, tmp_path):
    """A second input, here a scalar gain, keeps its shape (--input-size used to fail on it)."""
    onnx = need("onnx")
    from onnx import TensorProto, helper

    weights = {"w": np.random.default_rng(6).standard_normal((4, 3, 3, 3)).astype(np.float32)}
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
        helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
    ]
    model = small_model(onnx, [conv, helper.make_node("Mul", ["y", "gain"], ["z"])], inputs, "z", weights)
    path = tmp_path / "gain.onnx"
    onnx.save(model, str(path))
    rows = analyze_json(capsys, path, "--input-size", "8", "6")
    apply = onnx_reference(onnx, conv, weights["w"])
    expected = Expected("conv", weights["w"], "OIHW", (8, 6), (8, 6), apply, 3, pads=[[1, 1], [1, 1]])
    check_rows(rows, [expected])


def test_onnx_input_of_samples(capsys, tmp_path):
    """An input of (batch, samples), made (batch, 1, samples) inside: --input-size is the number of
    samples, and shape inference carries it on (a strided conv, then one on a quarter of the map)."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = {"a": rng.standard_normal((2, 1, 8)), "b": rng.standard_normal((3, 2, 3))}
    weights = {name: w.astype(np.float32) for name, w in weights.items()}
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64))
    nodes = [
        helper.make_node("Constant", [], ["axes"], value=axes),
        helper.make_node("Unsqueeze", ["x", "axes"], ["x1"]),
        helper.make_node("Conv", ["x1", "a"], ["y"], name="frames", strides=[4], pads=[2, 2]),
        helper.make_node("Conv", ["y", "b"], ["z"], name="conv", pads=[1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])]
    path = tmp_path / "audio.onnx"
    onnx.save(small_model(onnx, nodes, inputs, "z", weights, rank=3), str(path))
    analyze_error(capsys, path, message="feature-map size of layer 'frames' is not fixed")
    rows = analyze_json(capsys, path, "--input-size", "64")
    one = {"dilation": (1,)}
    expected = [
        Expected("frames", weights["a"], "OIW", (64,), (16,), onnx_reference(onnx, nodes[2], weights["a"]), 1,
                 stride=(4,), pads=[[2, 2]], **one),
        Expected("conv", weights["b"], "OIW", (16,), (16,), onnx_reference(onnx, nodes[3], weights["b"]), 2,
                 stride=(1,), pads=[[1, 1]], **one),
    ]  # fmt: skip
    check_rows(rows, expected)
    table, _ = analyze(capsys, path, "--input-size", "64", "--no-progress")
    assert "note: the model's input 'x' has 2 axes, taken as (batch, samples)" in table


def test_onnx_first_input_without_spatial_axes(capsys, tmp_path):
    """A scalar first input is not resized: --input-size is the map of the conv on the second."""
    onnx = need("onnx")
    from onnx import TensorProto, helper

    weights = {"w": np.random.default_rng(8).standard_normal((4, 3, 3, 3)).astype(np.float32)}
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    inputs = [
        helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
    ]
    model = small_model(onnx, [conv, helper.make_node("Mul", ["y", "gain"], ["z"])], inputs, "z", weights)
    path = tmp_path / "gain_first.onnx"
    onnx.save(model, str(path))
    rows = analyze_json(capsys, path, "--input-size", "8")
    apply = onnx_reference(onnx, conv, weights["w"])
    check_rows(
        rows, [Expected("conv", weights["w"], "OIHW", (8, 8), (8, 8), apply, 3, pads=[[1, 1], [1, 1]])]
    )
    table, _ = analyze(capsys, path, "--input-size", "8", "--no-progress")
    assert "note: --input-size does not resize the model's input 'gain' (0 axes" in table


def test_onnx_on_torch_prints_no_warning(tmp_path, onnx_files):
    """ONNX's arrays are read-only: PyTorch warns once per process, so a process of its own checks."""
    import subprocess
    import sys

    need("torch")
    command = [sys.executable, "-m", "convsv", "analyze", str(onnx_files["static"]), "--backend", "torch"]
    result = subprocess.run([*command, "--format", "json"], capture_output=True, text=True, check=True)
    assert result.stderr == ""
    assert result.stdout.startswith("[")
