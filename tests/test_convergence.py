"""Repeated projection reaches the bound on ResNet-like layers; the step counts are recorded.

3x3 kernels with 16-128 channels on 8x8-32x32 maps, He-initialised ("random")
and four times that ("scaled-up"). The exact norm reached is checked against
the dense-free route of a different library (NumPy's SVD of the per-frequency
matrices written out by ``np.fft``), and the steps each method took are printed
in the terminal summary.
"""

from __future__ import annotations

import numpy as np
import pytest

import convsv

from _reference import paper_singular_values

pytestmark = [pytest.mark.backend("numpy"), pytest.mark.slow]

LAYERS = [(16, 32), (64, 16), (128, 8)]  # (channels, map size)
SCALES = {"random": 1.0, "scaled-up": 4.0}
# (method, tol): the paper's pair repeated is slow, so it is held to 1e-3;
# the extrapolated pair reaches 1e-6.
TARGETS = [("alternating", 1e-3), ("extrapolated", 1e-6)]


# The paper's pair takes 10-20 s a layer here, so it runs on the He-initialised layers only.
CASES = [
    pytest.param(channels, size, scale, method, tol, id=f"{channels}ch-{size}x{size}-{scale}-{method}")
    for channels, size in LAYERS
    for scale in SCALES
    for method, tol in TARGETS
    if method != "alternating" or scale == "random"
]


@pytest.mark.parametrize(("channels", "size", "scale", "method", "tol"), CASES)
def test_reaches_the_bound(channels, size, scale, method, tol, record_property):
    rng = np.random.default_rng(channels * size)
    kernel = rng.standard_normal((3, 3, channels, channels)) * np.sqrt(2 / (9 * channels)) * SCALES[scale]
    before = paper_singular_values(kernel, (size, size)).max()
    assert before > 1.5  # the layer really is outside the ball
    out, info = convsv.clip_operator_norm(
        kernel, size, 1.0, method=method, iterations=1000, tol=tol, return_info=True
    )
    reached = paper_singular_values(out, (size, size)).max()
    assert bool(info.converged)
    assert reached <= 1.0 + tol
    np.testing.assert_allclose(float(info.norm), reached, rtol=1e-10)
    record_property(
        "summary",
        f"projection {method:>12} tol={tol:.0e} {channels:>3}ch {size:>2}x{size:<2} {scale:>9}: "
        f"norm {before:.3f} -> {reached:.7f} in {int(info.iterations)} steps",
    )
