"""conv_matrix against the written-out formula and the frameworks' own convolutions."""

from __future__ import annotations

import math

import numpy as np
import pytest

import convsv

from _reference import circular_conv, dense_matrix
from helpers import require
from test_spectrum import LAYOUTS, SHAPES, as_layout, random_kernel


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
@pytest.mark.parametrize("layout_index", [0, 1], ids=["channels_last", "channels_first"])
def test_matches_the_written_out_formula(backend, rng, ksize, c_in, c_out, input_shape, layout_index):
    kernel = random_kernel(rng, ksize, c_in, c_out)
    layout = LAYOUTS[len(ksize)][layout_index]
    dtype = backend.default_float
    kernel_b = backend.asarray(as_layout(kernel, layout), dtype)
    expected = dense_matrix(kernel.astype(dtype), input_shape)
    n = math.prod(input_shape)
    assert expected.shape == (c_out * n, c_in * n)
    # Folding a kernel larger than the map sums taps: round-off in float32.
    backend.assert_close(
        convsv.conv_matrix(kernel_b, input_shape, layout=layout), expected, rtol=1e-6, atol=1e-6
    )


def test_complex_kernel(backend, rng):
    kernel = random_kernel(rng, (2, 3), 2, 3, complex_=True)
    dtype = "complex128" if backend.float64 else "complex64"
    m = convsv.conv_matrix(backend.asarray(kernel, dtype), (3, 4))
    backend.assert_close(m, dense_matrix(kernel, (3, 4)), dtype=dtype, rtol=1e-6, atol=1e-6)


@pytest.mark.backend("numpy")
def test_applies_like_the_formula_to_a_random_input(rng):
    # The same contract, read from the other side: matrix @ flattened input.
    kernel = random_kernel(rng, (3, 3), 2, 4)
    x = rng.standard_normal((2, 5, 7))
    m = convsv.conv_matrix(kernel, (5, 7))
    np.testing.assert_allclose(m @ x.ravel(), circular_conv(x, kernel).ravel(), atol=1e-12)


def _wrap_pad(x, ksize, xp_take):
    """Circular padding by ``k - 1`` at the end of each spatial axis, by index arithmetic.

    Works for kernels larger than the map, where torch's ``pad(mode="circular")`` refuses.
    """
    for axis, k in enumerate(ksize, start=2):
        n = x.shape[axis]
        x = xp_take(x, np.arange(n + k - 1) % n, axis)
    return x


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
@pytest.mark.backend("torch")
def test_matches_torch_convolution(rng, ksize, c_in, c_out, input_shape):
    torch = require("torch")
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
    weight = as_layout(random_kernel(rng, ksize, c_in, c_out), LAYOUTS[len(ksize)][1])  # (out, in, *k)
    m = convsv.conv_matrix(torch.tensor(weight), input_shape, layout=LAYOUTS[len(ksize)][1])
    x = torch.tensor(rng.standard_normal((3, c_in, *input_shape)))  # a batch of three inputs
    padded = _wrap_pad(x, ksize, lambda a, idx, axis: torch.index_select(a, axis, torch.tensor(idx)))
    y = conv[len(ksize)](padded, torch.tensor(weight))
    assert y.shape == (3, c_out, *input_shape)
    np.testing.assert_allclose((x.reshape(3, -1) @ m.T).numpy(), y.reshape(3, -1).numpy(), atol=1e-12)


@pytest.mark.parametrize(("ksize", "c_in", "c_out", "input_shape"), SHAPES)
@pytest.mark.backend("jax")
def test_matches_jax_convolution(rng, ksize, c_in, c_out, input_shape):
    jax = require("jax")
    d = len(ksize)
    kernel = random_kernel(rng, ksize, c_in, c_out)
    x = rng.standard_normal((3, c_in, *input_shape))
    with jax.enable_x64(True):
        jnp = jax.numpy
        m = convsv.conv_matrix(jnp.asarray(kernel), input_shape, layout=LAYOUTS[d][0])
        padded = _wrap_pad(jnp.asarray(x), ksize, lambda a, idx, axis: jnp.take(a, idx, axis=axis))
        spatial = "DHW"[-d:]
        y = jax.lax.conv_general_dilated(
            padded,
            jnp.asarray(kernel),
            window_strides=(1,) * d,
            padding="VALID",
            dimension_numbers=(f"NC{spatial}", f"{spatial}IO", f"NC{spatial}"),
        )
        np.testing.assert_allclose(
            np.asarray(jnp.asarray(x).reshape(3, -1) @ m.T), np.asarray(y).reshape(3, -1), atol=1e-12
        )


def test_refuses_a_matrix_too_large(backend):
    kernel = backend.asarray(np.ones((3, 3, 64, 64)), backend.default_float)
    with pytest.raises(ValueError, match="max_entries"):
        convsv.conv_matrix(kernel, (224, 224))
    small = backend.asarray(np.ones((1, 1, 1, 1)), backend.default_float)
    with pytest.raises(ValueError, match="max_entries"):
        convsv.conv_matrix(small, (4, 4), max_entries=255)
    m = convsv.conv_matrix(small, (4, 4), max_entries=256)
    assert m.shape == (16, 16)
    assert convsv.conv_matrix(small, (4, 4), max_entries=None).shape == (16, 16)
