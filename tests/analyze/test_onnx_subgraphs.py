"""``convsv analyze`` on convolutions inside ONNX subgraphs: ``If`` branches, ``Loop`` and ``Scan`` bodies.

The models are written here with ``onnx.helper``. Each layer's map sizes and paddings are worked
out by hand; the ground truth is ONNX's reference implementation of the node (its dense matrix)
and ``convsv.singular_values`` on the same kernel (see ``common``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

from .common import (
    Expected,
    analyze,
    analyze_error,
    analyze_json,
    check_rows,
    need,
    onnx_reference,
    torch_apply,
)

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")

RNG = np.random.default_rng(11)
KERNELS = {name: RNG.standard_normal((3, 3, 3, 3)).astype(np.float32) for name in ("w0", "w1", "w2", "w3")}
SUBGRAPHS = "of these layers are inside If/Loop/Scan subgraphs"


def value(name, shape, elem=None):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT if elem is None else elem, shape)


def graph(nodes, name, inputs, outputs, weights=()):
    """A graph whose outputs are 4-D of unknown sizes, with initializers from ``KERNELS``."""
    from onnx import helper, numpy_helper

    outputs = [value(out, [None] * 4) if isinstance(out, str) else out for out in outputs]
    inits = [numpy_helper.from_array(KERNELS[w], w) for w in weights]
    return helper.make_graph(nodes, name, inputs, outputs, inits)


def save(onnx, tmp_path, main, name):
    from onnx import helper

    model = helper.make_model(main, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def expect(onnx, name, node, size, out, stride=1, pads=(1, 1)):
    """A 3-to-3-channel 3x3 layer on a square map, padded ``pads`` (before, after) on both axes."""
    weight = KERNELS[node.input[1]]
    apply = onnx_reference(onnx, node, weight)
    return Expected(
        name,
        weight,
        "OIHW",
        (size, size),
        (out, out),
        apply,
        3,
        stride=(stride, stride),
        pads=[list(pads)] * 2,
    )


def if_model(onnx, tmp_path, spatial):
    """A Conv, then an If named gate with a Conv in each branch: the else-branch's weight is the
    main graph's initializer w0, the then-branch's its own w1."""
    from onnx import TensorProto, helper

    first = helper.make_node("Conv", ["x", "w0"], ["x1"], name="first", pads=[1, 1, 1, 1])
    then_conv = helper.make_node("Conv", ["x1", "w1"], ["t"], name="conv1", pads=[1, 1, 1, 1])
    else_conv = helper.make_node("Conv", ["x1", "w0"], ["e"], name="conv1", strides=[2, 2], pads=[0, 0, 1, 1])
    gate = helper.make_node(
        "If",
        ["c"],
        ["y"],
        name="gate",
        then_branch=graph([then_conv], "then", [], ["t"], weights=["w1"]),
        else_branch=graph([else_conv], "else", [], ["e"]),
    )
    inputs = [value("x", [1, 3, *spatial]), value("c", [], TensorProto.BOOL)]
    path = save(onnx, tmp_path, graph([first, gate], "main", inputs, ["y"], weights=["w0"]), "if.onnx")
    return path, (first, then_conv, else_conv)


@pytest.mark.parametrize("size", [8, 12])
def test_if_with_a_conv_in_each_branch(capsys, tmp_path, size):
    """Both branches are layers; an 8x8 input stored, or a dynamic one given by --input-size."""
    onnx = need("onnx")
    spatial = [8, 8] if size == 8 else ["H", "W"]
    path, (first, then_conv, else_conv) = if_model(onnx, tmp_path, spatial)
    argv = [] if size == 8 else ["--input-size", size]
    rows = analyze_json(capsys, path, *argv)
    half = (size + 1 - 3) // 2 + 1  # stride 2, one row of zeros after: 4 on 8, 6 on 12
    expected = [
        expect(onnx, "first", first, size, size),
        expect(onnx, "gate/then_branch/conv1", then_conv, size, size),
        expect(onnx, "gate/else_branch/conv1", else_conv, size, half, stride=2, pads=(0, 1)),
    ]
    check_rows(rows, expected)
    table, _ = analyze(capsys, path, *argv, "--no-progress")
    assert f"note: 2 {SUBGRAPHS} (named OUTER/ATTRIBUTE/NODE)" in table
    chosen = analyze_json(capsys, path, *argv, "--layers", "gate/*")
    assert [row["name"] for row in chosen] == ["gate/then_branch/conv1", "gate/else_branch/conv1"]


def loop_model(onnx, tmp_path):
    """A Loop whose body has a Conv on the main graph's x (its own weight w2), one after it, and one
    on the value it carries (the main graph's weight w3). Saved with every shape inferred at 8x8."""
    from onnx import TensorProto, helper

    on_outer = helper.make_node("Conv", ["x", "w2"], ["o"], name="on_outer", pads=[1, 1, 1, 1])
    after = helper.make_node("Conv", ["o", "w1"], ["o2"], name="after", pads=[1, 1, 1, 1])
    on_state = helper.make_node("Conv", ["h", "w3"], ["h1"], name="on_state", pads=[1, 1, 1, 1])
    nodes = [on_outer, after, on_state, helper.make_node("Add", ["h1", "o2"], ["h2"])]
    body = graph(
        [*nodes, helper.make_node("Identity", ["c"], ["c1"])],
        "body",
        [value("i", [], TensorProto.INT64), value("c", [], TensorProto.BOOL), value("h", None)],
        [value("c1", [], TensorProto.BOOL), "h2"],
        weights=["w1", "w2"],
    )
    loop = helper.make_node("Loop", ["n", "", "x"], ["y"], name="loop", body=body)
    inputs = [value("x", [1, 3, 8, 8]), value("n", [], TensorProto.INT64)]
    path = save(onnx, tmp_path, graph([loop], "main", inputs, ["y"], weights=["w3"]), "loop.onnx")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    stored = inferred.graph.node[0].attribute[0].g.value_info
    assert {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in stored}["o"] == [1, 3, 8, 8]
    onnx.save(inferred, str(path))
    return path, (on_outer, after, on_state)


def test_loop_body(capsys, tmp_path):
    """The Convs on x and after it follow x's size, resized with it; the loop-carried value has no
    size: --input-size."""
    onnx = need("onnx")
    path, (on_outer, after, on_state) = loop_model(onnx, tmp_path)
    message = (
        "layer 'loop/body/on_state' is not fixed by this ONNX file (a dynamic input size, or a value a Loop"
    )
    analyze_error(capsys, path, message=message)
    for size in (8, 12):  # the 8x8 sizes stored in the body are stale at 12
        rows = analyze_json(capsys, path, "--input-size", size)
        expected = [
            expect(onnx, "loop/body/on_outer", on_outer, size, size),
            expect(onnx, "loop/body/after", after, size, size),
            expect(onnx, "loop/body/on_state", on_state, size, size),
        ]
        check_rows(rows, expected)
        assert [row["note"] for row in rows[:2]] == [None, None]
        assert (
            rows[2]["note"] == "its feature-map size is not fixed in its subgraph: analysed on --input-size"
        )


def test_nested_subgraphs_and_scan(capsys, tmp_path):
    """A Scan body's Conv on the scanned slices; an If inside a Loop body, its then-branch two Convs
    in a row, its else-branch's weight a main-graph Constant passed on by an Identity in the body."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    sconv = helper.make_node("Conv", ["si", "w1"], ["so"], name="sconv", pads=[1, 1, 1, 1])
    scan_body = graph(
        [sconv, helper.make_node("Identity", ["st"], ["st1"])],
        "scan_body",
        [value("st", None), value("si", None)],
        ["st1", "so"],
    )
    c1 = helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1])
    c2 = helper.make_node("Conv", ["a", "w2"], ["b"], name="c2", strides=[2, 2])
    e1 = helper.make_node("Conv", ["x", "k"], ["e"], name="c1", strides=[2, 2], pads=[0, 0, 1, 1])
    inner = helper.make_node(
        "If",
        ["c"],
        ["r"],
        name="inner",
        then_branch=graph([c1, c2], "then", [], ["b"], weights=["w2"]),
        else_branch=graph([e1], "else", [], ["e"]),
    )
    loop_body = graph(
        [
            helper.make_node("Identity", ["w3_const"], ["k"]),
            inner,
            helper.make_node("Identity", ["c"], ["c1"]),
        ],
        "loop_body",
        [value("i", [], TensorProto.INT64), value("c", [], TensorProto.BOOL)],
        [value("c1", [], TensorProto.BOOL), "r"],
    )
    constant = helper.make_node("Constant", [], ["w3_const"], value=numpy_helper.from_array(KERNELS["w3"]))
    nodes = [
        constant,
        helper.make_node("Scan", ["x", "s"], ["x_end", "ys"], num_scan_inputs=1, body=scan_body),
        helper.make_node("Loop", ["n", "go"], ["rs"], body=loop_body),
    ]
    inputs = [
        value("x", [1, 3, 8, 8]),
        value("s", [5, 1, 3, 8, 8]),
        value("n", [], TensorProto.INT64),
        value("go", [], TensorProto.BOOL),
    ]
    outputs = ["x_end", value("ys", [None] * 5), value("rs", [None] * 5)]
    path = save(onnx, tmp_path, graph(nodes, "main", inputs, outputs, weights=["w1"]), "nested.onnx")
    rows = analyze_json(capsys, path)
    e1.input[1] = "w3"  # the reference runs the node on the kernel itself
    expected = [
        expect(onnx, "Scan_1/body/sconv", sconv, 8, 8),
        expect(onnx, "Loop_2/body/inner/then_branch/c1", c1, 8, 8),
        expect(onnx, "Loop_2/body/inner/then_branch/c2", c2, 8, 3, stride=2, pads=(0, 0)),
        expect(onnx, "Loop_2/body/inner/else_branch/c1", e1, 8, 4, stride=2, pads=(0, 1)),
    ]
    check_rows(rows, expected)
    table, _ = analyze(capsys, path, "--no-progress")
    assert f"note: 4 {SUBGRAPHS}" in table


def test_computed_weights_in_a_branch(capsys, tmp_path):
    onnx = need("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Neg", ["w0"], ["minus"]),
        helper.make_node("Conv", ["x", "minus"], ["t"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    gate = helper.make_node(
        "If",
        ["c"],
        ["y"],
        name="gate",
        then_branch=graph(nodes, "then", [], ["t"]),
        else_branch=graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], ["e"]),
    )
    inputs = [value("x", [1, 3, 8, 8]), value("c", [], TensorProto.BOOL)]
    path = save(onnx, tmp_path, graph([gate], "main", inputs, ["y"], weights=["w0"]), "computed.onnx")
    analyze_error(
        capsys, path, message="the weights of Conv node 'gate/then_branch/conv1' are computed, not stored"
    )


def test_pytorch_export_of_a_branching_audio_model(capsys, tmp_path):
    """A scripted model with an `if` on its sample rate, as a voice-activity detector has: PyTorch's
    exporter writes an If whose branches use the main graph's weights. Its input is (batch, samples);
    the second conv's map is the first's output, a stride 8 down."""
    torch = need("torch")
    need("onnx")
    nn = torch.nn

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.stft16 = nn.Conv1d(1, 8, 16, stride=8, padding=4)
            self.enc16 = nn.Conv1d(8, 8, 3, padding=1)
            self.stft8 = nn.Conv1d(1, 8, 8, stride=4, padding=2)

        def forward(self, x: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
            x = x.unsqueeze(1)
            if bool(sr == 16000):  # noqa: SIM108 -- the statement, as such models have it
                y = self.enc16(torch.relu(self.stft16(x)))
            else:
                y = self.stft8(x)
            return y.mean(dim=2)

    torch.manual_seed(9)
    net = Detector().eval()
    path = tmp_path / "detector.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's and the TorchScript exporter's deprecations
        torch.onnx.export(
            torch.jit.script(net),
            (torch.zeros(1, 512), torch.tensor(16000)),
            str(path),
            dynamo=False,
            input_names=["input", "sr"],
            dynamic_axes={"input": {0: "batch", 1: "samples"}},
        )
    rows = analyze_json(capsys, path, "--input-size", "512")

    def layer(name, m, size, out, pad):
        apply = torch_apply(copy.deepcopy(m).double())
        return Expected(name, m.weight.detach().numpy(), "OIW", (size,), (out,), apply, m.in_channels,
                        stride=m.stride, dilation=(1,), pads=[[pad, pad]])  # fmt: skip

    expected = [
        layer("/If/then_branch/stft16/Conv", net.stft16, 512, 64, 4),
        layer("/If/then_branch/enc16/Conv", net.enc16, 64, 64, 1),
        layer("/If/else_branch/stft8/Conv", net.stft8, 512, 128, 2),
    ]
    check_rows(rows, expected)
