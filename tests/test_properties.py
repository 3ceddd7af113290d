"""Property-based checks over random shapes: the spectrum is the dense matrix's spectrum.

Kernel sizes 1-7 per axis, non-square kernels and maps, maps smaller than
kernels, 1-6 channels with c_in != c_out, 1-D/2-D/3-D. The dense SVD of the
written-out matrix is the ground truth.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convsv

from _reference import dense_matrix, dense_singular_values, general_dense, layer_output_shape

# Per rank: kernel and map sizes per axis; 3-D is kept smaller so the dense SVD stays cheap.
SIZES = {1: (7, 12), 2: (7, 6), 3: (4, 3)}
LAYOUTS = {1: "WIO", 2: "HWIO", 3: "DHWIO"}


@st.composite
def layers(draw):
    d = draw(st.integers(1, 3))
    k_max, n_max = SIZES[d]
    ksize = tuple(draw(st.lists(st.integers(1, k_max), min_size=d, max_size=d)))
    input_shape = tuple(draw(st.lists(st.integers(1, n_max), min_size=d, max_size=d)))
    c_in, c_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    kernel = np.random.default_rng(seed).standard_normal((*ksize, c_in, c_out))
    return kernel, input_shape


def _examples(backend) -> int:
    # JAX compiles afresh for every new shape (about a second each): fewer examples there.
    return 5 if backend.name.startswith("jax") else int(os.environ.get("CONVSV_EXAMPLES", 60))


def apply(function, backend, layer):
    """``function(kernel, input_shape)`` on ``backend``, checked and returned as NumPy."""
    kernel, input_shape = layer
    dtype = backend.default_float
    layout = LAYOUTS[len(input_shape)]
    return backend.check(function(backend.asarray(kernel, dtype), input_shape, layout=layout), dtype)


def tolerance(backend) -> float:
    return 1e-10 if backend.default_float == "float64" else 3e-5


def test_spectrum_is_the_dense_spectrum(backend):
    @settings(max_examples=_examples(backend), deadline=None)
    @given(layers())
    def check(layer):
        kernel, input_shape = layer
        s = apply(convsv.singular_values, backend, layer)
        assert s.shape == (*input_shape, min(kernel.shape[-2:]))
        expected = dense_singular_values(kernel, input_shape)
        tol = tolerance(backend)
        np.testing.assert_allclose(np.sort(s.ravel())[::-1], expected, atol=tol * expected[0])
        np.testing.assert_allclose(apply(convsv.operator_norm, backend, layer), expected[0], rtol=tol)

    check()


def test_conv_matrix_is_the_written_out_matrix(backend):
    @settings(max_examples=_examples(backend), deadline=None)
    @given(layers())
    def check(layer):
        kernel, input_shape = layer
        m = apply(convsv.conv_matrix, backend, layer)
        n = math.prod(input_shape)
        assert m.shape == (kernel.shape[-1] * n, kernel.shape[-2] * n)
        expected = dense_matrix(kernel.astype(backend.default_float), input_shape)
        np.testing.assert_allclose(m, expected, rtol=1e-5, atol=1e-5)

    check()


@st.composite
def layers_that_fit(draw):
    """Kernels no larger than the map on any axis (no folding)."""
    kernel, input_shape = draw(layers())
    ksize = tuple(min(k, n) for k, n in zip(kernel.shape[:-2], input_shape, strict=True))
    return kernel[tuple(slice(k) for k in ksize)], input_shape


def test_norm_is_sandwiched_by_the_reshaped_norm(backend):
    # ||R|| <= ||layer|| <= sqrt(P) ||R|| for the (P c_in) x c_out reshaped kernel R,
    # P taps (proved on the theory page), checked against NumPy's matrix norm of R.
    @settings(max_examples=_examples(backend), deadline=None)
    @given(layers_that_fit())
    def check(layer):
        kernel, _ = layer
        norm = float(apply(convsv.operator_norm, backend, layer))
        reshaped = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2)
        taps = math.prod(kernel.shape[:-2])
        tol = tolerance(backend)
        assert reshaped * (1 - tol) <= norm <= math.sqrt(taps) * reshaped * (1 + tol)

    check()


@st.composite
def general_layers(draw):
    """Random strided, dilated, grouped, zero- or circular-padded, possibly transposed layers.

    Returns ``(kernel, input_shape, pads, geometry, padding, transposed)``; ``pads``
    is None for circular padding.
    """
    d = draw(st.integers(1, 3))
    top = 2 if d == 3 else 3
    ints = functools.partial(lambda hi: st.lists(st.integers(1, hi), min_size=d, max_size=d))
    ksize, stride, dilation = tuple(draw(ints(top + 1))), tuple(draw(ints(top))), tuple(draw(ints(top)))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, top)), groups * draw(st.integers(1, top))
    geometry = {"stride": stride, "dilation": dilation, "groups": groups}
    if draw(st.booleans()):  # circular: the stride must divide the map
        input_shape = tuple(s * draw(st.integers(1, top + 1)) for s in stride)
        pads, padding = None, "circular"
    else:
        input_shape = tuple(draw(ints(2 * top + 2)))
        padding = draw(st.integers(0, 2))
        pads = ((padding, padding),) * d
        spans = [(k - 1) * dil + 1 for k, dil in zip(ksize, dilation, strict=True)]
        assume(all(n + 2 * padding >= w for n, w in zip(input_shape, spans, strict=True)))
    seed = draw(st.integers(0, 2**32 - 1))
    kernel = np.random.default_rng(seed).standard_normal((*ksize, c_in // groups, c_out))
    return kernel, input_shape, pads, geometry, padding, draw(st.booleans())


def test_general_layers_spectrum_is_the_dense_spectrum(backend):
    @settings(max_examples=_examples(backend), deadline=None)
    @given(general_layers())
    def check(layer):
        kernel, input_shape, pads, geometry, padding, transposed = layer
        dense = general_dense(kernel, input_shape, pads=pads, **geometry)
        out_shape = layer_output_shape(
            input_shape, kernel.shape[:-2], geometry["stride"], geometry["dilation"], pads
        )
        options = {
            "layout": LAYOUTS[len(input_shape)],
            "padding": padding,
            "transposed": transposed,
            **geometry,
        }
        shape = input_shape
        if transposed:  # the transposed layer maps the output map back to the input map
            shape, dense = out_shape, dense.T
            if pads is not None:  # PyTorch's output_padding makes the round trip exact
                spans = [
                    (k - 1) * dil + 1 for k, dil in zip(kernel.shape[:-2], geometry["dilation"], strict=True)
                ]
                options["output_padding"] = tuple(
                    n - ((m - 1) * s - 2 * padding + w)
                    for n, m, s, w in zip(input_shape, out_shape, geometry["stride"], spans, strict=True)
                )
        dtype = backend.default_float
        k = backend.asarray(kernel, dtype)
        backend.assert_close(
            convsv.conv_matrix(k, shape, **options), dense.astype(dtype), rtol=1e-5, atol=1e-5
        )
        s = backend.check(convsv.singular_values(k, shape, **options), dtype)
        expected = np.linalg.svd(dense, compute_uv=False)
        np.testing.assert_allclose(np.sort(s.ravel())[::-1], expected, atol=tolerance(backend) * expected[0])
        tol = 1e-10 if dtype == "float64" else 1e-5
        norm = convsv.operator_norm(k, shape, tol=tol, **options)
        scale = np.abs(kernel).sum()  # round-off floor, for layers that read only zeros
        rtol, atol = (1e-7, 1e-13 * scale) if dtype == "float64" else (1e-4, 1e-6 * scale)
        backend.assert_close(norm, expected[0], rtol=rtol, atol=atol)

    check()
