"""The benchmark suite's smoke run (``nox -s scripts``): it runs and its numbers are sane.

Not a timing test: it checks that every suite ran, that the files were
written, and that the values convsv reported agree with the references the
suite measured them against.
"""

from __future__ import annotations

import json
import os
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


def test_the_gpu_check_collects_on_a_machine_without_a_gpu(tmp_path):
    # What the metered GPU run collects and loads first, with this interpreter as its python3.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PATH": path}
    script = str(HERE / "gpu_check.sh")
    done = subprocess.run(["bash", script], cwd=HERE.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = [int(line.split("/")[0]) for line in done.stdout.splitlines() if "collected" in line]
    assert len(counts) == 2, done.stdout
    assert min(counts) > 0, done.stdout


def test_lipschitz_certify_quick_run(tmp_path):
    """Not a timing test: every network is certified or refused by name, and the bounds are ordered."""
    out = tmp_path / "lipschitz.json"
    script = str(HERE / "lipschitz_certify.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    saved = json.loads(out.read_text())
    assert saved["settings"]["torch_threads"] == 1
    rows = {row["model"]: row for row in saved["rows"]}
    assert set(rows) == {"ResNet-18", "CIFAR ResNet-8, option A", "CIFAR ResNet-8, option B"}
    certified = ["ResNet-18", "CIFAR ResNet-8, option B"]  # batch norm and 1x1 shortcuts have rules
    if "refused" in rows["CIFAR ResNet-8, option A"]:  # its zero-padding shortcut (F.pad) has none yet
        assert rows["CIFAR ResNet-8, option A"]["refused"].startswith("node "), rows
    else:
        certified.append("CIFAR ResNet-8, option A")
    for name in certified:
        row = rows[name]
        assert 0 < row["lower"] <= row["upper"] <= row["naive"] * (1 + 1e-9), row
        assert row["nodes"] > 30, row
        assert row["certificate_seconds"] > 0, row
        assert row["lower_seconds"] > 0, row
    rows_printed = [line for line in done.stdout.splitlines() if line.startswith(("| ResNet", "| CIFAR"))]
    assert len(rows_printed) == 3, done.stdout


def test_sharded_memory_quick_run():
    """Not a timing test: every call runs on one and two gloo ranks and agrees (checked in the script)."""
    script = str(HERE / "sharded_memory.py")
    argv = ["--channels", "16", "--grid", "8", "--ranks", "1", "2"]
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [
        line.split() for line in done.stdout.splitlines() if line.startswith(("operator", "singular", "clip"))
    ]
    assert [(row[0], row[1]) for row in rows] == [
        (t, r) for t in ("operator_norm", "singular_values", "clip_operator_norm") for r in "12"
    ]
