"""Run the scripts of ``experiments/`` as a user would: ``python experiments/NAME.py ...``.

The scripts are also importable here (``experiments/`` is put on ``sys.path``), for tests
of their helpers against independent references.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

# One BLAS/OpenMP thread per script: two xdist workers share the two cores of CI.
_THREADS = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")


@pytest.fixture
def run_script(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``experiments/<name>`` with arguments in ``tmp_path``; fail with its stderr if it fails."""

    def run(
        name: str, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **_THREADS, "MPLBACKEND": "Agg"}
        result = subprocess.run(
            [sys.executable, str(EXPERIMENTS / name), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{name} {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result

    return run
