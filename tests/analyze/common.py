"""``convsv analyze`` on every model format, checked against routes independent of the code under test.

For every layer the command reports, the test knows the layer from how it built the model: its
kernel, options and feature-map size (the framework's own forward hooks or shapes, or worked out by
hand). Two references follow from that:

- ``convsv.singular_values`` called directly on the framework's weights with those options
  (circular padding, on the zero-padded map) must give the reported circular norm;
- the framework's own layer (PyTorch module or functional op, Keras layer or ``keras.ops``, the
  tests' NumPy convolution for formats without layers) applied to every basis input gives the
  layer's dense matrix: its largest singular value must lie inside the reported zero-padding
  bounds, its spectrum must give the reported statistics, and for circular layers its whole
  spectrum must be the reported one. A mistranslated padding, stride, group count, output
  padding or map size shows up here.

The model formats are optional dependencies: their tests skip where a framework is missing,
unless ``CONVSV_REQUIRE_FORMATS=1`` (the ``cli`` nox session) makes that a failure.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pytest

import convsv
from convsv.cli import main

from _reference import general_conv

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
        if exp.layout.startswith("O")  # OIW, OIHW, OIDHW
        else exp.kernel.reshape(-1, exp.kernel.shape[-1]).T
    )
    assert row["reshaped_kernel_norm"] == pytest.approx(
        np.linalg.norm(out_first.astype(np.float64), 2), rel=REL
    )

    true, output_shape = exp.framework
    assert output_shape == exp.output_shape, "the framework's own output map"
    # The layer's own norm, as the framework computes the layer.
    assert row["operator_norm"] == pytest.approx(true[0], rel=REL)
    twin = exp.library
    assert row["circular_norm"] == pytest.approx(twin[0], rel=REL)
    # The statistics describe the layer's own singular values: these test layers are all small enough
    # for the dense SVD, which the framework's own matrix checks.
    assert row["statistics_of"] == "layer"
    s = true
    assert row["singular_value_count"] == s.size
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
        assert true.size == twin.size
        np.testing.assert_allclose(twin, true, rtol=REL, atol=REL * true[0])
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


def expected_product(rows):
    return math.prod(
        row["operator_norm"] if row["norm_bounds"] is None else row["norm_bounds"][1] for row in rows
    )


def check_png(path):
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] >= 300
    assert image.shape[1] >= 800
    assert np.ptp(image[..., :3]) > 0.5


def torch_module_file(tmp_path, module, name="model.pt"):
    torch = need("torch")
    path = tmp_path / name
    torch.save(module, path)
    return path
