"""experiments/timing.py: the paper's Figure 1 (time against channels), run as a user would."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

#: Backends of the timing script that run on the CPU, where their library is installed.
CPU_BACKENDS = [name for name in ("numpy", "torch", "jax") if importlib.util.find_spec(name)]


def test_quick_run_times_every_backend_and_checks_spectra(run_script, tmp_path):
    result = run_script("timing.py", "--quick", "--out", "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())

    machine = results["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["cpu_model"]
    assert machine["versions"]["convsv"].startswith("0.")
    assert len(results["loadavg_start"]) == 3
    assert len(results["loadavg_end"]) == 3
    assert results["settings"]["backends"] == CPU_BACKENDS

    rows = results["measurements"]
    channels = results["settings"]["channels"]
    for backend in CPU_BACKENDS:
        for method in ("convsv.singular_values", "convsv.operator_norm"):
            measured = [row for row in rows if row["backend"] == backend and row["method"] == method]
            assert [row["channels"] for row in measured] == channels, (backend, method)
    for row in rows:
        assert row["runs"] >= 1
        assert 0 < row["min_s"] <= row["median_s"]
        assert row.get("spectrum_diff", row.get("norm_rel_diff")) < 1e-4, row
        assert row["ok"] is True

    # The full matrix's SVD is the paper's slow route: cubic in c n^2, here a 512 x 512 SVD
    # against 64 SVDs of 8 x 8, so it is slower however busy the machine.
    largest = [row for row in rows if row["channels"] == max(channels)]
    times = {row["method"]: row["median_s"] for row in largest if row["backend"] == "numpy"}
    assert times["dense SVD"] > times["two-liner"]

    image = (tmp_path / "out" / "timing.png").read_bytes()
    assert image.startswith(b"\x89PNG")
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "out" / "timing.png")
    assert pixels.std() > 0.05

    header = result.stdout.splitlines()[0]
    assert header.startswith("| channels | dense SVD [numpy] | two-liner [numpy] |")
    assert f"convsv.singular_values [{CPU_BACKENDS[-1]}]" in header
    assert len(result.stdout.splitlines()) == 2 + len(channels)


def test_unknown_backend_is_a_usage_error(run_script):
    result = run_script("timing.py", "--backends", "numpy,tensorflow", check=False)
    assert result.returncode == 2
    assert "tensorflow" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("channels", ["8,x", "0,4", ""])
def test_bad_channels_are_a_usage_error(run_script, channels):
    result = run_script("timing.py", "--channels", channels, check=False)
    assert result.returncode == 2
    assert "--channels" in result.stderr


def test_absent_gpu_backend_is_a_one_line_error(run_script):
    if importlib.util.find_spec("cupy"):
        pytest.skip("cupy is installed here")
    result = run_script("timing.py", "--quick", "--backends", "cupy", "--out", "out", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --backends cupy: cupy is not installed"


def test_spectrum_difference_is_relative_to_the_largest_value():
    from timing import spectrum_difference

    # Sorted, [1, 2, 4] against [1, 2, 3]: the largest gap is 1, the largest value 3.
    assert spectrum_difference(np.array([4.0, 1.0, 2.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(1 / 3)
    assert spectrum_difference(np.ones((2, 2)), np.ones(3)) == float("inf")


def test_wrong_spectrum_fails_the_run(monkeypatch, tmp_path, capsys):
    import timing

    import convsv

    # A spectrum off by 1e-3 of the norm, ten times the float32 tolerance.
    def off_by_a_little(kernel, n):
        values = np.linalg.svd(
            np.fft.fft2(np.asarray(kernel, np.float64), (n, n), axes=(0, 1)), compute_uv=False
        )
        return values * (1 + 1e-3)

    monkeypatch.setattr(convsv, "singular_values", off_by_a_little)
    args = ["--quick", "--backends", "numpy", "--no-norm", "--dense-limit", "0", "--out", str(tmp_path)]
    assert timing.main(args) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: results differ from the two-liner beyond tolerance")
    assert "convsv.singular_values [numpy] at c=4" in message
    rows = json.loads((tmp_path / "results.json").read_text())["measurements"]
    assert {row["method"] for row in rows if row.get("ok") is False} == {"convsv.singular_values"}
