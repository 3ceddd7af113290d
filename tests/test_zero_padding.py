"""Zero-padded layers: the matrix-free operator, its norm, its k largest values and the tight projection.

Ground truth: the dense matrix of the written-out convolution (``_reference.general_dense``) and
NumPy's SVD of it; for the operator also PyTorch's own convolutions (``test_layers.py`` checks
``conv_matrix`` against both). Every route the operator can take is forced once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import convsv
import convsv._lanczos
import convsv._operator
import convsv._values
from convsv._layout import parse, working_kernel

from helpers import require
from test_layers import LAYOUT, Layer, _id

LAYERS = [
    Layer((3, 3), 3, 4, (7, 6), {"padding": 1, "stride": 2}),  # stride 2 on an odd map
    Layer(
        (3, 2), 4, 6, (7, 9), {"padding": ((0, 2), (3, 1)), "stride": (2, 3), "dilation": (1, 2), "groups": 2}
    ),
    Layer((2,), 3, 6, (11,), {"padding": ((2, 0),), "stride": 3, "dilation": 2, "groups": 3}),
    Layer((2, 2, 2), 2, 2, (4, 5, 3), {"padding": ((1, 0), (0, 1), (1, 1)), "stride": (2, 1, 2)}),
    Layer((5, 5), 2, 3, (6, 6), {"padding": 2}),
    Layer((3, 3), 3, 3, (6, 5), {"padding": "same", "groups": 3}),  # depthwise
    Layer((5,), 2, 4, (12,), {"padding": "same", "stride": 2, "groups": 2}),
]


def _tol(dtype: str) -> float:
    return 1e-9 if dtype in ("float64", "complex128") else 2e-5


def _dense(layer: Layer, kernel: np.ndarray) -> np.ndarray:
    return layer.dense(kernel)


def _group_layer(layer: Layer, kernel: np.ndarray, xp_kernel, dtype, monkeypatch, route):
    """The library's PaddedLayer for ``layer``, on the route asked for."""
    if route.startswith("direct"):
        monkeypatch.setattr(convsv._operator, "framework_convolution", lambda *a: None)
        monkeypatch.setattr(convsv._operator.PaddedLayer, "_fft_is_cheaper", lambda self: False)
        if route == "direct-by-tap":  # one matrix product per tap, as on large maps
            monkeypatch.setattr(convsv._operator, "GATHERED_ENTRIES", 1)
    elif route == "fft":
        monkeypatch.setattr(convsv._operator, "framework_convolution", lambda *a: None)
        monkeypatch.setattr(convsv._operator.PaddedLayer, "_fft_is_cheaper", lambda self: True)
    k, spec, xp = parse(xp_kernel, layer.input_shape, LAYOUT[layer.d], None, **layer.options)
    k = working_kernel(k, spec, xp)
    return convsv._operator.PaddedLayer(k, spec, xp)


