"""``convsv analyze MODEL --network``: the certificate of PyTorch modules and ONNX files.

The ONNX translation is checked against ONNX's own reference implementation
(``onnx.reference``) on random inputs; the certificate against the PyTorch
module the file was exported from, against secant ratios
``||f(a) - f(b)|| / ||a - b||`` that the reference implementation attains (each
one a lower bound of the true constant), and, for a linear graph, against the
norm of its dense matrix built from the reference's outputs on one-hot inputs.
"""

from __future__ import annotations

import csv
import io
import math
import warnings

import numpy as np
import pytest

from .common import analyze, analyze_error, analyze_json, need

pytestmark = pytest.mark.backend("numpy")


def _export(torch, net, shape, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(net, (torch.zeros(shape),), str(path), dynamo=False)


def _resnet(torch):
    """A small ResNet: stem with BN and max pooling, an identity block, a strided block, a linear head."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, c, o, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
            self.c2, self.b2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
            self.down = None
            if stride != 1 or c != o:
                self.down = nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o))

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            return F.relu(y + (x if self.down is None else self.down(x)))

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Block(8, 8, 1),
        Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.3, 2.0)
                m.running_mean.normal_()
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def _reference(onnx, path):
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    name = evaluator.input_names[0]
    return lambda x: evaluator.run(None, {name: np.asarray(x, dtype=np.float32)})[0].astype(np.float64)


def _secant(function, shape, rng, pairs=8):
    """The largest ``||f(a) - f(b)|| / ||a - b||`` over random nearby pairs: attained, so a lower bound."""
    best = 0.0
    for _ in range(pairs):
        a = rng.standard_normal(shape)
        b = a + 1e-2 * rng.standard_normal(shape)
        best = max(best, np.linalg.norm(function(a) - function(b)) / np.linalg.norm(a - b))
    return best


def test_onnx_export_of_a_resnet_is_certified_as_its_module(capsys, tmp_path):
    torch, onnx = need("torch"), need("onnx")
    from convsv._onnx_network import onnx_network
    from convsv.torch import lipschitz_bound

    net = _resnet(torch)
    path = tmp_path / "resnet.onnx"
    _export(torch, net, (1, 3, 16, 16), path)
    graph_module, shape, _ = onnx_network(path, None)
    assert shape == (1, 3, 16, 16)
    reference, rng = _reference(onnx, path), np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        ours = graph_module(torch.from_numpy(x)).detach().double().numpy()
        np.testing.assert_allclose(ours, reference(x), rtol=1e-5, atol=1e-5)
    result = analyze_json(capsys, path, "--network")
    expected = lipschitz_bound(net, torch.zeros(shape), lower_bound_samples=0).upper
    assert result["format"] == "ONNX"
    assert result["upper"] == pytest.approx(expected, rel=1e-6)
    assert result["upper"] >= _secant(reference, shape, rng) * (1 - 1e-4)
    assert 0 < result["lower"] <= result["upper"]
    # A 32x32 input: the feature maps, and so the convolutions' norms, follow.
    larger = analyze_json(capsys, path, "--network", "--input-size", "32")
    assert larger["upper"] == pytest.approx(
        lipschitz_bound(net, torch.zeros(1, 3, 32, 32), lower_bound_samples=0).upper, rel=1e-6
    )


def _stored(array):
    """Integers (pads, axes) as int64, the rest as float32, as exporters store them."""
    array = np.asarray(array)
    return array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)


def _graph(onnx, nodes, inputs, initializers):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_stored(a), name) for name, a in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _operators_model(onnx, rng):
    """Every translated operator, BatchNormalization unfused and a stride-2 SAME_UPPER conv (uneven pads)."""
    from onnx import helper

    def w(*shape):
        return rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]) or 1)

    make = helper.make_node
    weights = {
        "k1": w(4, 3, 3, 3),
        "b1": w(4),
        "scale": rng.uniform(0.5, 1.5, 4),
        "shift": w(4),
        "mean": w(4),
        "var": rng.uniform(0.3, 2.0, 4),
        "k2": w(4, 4, 3, 3),
        "c": w(1, 4, 1, 1),
        "m": rng.uniform(0.5, 2.0, (1, 8, 1, 1)),
        "lo": np.array(-1.0),
        "hi": np.array(2.0),
        "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64),
        "zero": np.array(0.0),
        "g": w(6, 8),
        "gc": w(6),
        "mm": w(6, 5),
        "axes": np.array([1], dtype=np.int64),
        "kt": w(8, 1, 2, 2),
    }
    nodes = [
        make("Conv", ["x", "k1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        make("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-3),
        make("LeakyRelu", ["bn"], ["lr"], alpha=0.2),
        make("Conv", ["lr", "k2"], ["s"], strides=[2, 2], auto_pad="SAME_UPPER", name="strided"),
        make("Sub", ["s", "c"], ["sc"]),
        make("Clip", ["sc", "lo", "hi"], ["cl"]),
        make("Elu", ["s"], ["el"], alpha=0.5),
        make("Concat", ["cl", "el"], ["cat"], axis=1),
        make("Mul", ["cat", "m"], ["mu"]),
        make("Dropout", ["mu"], ["dr"]),
        make("ConvTranspose", ["dr", "kt"], ["up"], strides=[2, 2], group=8),
        make("Pad", ["up", "pads", "zero"], ["pd"]),
        make("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        make("MaxPool", ["ap"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
        make("GlobalAveragePool", ["mp"], ["gp"]),
        make("Flatten", ["gp"], ["fl"]),
        make("Gemm", ["fl", "g", "gc"], ["gm"], transB=1, alpha=0.5, beta=2.0),
        make("Sigmoid", ["gm"], ["sg"]),
        make("MatMul", ["sg", "mm"], ["mt"]),
        make("Unsqueeze", ["mt", "axes"], ["us"]),
        make("Transpose", ["us"], ["tr"], perm=[0, 2, 1]),
        make("ReduceMean", ["tr"], ["rm"], axes=[2], keepdims=0),
        make("Identity", ["rm"], ["y"]),
    ]
    return _graph(onnx, nodes, [("x", [1, 3, 8, 8])], weights)


def test_every_translated_onnx_operator_matches_onnx_reference(capsys, tmp_path):
    torch, onnx = need("torch"), need("onnx")
    from convsv._onnx_network import onnx_network

    rng = np.random.default_rng(1)
    path = tmp_path / "operators.onnx"
    onnx.save(_operators_model(onnx, rng), str(path))
    graph_module, shape, _ = onnx_network(path, None)
    reference = _reference(onnx, path)
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        ours = graph_module(torch.from_numpy(x)).detach().double().numpy()
        np.testing.assert_allclose(ours, reference(x), rtol=1e-5, atol=1e-6)
    result = analyze_json(capsys, path, "--network")
    assert result["upper"] >= _secant(reference, shape, rng) * (1 - 1e-4)
    assert 0 < result["lower"] <= result["upper"]
    kinds = {node["name"]: node["kind"] for node in result["nodes"]}
    assert kinds["strided_pad"] == "pad"  # the uneven SAME pads, then an evenly padded conv
    folded = [node for node in result["nodes"] if node["how"].startswith("folded into")]
    assert [node["name"] for node in folded] == ["conv"]  # into the batch norm after it


@pytest.mark.parametrize(
    "upsample",
    [
        {"scale_factor": 2, "mode": "nearest"},
        {"scale_factor": 1.5, "mode": "bilinear", "align_corners": False},
        {"size": (7, 9), "mode": "bilinear", "align_corners": True},
    ],
)
def test_onnx_resize_is_upsampling(capsys, tmp_path, upsample):
    """Exported ``nn.Upsample``: ONNX's reference runs the file as the translation does; the norm is exact."""
    torch, onnx = need("torch"), need("onnx")
    from convsv._onnx_network import onnx_network

    path = tmp_path / "upsample.onnx"
    _export(torch, torch.nn.Upsample(**upsample), (1, 2, 4, 6), path)
    graph_module, shape, _ = onnx_network(path, None)
    reference, rng = _reference(onnx, path), np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(graph_module(torch.from_numpy(x)).numpy(), reference(x), rtol=1e-5, atol=1e-6)
    zero = reference(np.zeros(shape))
    columns = [(reference(e.reshape(shape)) - zero).ravel() for e in np.eye(math.prod(shape))]
    dense = np.linalg.norm(np.stack(columns, axis=1), 2)
    assert analyze_json(capsys, path, "--network")["upper"] == pytest.approx(dense, rel=1e-6)


def test_linear_onnx_graph_is_certified_exactly(capsys, tmp_path):
    """``x + BN(conv1x1(x))``: one map ``I + A``, whose norm is the certificate."""
    onnx = need("onnx")
    from onnx import helper

    rng = np.random.default_rng(2)
    weights = {
        "k": rng.standard_normal((4, 4, 1, 1)),
        "b": rng.standard_normal(4),
        "scale": rng.uniform(0.5, 1.5, 4),
        "shift": rng.standard_normal(4),
        "mean": rng.standard_normal(4),
        "var": rng.uniform(0.3, 2.0, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "k", "b"], ["a"]),
        helper.make_node("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Add", ["x", "n"], ["y"]),
    ]
    path = tmp_path / "linear.onnx"
    onnx.save(_graph(onnx, nodes, [("x", [1, 4, 3, 3])], weights), str(path))
    reference = _reference(onnx, path)
    zero = reference(np.zeros((1, 4, 3, 3)))
    columns = [(reference(e.reshape(1, 4, 3, 3)) - zero).ravel() for e in np.eye(36)]
    dense = np.linalg.norm(np.stack(columns, axis=1), 2)
    result = analyze_json(capsys, path, "--network")
    assert result["upper"] == pytest.approx(dense, rel=1e-5)  # float32 weights in the file
    assert result["lower"] == pytest.approx(dense, rel=1e-4)


