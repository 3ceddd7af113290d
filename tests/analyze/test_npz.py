"""``convsv analyze`` on NumPy ``.npz`` files, with and without a layer header (see ``common``)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from .common import analyze, analyze_json, assumed_layers, check_rows, header

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
