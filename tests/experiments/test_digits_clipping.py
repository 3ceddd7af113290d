"""experiments/digits_clipping.py: its quick run as a user runs it, its errors, and its statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
matplotlib_image = pytest.importorskip("matplotlib.image")
from digits_clipping import load_split, markdown_table, summarise  # noqa: E402


def test_quick_run_writes_results_table_and_plot(run_script, tmp_path):
    result = run_script("digits_clipping.py", "--quick", "--batch-norm", "on", "--jobs", "1", "--out", "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())

    assert results["config"]["seeds"] == 1
    assert results["config"]["epochs"] == 2
    assert {"platform", "cpu_count", "torch", "convsv"} <= set(results["machine"])
    runs = results["runs"]
    assert [(r["batch_norm"], r["setting"], r["seed"]) for r in runs] == [
        (True, "baseline", 0),
        (True, "convsv 1.0", 0),
    ]
    for run in runs:
        assert len(run["history"]) == 2
        assert 0 <= run["test_error"] <= 1
        assert len(run["operator_norms"]) == 7  # depth 8: 6 n + 1 convolutions
        assert run["max_operator_norm"] == max(run["operator_norms"].values())
    assert runs[1]["projection_seconds"] > 0
    assert [row["setting"] for row in results["summary"]] == ["baseline", "convsv 1.0"]

    table = result.stdout.strip().splitlines()
    assert table[0].startswith("| batch norm | setting | test error (%)")
    assert len(table) == 2 + len(runs)
    assert f"| on | convsv 1.0 | {100 * runs[1]['test_error']:.2f} ± 0.00 | 1 |" in table[3]
    assert "2 runs" in result.stderr

    image = matplotlib_image.imread(tmp_path / "out" / "digits-clipping.png")
    assert image.shape[0] > 100
    assert image.shape[1] > 100
    assert image.std() > 0.01  # not a blank canvas


def test_bad_settings_is_a_usage_error(run_script):
    result = run_script("digits_clipping.py", "--settings", "baseline,convsv:x", check=False)
    assert result.returncode == 2
    assert "convsv:x" in result.stderr
    assert "Traceback" not in result.stderr


def test_out_that_is_a_file_is_a_one_line_error(run_script, tmp_path):
    (tmp_path / "taken").write_text("")
    result = run_script("digits_clipping.py", "--quick", "--out", "taken", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_split_is_fixed_and_stratified():
    x_train, x_test, y_train, y_test = load_split()
    assert x_train.shape == (1347, 1, 8, 8)
    assert x_test.shape == (450, 1, 8, 8)
    assert float(x_train.min()) == 0
    assert float(x_train.max()) == 1  # load_digits' pixels are 0..16, divided by 16
    # Stratified: every digit's share of the test set is within one image of its share of the data.
    counts_all = np.bincount(np.concatenate([y_train.numpy(), y_test.numpy()]), minlength=10)
    counts_test = np.bincount(y_test.numpy(), minlength=10)
    assert np.all(np.abs(counts_test - counts_all * 450 / 1797) <= 1)
    assert bool((load_split()[1] == x_test).all())  # the same split every time


def fake_run(batch_norm, setting, seed, error, norm):
    return {
        "batch_norm": batch_norm,
        "setting": setting,
        "seed": seed,
        "test_error": error,
        "max_operator_norm": norm,
        "max_reshaped_norm": None if norm is None else norm / 2,
        "train_seconds": 1.0,
        "projection_seconds": 0.0,
        "diverged": norm is None,
    }


def test_summary_statistics_and_table():
    errors = [0.02, 0.03, 0.07]
    runs = [fake_run(True, "convsv 1.0", seed, e, 1.0 + seed) for seed, e in enumerate(errors)]
    runs.append(fake_run(False, "baseline", 0, 0.5, None))
    convsv_row, baseline_row = summarise(runs)
    assert convsv_row["test_error_mean"] == pytest.approx(np.mean(errors))
    assert convsv_row["test_error_std"] == pytest.approx(np.std(errors, ddof=1))  # sample std over seeds
    assert convsv_row["max_operator_norm_mean"] == pytest.approx(2.0)
    assert (baseline_row["seeds"], baseline_row["test_error_std"], baseline_row["diverged"]) == (1, 0.0, 1)
    assert baseline_row["max_operator_norm_mean"] is None
    lines = markdown_table([convsv_row, baseline_row]).splitlines()
    assert lines[2].startswith(f"| on | convsv 1.0 | 4.00 ± {100 * np.std(errors, ddof=1):.2f} | 3 | 2.00 |")
    assert "| off | baseline | 50.00 ± 0.00 | 1 | diverged |" in lines[3]
