"""The ``convsv`` command line, checked against the dense route."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from convsv.cli import example_kernel, main

from _reference import dense_singular_values, paper_singular_values
from helpers import require

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def run_json(capsys, *argv):
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def spectrum_row(capsys, *argv):
    """``convsv spectrum``'s JSON: analyze's, for a model of one layer."""
    (row,) = run_json(capsys, "spectrum", *argv)
    return row


@pytest.fixture
def kernel_file(tmp_path, rng):
    kernel = rng.standard_normal((3, 2, 2, 3))  # HWIO
    path = tmp_path / "kernel.npy"
    np.save(path, kernel)
    return kernel, path


def test_summary_of_a_kernel_file_matches_the_dense_svd(capsys, kernel_file):
    kernel, path = kernel_file
    row = spectrum_row(capsys, str(path), "--input-size", "4", "5")
    s = dense_singular_values(kernel, (4, 5))
    assert row["name"] == "kernel"
    assert row["kernel_shape"] == [3, 2, 2, 3]
    assert row["input_shape"] == [4, 5]
    assert row["statistics_of"] == "layer"
    assert row["singular_value_count"] == s.size == 40
    assert row["operator_norm"] == row["circular_norm"] == pytest.approx(s[0], rel=1e-12)
    assert row["norm_bounds"] is None
    assert row["smallest_singular_value"] == pytest.approx(s[-1], rel=1e-9)
    assert row["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-9)
    assert row["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-12)
    assert row["singular_values_at_least_one"] == int(np.sum(s >= 1))
    assert row["reshaped_kernel_norm"] == pytest.approx(np.linalg.norm(kernel.reshape(12, 3), 2), rel=1e-12)


def test_channels_first_layout(capsys, tmp_path, kernel_file):
    kernel, _ = kernel_file
    path = tmp_path / "oihw.npy"
    np.save(path, np.transpose(kernel, (3, 2, 0, 1)))
    row = spectrum_row(capsys, str(path), "--input-size", "4", "5", "--layout", "OIHW")
    s = dense_singular_values(kernel, (4, 5))
    assert row["operator_norm"] == pytest.approx(s[0], rel=1e-12)
    assert row["reshaped_kernel_norm"] == pytest.approx(np.linalg.norm(kernel.reshape(12, 3), 2), rel=1e-12)


def test_builtin_example(capsys):
    row = spectrum_row(capsys, "--input-size", "6")
    kernel = example_kernel()
    assert kernel.shape == (3, 3, 16, 16)
    assert row["name"] == "example"
    assert row["operator_norm"] == pytest.approx(dense_singular_values(kernel, (6, 6))[0], rel=1e-12)


def test_table_is_analyze_s(capsys):
    assert main(["spectrum", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "example kernel (built-in, 1 conv layer, numpy on cpu)" in out
    assert "1 conv layer," in out
    assert "3x3x16x16 HWIO" in out
    assert "32x32" in out


def test_csv_and_plot(capsys, tmp_path, kernel_file):
    _, path = kernel_file
    plot = tmp_path / "spectrum.png"
    assert (
        main(["spectrum", str(path), "--input-size", "4", "5", "--format", "csv", "--plot", str(plot)]) == 0
    )
    out, err = capsys.readouterr()
    (record,) = csv.DictReader(io.StringIO(out))
    assert record["name"] == "kernel"
    assert record["statistics_of"] == "layer"
    assert plot.stat().st_size > 0
    assert f"wrote {plot}" in err


@pytest.mark.parametrize(
    "library", [pytest.param(name, marks=pytest.mark.backend(name)) for name in ("torch", "jax")]
)
def test_other_backends_give_the_same_norm(capsys, kernel_file, library):
    require(library)
    _, path = kernel_file
    base = spectrum_row(capsys, str(path), "--input-size", "4", "5")
    row = spectrum_row(capsys, str(path), "--input-size", "4", "5", "--backend", library)
    assert row["operator_norm"] == pytest.approx(base["operator_norm"], rel=1e-5)
    assert main(["spectrum", str(path), "--input-size", "4", "5", "--backend", library]) == 0
    assert f"{library} on cpu" in capsys.readouterr().out


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


@pytest.mark.parametrize("command", ["spectrum", "analyze"])
def test_an_unknown_option_shows_the_command_s_usage(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: convsv {command} ")
    assert f"convsv {command}: error: unrecognized arguments: --bogus" in err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "convsv", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("convsv ")


def test_layer_options_match_the_written_out_layer(capsys, kernel_file):
    from _reference import general_dense

    kernel, path = kernel_file
    row = spectrum_row(
        capsys, str(path), "--input-size", "6", "8", "--stride", "2", "--dilation", "1", "2",
        "--padding", "1",
    )  # fmt: skip
    s = np.linalg.svd(
        general_dense(kernel, (6, 8), stride=(2, 2), dilation=(1, 2), groups=1, pads=((1, 1),) * 2),
        compute_uv=False,
    )
    assert (row["stride"], row["dilation"], row["groups"]) == ([2, 2], [1, 2], 1)
    assert (row["padding"], row["transposed"]) == ([[1, 1], [1, 1]], False)
    # Small and zero-padded: the statistics are the layer's own, by a dense SVD.
    assert row["statistics_of"] == "layer"
    assert row["singular_value_count"] == s.size
    assert row["smallest_singular_value"] == pytest.approx(s[-1], rel=1e-9, abs=1e-12 * s[0])
    lower, upper = row["norm_bounds"]
    assert row["operator_norm"] == lower
    assert lower == pytest.approx(s[0], rel=1e-6)
    assert lower <= s[0] * (1 + 1e-12)
    assert upper >= s[0] * (1 - 1e-12)


def test_large_zero_padded_layer_is_described_by_its_circular_twin(capsys):
    row = spectrum_row(capsys, "--input-size", "64", "--padding", "same")
    # 16 channels on 64x64: a dense matrix of 2**32 entries. The statistics are those of the circular
    # layer on the zero-padded 66x66 map, whose norm is the bounds' upper end.
    twin = np.sort(np.ravel(paper_singular_values(example_kernel(), (66, 66))))[::-1]  # the paper's two-liner
    assert row["statistics_of"] == "circular layer on the padded map"
    assert row["singular_value_count"] == twin.size
    assert row["smallest_singular_value"] == pytest.approx(twin[-1], rel=1e-9, abs=1e-12)
    lower, upper = row["norm_bounds"]
    assert row["operator_norm"] == lower <= upper == row["circular_norm"] == pytest.approx(twin[0], rel=1e-12)
    assert main(["spectrum", "--input-size", "64", "--padding", "same"]) == 0
    assert "describe the circular layer on the padded map" in capsys.readouterr().out


def test_bad_padding_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", "--padding", "full"])
    assert exit_info.value.code == 2
    assert "expected circular, same, valid or an int" in capsys.readouterr().err
