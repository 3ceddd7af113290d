"""``convsv analyze`` on NumPy ``.npz`` files, with and without a layer header (see ``common``)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from .common import analyze, analyze_error, analyze_json, assumed_layers, check_rows, header

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


@pytest.mark.parametrize("layout", ["HWIO", "OIHW"])
def test_npz_without_header(capsys, tmp_path, rng, layout):
    oihw = {
        "conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),  # 1-D: not a kernel
        "wide": rng.standard_normal((2, 4, 1, 3)).astype(np.float32),
        "head": rng.standard_normal((10, 2)).astype(np.float32),  # 2-D: not a kernel
    }
    stored = {
        k: np.transpose(v, (2, 3, 1, 0)) if v.ndim == 4 and layout == "HWIO" else v for k, v in oihw.items()
    }
    path = tmp_path / "kernels.npz"
    np.savez(path, **stored)
    argv = [] if layout == "HWIO" else ["--layout", "OIHW"]  # HWIO is the default
    rows = analyze_json(capsys, path, "--input-size", "6", "5", *argv)
    check_rows(rows, assumed_layers(oihw, (6, 5), hwio=layout == "HWIO"))
    table, _ = analyze(capsys, path, "--input-size", "6", "5", "--no-progress", *argv)
    assert "note: npz stores no layer options" in table
    marked = [line.split()[:2] for line in table.splitlines() if line.startswith(("conv ", "wide "))]
    assert marked == [["conv", "?"], ["wide", "?"]]  # the guess shows where the numbers are
    assert "? options not stored in the file: assumed" in table


@pytest.mark.parametrize(
    ("stored", "guessed", "right"), [("OIHW", "HWIO", "OIHW"), ("OIDHW", "DHWIO", "OIDHW")]
)
def test_npz_whose_shapes_fit_the_other_layout_is_refused(capsys, tmp_path, rng, stored, guessed, right):
    """16 output channels of 3x3 kernels read as HWIO would be a 16x3 kernel: refused, naming --layout."""
    kernel = rng.standard_normal((16, 3) + (3,) * (len(stored) - 2))
    path = tmp_path / "pytorch_weights.npz"
    np.savez(path, conv=kernel)
    analyze_error(
        capsys,
        path,
        "--input-size",
        "8",
        message=f"read as {guessed} would be a 16x3{'x3' * (len(stored) - 4)} kernel, as {right} a 3x3",
    )
    rows = analyze_json(capsys, path, "--input-size", "8", "--layout", right)
    assert rows[0]["kernel_shape"] == list(kernel.shape)
    assert rows[0]["assumed_options"] is True


def test_singular_layer(capsys, tmp_path):
    """A zero kernel (zero-initialised residual branches have them): infinite condition number."""
    path = tmp_path / "zero.npz"
    kernel = np.zeros((3, 3, 2, 2), dtype=np.float32)
    np.savez(path, zero=kernel)
    (row,) = analyze_json(capsys, path, "--input-size", "4")
    assert (
        row["operator_norm"]
        == row["circular_norm"]
        == row["smallest_singular_value"]
        == row["norm_product"]
        == 0
    )
    assert row["condition_number"] is None
    assert row["singular_value_count"] == 32
    assert row["singular_values_at_least_one"] == 0
    text, _ = analyze(capsys, path, "--input-size", "4", "--format", "csv")
    (record,) = csv.DictReader(io.StringIO(text))
    assert record["condition_number"] == ""
    table, _ = analyze(capsys, path, "--input-size", "4", "--no-progress")
    assert "zero" in table


def test_npz_with_header_matches_the_module(capsys, tmp_path, torch_files, expected8):
    _, paths = torch_files
    expected = expected8[1]
    arrays = {exp.name: exp.kernel for exp in expected}
    path = tmp_path / "described.npz"
    np.savez(path, __convsv__=np.array(header(expected)), **arrays)
    rows = analyze_json(capsys, path)
    check_rows(rows, expected)
    assert rows == analyze_json(capsys, paths["module1"], "--input-size", "8")
