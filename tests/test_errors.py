"""Bad input gets a clear error that names the argument, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import convsv

from helpers import one_in

FUNCTIONS = [convsv.singular_values, convsv.operator_norm, convsv.conv_matrix]


@pytest.fixture(params=FUNCTIONS, ids=lambda f: f.__name__)
def function(request):
    return request.param


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("kernel", [[[[[1.0]]]], 3.0, None, "kernel", (1, 2)])
def test_not_an_array_is_a_type_error(function, kernel):
    with pytest.raises(TypeError, match="`kernel` must be an array"):
        function(kernel, 4)


def test_boolean_kernel_is_a_type_error(backend, function):
    kernel = backend.xp.asarray(np.ones((3, 3, 1, 1), dtype=bool), device=backend.device)
    with pytest.raises(TypeError, match="boolean"):
        function(kernel, 4)


@pytest.mark.parametrize(
    ("shape", "layout", "match"),
    [
        ((3, 3, 2), "HWIO", "needs 4"),
        ((3, 3, 2, 2, 1), "HWIO", "needs 4"),
        ((3, 2, 2), "OIHW", "needs 4"),
        ((3, 3, 2, 2), "WIO", "needs 3"),
        ((3, 3, 2, 2), "HWCN", "`layout` must be one of"),
        ((3, 3, 2, 2), "hwio", "`layout` must be one of"),
        ((3, 3, 0, 2), "HWIO", "positive sizes"),
        ((3, 3, 2, 0), "HWIO", "positive sizes"),
        ((0, 3, 2, 2), "HWIO", "positive sizes"),
        ((2, 2, 3, 0), "OIHW", "positive sizes"),
    ],
)
def test_kernel_shape_and_layout_errors(backend, function, shape, layout, match):
    kernel = backend.asarray(np.ones(shape), backend.default_float)
    with pytest.raises(ValueError, match=match):
        function(kernel, 4, layout=layout)


@pytest.mark.parametrize(
    ("input_shape", "error", "match"),
    [
        ((4,), ValueError, "`input_shape` has 1 entries but the kernel has 2"),
        ((4, 4, 4), ValueError, "`input_shape` has 3 entries"),
        (0, ValueError, "`input_shape` must contain positive sizes"),
        ((4, -1), ValueError, "`input_shape` must contain positive sizes"),
        ((4.0, 4), TypeError, "`input_shape` must contain integers"),
        ("44", TypeError, "`input_shape` must be an int or a sequence of ints, got str"),
        ((), ValueError, "`input_shape` has 0 entries"),
        (True, TypeError, "`input_shape` must contain integers, got a bool"),
        (None, TypeError, "`input_shape` must contain integers"),
    ],
)
def test_input_shape_errors(backend, function, input_shape, error, match):
    kernel = backend.asarray(np.ones((3, 3, 2, 2)), backend.default_float)
    with pytest.raises(error, match=match):
        function(kernel, input_shape)


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(
    "input_shape",
    [(np.int64(3), np.int32(3)), np.array([3, 3]), np.int64(3), np.array(3), [3, 3]],
    ids=["numpy-ints", "numpy-array", "numpy-scalar", "0-d-array", "list"],
)
def test_integer_like_sizes_are_accepted(function, input_shape):
    kernel = np.arange(4.0).reshape(2, 2, 1, 1)
    np.testing.assert_array_equal(function(kernel, input_shape), function(kernel, (3, 3)))


# --- one place for every argument check (issue 16) ---------------------------------------------------

CLIPS = [convsv.clip_operator_norm, convsv.clip_singular_values]


def _small_kernel(backend):
    return backend.asarray(np.random.default_rng(0).standard_normal((3, 3, 2, 2)), backend.default_float)


@pytest.mark.parametrize("method", ["bogus", None, 1])
def test_method_is_checked_with_zero_padding_too(backend, method):
    kernel = _small_kernel(backend)
    for function in (convsv.operator_norm, convsv.operator_norm_bounds):
        for padding in ("circular", 1, "same"):
            with pytest.raises(ValueError, match=r"`method` must be one of \('auto', "):
                function(kernel, 8, padding=padding, method=method)


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("xp", ["numpy", 1, np.ones(3)], ids=["name", "int", "array"])
def test_xp_that_is_not_a_namespace_is_a_type_error(xp):
    kernel = np.ones((3, 3, 1, 1))
    for function in [*FUNCTIONS, convsv.operator_norm_bounds]:
        with pytest.raises(TypeError, match="`xp` must be None or an array namespace"):
            function(kernel, 4, xp=xp)
    for function in CLIPS:
        with pytest.raises(TypeError, match="`xp` must be None or an array namespace"):
            function(kernel, 4, 1.0, xp=xp)


@pytest.mark.parametrize(
    ("array", "pads"),
    [([1, 2], ((1, 1), (2, 2))), ([[1, 0], [2, 1]], ((1, 0), (2, 1))), (1, ((1, 1), (1, 1)))],
    ids=["per-axis", "pairs", "0-d"],
)
def test_padding_may_be_a_numpy_array(backend, array, pads):
    one_in(3, 0 if array == [1, 2] else 1, backend)  # JAX: the per-axis case
    # The dense matrix of the layer, against one written out: output r reads input r + p - before.
    kernel = backend.asarray(np.random.default_rng(1).standard_normal((3, 2, 1, 1)), backend.default_float)
    taps = backend.to_numpy(kernel)[..., 0, 0]
    out = [n + a + b - k + 1 for n, (a, b), k in zip((4, 3), pads, taps.shape, strict=True)]
    expected = np.zeros((out[0] * out[1], 12))
    for r0, r1, p0, p1 in np.ndindex(*out, *taps.shape):
        q0, q1 = r0 + p0 - pads[0][0], r1 + p1 - pads[1][0]
        if 0 <= q0 < 4 and 0 <= q1 < 3:
            expected[r0 * out[1] + r1, q0 * 3 + q1] += taps[p0, p1]
    matrix = convsv.conv_matrix(kernel, (4, 3), padding=np.array(array))
    backend.assert_close(matrix, expected, rtol=1e-6, atol=1e-6)
    for value in (np.array(array), np.array(array, dtype=np.int32)):
        np.testing.assert_array_equal(
            backend.to_numpy(convsv.operator_norm(kernel, (4, 3), padding=value)),
            backend.to_numpy(convsv.operator_norm(kernel, (4, 3), padding=pads)),
        )


# (function, extra positional arguments, keyword options) with Python numbers, each a case where
# the option matters; every number is exactly representable in float32, so np.float32 is the same.
NUMERIC = [
    (convsv.singular_values, (), {"k": 3}),
    (convsv.singular_values, (), {"padding": 1, "k": 2, "tol": 0.001953125, "iterations": 7}),
    (convsv.singular_values, (), {"chunk_size": 5, "max_memory": 4096}),
    (convsv.singular_values, (), {"stride": 2, "dilation": 2, "groups": 2}),
    (convsv.singular_values, (), {"padding": 2, "stride": (2, 1), "dilation": (1, 2)}),
    (convsv.singular_values, (), {"padding": 1, "transposed": True, "stride": 2, "output_padding": 1}),
    (convsv.operator_norm, (), {"method": "gram", "tol": 0.0078125, "iterations": 3}),
    (convsv.operator_norm, (), {"method": "power", "tol": 0.0078125, "iterations": 4, "chunk_size": 5}),
    (convsv.operator_norm, (), {"padding": 1, "tol": 0.001953125, "iterations": 6, "max_memory": 8192}),
    (convsv.operator_norm_bounds, (), {"padding": 1, "tol": 0.001953125, "iterations": 6}),
    (convsv.conv_matrix, (), {"max_entries": 4608, "stride": 2, "padding": 1}),
    (convsv.clip_operator_norm, (1.5,), {"min_norm": 0.25, "iterations": 3, "tol": 0.0078125}),
    (convsv.clip_operator_norm, (1.5,), {"method": "extrapolated", "iterations": 2, "max_memory": 4096}),
    (convsv.clip_operator_norm, (0.75,), {"padding": 1, "bound": "tight", "chunk_size": 3}),
    (convsv.clip_singular_values, (1.5,), {"min_norm": 0.5, "chunk_size": 5, "max_memory": 4096}),
]
NUMERIC_IDS = [f"{f.__name__}-{'-'.join(o)}" for f, _, o in NUMERIC]
NOT_NUMBERS = {"method", "bound", "transposed"}


def _numpy_scalars(value, kind):
    """``value`` as NumPy scalars and 0-d arrays of the ``kind`` wanted (ints: i, floats: f)."""
    if isinstance(value, tuple):
        return [tuple(np.int64(v) for v in value), np.array(value, dtype=np.int32)]
    if kind == "i":
        return [np.int64(value), np.int32(value), np.uint16(value), np.array(value)]
    return [np.float64(value), np.float32(value), np.array(value, dtype=np.float32), np.int64(value)][
        : 4 if float(value).is_integer() else 3
    ]


def _call(function, backend, args, options):
    kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 2))
    kernel = kernel if backend is None else _small_kernel(backend)
    result = function(kernel, (6, 6), *args, **options)
    parts = result if isinstance(result, tuple) else (result,)
    return np.stack([np.asarray(r) if backend is None else backend.to_numpy(r) for r in parts])


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(("function", "args", "options"), NUMERIC, ids=NUMERIC_IDS)
def test_numpy_scalars_are_accepted_wherever_python_numbers_are(function, args, options):
    _same_with_numpy_scalars(None, function, args, options)


# The cases where a NumPy scalar reaching the maths would break a strict namespace or a JAX cache.
ON_EVERY_BACKEND = [NUMERIC[6], NUMERIC[8], NUMERIC[11]]


@pytest.mark.parametrize(("function", "args", "options"), ON_EVERY_BACKEND, ids=["gram", "lanczos", "clip"])
def test_numpy_scalars_are_accepted_on_every_backend(backend, function, args, options):
    _same_with_numpy_scalars(backend, function, args, options)


def _same_with_numpy_scalars(backend, function, args, options):
    expected = _call(function, backend, args, options)
    few = None if backend is None else 1  # every kind of scalar on NumPy, one elsewhere
    # Each option, and the positional bound, in turn as each kind of NumPy scalar.
    variants = []
    for name, value in options.items():
        if name in NOT_NUMBERS:
            continue
        kind = "f" if name in ("tol", "min_norm") else "i"
        variants += [(args, {**options, name: v}) for v in _numpy_scalars(value, kind)[:few]]
    variants += [((v,), options) for a in args for v in _numpy_scalars(a, "f")[:few]]
    variants.append((args, {**options, "stride": np.array(options.get("stride", 1))}))
    for new_args, new_options in variants:
        np.testing.assert_array_equal(_call(function, backend, new_args, new_options), expected)


@pytest.mark.backend("numpy")
def test_numpy_scalars_for_input_shape_and_layer_options():
    kernel = np.random.default_rng(2).standard_normal((3, 3, 4, 4))
    python = {"stride": 2, "dilation": (1, 2), "groups": 2, "padding": ((1, 0), (2, 1))}
    numpy_ = {
        "stride": np.int8(2),
        "dilation": (np.int64(1), np.uint16(2)),
        "groups": np.int32(2),
        "padding": ((np.int64(1), np.int64(0)), np.array([2, 1])),
    }
    for function in FUNCTIONS:
        np.testing.assert_array_equal(
            function(kernel, (np.int64(7), np.int16(8)), **numpy_), function(kernel, (7, 8), **python)
        )


# Every numeric option, with the function that takes it and a value of the right kind.
OPTIONS = [
    (convsv.singular_values, "k", 2),
    (convsv.singular_values, "tol", 1e-3),
    (convsv.singular_values, "iterations", 5),
    (convsv.singular_values, "chunk_size", 4),
    (convsv.singular_values, "max_memory", 4096),
    (convsv.singular_values, "groups", 1),
    (convsv.operator_norm, "tol", 1e-3),
    (convsv.operator_norm, "iterations", 5),
    (convsv.operator_norm_bounds, "max_memory", 4096),
    (convsv.conv_matrix, "max_entries", 8192),
    (convsv.clip_operator_norm, "min_norm", 0.5),
    (convsv.clip_operator_norm, "max_norm", 1.0),
    (convsv.clip_operator_norm, "iterations", 2),
    (convsv.clip_operator_norm, "tol", 1e-3),
    (convsv.clip_singular_values, "max_norm", 1.0),
    (convsv.clip_singular_values, "chunk_size", 4),
]

OPTION_IDS = [f"{f.__name__}-{o}" for f, o, _ in OPTIONS]


def _call_with(function, option, value):
    kernel = np.ones((3, 3, 2, 2))
    if function in CLIPS:
        options = {"max_norm": 2.0, option: value}
        return function(kernel, 6, options.pop("max_norm"), **options)
    return function(kernel, 6, **{option: value})


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(("function", "option", "good"), OPTIONS, ids=OPTION_IDS)
def test_bools_and_strings_are_refused_for_numbers(function, option, good):
    _call_with(function, option, good)  # the option is valid with a number of its kind
    for bad in (True, False, np.True_, np.array(True), str(good), np.array([good, good]), 1j):
        with pytest.raises(TypeError, match=f"`{option}` must be"):
            _call_with(function, option, bad)
    if isinstance(good, int):  # an integer option refuses a float, even a whole one
        for bad in (float(good), np.float64(good), np.array(float(good))):
            with pytest.raises(TypeError, match=f"`{option}` must be"):
                _call_with(function, option, bad)


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(
    ("option", "value"),
    [("stride", {1, 2}), ("dilation", frozenset({1})), ("padding", {1, 2}), ("output_padding", {0})],
)
def test_sets_are_refused_for_shapes(function, option, value):
    kernel = np.ones((3, 3, 2, 2))
    options = {"padding": 1, "transposed": option == "output_padding", option: value}
    with pytest.raises(TypeError, match=f"`{option}` must be .*an int or"):
        function(kernel, 6, **options)
    with pytest.raises(TypeError, match="`input_shape` must be an int or a sequence of ints, got set"):
        function(kernel, {6, 7})
    with pytest.raises(TypeError, match="`input_shape` must be an int or a sequence of ints, got dict"):
        function(kernel, {6: 6, 7: 7})


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(
    ("function", "option", "value", "match"),
    [
        (convsv.conv_matrix, "max_entries", -1, "`max_entries` must be None or a non-negative int, got -1"),
        (convsv.singular_values, "k", 0, r"`k` must be None or an int from 1 to the number of singular"),
        (convsv.singular_values, "k", 73, r"singular values \(72\), got 73"),
        (convsv.operator_norm, "tol", 1.0, r"`tol` must be a number in \[0, 1\), got 1.0"),
        (convsv.operator_norm, "tol", np.float64("nan"), r"`tol` must be a number in \[0, 1\)"),
        (convsv.clip_operator_norm, "tol", np.float32("inf"), "`tol` must be None or a finite non-negative"),
        (convsv.clip_operator_norm, "min_norm", -0.5, "`min_norm` must be a finite non-negative number"),
        (convsv.clip_singular_values, "max_norm", np.inf, "`max_norm` must be a finite non-negative number"),
        (convsv.singular_values, "chunk_size", np.int64(0), "`chunk_size` must be None or a positive int"),
        (convsv.singular_values, "groups", np.int64(0), "`groups` must be a positive int, got"),
    ],
)
def test_numbers_out_of_range_are_value_errors(function, option, value, match):
    with pytest.raises(ValueError, match=match):
        _call_with(function, option, value)


@pytest.mark.backend("numpy")
def test_conv_matrix_max_entries_zero_refuses_every_matrix():
    kernel = np.ones((1, 1, 1, 1))
    assert convsv.conv_matrix(kernel, 1, max_entries=np.int64(1)).shape == (1, 1)
    with pytest.raises(ValueError, match="more than `max_entries`=0"):
        convsv.conv_matrix(kernel, 1, max_entries=0)


# --- output_padding: PyTorch's rule and PyTorch's layer --------------------------------------------------


def _torch_output(options, size=(5, 4)):
    """The shape of PyTorch's transposed layer's output, or None where PyTorch refuses the options."""
    torch = pytest.importorskip("torch")
    weight = torch.ones(2, 3, 3, 2, dtype=torch.float64)  # (in, out, *k) for a transposed layer
    x = torch.zeros(1, 2, *size, dtype=torch.float64)
    try:
        return tuple(torch.nn.functional.conv_transpose2d(x, weight, **options).shape[1:])
    except RuntimeError:
        return None


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("padding", [0, 1])
def test_output_padding_is_accepted_exactly_when_pytorch_accepts_it(padding):
    kernel = np.ones((2, 3, 3, 2))  # OIHW of the forward convolution: PyTorch's (in, out, *k) transposed
    grid = [(s, d, e) for s in (1, 2, 3) for d in (1, 2, 3) for e in (0, 1, 2, 3)]
    verdicts = set()
    # Each axis runs through the grid, the second one shifted so that the axes differ.
    for (s, d, e), (t, c, f) in zip(grid, grid[5:] + grid[:5], strict=True):
        options = {"stride": (s, t), "dilation": (d, c), "output_padding": (e, f), "padding": padding}
        shape = _torch_output(options)
        if shape is not None:
            matrix = convsv.conv_matrix(kernel, (5, 4), layout="OIHW", transposed=True, **options)
            assert matrix.shape == (shape[0] * shape[1] * shape[2], 2 * 5 * 4)
        else:
            with pytest.raises(ValueError, match=r"`output_padding` .* does not fit"):
                convsv.conv_matrix(kernel, (5, 4), layout="OIHW", transposed=True, **options)
        verdicts.add(shape is not None)
    assert verdicts == {True, False}  # the grid has both
    with pytest.raises(ValueError, match="`output_padding` must contain non-negative sizes"):
        convsv.conv_matrix(kernel, (5, 4), layout="OIHW", transposed=True, padding=1, output_padding=-1)


# Transposed layers that PyTorch builds with an output_padding at least the stride (below the dilation),
# as (stride, dilation, padding, output_padding, groups, map).
NEW_TRANSPOSED = [
    (1, 2, 0, 1, 1, (4, 5)),
    (1, 3, 1, (2, 1), 1, (5, 4)),
    ((2, 1), (3, 2), (1, 2), (2, 1), 1, (4, 4)),
    (2, 3, 2, 2, 2, (3, 4)),
    (1, (2, 1), (0, 1), (1, 0), 2, (6, 3)),
]


def _torch_matrix(weight, stride, dilation, padding, output_padding, groups, size):
    """PyTorch's own conv_transpose2d applied to every basis vector: its dense matrix, float64."""
    torch = pytest.importorskip("torch")
    w = torch.as_tensor(weight, dtype=torch.float64)
    c_in = w.shape[0]
    eye = torch.eye(c_in * size[0] * size[1], dtype=torch.float64).reshape(-1, c_in, *size)
    options = {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation}
    out = torch.nn.functional.conv_transpose2d(eye, w, groups=groups, **options)
    return out.reshape(out.shape[0], -1).T.numpy()


