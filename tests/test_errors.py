"""Bad input gets a clear error that names the argument, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import convsv

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
