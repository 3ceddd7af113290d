"""The ``convsv`` command line, checked against the dense route."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from convsv.cli import example_kernel, main

from _reference import dense_singular_values
from helpers import require

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def run_json(capsys, *argv):
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def kernel_file(tmp_path, rng):
    kernel = rng.standard_normal((3, 2, 2, 3))  # HWIO
    path = tmp_path / "kernel.npy"
    np.save(path, kernel)
    return kernel, path


def test_summary_of_a_kernel_file_matches_the_dense_svd(capsys, kernel_file):
    kernel, path = kernel_file
    info = run_json(capsys, "spectrum", str(path), "--input-size", "4", "5")
    s = dense_singular_values(kernel, (4, 5))
    assert info["kernel_shape"] == [3, 2, 2, 3]
    assert info["input_shape"] == [4, 5]
    assert info["count"] == s.size == 40
    assert info["operator_norm"] == pytest.approx(s[0], rel=1e-12)
    assert info["smallest"] == pytest.approx(s[-1], rel=1e-9)
    assert info["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-9)
    assert info["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-12)
    assert info["at_least_one"] == int(np.sum(s >= 1))
    assert info["reshaped_norm"] == pytest.approx(np.linalg.norm(kernel.reshape(12, 3), 2), rel=1e-12)


def test_channels_first_layout(capsys, tmp_path, kernel_file):
    kernel, _ = kernel_file
    path = tmp_path / "oihw.npy"
    np.save(path, np.transpose(kernel, (3, 2, 0, 1)))
    info = run_json(capsys, "spectrum", str(path), "--input-size", "4", "5", "--layout", "OIHW")
    s = dense_singular_values(kernel, (4, 5))
    assert info["operator_norm"] == pytest.approx(s[0], rel=1e-12)
    assert info["reshaped_norm"] == pytest.approx(np.linalg.norm(kernel.reshape(12, 3), 2), rel=1e-12)


def test_builtin_example(capsys):
    info = run_json(capsys, "spectrum", "--input-size", "6")
    kernel = example_kernel()
    assert kernel.shape == (3, 3, 16, 16)
    assert info["source"] == "built-in example"
    assert info["operator_norm"] == pytest.approx(dense_singular_values(kernel, (6, 6))[0], rel=1e-12)


def test_table_output(capsys):
    assert main(["spectrum"]) == 0
    out = capsys.readouterr().out
    assert "operator norm (exact)" in out
    assert "32 x 32" in out


@pytest.mark.parametrize(
    "library", [pytest.param(name, marks=pytest.mark.backend(name)) for name in ("torch", "jax")]
)
def test_other_backends_give_the_same_norm(capsys, kernel_file, library):
    require(library)
    _, path = kernel_file
    base = run_json(capsys, "spectrum", str(path), "--input-size", "4", "5")
    info = run_json(capsys, "spectrum", str(path), "--input-size", "4", "5", "--backend", library)
    assert info["backend"] == library
    assert info["operator_norm"] == pytest.approx(base["operator_norm"], rel=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["spectrum", "kernel.npy"], "--input-size is required"),
        (["spectrum", "missing.npy", "--input-size", "4"], "cannot read kernel"),
        (["spectrum", "--input-size", "4", "4", "4"], "`input_shape` has 3 entries"),
        (["spectrum", "--input-size", "0"], "positive sizes"),
        (["spectrum", "--layout", "OIW"], "needs 3"),
    ],
)
def test_errors_exit_with_status_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "convsv", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("convsv ")


def test_layer_options_match_the_written_out_layer(capsys, kernel_file):
    from _reference import general_dense

    kernel, path = kernel_file
    info = run_json(
        capsys, "spectrum", str(path), "--input-size", "6", "8", "--stride", "2", "--dilation", "1", "2",
        "--padding", "1",
    )  # fmt: skip
    s = np.linalg.svd(
        general_dense(kernel, (6, 8), stride=(2, 2), dilation=(1, 2), groups=1, pads=((1, 1),) * 2),
        compute_uv=False,
    )
    assert info["options"] == {
        "stride": 2,
        "dilation": [1, 2],
        "groups": 1,
        "padding": 1,
        "transposed": False,
    }
    assert info["count"] == s.size
    assert info["operator_norm"] == pytest.approx(s[0], rel=1e-12)
    lower, upper = info["norm_bounds"]
    assert lower <= s[0] * (1 + 1e-12)
    assert upper >= s[0] * (1 - 1e-12)


def test_large_zero_padded_layer_reports_norms_only(capsys):
    info = run_json(capsys, "spectrum", "--input-size", "64", "--padding", "same")
    assert "count" not in info
    lower, upper = info["norm_bounds"]
    assert info["operator_norm"] == lower <= upper


def test_bad_padding_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", "--padding", "full"])
    assert exit_info.value.code == 2
    assert "expected circular, same, valid or an int" in capsys.readouterr().err