@pytest.mark.parametrize("layer", NEW_TRANSPOSED, ids=str)
def test_newly_accepted_transposed_layers_match_pytorch(backend, layer):
    one_in(len(NEW_TRANSPOSED), NEW_TRANSPOSED.index(layer), backend)
    _check_against_pytorch(backend.asarray(_weight(layer), backend.default_float), layer, backend.to_numpy)


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("route", ["direct", "fft"])
@pytest.mark.parametrize("layer", NEW_TRANSPOSED, ids=str)
def test_newly_accepted_transposed_layers_match_pytorch_on_every_route(monkeypatch, route, layer):
    monkeypatch.setattr(convsv._operator, "framework_convolution", lambda *a: None)
    monkeypatch.setattr(convsv._operator.PaddedLayer, "_fft_is_cheaper", lambda self: route == "fft")
    _check_against_pytorch(_weight(layer), layer, np.asarray, clip=True)


def _weight(layer):
    """PyTorch's (in, out / groups, *k) transposed weight: the forward convolution's OIHW kernel."""
    return np.random.default_rng(3).standard_normal((4, 6 // layer[4], 3, 2))


def _check_against_pytorch(kernel, layer, to_numpy, clip=False):
    """Dense matrix, spectrum, norm, bounds (and projection) of ``layer`` against PyTorch's own matrix."""
    stride, dilation, padding, extra, groups, size = layer
    dense = _torch_matrix(_weight(layer), stride, dilation, padding, extra, groups, size)
    expected = np.linalg.svd(dense, compute_uv=False)
    options = {
        "layout": "OIHW",
        "transposed": True,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "output_padding": extra,
        "groups": groups,
    }
    double = str(kernel.dtype).endswith("float64")
    rtol = 1e-9 if double else 2e-5
    matrix = to_numpy(convsv.conv_matrix(kernel, size, **options))
    np.testing.assert_allclose(matrix, dense, rtol=rtol, atol=rtol)
    values = to_numpy(convsv.singular_values(kernel, size, **options))
    np.testing.assert_allclose(values, expected[: values.shape[0]], rtol=rtol, atol=rtol * expected[0])
    assert values.shape[0] == min(dense.shape)
    tol = 1e-8 if double else 1e-5
    norm = to_numpy(convsv.operator_norm(kernel, size, tol=tol, **options))
    np.testing.assert_allclose(norm, expected[0], rtol=10 * tol)
    top = to_numpy(convsv.singular_values(kernel, size, k=3, tol=tol, **options))
    np.testing.assert_allclose(top, expected[:3], rtol=10 * tol)
    lower, upper = convsv.operator_norm_bounds(kernel, size, tol=tol, **options)
    assert to_numpy(lower) <= expected[0] * (1 + 10 * tol)
    assert to_numpy(upper) >= expected[0] * (1 - 10 * tol)
    if not clip:
        return
    clipped = convsv.clip_operator_norm(kernel, size, 0.5 * expected[0], **options)
    clipped_dense = _torch_matrix(to_numpy(clipped), stride, dilation, padding, extra, groups, size)
    np.testing.assert_allclose(np.linalg.norm(clipped_dense, 2), 0.5 * expected[0], rtol=2e-3)
    assert np.linalg.norm(clipped_dense, 2) <= 0.5 * expected[0] * (1 + 10 * tol)


@pytest.mark.backend("numpy")
def test_circular_transposed_layers_take_no_output_padding():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match='Only "zeros" padding mode'):  # no circular transposed layer
        torch.nn.ConvTranspose2d(2, 2, 3, padding_mode="circular")
    with pytest.raises(ValueError, match="`output_padding` is for zero padding"):
        convsv.singular_values(np.ones((3, 3, 2, 2)), 4, transposed=True, dilation=2, output_padding=1)