def test_pytorch_module_file(capsys, tmp_path):
    """A module of torch.nn's own classes (files of other classes are refused unread: use ONNX)."""
    torch = need("torch")
    from convsv.torch import lipschitz_bound

    resnet = _resnet(torch)
    nn = torch.nn  # the stem, then the head, without the residual blocks' own class
    net = nn.Sequential(*resnet[:4], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    path = tmp_path / "resnet.pt"
    torch.save(net, path)
    result = analyze_json(capsys, path, "--network", "--input-size", "16")
    assert result["format"] == "PyTorch module"
    expected = lipschitz_bound(net, torch.zeros(1, 3, 16, 16), lower_bound_samples=0).upper
    assert result["upper"] == expected
    out, _ = analyze(capsys, path, "--network", "--input-size", "16", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["name"] for row in rows] == [node["name"] for node in result["nodes"]]
    out, _ = analyze(capsys, path, "--network", "--input-size", "16")
    assert out.splitlines()[0].endswith("(PyTorch module, network certificate, torch on cpu)")
    assert f"upper {expected:.6g}" in out.splitlines()[-1]


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ("Softmax", "ONNX node 'bad' (Softmax): no translation of ONNX's Softmax"),
        ("Mul", "node 'bad' (call_function mul): a product or quotient of values that depend on the input"),
    ],
)
def test_onnx_operator_without_a_rule_is_an_error_naming_it(capsys, tmp_path, op, message):
    onnx = need("onnx")
    from onnx import helper

    inputs = ["x"] if op == "Softmax" else ["x", "x"]
    model = _graph(onnx, [helper.make_node(op, inputs, ["y"], name="bad")], [("x", [1, 4])], {})
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    analyze_error(capsys, path, "--network", message=message)


