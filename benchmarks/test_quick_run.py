"""The benchmark suite's smoke run (``nox -s scripts``): it runs and its numbers are sane.

Not a timing test: it checks that every suite ran, that the files were
written, and that the values convsv reported agree with the references the
suite measured them against.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_quick_run_writes_every_suite(tmp_path):
    # A subprocess: the run pins the CPU affinity of its own process.
    subprocess.run([sys.executable, str(HERE / "run.py"), "--quick", "--out", str(tmp_path)], check=True)
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    suites = results["suites"]
    assert set(suites) == {"layers", "sweep", "zeropad", "resnet32", "resnet50"}
    for row in suites["zeropad"]:  # certified to the float32 default tol
        assert abs(row["convsv_torch_rel_error"]) < 2e-5, row
        assert abs(row["convsv_numpy_rel_error"]) < 2e-5, row
        assert row["circular_bound_over_norm"] >= 1 - 1e-6, row
        assert row["convsv_convolutions"] >= 4, row
        assert row["fewest_lanczos_steps"] >= 1, row
    assert suites["layers"]
    assert suites["sweep"]
    for row in suites["sweep"]:
        assert abs(row["norm_rel_diff"]) < 1e-4, row
    assert suites["resnet32"]["projections"]
    assert suites["resnet50"]["returncode"] == 0
    assert suites["resnet50"]["layers_done"] == suites["resnet50"]["layers_requested"]
