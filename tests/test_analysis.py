"""``convsv.analysis``: the pieces of ``convsv analyze`` a script can use, on every array backend."""

from __future__ import annotations

import numpy as np
import pytest

import convsv
from convsv.analysis import BACKENDS, array_converter, checkpoint_contents, plot_spectra, summarize

from helpers import require


def test_summarize_is_the_written_out_statistics(backend, rng):
    # A box filter's spectrum on a 6x6 map, from the paper's two-liner: any backend's array in.
    kernel = rng.standard_normal((3, 3, 2, 3))
    truth = np.linalg.svd(np.fft.fft2(kernel, (6, 6), axes=[0, 1]), compute_uv=False).ravel()
    values = convsv.singular_values(backend.asarray(kernel, backend.default_float), 6)
    stats = summarize(values)
    s = np.sort(truth)[::-1]
    rel = 1e-5 if backend.default_float == "float32" else 1e-10
    assert stats["singular_value_count"] == s.size == 72
    assert stats["largest_singular_value"] == pytest.approx(s[0], rel=rel)
    assert stats["smallest_singular_value"] == pytest.approx(s[-1], rel=rel, abs=rel * s[0])
    assert stats["condition_number"] == pytest.approx(s[0] / s[-1], rel=100 * rel)
    assert stats["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=rel)
    assert stats["singular_values_at_least_one"] == int(np.sum(s >= 1))
    assert all(type(v) in (int, float) for v in stats.values())


def test_summarize_of_a_singular_layer():
    stats = summarize(np.zeros((4, 4, 2)))
    assert stats["condition_number"] == float("inf")
    assert stats["stable_rank"] == 0.0
    assert stats["singular_values_at_least_one"] == 0
    with pytest.raises(ValueError, match="`values` is empty"):
        summarize(np.zeros(0))


def test_plot_spectra_writes_the_figure(backend, tmp_path):
    require("matplotlib")
    dtype = backend.default_float
    spectra = [
        convsv.singular_values(backend.asarray(np.ones((3, 3, 1, 2)), dtype), 8),
        backend.asarray(np.arange(1.0, 9.0), dtype),
    ]
    path = tmp_path / "spectra.svg"
    plot_spectra(spectra, path, names=["box", "ramp"], title="two")
    text = path.read_text()
    assert "box" in text
    assert "ramp" in text


def test_plot_spectra_errors(tmp_path):
    require("matplotlib")
    with pytest.raises(ValueError, match="`names` has 1 entries for 2 spectra"):
        plot_spectra([np.ones(3), np.ones(2)], tmp_path / "a.png", names=["a"])
    with pytest.raises(ValueError, match="cannot write the figure"):
        plot_spectra([np.ones(3)], tmp_path / "missing-folder" / "a.png")


def test_array_converter_default_and_errors():
    assert BACKENDS == ("numpy", "torch", "jax", "cupy")
    backend, convert = array_converter()
    kernel = np.ones((3, 3, 1, 1))
    assert backend == "numpy"
    assert convert(kernel) is kernel
    with pytest.raises(ValueError, match="device 'tpu': expected cpu, cuda"):
        array_converter(device="tpu")
    with pytest.raises(ValueError, match="NumPy computes on the CPU only"):
        array_converter("numpy", "cuda")


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_array_converter_moves_to_the_library(library):
    require(library)
    backend, convert = array_converter(library)
    moved = convert(np.ones((2, 2)))
    assert backend == library
    assert type(moved).__module__.split(".")[0] in (library, "jaxlib")


def test_checkpoint_contents_unwraps_the_usual_wrappers():
    state = {"conv.weight": np.ones((2, 1, 3, 3)), "model": np.zeros(2)}  # an array under "model" stays
    assert checkpoint_contents(state) is state
    assert checkpoint_contents({"state_dict": state, "epoch": 3}) is state
    assert checkpoint_contents({"net": {"model_state_dict": state}}) is state
    assert checkpoint_contents([state]) == [state]  # not a mapping: as it is