def test_onnx_errors(capsys, tmp_path):
    onnx = need("onnx")
    from onnx import helper

    def save(name, nodes, inputs, weights):
        path = tmp_path / f"{name}.onnx"
        onnx.save(_graph(onnx, nodes, inputs, weights), str(path))
        return path

    computed = save(
        "computed",
        [helper.make_node("Add", ["k", "k"], ["k2"]), helper.make_node("Conv", ["x", "k2"], ["y"], name="c")],
        [("x", [1, 2, 4, 4])],
        {"k": np.ones((2, 2, 1, 1))},
    )
    analyze_error(capsys, computed, "--network", message="ONNX node 'c' (Conv): its weight")
    two = save("two", [helper.make_node("Add", ["x", "z"], ["y"])], [("x", [1, 4]), ("z", [1, 4])], {})
    analyze_error(capsys, two, "--network", message="takes models of one input; this one has 2")
    dynamic = save("dynamic", [helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 2, "h", "w"])], {})
    analyze_error(capsys, dynamic, "--network", message="give --input-size")
    assert analyze_json(capsys, dynamic, "--network", "--input-size", "4")["upper"] == 1.0
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", 1, None)]
    )
    branch = save(
        "branch",
        [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=then, name="gate")],
        [("x", [1, 4]), ("flag", [])],
        {"flag": np.array(True)},
    )
    analyze_error(capsys, branch, "--network", message="ONNX node 'gate' (If): control flow")


def test_network_needs_a_graph(capsys, tmp_path):
    torch = need("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    analyze_error(capsys, tmp_path / "weights.pt", "--network", message="weights without the graph")
    np.savez(tmp_path / "kernels.npz", conv=np.ones((3, 3, 2, 2)))
    analyze_error(capsys, tmp_path / "kernels.npz", "--network", message="--network reads a model's graph")
    torch.save(net, tmp_path / "net.pt")
    analyze_error(capsys, tmp_path / "net.pt", "--network", message="--network needs --input-size")
    for extra in (["--plot", str(tmp_path / "p.png")], ["--layers", "conv*"], ["--backend", "jax"]):
        with pytest.raises(SystemExit) as exit_info:
            analyze(capsys, tmp_path / "net.pt", "--network", *extra)
        assert exit_info.value.code == 2
        assert f"{extra[0]} is not used with --network" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze(capsys, "--network")
    assert "MODEL is needed with --network" in capsys.readouterr().err
