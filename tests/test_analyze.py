"""``convsv analyze`` on every model format, checked against routes independent of the code under test.

For every layer the command reports, the test knows the layer from how it built the model: its
kernel, options and feature-map size (the framework's own forward hooks or shapes, or worked out by
hand). Two references follow from that:

- ``convsv.singular_values`` called directly on the framework's weights with those options
  (circular padding) must give the reported exact spectrum statistics;
- the framework's own layer (PyTorch module or functional op, Keras layer or ``keras.ops``, the
  tests' NumPy convolution for formats without layers) applied to every basis input gives the
  layer's dense matrix: its largest singular value must lie inside the reported zero-padding
  bounds, and for circular layers its whole spectrum must be the reported one. A mistranslated
  padding, stride, group count, output padding or map size shows up here.

The model formats are optional dependencies: their tests skip where a framework is missing,
unless ``CONVSV_REQUIRE_FORMATS=1`` (the ``cli`` nox session) makes that a failure.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fnmatch
import importlib
import io
import json
import math
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from functools import cached_property
from importlib.resources import as_file, files
from typing import Any

import numpy as np
import pytest

import convsv
from convsv.cli import main

from _reference import general_conv

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")

REL = 1e-5  # float32 kernels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def need(module: str) -> Any:
    """Import a framework the test needs: skip without it, or fail where the run requires every format."""
    if os.environ.get("CONVSV_REQUIRE_FORMATS") == "1":
        try:
            return importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"{module!r} is required (CONVSV_REQUIRE_FORMATS=1) but cannot be imported: {err}")
    return pytest.importorskip(module)


# --- running the command -------------------------------------------------------------------------------


def analyze(capsys, *argv, status=0):
    """``convsv analyze ARGV``: (stdout, stderr), asserting the exit status."""
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == status, err
    return out, err


def strict_json(text):
    """JSON as RFC 8259 has it: no NaN or Infinity (which Python's json would accept)."""

    def refuse(constant):
        msg = f"not valid JSON: {constant}"
        raise ValueError(msg)

    return json.loads(text, parse_constant=refuse)


def analyze_json(capsys, *argv):
    out, err = analyze(capsys, *argv, "--format", "json", "--no-progress")
    assert err == ""
    return strict_json(out)


def analyze_error(capsys, *argv, message, plot=None):
    """A failing run: status 1, one error message on stderr, nothing on stdout, no plot."""
    extra = ["--plot", plot] if plot is not None else []
    out, err = analyze(capsys, *argv, *extra, status=1)
    assert out == ""
    assert err.startswith("convsv analyze: error: "), err
    assert err.count("\n") == 1, err
    assert message in err, err
    if plot is not None:
        assert not os.path.exists(plot)
    return err


# --- what each layer really is ---------------------------------------------------------------------------


@dataclasses.dataclass
class Expected:
    """One conv layer as the test built it, and the framework's own way of applying it."""

    name: str
    kernel: np.ndarray
    layout: str  # of `kernel`
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    # The framework's layer on a float64 NumPy batch, channels first in and out (bias included).
    apply: Callable[[np.ndarray], np.ndarray]
    channels: int  # the layer's input channels
    stride: tuple[int, ...] = (1, 1)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = (0, 0)
    pads: list[list[int]] | None = None  # of the forward convolution; None: circular
    assumed: bool = False

    @property
    def twin_input(self) -> tuple[int, ...]:
        """The input map of the circular layer the report describes: on the zero-padded map, rounded
        up to a multiple of the stride (written out here from the padding, not taken from convsv)."""
        if self.pads is None:
            return self.input_shape
        forward = self.output_shape if self.transposed else self.input_shape
        sizes = zip(forward, self.pads, self.stride, strict=True)
        grid = [-(-(n + a + b) // s) * s for n, (a, b), s in sizes]
        if self.transposed:
            return tuple(g // s for g, s in zip(grid, self.stride, strict=True))
        return tuple(grid)

    @cached_property
    def library(self) -> np.ndarray:
        """``convsv.singular_values`` of that circular layer, called directly, descending."""
        s = convsv.singular_values(
            self.kernel,
            self.twin_input,
            layout=self.layout,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            transposed=self.transposed,
            padding="circular",
        )
        return np.sort(np.asarray(s, dtype=np.float64).ravel())[::-1]

    @cached_property
    def framework(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """Singular values of the framework layer's dense matrix (float64) and its output map."""
        size = self.channels * math.prod(self.input_shape)
        basis = np.eye(size).reshape(size, self.channels, *self.input_shape)
        y = self.apply(basis) - self.apply(np.zeros_like(basis[:1]))  # linear part: minus the bias
        matrix = y.reshape(size, -1).T.astype(np.float64)
        return np.linalg.svd(matrix, compute_uv=False), tuple(y.shape[2:])


def check_layer(row, exp):
    assert row["kernel_shape"] == list(exp.kernel.shape)
    assert row["layout"] == exp.layout
    assert row["input_shape"] == list(exp.input_shape)
    assert row["output_shape"] == list(exp.output_shape)
    assert row["stride"] == list(exp.stride)
    assert row["dilation"] == list(exp.dilation)
    assert row["groups"] == exp.groups
    assert row["transposed"] is exp.transposed
    assert row["assumed_options"] is exp.assumed
    # What reshape-based spectral norms compute: out channels against everything else.
    out_first = (
        exp.kernel.reshape(exp.kernel.shape[0], -1)
        if exp.layout == "OIHW"
        else exp.kernel.reshape(-1, exp.kernel.shape[-1]).T
    )
    assert row["reshaped_kernel_norm"] == pytest.approx(
        np.linalg.norm(out_first.astype(np.float64), 2), rel=REL
    )

    true, output_shape = exp.framework
    assert output_shape == exp.output_shape, "the framework's own output map"
    # The layer's own norm, as the framework computes the layer.
    assert row["operator_norm"] == pytest.approx(true[0], rel=REL)
    s = exp.library
    assert row["singular_values"] == s.size
    assert row["circular_norm"] == pytest.approx(s[0], rel=REL)
    assert row["smallest_singular_value"] == pytest.approx(s[-1], rel=REL, abs=REL * s[0])
    if s[-1] > 1e-3 * s[0]:
        assert row["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-3)
    elif s[-1] == 0:
        assert row["condition_number"] is None  # infinite
    assert row["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=REL)
    assert np.sum(s >= 1 + REL) <= row["singular_values_at_least_one"] <= np.sum(s >= 1 - REL)

    if exp.pads is None:
        # The framework's layer is the circular one: its whole spectrum is the reported one.
        assert row["padding"] == "circular"
        assert row["norm_bounds"] is None
        assert true.size == s.size
        np.testing.assert_allclose(s, true, rtol=REL, atol=REL * true[0])
        assert row["operator_norm"] == pytest.approx(true[0], rel=REL)
    else:
        assert row["padding"] == exp.pads
        lower, upper = row["norm_bounds"]
        assert lower == row["operator_norm"]
        assert upper == row["circular_norm"]
        assert lower * (1 - REL) <= true[0] <= upper * (1 + REL), (row["name"], lower, true[0], upper)


def check_rows(rows, expected, names=None):
    assert [row["name"] for row in rows] == (names or [exp.name for exp in expected])
    product = 1.0
    for row, exp in zip(rows, expected, strict=True):
        check_layer(row, exp)
        product *= row["operator_norm"] if row["norm_bounds"] is None else row["norm_bounds"][1]
        assert row["norm_product"] == pytest.approx(product, rel=1e-12)


def assumed_layers(arrays, size, hwio=False):
    """Kernels of a tensor-only file as the report must take them: stride-1 circular convolutions.

    ``arrays`` are OIHW (as PyTorch stores them); the reference convolution is the tests' own.
    """
    expected = []
    for key, kernel in arrays.items():
        if kernel.ndim != 4:
            continue
        spatial_first = np.transpose(kernel, (2, 3, 1, 0)).astype(np.float64)
        expected.append(
            Expected(
                key.removesuffix(".weight"),
                np.transpose(kernel, (2, 3, 1, 0)) if hwio else kernel,
                "HWIO" if hwio else "OIHW",
                size,
                size,
                lambda x, k=spatial_first: general_conv(
                    x, k, stride=(1, 1), dilation=(1, 1), groups=1, pads=None
                ),
                kernel.shape[1],
                assumed=True,
            )
        )
    return expected


# --- PyTorch models ---------------------------------------------------------------------------------------


def torch_net(output_padding):
    """Zero-padded 3x3, strided depthwise, 1x1, strided transposed, and circular convolutions."""
    torch = need("torch")
    nn = torch.nn
    torch.manual_seed(output_padding)
    layers = OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1),
        relu=nn.ReLU(),
        depthwise=nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),
        pointwise=nn.Conv2d(4, 6, 1),
        up=nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=output_padding),
        wrap=nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular"),
    )
    return nn.Sequential(layers).eval()


def torch_apply(function):
    torch = need("torch")

    def apply(x):
        with torch.no_grad():
            return function(torch.from_numpy(x)).numpy()

    return apply


def torch_layers(net, size, channels=3):
    """Each conv of ``net`` as PyTorch runs it on a ``size`` map (hooks give the map sizes)."""
    torch = need("torch")
    nn = torch.nn
    seen = {}

    def recorder(name):
        def record(_module, args, output):
            seen[name] = (tuple(args[0].shape[2:]), tuple(output.shape[2:]))

        return record

    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(recorder(name)) for name, m in convs]
    with torch.no_grad():
        net(torch.zeros(1, channels, *size))
    for handle in handles:
        handle.remove()
    expected = []
    for name, m in convs:
        transposed = isinstance(m, nn.ConvTranspose2d)
        expected.append(
            Expected(
                name,
                m.weight.detach().numpy().copy(),
                "OIHW",
                *seen[name],
                torch_apply(copy.deepcopy(m).double()),
                m.in_channels,
                stride=tuple(m.stride),
                dilation=tuple(m.dilation),
                groups=m.groups,
                transposed=transposed,
                output_padding=tuple(m.output_padding) if transposed else (0, 0),
                pads=None
                if m.padding_mode == "circular" or m.padding == "same"
                else [[p, p] for p in m.padding],
            )
        )
    return expected


def state_dict_arrays(net):
    return {key: value.detach().numpy().copy() for key, value in net.state_dict().items()}


def header(expected, key=lambda name: name):
    """A convsv layer header (``docs/analyze.md``) giving each layer's true options and map size."""
    return json.dumps(
        {
            "format": "convsv-layers",
            "version": 1,
            "layers": [
                {
                    "name": key(exp.name),
                    "layout": exp.layout,
                    "stride": list(exp.stride),
                    "dilation": list(exp.dilation),
                    "groups": exp.groups,
                    "padding": "circular" if exp.pads is None else exp.pads,
                    "transposed": exp.transposed,
                    "output_padding": list(exp.output_padding),
                    "input_shape": list(exp.input_shape),
                }
                for exp in expected
            ],
        }
    )


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def expected8(torch_files):
    """The PyTorch modules' layers on an 8x8 input, by output_padding."""
    nets, _ = torch_files
    return {op: torch_layers(net, (8, 8)) for op, net in nets.items()}


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


# --- ONNX ---------------------------------------------------------------------------------------------------


def onnx_layers(net, size):
    """The module's layers as the exported ONNX graph has them.

    The exporter writes a circular ``padding_mode`` out as Slice/Concat nodes: the ONNX Conv
    itself is unpadded, on the padded map.
    """
    torch = need("torch")
    expected = torch_layers(net, size)
    *zero_padded, wrap = expected
    w = torch.from_numpy(wrap.kernel).double()
    padded = tuple(n + 2 for n in wrap.input_shape)
    onnx_wrap = dataclasses.replace(
        wrap,
        name="/wrap/Conv",
        input_shape=padded,
        pads=[[0, 0], [0, 0]],
        apply=torch_apply(lambda x: torch.nn.functional.conv2d(x, w)),
    )
    renamed = [
        dataclasses.replace(exp, name=f"/{exp.name}/{'ConvTranspose' if exp.transposed else 'Conv'}")
        for exp in zero_padded
    ]
    return [*renamed, onnx_wrap]


@pytest.fixture(scope="module")
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


def onnx_reference(onnx, node, weights):
    """One Conv/ConvTranspose node as ONNX's own reference implementation (``onnx.reference``) runs it."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    single = onnx.NodeProto()
    single.CopyFrom(node)
    single.input[:] = ["x", "w"]  # no bias
    single.output[:] = ["y"]
    graph = helper.make_graph(
        [single],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(weights.astype(np.float64), "w")],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return lambda x: evaluator.run(None, {"x": x})[0]


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


# --- Keras --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    """Keras on JAX unless a backend is chosen already (the ground truth is Keras' own layers)."""
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        need("jax")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KERAS_BACKEND", "jax")  # read once, when keras is first imported
            return need("keras")
    return need("keras")


def keras_model(keras, spatial):
    """Same, strided depthwise (multiplier 2), valid separable and strided transposed convolutions.

    Zero initializers (JAX compiles random ones for seconds): the weights are set afterwards.
    """
    layers = keras.layers
    zeros = {"kernel_initializer": "zeros"}
    x = keras.Input((*spatial, 3))
    y = layers.Conv2D(4, 3, padding="same", name="conv", **zeros)(x)
    y = layers.DepthwiseConv2D(
        3, strides=2, padding="same", depth_multiplier=2, name="depthwise", depthwise_initializer="zeros"
    )(y)
    y = layers.SeparableConv2D(
        6, 3, padding="valid", name="separable", depthwise_initializer="zeros", pointwise_initializer="zeros"
    )(y)
    y = layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="up", **zeros)(y)
    return keras.Model(x, y)


@pytest.fixture(scope="module")
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


def to_numpy(keras, x):
    """A Keras variable or tensor as NumPy (``np.array(variable)`` warns on NumPy 2)."""
    return keras.ops.convert_to_numpy(x.value if isinstance(x, keras.Variable) else x)


def keras_apply(keras, function):
    """A channels-last Keras function on the tests' channels-first float64 batches."""

    def apply(x):
        y = function(np.moveaxis(x, 1, -1).astype(np.float32))
        return np.moveaxis(np.asarray(to_numpy(keras, y), dtype=np.float64), -1, 1)

    return apply


def keras_layers(keras, model, n):
    """The model's convolutions on an n x n input: map sizes and SAME paddings worked out by hand."""
    get = model.get_layer
    conv, depthwise, separable, up = get("conv"), get("depthwise"), get("separable"), get("up")

    def numpy(x):
        return to_numpy(keras, x)

    depth = numpy(depthwise.kernel)  # (3, 3, 4 channels, multiplier 2): one group per channel
    sep_depth = numpy(separable.depthwise_kernel)  # (3, 3, 8, 1)
    half, valid = n // 2, n // 2 - 2
    same_s2 = [[0, 1], [0, 1]]  # TF's SAME on an even map, stride 2, 3 taps: the one extra row after
    return [
        Expected("conv", numpy(conv.kernel), "HWIO", (n, n), (n, n), keras_apply(keras, conv), 3,
                 pads=[[1, 1], [1, 1]]),
        Expected("depthwise", depth.reshape(3, 3, 1, 8), "HWIO", (n, n), (half, half),
                 keras_apply(keras, depthwise), 4, stride=(2, 2), groups=4, pads=same_s2),
        Expected("separable/depthwise", sep_depth.reshape(3, 3, 1, 8), "HWIO", (half, half), (valid, valid),
                 keras_apply(keras, lambda x: keras.ops.depthwise_conv(x, sep_depth, padding="valid")), 8,
                 groups=8, pads=[[0, 0], [0, 0]]),
        Expected("separable/pointwise", numpy(separable.pointwise_kernel), "HWIO", (valid, valid),
                 (valid, valid),
                 keras_apply(keras, lambda x: keras.ops.conv(x, separable.pointwise_kernel, padding="valid")),
                 8, pads=[[0, 0], [0, 0]]),
        # The forward convolution of the transposed layer maps its 2*valid output back: TF SAME pads.
        Expected("up", numpy(up.kernel), "HWIO", (valid, valid), (2 * valid, 2 * valid),
                 keras_apply(keras, up), 6, stride=(2, 2), transposed=True, output_padding=(0, 0),
                 pads=[[0, 1], [0, 1]]),
    ]  # fmt: skip


def test_keras_model(capsys, keras, keras_files):
    model, paths = keras_files
    rows = analyze_json(capsys, paths["static"])
    check_rows(rows, keras_layers(keras, model, 12))
    assert [row["input_shape"] for row in rows] == [[12, 12], [12, 12], [6, 6], [4, 4], [4, 4]]


@pytest.mark.parametrize("size", [12, 8])
def test_keras_dynamic_input(capsys, keras, keras_files, size):
    model, paths = keras_files
    rows = analyze_json(capsys, paths["dynamic"], "--input-size", size)
    check_rows(rows, keras_layers(keras, model, size))
    if size == 12:
        assert rows == analyze_json(capsys, paths["static"])


# --- NumPy .npz ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["HWIO", "OIHW"])
def test_npz_without_header(capsys, tmp_path, rng, layout):
    oihw = {
        "conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),  # 1-D: not a kernel
        "wide": rng.standard_normal((2, 4, 1, 3)).astype(np.float32),
        "head": rng.standard_normal((10, 2)).astype(np.float32),  # 2-D: not a kernel
    }
    stored = {
        k: np.transpose(v, (2, 3, 1, 0)) if v.ndim == 4 and layout == "HWIO" else v for k, v in oihw.items()
    }
    path = tmp_path / "kernels.npz"
    np.savez(path, **stored)
    argv = [] if layout == "HWIO" else ["--layout", "OIHW"]  # HWIO is the default
    rows = analyze_json(capsys, path, "--input-size", "6", "5", *argv)
    check_rows(rows, assumed_layers(oihw, (6, 5), hwio=layout == "HWIO"))
    table, _ = analyze(capsys, path, "--input-size", "6", "5", "--no-progress", *argv)
    assert "note: npz stores no layer options" in table


def test_singular_layer(capsys, tmp_path):
    """A zero kernel (zero-initialised residual branches have them): infinite condition number."""
    path = tmp_path / "zero.npz"
    kernel = np.zeros((3, 3, 2, 2), dtype=np.float32)
    np.savez(path, zero=kernel)
    (row,) = analyze_json(capsys, path, "--input-size", "4")
    assert (
        row["operator_norm"]
        == row["circular_norm"]
        == row["smallest_singular_value"]
        == row["norm_product"]
        == 0
    )
    assert row["condition_number"] is None
    assert row["singular_values"] == 32
    assert row["singular_values_at_least_one"] == 0
    text, _ = analyze(capsys, path, "--input-size", "4", "--format", "csv")
    (record,) = csv.DictReader(io.StringIO(text))
    assert record["condition_number"] == ""
    table, _ = analyze(capsys, path, "--input-size", "4", "--no-progress")
    assert "zero" in table


def test_npz_with_header_matches_the_module(capsys, tmp_path, torch_files, expected8):
    _, paths = torch_files
    expected = expected8[1]
    arrays = {exp.name: exp.kernel for exp in expected}
    path = tmp_path / "described.npz"
    np.savez(path, __convsv__=np.array(header(expected)), **arrays)
    rows = analyze_json(capsys, path)
    check_rows(rows, expected)
    assert rows == analyze_json(capsys, paths["module1"], "--input-size", "8")


# --- output formats and options -----------------------------------------------------------------------------


def expected_product(rows):
    return math.prod(
        row["operator_norm"] if row["norm_bounds"] is None else row["norm_bounds"][1] for row in rows
    )


def test_csv_and_table_agree_with_json(capsys, torch_files):
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--no-progress"]
    rows = analyze_json(capsys, *argv[:-1])
    text, _ = analyze(capsys, *argv, "--format", "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == len(rows)
    dims = "x".join
    for record, row in zip(records, rows, strict=True):
        assert record["name"] == row["name"]
        for key in ("kernel_shape", "stride", "dilation", "input_shape", "output_shape"):
            assert record[key] == dims(map(str, row[key]))
        for key in ("operator_norm", "circular_norm", "smallest_singular_value", "condition_number",
                    "stable_rank", "reshaped_kernel_norm", "norm_product"):  # fmt: skip
            assert float(record[key]) == row[key], key
        for key in ("groups", "singular_values", "singular_values_at_least_one"):
            assert int(record[key]) == row[key], key
        assert record["transposed"] == str(row["transposed"])
        assert record["assumed_options"] == str(row["assumed_options"])
        assert record["layout"] == row["layout"]
        if row["norm_bounds"] is None:
            assert record["padding"] == "circular"
            assert record["lower_bound"] == record["upper_bound"] == ""
        else:
            assert record["padding"] == " ".join(f"({a},{b})" for a, b in row["padding"])
            assert [float(record["lower_bound"]), float(record["upper_bound"])] == row["norm_bounds"]
    assert rows[-1]["norm_product"] == pytest.approx(expected_product(rows), rel=1e-12)

    table, err = analyze(capsys, *argv)
    assert err == ""
    for row in rows:
        assert row["name"] in table
    assert f"{rows[-1]['norm_product']:.6g}" in table
    assert "PyTorch module" in table


def test_layers_glob(capsys, torch_files, expected8):
    _, paths = torch_files
    rows = analyze_json(capsys, paths["module1"], "--input-size", "8", "--layers", "*wise")
    check_rows(rows, expected8[1][1:3])
    assert rows[-1]["norm_product"] == pytest.approx(expected_product(rows), rel=1e-12)


@pytest.mark.parametrize(
    ("library", "layers"),
    [
        ("torch", "*"),
        # JAX compiles each operation for each new shape, eagerly: seconds per layer; one layer here.
        ("jax", "wrap"),
        pytest.param("jax", "*", marks=pytest.mark.slow),
    ],
)
def test_other_backends_give_the_same_norms(capsys, torch_files, expected8, library, layers):
    need(library)
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--layers", layers]
    base = analyze_json(capsys, *argv)
    rows = analyze_json(capsys, *argv, "--backend", library)
    check_rows(rows, [exp for exp in expected8[1] if fnmatch.fnmatchcase(exp.name, layers)])
    for row, ref in zip(rows, base, strict=True):
        assert row["operator_norm"] == pytest.approx(ref["operator_norm"], rel=REL)
        assert row["singular_values"] == ref["singular_values"]


def test_progress_bar(capsys, torch_files):
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--format", "json"]
    out, err = analyze(capsys, *argv, "--progress")
    n = len(json.loads(out))
    bars = [part.strip() for part in err.split("\r") if part.strip()]
    assert [bar.split()[1] for bar in bars] == [f"{done}/{n}" for done in range(n + 1)]
    assert bars[-1].startswith("[" + "#" * 24 + "]")
    assert bars[-1].endswith("done")
    _, err = analyze(capsys, *argv, "--no-progress")
    assert err == ""


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_plot(capsys, tmp_path, torch_files, suffix):
    need("matplotlib")
    _, paths = torch_files
    plot = tmp_path / f"spectra{suffix}"
    out, err = analyze(capsys, paths["module1"], "--input-size", "8", "--format", "json", "--plot", plot)
    assert len(json.loads(out)) == 5
    assert err == f"wrote {plot}\n"
    data = plot.read_bytes()
    if suffix == ".png":
        check_png(plot)
    else:
        assert data.startswith(b"%PDF-")
        assert len(data) > 5000


def check_png(path):
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] >= 300
    assert image.shape[1] >= 800
    assert np.ptp(image[..., :3]) > 0.5


def test_bundled_model(capsys, tmp_path, monkeypatch):
    need("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    rows = strict_json(out)
    assert err == "wrote digits-cnn-spectra.png\n"
    check_png(tmp_path / "digits-cnn-spectra.png")

    with as_file(files("convsv") / "data" / "digits_cnn.npz") as path, np.load(path) as npz:
        meta = json.loads(str(npz["__convsv__"]))
        arrays = {layer["name"]: npz[layer["name"]] for layer in meta["layers"]}
    expected = []
    for layer in meta["layers"]:
        kernel = arrays[layer["name"]]
        spatial_first = np.transpose(kernel, (2, 3, 1, 0)).astype(np.float64)
        options = {key: tuple(layer[key]) for key in ("stride", "dilation")}
        pads = layer["padding"]
        span = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], options["dilation"], strict=True)]
        output = tuple(
            (n + a + b - w) // s + 1
            for n, (a, b), w, s in zip(layer["input_shape"], pads, span, options["stride"], strict=True)
        )
        conv = dict(options, groups=layer["groups"], pads=[tuple(p) for p in pads])
        expected.append(
            Expected(
                layer["name"],
                kernel,
                "OIHW",
                tuple(layer["input_shape"]),
                output,
                lambda x, k=spatial_first, c=conv: general_conv(x, k, **c),
                kernel.shape[1] * layer["groups"],
                groups=layer["groups"],
                pads=pads,
                **options,
            )
        )
    check_rows(rows, expected)
    assert [row["name"] for row in rows] == ["conv1", "conv2", "conv3", "conv4"]


# --- errors -------------------------------------------------------------------------------------------------


def torch_module_file(tmp_path, module, name="model.pt"):
    torch = need("torch")
    path = tmp_path / name
    torch.save(module, path)
    return path


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
        message="--device cuda",
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
