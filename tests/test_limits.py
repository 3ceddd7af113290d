"""No unbounded allocations: absurd sizes are refused up front, huge dilations are folded, not formed.

A layer whose grid (the circular map, or the zero-padded map rounded up to
the stride) has more than 2**31 positions is refused when its spec is built;
a result, or a working set no chunking shrinks, above ``max(max_memory,
2**34)`` bytes is refused before it is allocated. The errors name the
argument responsible. A dilation alone needs no memory: tap ``p`` lands on
``(p * d) mod n``, checked against the written-out convolution.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import convsv
import convsv._operator
import convsv._spectrum
import convsv._values

from _reference import general_dense

# (function, kernel shape, input_shape, options, what the error must name). Each would allocate
# gigabytes to terabytes (or loop for hours) if it were not refused.
ABSURD = [
    ("operator_norm", (3, 3, 1, 1), 4, {"stride": 10**9, "padding": 1}, "`stride`"),
    ("operator_norm_bounds", (3, 3, 1, 1), 4, {"stride": 10**9, "padding": 1}, "`stride`"),
    ("conv_matrix", (3, 3, 1, 1), 4, {"stride": 10**9, "padding": 1}, "`stride`"),
    ("clip_operator_norm", (3, 3, 1, 1), 4, {"stride": 10**9, "padding": 1}, "`stride`"),
    ("operator_norm", (3, 3, 1, 1), 4, {"padding": 10**6}, "`padding`"),
    ("operator_norm", (3, 3, 1, 1), 5, {"dilation": 10**6, "padding": "same"}, "`dilation`"),
    ("singular_values", (3, 3, 1, 1), (100000, 100000), {}, "`input_shape`"),
    # Grids under 2**31 positions, but a result or an unchunkable working set over 16 GiB:
    ("singular_values", (3, 3, 4, 4), (40000, 40000), {}, "`input_shape`.*`max_memory`"),
    ("operator_norm", (3, 1, 1), 4, {"layout": "WIO", "stride": 10**9, "padding": 1}, "`stride`.*max_memory"),
    ("operator_norm_bounds", (3, 3, 1, 1), 4, {"stride": 3 * 10**4, "padding": 1}, "`stride`.*`max_memory`"),
    ("singular_values", (3, 3, 1, 1), (1000, 1000), {"padding": 1, "k": 10**5}, "`k`=100000.*`max_memory`"),
]
IDS = [f"{name}-{'-'.join(map(str, options))}" for name, _, _, options, _ in ABSURD]


def _call(name: str, kernel, input_shape, options: dict):
    if name == "clip_operator_norm":
        return convsv.clip_operator_norm(kernel, input_shape, 1.0, **options)
    return getattr(convsv, name)(kernel, input_shape, **options)


@pytest.mark.parametrize(("name", "shape", "input_shape", "options", "match"), ABSURD, ids=IDS)
def test_absurd_sizes_are_refused_at_once(backend, name, shape, input_shape, options, match):
    kernel = backend.asarray(np.ones(shape), backend.default_float)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        _call(name, kernel, input_shape, options)
    assert time.perf_counter() - start < 3.0


@pytest.mark.backend("numpy")
def test_absurd_sizes_are_refused_without_allocating():
    # In a child process whose address space may grow by 1 GiB at most: every case above asks for
    # 20 GiB or more, so any allocation of it is a MemoryError there, not the ValueError expected.
    script = textwrap.dedent(
        """
        import resource, re
        import numpy as np
        import convsv
        from test_limits import ABSURD, _call
        convsv.operator_norm(np.ones((3, 3, 1, 1)), 4)  # everything imported and warmed up
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        for name, shape, input_shape, options, match in ABSURD:
            try:
                _call(name, np.ones(shape), input_shape, options)
            except ValueError as error:
                assert re.search(match, str(error)), (name, options, error)
            else:
                raise AssertionError((name, options, "not refused"))
        print("refused", len(ABSURD))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"refused {len(ABSURD)}" in result.stdout


