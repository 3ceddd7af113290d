"""``convsv analyze``'s output: table, JSON and CSV agree; --layers, backends, progress, plots."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
from importlib.resources import as_file, files

import numpy as np
import pytest

from convsv.cli import main

from .common import (
    REL,
    Expected,
    analyze,
    analyze_json,
    check_png,
    check_rows,
    expected_product,
    need,
    strict_json,
)
from _reference import general_conv

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def test_csv_and_table_agree_with_json(capsys, torch_files):
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--no-progress"]
    rows = analyze_json(capsys, *argv[:-1])
    text, _ = analyze(capsys, *argv, "--format", "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == len(rows)
    dims = "x".join
    for record, row in zip(records, rows, strict=True):
        assert record["name"] == row["name"]
        for key in ("kernel_shape", "stride", "dilation", "input_shape", "output_shape"):
            assert record[key] == dims(map(str, row[key]))
        for key in ("operator_norm", "circular_norm", "smallest_singular_value", "condition_number",
                    "stable_rank", "reshaped_kernel_norm", "norm_product"):  # fmt: skip
            assert float(record[key]) == row[key], key
        for key in ("groups", "singular_value_count", "singular_values_at_least_one"):
            assert int(record[key]) == row[key], key
        assert record["transposed"] == str(row["transposed"])
        assert record["assumed_options"] == str(row["assumed_options"])
        assert record["layout"] == row["layout"]
        if row["norm_bounds"] is None:
            assert record["padding"] == "circular"
            assert record["lower_bound"] == record["upper_bound"] == ""
        else:
            assert record["padding"] == " ".join(f"({a},{b})" for a, b in row["padding"])
            assert [float(record["lower_bound"]), float(record["upper_bound"])] == row["norm_bounds"]
    assert rows[-1]["norm_product"] == pytest.approx(expected_product(rows), rel=1e-12)

    table, err = analyze(capsys, *argv)
    assert err == ""
    for row in rows:
        assert row["name"] in table
    assert f"{rows[-1]['norm_product']:.6g}" in table
    assert "PyTorch module" in table


def test_layers_glob(capsys, torch_files, expected8):
    _, paths = torch_files
    rows = analyze_json(capsys, paths["module1"], "--input-size", "8", "--layers", "*wise")
    check_rows(rows, expected8[1][1:3])
    assert rows[-1]["norm_product"] == pytest.approx(expected_product(rows), rel=1e-12)


@pytest.mark.parametrize(
    ("library", "layers"),
    [
        ("torch", "*"),
        # JAX compiles each operation for each new shape, eagerly: seconds per layer; one layer here.
        ("jax", "wrap"),
        pytest.param("jax", "*", marks=pytest.mark.slow),
    ],
)
def test_other_backends_give_the_same_norms(capsys, torch_files, expected8, library, layers):
    need(library)
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--layers", layers]
    base = analyze_json(capsys, *argv)
    rows = analyze_json(capsys, *argv, "--backend", library)
    check_rows(rows, [exp for exp in expected8[1] if fnmatch.fnmatchcase(exp.name, layers)])
    for row, ref in zip(rows, base, strict=True):
        assert row["operator_norm"] == pytest.approx(ref["operator_norm"], rel=REL)
        assert row["singular_value_count"] == ref["singular_value_count"]


def test_progress_bar(capsys, torch_files):
    _, paths = torch_files
    argv = [paths["module1"], "--input-size", "8", "--format", "json"]
    out, err = analyze(capsys, *argv, "--progress")
    n = len(json.loads(out))
    bars = [part.strip() for part in err.split("\r") if part.strip()]
    assert [bar.split()[1] for bar in bars] == [f"{done}/{n}" for done in range(n + 1)]
    assert bars[-1].startswith("[" + "#" * 24 + "]")
    assert bars[-1].endswith("done")
    _, err = analyze(capsys, *argv, "--no-progress")
    assert err == ""


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_plot(capsys, tmp_path, torch_files, suffix):
    need("matplotlib")
    _, paths = torch_files
    plot = tmp_path / f"spectra{suffix}"
    out, err = analyze(capsys, paths["module1"], "--input-size", "8", "--format", "json", "--plot", plot)
    assert len(json.loads(out)) == 5
    assert err == f"wrote {plot}\n"
    data = plot.read_bytes()
    if suffix == ".png":
        check_png(plot)
    else:
        assert data.startswith(b"%PDF-")
        assert len(data) > 5000


def test_bundled_model_plots_with_the_table_only(capsys, tmp_path, monkeypatch):
    need("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--no-progress"]) == 0
    assert capsys.readouterr().err == "wrote digits-cnn-spectra.png\n"
    check_png(tmp_path / "digits-cnn-spectra.png")
    (tmp_path / "digits-cnn-spectra.png").unlink()
    for argv in (["--no-plot"], ["--format", "csv"]):
        assert main(["analyze", "--no-progress", *argv]) == 0
        assert capsys.readouterr().err == ""
        assert list(tmp_path.iterdir()) == [], argv
    with pytest.raises(SystemExit):
        main(["analyze", "--no-plot", "--plot", "x.png"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_bundled_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    rows = strict_json(out)
    assert err == ""  # JSON for other programs: no figure unasked
    assert list(tmp_path.iterdir()) == []

    with as_file(files("convsv") / "data" / "digits_cnn.npz") as path, np.load(path) as npz:
        meta = json.loads(str(npz["__convsv__"]))
        arrays = {layer["name"]: npz[layer["name"]] for layer in meta["layers"]}
    expected = []
    for layer in meta["layers"]:
        kernel = arrays[layer["name"]]
        spatial_first = np.transpose(kernel, (2, 3, 1, 0)).astype(np.float64)
        options = {key: tuple(layer[key]) for key in ("stride", "dilation")}
        pads = layer["padding"]
        span = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], options["dilation"], strict=True)]
        output = tuple(
            (n + a + b - w) // s + 1
            for n, (a, b), w, s in zip(layer["input_shape"], pads, span, options["stride"], strict=True)
        )
        conv = dict(options, groups=layer["groups"], pads=[tuple(p) for p in pads])
        expected.append(
            Expected(
                layer["name"],
                kernel,
                "OIHW",
                tuple(layer["input_shape"]),
                output,
                lambda x, k=spatial_first, c=conv: general_conv(x, k, **c),
                kernel.shape[1] * layer["groups"],
                groups=layer["groups"],
                pads=pads,
                **options,
            )
        )
    check_rows(rows, expected)
    assert [row["name"] for row in rows] == ["conv1", "conv2", "conv3", "conv4"]