@pytest.mark.parametrize("route", ["own", "direct", "direct-by-tap", "fft"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("layer", LAYERS, ids=_id)
def test_operator_and_adjoint_are_the_dense_matrix(backend, rng, layer, complex_, route, monkeypatch):
    if route != "own" and backend.name.startswith("jax"):
        pytest.skip("JAX arrays always take JAX's convolution; the composed routes run on the other backends")
    kernel = layer.kernel(rng, complex_=complex_)
    dtype = (
        ("complex128" if complex_ else "float64")
        if backend.float64
        else ("complex64" if complex_ else "float32")
    )
    operator = _group_layer(layer, kernel, backend.asarray(kernel, dtype), dtype, monkeypatch, route)
    if route == "own":
        expected = "framework" if backend.name.split("-")[0] in ("torch", "jax") else operator.route
        assert operator.route == expected
    else:
        assert operator.route == route.split("-")[0]
    dense = _dense(layer, kernel)
    n_in, n_out = dense.shape[1], dense.shape[0]
    # Columns: the layer applied to each basis vector of (G, in/G, *map), which is the dense matrix's
    # column order (channel-major, groups contiguous).
    eye = backend.asarray(np.eye(n_in).reshape(n_in, *operator.input_shape), dtype)
    applied = backend.check(operator.apply(eye), dtype).reshape(n_in, -1).T
    np.testing.assert_allclose(applied, dense, atol=_tol(dtype) * np.abs(dense).max())
    eye = backend.asarray(np.eye(n_out).reshape(n_out, *operator.output_shape), dtype)
    adjoint = backend.check(operator.adjoint(eye), dtype).reshape(n_out, -1).T
    np.testing.assert_allclose(adjoint, dense.conj().T, atol=_tol(dtype) * np.abs(dense).max())


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("layer", LAYERS, ids=_id)
def test_norm_is_the_dense_norm(backend, rng, layer, complex_):
    kernel = layer.kernel(rng, complex_=complex_)
    expected = np.linalg.svd(_dense(layer, kernel), compute_uv=False)[0]
    # float32 too where the default is float64; not on jax-x64, whose float32 is the jax variant's.
    dtypes = {backend.default_float} if backend.name == "jax-x64" else {backend.default_float, "float32"}
    for dtype in sorted(dtypes):
        kind = ("complex128" if dtype == "float64" else "complex64") if complex_ else dtype
        k = backend.asarray(kernel, kind)
        norm = convsv.operator_norm(k, layer.input_shape, layout=LAYOUT[layer.d], **layer.options)
        # Certified: within tol of a singular value, from below (round-off aside).
        tol = 1e-6 if dtype == "float64" else 1e-5
        norm = backend.assert_close(norm, expected, dtype=dtype, rtol=tol)
        assert norm <= expected * (1 + 10 * np.finfo(dtype).eps)


def test_bracket_is_ordered_where_its_ends_meet(backend):
    """A 1x1 kernel without padding is its own circular twin: both ends are its norm, round-off apart.

    Before the ends were ordered, each seed here came out with the lower end
    one ulp above the upper in float32 on NumPy (6, 13, 15) or PyTorch (2, 5, 9).
    """
    dtypes = {backend.default_float} if backend.name == "jax-x64" else {backend.default_float, "float32"}
    for seed in (2, 5, 6, 9, 13, 15):
        kernel = np.random.default_rng(seed).standard_normal((1, 1, 32, 64))
        exact = np.linalg.norm(kernel[0, 0], 2)  # the layer is this channel matrix at every pixel
        for dtype in sorted(dtypes):
            bounds = convsv.operator_norm_bounds(backend.asarray(kernel, dtype), (16, 16), padding=0)
            lower, upper = (backend.assert_close(end, exact, dtype=dtype) for end in bounds)
            assert lower <= upper, (seed, dtype, lower, upper)  # compared in the dtype returned


def _clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4, 3 -> 7 layer on 6x12 with padding 2 whose top singular values nearly coincide.

    Projecting the circular layer on the padded map to norm 1 (to convergence) flattens its
    spectrum at 1, so the zero-padded layer's largest values crowd below it.
    """
    kernel = rng.standard_normal((4, 4, 3, 7))
    kernel = convsv.clip_operator_norm(
        kernel, (6, 12), 1.0, padding=2, bound="circular", method="extrapolated", iterations=100, tol=1e-9
    )
    layer = Layer((4, 4), 3, 7, (6, 12), {"padding": 2})
    return kernel, np.linalg.svd(layer.dense(kernel), compute_uv=False)


def test_norm_does_not_settle_on_the_second_of_two_close_values(backend, rng):
    kernel, expected = _clustered(rng)
    assert (expected[0] - expected[1]) / expected[0] < 1e-3  # the hard case it claims to be
    for dtype in {backend.default_float, "float32"}:
        norm = convsv.operator_norm(backend.asarray(kernel, dtype), (6, 12), padding=2)  # default tol
        backend.assert_close(norm, expected[0], dtype=dtype, rtol=1e-6 if dtype == "float64" else 1e-5)


def test_restarts_keep_the_certificate(rng):
    # A basis of 8 vectors forces many restarts; the result must still be certified and exact.
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    k, spec, xp = parse(kernel, layer.input_shape, "HWIO", None, **layer.options)
    k = working_kernel(k, spec, xp)
    ritz = convsv._lanczos.lanczos_norm(
        convsv._operator.PaddedLayer(k, spec, xp), tol=1e-10, iterations=2000, capacity=8
    )
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    assert bool(np.all(ritz.certified))
    np.testing.assert_allclose(float(np.max(ritz.value)), expected, rtol=1e-9)


def test_a_start_vector_is_used(rng):
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    k, spec, xp = parse(kernel, layer.input_shape, "HWIO", None, **layer.options)
    k = working_kernel(k, spec, xp)
    operator = convsv._operator.PaddedLayer(k, spec, xp)
    first = convsv._lanczos.lanczos_norm(operator, tol=1e-8, iterations=640)
    again = convsv._lanczos.lanczos_norm(operator, tol=1e-8, iterations=640, start=first.vector)
    assert bool(again.certified[0])
    np.testing.assert_allclose(again.value, first.value, rtol=1e-8)


def test_a_start_on_the_second_singular_vector_still_finds_the_norm(rng):
    """A warm start can be an exact singular vector of the wrong value (the tight projection's levels).

    From such a vector alone the Krylov space never leaves it, and the second
    value would be certified (it is a singular value); the start is mixed
    with a fresh one, so the norm is found.
    """
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    k, spec, xp = parse(kernel, layer.input_shape, "HWIO", None, **layer.options)
    k = working_kernel(k, spec, xp)
    operator = convsv._operator.PaddedLayer(k, spec, xp)
    size = math.prod(operator.input_shape)
    # The operator's own matrix only to build the adversarial start; the truth is the written-out one.
    columns = operator.apply(np.reshape(np.eye(size), (size, *operator.input_shape)))
    _, _, right = np.linalg.svd(np.reshape(columns, (size, -1)).T)
    start = right[1][None, :]
    value = convsv._lanczos.lanczos_norm(operator, tol=1e-8, iterations=640, start=start).value
    truth = np.linalg.svd(layer.dense(kernel), compute_uv=False)
    assert truth[0] > truth[1] * (1 + 1e-6)
    np.testing.assert_allclose(value, truth[0], rtol=1e-7)


# --- the k largest singular values ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["dense", "lanczos"])
@pytest.mark.parametrize("layer", [*LAYERS[:3], Layer((3, 3), 1, 1, (9, 9), {"padding": 1})], ids=_id)
def test_top_k_are_the_dense_top_k(backend, rng, layer, route, monkeypatch):
    if route == "lanczos":  # small layers go to the dense SVD: send them to block Lanczos instead
        monkeypatch.setattr(convsv._values, "MAX_DENSE_SVD", 0)
    kernel = layer.kernel(rng) if layer.c_in > 1 else np.ones((3, 3, 1, 1))  # the box: repeated values
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)
    dtype = backend.default_float
    count = 5
    values = convsv.singular_values(
        backend.asarray(kernel, dtype), layer.input_shape, k=count, layout=LAYOUT[layer.d], **layer.options
    )
    # Each value to its own relative accuracy (atol=0), not the largest's.
    values = backend.assert_close(values, expected[:count], rtol=1e-6 if dtype == "float64" else 1e-4, atol=0)
    assert values.shape == (count,)


def test_top_k_of_a_circular_layer_is_its_sorted_spectrum(backend, rng):
    kernel = backend.asarray(rng.standard_normal((3, 3, 2, 3)), backend.default_float)
    spectrum = backend.to_numpy(convsv.singular_values(kernel, (6, 4), stride=2))
    top = backend.check(convsv.singular_values(kernel, (6, 4), stride=2, k=4), backend.default_float)
    np.testing.assert_array_equal(top, np.sort(spectrum.ravel())[::-1][:4])


@pytest.mark.parametrize(
    ("bad", "error"),
    [(0, ValueError), (-1, ValueError), (10**6, ValueError), (2.0, TypeError), (True, TypeError)],
)
def test_top_k_needs_a_count_of_values(bad, error):
    with pytest.raises(error, match="`k` must be None or an int from 1"):
        convsv.singular_values(np.ones((3, 3, 1, 1)), 8, padding=1, k=bad)


def test_whole_spectrum_of_a_large_zero_padded_layer_points_to_k():
    with pytest.raises(ValueError, match="pass `k`"):
        convsv.singular_values(np.ones((3, 3, 64, 64)), 32, padding=1)


# --- the tight projection -----------------------------------------------------------------------------------


PROJECTED = [LAYERS[0], LAYERS[1], LAYERS[2], LAYERS[5], Layer((3, 3), 2, 2, (4, 4), {"padding": 1})]


@pytest.mark.parametrize("transposed", [False, True], ids=["forward", "transposed"])
@pytest.mark.parametrize("layer", PROJECTED, ids=_id)
def test_tight_projection_lands_on_the_bound(backend, rng, layer, transposed):
    kernel = layer.kernel(rng) * 3
    dtype = backend.default_float
    options = {"layout": LAYOUT[layer.d], **layer.options}
    shape = layer.input_shape
    if transposed:  # the transposed layer of this forward one: its input is the forward output
        shape = layer.output_shape
        options["transposed"] = True
        spans = [(k - 1) * d + 1 for k, d in zip(layer.ksize, layer.get("dilation"), strict=True)]
        options["output_padding"] = tuple(
            n + a + b - (m - 1) * s - w
            for n, (a, b), m, s, w in zip(
                layer.input_shape, layer.pads, layer.output_shape, layer.get("stride"), spans, strict=True
            )
        )
        options["padding"] = layer.pads
    bound = 1.0
    out, info = convsv.clip_operator_norm(
        backend.asarray(kernel, dtype), shape, bound, return_info=True, **options
    )
    result = backend.check(out, dtype)
    true = np.linalg.svd(layer.dense(result.astype(np.float64)), compute_uv=False)[0]
    tol = 1e-6 if dtype == "float64" else 1e-5
    assert bound * (1 - 1e-3) <= true <= bound * (1 + tol)
    assert bool(backend.to_numpy(info.converged))
    backend.assert_close(info.norm, true, rtol=tol)
    initial = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    backend.assert_close(info.initial_norm, initial, rtol=tol)


def test_tight_projection_keeps_a_kernel_within_the_bound(backend, rng):
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    norm = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    dtype = backend.default_float
    out = convsv.clip_operator_norm(
        backend.asarray(kernel, dtype), layer.input_shape, 1.01 * norm, **layer.options
    )
    np.testing.assert_array_equal(backend.check(out, dtype), kernel.astype(dtype))


# Two layers on which the random campaign's clips to norm 0 divided by zero (tests/fuzz, seed
# 20190101: configurations 4192 and 9932), written out here.
TO_ZERO = [
    Layer((1, 3), 2, 4, (7, 3), {"padding": "same", "dilation": 2}),
    Layer((2,), 1, 4, (20,), {"padding": 1, "dilation": 2, "transposed": True}),
]


@pytest.mark.parametrize("layer", TO_ZERO, ids=_id)
def test_tight_projection_to_norm_zero_is_the_zero_kernel(backend, rng, layer):
    # Every level is 0, so no two levels give a slope; the suite turns a division warning into an error.
    dtype = backend.default_float
    taps = layer.kernel(rng)
    kernel = backend.asarray(taps, dtype)
    options = {"layout": LAYOUT[layer.d], **layer.options}
    for method in ("alternating", "extrapolated"):
        out, info = convsv.clip_operator_norm(
            kernel, layer.input_shape, 0.0, method=method, return_info=True, **options
        )
        np.testing.assert_array_equal(backend.check(out, dtype), np.zeros(taps.shape, dtype))
        assert float(backend.to_numpy(info.norm)) == 0.0


def test_tight_projection_of_a_layer_with_bunched_values(backend):
    """A float32 layer whose clip leaves three triple singular values within 4e-4 of each other.

    From the random campaign (tests/fuzz, seed 20190101, configuration 9436): three identical
    3-tap blocks (stride 3 reads one row of three), scaled to 1e12. After the clip, Lanczos
    vectors lose orthogonality within a few steps, and a restart could end lower than the cycle
    before it; the last cycle's value, 3.5e-4 below the norm, let the clip land 2.1e-4 above its
    bound on PyTorch.
    """
    taps = [-8.2014464e11, -1.5000514e12, -1.1012956e11, -1.1213176e11, -5.7465589e11,
            9.2763875e11, 1.0991650e12, -1.9965033e11, -2.5501288e11]  # fmt: skip
    layer = Layer((1, 1, 3), 1, 3, (3, 3, 3), {"padding": "same", "stride": (1, 3, 2)})
    kernel = np.reshape(np.asarray(taps, dtype=np.float32), (1, 1, 3, 1, 3))
    norm = np.linalg.svd(layer.dense(kernel.astype(np.float64)), compute_uv=False)[0]
    bound = 0.3 * norm
    for dtype in {backend.default_float, "float32"}:
        out = convsv.clip_operator_norm(
            backend.asarray(kernel, dtype), layer.input_shape, bound, method="dykstra", iterations=20,
            tol=1e-4, layout="DHWIO", **layer.options,
        )  # fmt: skip
        result = backend.check(out, dtype).astype(np.float64)
        reached = np.linalg.svd(layer.dense(result), compute_uv=False)[0]
        assert bound * (1 - 1e-3) <= reached <= bound * (1 + 2e-5), (dtype, reached / bound - 1)


def test_tight_projection_reports_a_singular_value_when_the_top_ones_bunch(backend):
    """A float32 clip whose result's top singular value is fourfold: its reported norm is one of them.

    From the random campaign (tests/fuzz, seed 20190101, configuration 9007): 4 -> 1 channels,
    a 2x1 kernel on 6x4 with one zero before each row. Clipped to 0.3 of its norm, the top value
    is 0.445 four times, then 0.440; without reorthogonalisation the Lanczos vectors of a level
    lost their orthogonality, neither cycle certified, and ``info.norm`` was 3.0e-4 from every
    singular value of the layer returned.
    """
    taps = [-2.098833, 1.3444415, -0.8322832, -0.09750172, -0.3833508, 0.14735462, 0.3152035, -0.51113206]
    layer = Layer((2, 1), 4, 1, (6, 4), {"padding": ((0, 0), (1, 0))})
    kernel = np.reshape(np.asarray(taps, dtype=np.float32), (2, 1, 4, 1))
    norm = np.linalg.svd(layer.dense(kernel.astype(np.float64)), compute_uv=False)[0]
    for dtype in {backend.default_float, "float32"}:
        out, info = convsv.clip_operator_norm(
            backend.asarray(kernel, dtype), layer.input_shape, 0.3 * norm, method="extrapolated",
            iterations=100, tol=1e-4, return_info=True, **layer.options,
        )  # fmt: skip
        values = np.linalg.svd(layer.dense(backend.check(out, dtype).astype(np.float64)), compute_uv=False)
        reported = float(backend.to_numpy(info.norm))
        # Documented: a Lanczos value within the default `tol` (1e-5 in float32, 1e-6 in float64) of
        # a singular value, from below; the campaign's limits, round-off included.
        rtol, tol = {"float32": (1e-4, 1e-5), "float64": (1e-9, 1e-6)}[dtype]
        nearest = np.min(np.abs(values - reported)) / values[0]
        assert nearest <= 2 * tol + rtol, (dtype, nearest)
        assert reported <= values[0] * (1 + rtol), dtype


def test_circular_bound_is_the_circular_layer_on_the_padded_map(rng):
    # bound="circular": the projection of the circular layer on the padded map, as before.
    layer = Layer((3, 3), 2, 2, (4, 4), {"padding": 1})
    kernel = layer.kernel(rng) * 3
    out = convsv.clip_operator_norm(
        kernel, (4, 4), 1.0, padding=1, bound="circular", method="extrapolated", iterations=100, tol=1e-9
    )
    circular = convsv.clip_operator_norm(kernel, (6, 6), 1.0, method="extrapolated", iterations=100, tol=1e-9)
    np.testing.assert_allclose(out, circular, atol=1e-12)
    # ... which over-constrains the zero-padded layer on this small map.
    assert np.linalg.svd(layer.dense(out), compute_uv=False)[0] < 0.99


def test_tight_projection_errors():
    kernel = np.ones((3, 3, 1, 1))
    with pytest.raises(ValueError, match="`bound` must be one of"):
        convsv.clip_operator_norm(kernel, 8, 1.0, padding=1, bound="upper")
    with pytest.raises(ValueError, match="`min_norm` with zero padding needs bound='circular'"):
        convsv.clip_operator_norm(kernel, 8, 1.0, padding=1, min_norm=0.5)
    # min_norm with the circular bound still works
    convsv.clip_operator_norm(kernel, 8, 1.0, padding=1, min_norm=0.5, bound="circular")


# --- JAX: eager vmap, jit -----------------------------------------------------------------------------------


@pytest.mark.backend("jax")
def test_zero_padded_functions_under_vmap_and_jit(rng):
    jax = require("jax")
    layer = Layer((3,), 2, 3, (9,), {"padding": 1, "stride": 2})  # small: eager vmap runs op by op
    kernels = np.stack([layer.kernel(rng), layer.kernel(rng)])
    expected = [np.linalg.svd(layer.dense(k), compute_uv=False) for k in kernels]
    with jax.enable_x64(True):
        batch = jax.numpy.asarray(kernels)

        options = {"layout": "WIO", **layer.options}

        def norm(k):
            return convsv.operator_norm(k, layer.input_shape, **options)

        np.testing.assert_allclose(jax.vmap(norm)(batch), [e[0] for e in expected], rtol=1e-6)

        def top(k):
            return convsv.singular_values(k, layer.input_shape, k=3, **options)

        np.testing.assert_allclose(jax.jit(top)(batch[0]), expected[0][:3], rtol=1e-6)

        def clip(k):
            return convsv.clip_operator_norm(k, layer.input_shape, 1.0, **options)

        clipped = np.asarray(jax.jit(clip)(batch[1] * 3))
        true = np.linalg.svd(layer.dense(clipped), compute_uv=False)[0]
        assert 1 - 1e-3 <= true <= 1 + 1e-6


def test_zero_padded_norm_needs_positive_memory():
    with pytest.raises(ValueError, match="`max_memory` must be None or a positive int"):
        convsv.operator_norm(np.ones((3, 3, 1, 1)), 8, padding=1, max_memory=0)


def test_zero_padded_memory_bound_caps_the_basis(rng):
    # A tiny max_memory gives the smallest basis (16 vectors): slower, same certified norm.
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    norm = convsv.operator_norm(kernel, layer.input_shape, tol=1e-9, max_memory=1, **layer.options)
    np.testing.assert_allclose(norm, expected, rtol=1e-9)
    assert math.isfinite(float(norm))


def test_an_unreachable_tolerance_stops_at_round_off(rng):
    # tol=0 cannot be certified: the restarts stop once a cycle no longer halves the residual,
    # instead of running the whole budget, and the value is still the norm from below.
    layer = LAYERS[0]
    kernel = layer.kernel(rng)
    k, spec, xp = parse(kernel, layer.input_shape, "HWIO", None, **layer.options)
    k = working_kernel(k, spec, xp)
    ritz = convsv._lanczos.lanczos_norm(convsv._operator.PaddedLayer(k, spec, xp), tol=0.0, iterations=10**6)
    expected = np.linalg.svd(layer.dense(kernel), compute_uv=False)[0]
    assert not bool(np.any(ritz.certified))
    assert ritz.steps < 10**4
    np.testing.assert_allclose(float(np.max(ritz.value)), expected, rtol=1e-12)