def test_the_limit_is_raised_by_max_memory(monkeypatch):
    # A 51.2 GB spectrum is refused by default, computed (here: reached) with a larger max_memory or None.
    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(convsv._values, "_spectrum_of_unit", reached)
    kernel = np.ones((3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"6400000000 singular values would take about 47\.7 GiB"):
        convsv.singular_values(kernel, (40000, 40000), max_memory=2**30)
    for max_memory in (2**36, None):
        with pytest.raises(Reached):
            convsv.singular_values(kernel, (40000, 40000), max_memory=max_memory)
    with pytest.raises(ValueError, match="This limit cannot be raised"):
        convsv.singular_values(kernel, (50000, 50000), max_memory=None)


# --- huge dilations on small maps: the right spectrum, at once -------------------------------------------

# (kernel shape, map, dilation): tap p of an axis of n lands on (p * d) mod n, so these taps spread
# out, collide (4 taps on 6 points with d = 3 mod 6: 0, 3, 0, 3), or all land on one point.
DILATED = [
    ((3, 3, 2, 3), (5, 5), (10**6 + 2, 10**9 + 1)),
    ((4, 3, 2, 2), (6, 5), (10**6 + 5, 10**18 + 3)),
    ((3, 3, 1, 2), (5, 5), (10**6, 10**6)),
    ((3, 2, 2), (7,), (10**9 + 3,)),
]


@pytest.mark.parametrize(("shape", "n", "dilation"), DILATED)
def test_huge_dilation_matches_the_written_out_convolution(backend, rng, shape, n, dilation):
    kernel = rng.standard_normal(shape)
    ndim = len(n)
    options = {"dilation": dilation, "layout": {1: "WIO", 2: "HWIO"}[ndim]}
    dense = general_dense(kernel, n, stride=(1,) * ndim, dilation=dilation, groups=1, pads=None)
    truth = np.linalg.svd(dense, compute_uv=False)
    dtype = backend.default_float
    rtol = 1e-12 if dtype == "float64" else 2e-5
    k = backend.asarray(kernel, dtype)
    start = time.perf_counter()
    values = backend.check(convsv.singular_values(k, n, **options), dtype)
    backend.assert_close(convsv.operator_norm(k, n, **options), truth[0], rtol=rtol)
    backend.assert_close(convsv.conv_matrix(k, n, **options), dense, rtol=rtol, atol=rtol)
    assert time.perf_counter() - start < 10.0
    np.testing.assert_allclose(np.sort(values.ravel())[::-1], truth, rtol=rtol, atol=rtol * truth[0])


@pytest.mark.backend("numpy")
def test_a_dilation_beyond_any_integer_type_folds_exactly(rng):
    # 10**30 + 2 = 2 (mod 4): the layer is the one with dilation 2, by the definition of wrap-around.
    kernel = rng.standard_normal((3, 3, 2, 2))
    dense = general_dense(kernel, (4, 4), stride=(1, 1), dilation=(2, 2), groups=1, pads=None)
    np.testing.assert_allclose(convsv.conv_matrix(kernel, 4, dilation=10**30 + 2), dense, atol=1e-14)
    truth = np.linalg.svd(dense, compute_uv=False)
    values = np.sort(convsv.singular_values(kernel, 4, dilation=10**30 + 2).ravel())[::-1]
    np.testing.assert_allclose(values, truth, rtol=1e-12, atol=1e-12)


def test_the_reproducer_dilation_runs_at_once(backend):
    # The case: it materialised a 67 GiB dilated kernel. Every tap lands on (0, 0): norm 9.
    kernel = backend.asarray(np.ones((3, 3, 1, 1)), backend.default_float)
    start = time.perf_counter()
    norm = convsv.operator_norm(kernel, 4, dilation=10**9)
    assert time.perf_counter() - start < 3.0
    backend.assert_close(norm, 9.0, rtol=1e-6)


def test_a_stride_longer_than_the_map_stays_small(backend, rng):
    # Zero padding, stride 10**6 on a 1-D map of 4: one output; the adjoint spreads it over the
    # map (4 positions), not over the stride.
    kernel = rng.standard_normal((3, 2, 2))
    options = {"layout": "WIO", "stride": 10**6, "padding": 1}
    dense = general_dense(kernel, (4,), stride=(10**6,), dilation=(1,), groups=1, pads=((1, 1),))
    truth = np.linalg.svd(dense, compute_uv=False)[0]
    dtype = backend.default_float
    k = backend.asarray(kernel, dtype)
    tol = 1e-10 if dtype == "float64" else None
    rtol = 1e-9 if dtype == "float64" else 2e-5
    start = time.perf_counter()
    backend.assert_close(convsv.operator_norm(k, 4, tol=tol, **options), truth, rtol=rtol)
    backend.assert_close(convsv.conv_matrix(k, 4, **options), dense, rtol=rtol, atol=rtol)
    assert time.perf_counter() - start < 10.0


# --- max_memory bounds the zero-padded route -------------------------------------------------------------


@pytest.mark.backend("numpy")
def test_max_memory_keeps_the_fft_route_off_when_its_matrices_do_not_fit(rng):
    # Many taps on a small map: the FFT route is the cheaper one, unless its matrices exceed max_memory.
    kernel = rng.standard_normal((15, 15, 2, 2))
    k, spec, xp = convsv._layout.parse(kernel, 16, "HWIO", None, padding=7)
    k = convsv._layout.working_kernel(k, spec, xp)
    needed = convsv._operator.fft_bytes(spec, k.dtype, xp)
    assert convsv._operator.PaddedLayer(k, spec, xp).route == "fft"
    assert convsv._operator.PaddedLayer(k, spec, xp, needed).route == "fft"
    assert convsv._operator.PaddedLayer(k, spec, xp, needed - 1).route == "direct"
    dense = general_dense(kernel, (16, 16), stride=(1, 1), dilation=(1, 1), groups=1, pads=((7, 7),) * 2)
    truth = np.linalg.svd(dense, compute_uv=False)[0]
    for max_memory in (None, needed - 1):  # the FFT route, then the direct one
        norm = convsv.operator_norm(kernel, 16, padding=7, tol=1e-10, max_memory=max_memory)
        np.testing.assert_allclose(norm, truth, rtol=1e-9)


# --- realistic layers are not refused --------------------------------------------------------------------


def _resnet50() -> list[tuple[int, int, int, int, int]]:
    """Every distinct convolution of a ResNet-50 (v1.5) on 224x224: (k, c_in, c_out, stride, map)."""
    layers = [(7, 3, 64, 2, 224)]
    c_in = 64
    for width, stride, n in ((64, 1, 56), (128, 2, 56), (256, 2, 28), (512, 2, 14)):
        out = 4 * width  # first block: the stride in its 3x3 and in the 1x1 downsample; then at n / stride
        layers += [(1, c_in, width, 1, n), (3, width, width, stride, n), (1, c_in, out, stride, n)]
        n //= stride
        layers += [(1, width, out, 1, n), (1, out, width, 1, n), (3, width, width, 1, n)]
        c_in = out
    return sorted(set(layers))


REALISTIC = [
    *(((k, k, c_in, c_out), (n, n), {"stride": s}) for k, c_in, c_out, s, n in _resnet50()),
    *(((3, 3, 3, c, c), (64, 64, 64), {"layout": "DHWIO"}) for c in (16, 32, 64, 128)),
    ((3, 3, 512, 512), (14, 14), {}),
    ((3, 3, 64, 64), (32, 32), {}),
]


class Reached(Exception):
    """The computation was reached: nothing refused the layer."""


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("zero_padded", [False, True], ids=["circular", "zero-padded"])
@pytest.mark.parametrize(("shape", "n", "options"), REALISTIC)
def test_realistic_layers_are_not_refused(monkeypatch, shape, n, options, zero_padded):
    # Every check of the public functions runs; the computation itself is stubbed out where it starts.
    def reached(*args, **kwargs):
        raise Reached

    # Where the work starts: singular_values after its checks, the circular norms after those of
    # blocks_by_rows, the zero-padded norms after those of basis_rows.
    monkeypatch.setattr(convsv._values, "_spectrum_of_unit", reached)
    monkeypatch.setattr(convsv._spectrum, "partial_transfer", reached)
    monkeypatch.setattr(convsv._values, "padded_values", reached)
    kernel = np.zeros(shape, dtype=np.float32)
    if zero_padded:
        options = {**options, "padding": shape[0] // 2}
    functions = [convsv.operator_norm, convsv.operator_norm_bounds]
    if not zero_padded:
        functions.append(convsv.singular_values)
    for function in functions:
        for dtype in (np.float32, np.float64):
            with contextlib.suppress(Reached):
                function(kernel.astype(dtype), n, **options)
