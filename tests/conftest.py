"""The ``backend`` fixture: every core test runs on every array backend.

Backends: numpy, array_api_strict (on its second, non-default device: a
result or an intermediate that wanders to the default device is an error
there, and everything the default device would catch it catches too), torch
(CPU), jax (float32, and float64 with ``jax_enable_x64``), and the GPU variants
cupy, torch-cuda and jax-gpu, which skip themselves where there is no GPU.

``CONVSV_BACKENDS=numpy,torch`` restricts the run to some backends (a nox
session per backend does this). ``CONVSV_REQUIRE_BACKENDS=1`` turns "library
not installed" skips of the selected CPU backends into failures, so a broken
install cannot pass as a skip in CI; ``CONVSV_REQUIRE_GPU=1`` does the same
for the GPU variants (the ``gpu`` nox session, on a machine with a GPU).
float32 JAX runs about half of each test's cases, jax-x64 all of them
(``CONVSV_JAX_EVERY_CASE=1``: all on both; see ``_half_the_jax_float32_cases``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import zlib
from collections.abc import Iterator
from typing import Any, NoReturn

import hypothesis
import numpy as np
import pytest

from helpers import CPU_BACKENDS, GPU_BACKENDS, Backend, selected


def _unavailable(backend: str, reason: str) -> NoReturn:
    """Skip a backend this machine lacks, or fail where the run says it must be there."""
    required = "CONVSV_REQUIRE_GPU" if backend in GPU_BACKENDS else "CONVSV_REQUIRE_BACKENDS"
    if os.environ.get(required) == "1":
        pytest.fail(f"backend {backend} is required ({required}=1) but unavailable: {reason}")
    pytest.skip(reason)


def _import_or_skip(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        _unavailable(backend, f"{module} is not installed")


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu().resolve_conj()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # NumPy has no bfloat16


@contextlib.contextmanager
def _make_backend(name: str) -> Iterator[Backend]:
    import array_api_compat

    if name == "numpy":
        yield Backend(name, array_api_compat.array_namespace(np.empty(0)), "cpu")
    elif name.startswith("array_api_strict"):
        xs = _import_or_skip("array_api_strict", name)
        device = xs.Device("device1")  # not the default device: see the module docstring
        yield Backend(name, xs, device, to_numpy=np.from_dlpack)
    elif name.startswith("torch"):
        torch = _import_or_skip("torch", name)
        if name == "torch-cuda" and not torch.cuda.is_available():
            _unavailable(name, "no CUDA device")
        device = torch.device("cuda:0" if name == "torch-cuda" else "cpu")
        yield Backend(
            name,
            array_api_compat.array_namespace(torch.empty(0)),
            device,
            to_numpy=_torch_to_numpy,
        )
    elif name.startswith("jax"):
        jax = _import_or_skip("jax", name)
        platform = "gpu" if name == "jax-gpu" else "cpu"
        try:
            device = jax.devices(platform)[0]
        except RuntimeError:
            _unavailable(name, f"no JAX {platform} device")
        x64 = name != "jax"
        with jax.enable_x64(x64):
            yield Backend(name, jax.numpy, device, float64=x64)
    elif name == "cupy":
        cp = _import_or_skip("cupy", name)
        try:
            device = cp.cuda.Device(0)
            device.compute_capability  # noqa: B018  (raises without a GPU)
        except Exception:  # CUDARuntimeError, or a driver error on import
            _unavailable(name, "no CUDA device for CuPy")
        yield Backend(name, array_api_compat.array_namespace(cp.empty(0)), device, to_numpy=cp.asnumpy)
    else:  # pragma: no cover
        msg = f"unknown backend {name}"
        raise AssertionError(msg)


@pytest.fixture(params=CPU_BACKENDS + GPU_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each array backend in turn."""
    with _make_backend(request.param) as b:
        yield b


def _half_the_jax_float32_cases(items: list[pytest.Item]) -> list[pytest.Item]:
    """The cases a test runs on jax-x64 but not on float32 jax: about half of each test's.

    Each new layer compiles for about a second per JAX variant, and JAX is most
    of the suite's time; jax-x64 runs every case, float32 jax about half of
    them, drawn by name (the first case of each test always), except in tests
    marked ``every_jax_case``. ``CONVSV_JAX_EVERY_CASE=1`` runs them all.
    """
    if os.environ.get("CONVSV_JAX_EVERY_CASE") == "1":
        return []
    cases: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec is not None
            and callspec.params.get("backend") == "jax"
            and item.get_closest_marker("every_jax_case") is None
        ):
            cases.setdefault((item.path.as_posix(), item.originalname), []).append(item)
    # Half by a hash of the case's name, not by position: with two-valued parameters, alternate
    # positions would drop the same value of one parameter every time.
    return [item for group in cases.values() for item in group[1:] if zlib.crc32(item.name.encode()) % 2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the backends that ``CONVSV_BACKENDS`` leaves out, half the float32 JAX cases, slow tests.

    Tests marked ``slow`` run with ``--run-slow`` or ``CONVSV_RUN_SLOW=1``
    (every nox session sets it): a plain ``pytest`` is the quick loop.

    A test runs on a backend through the ``backend`` fixture, or through a
    ``@pytest.mark.backend("torch")`` marker when it uses one library
    directly; unmarked tests without the fixture run in every selection.
    """
    keep, drop = [], []
    halved = {id(item) for item in _half_the_jax_float32_cases(items)}
    slow = config.getoption("--run-slow") or os.environ.get("CONVSV_RUN_SLOW") == "1"
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec is not None else None
        marker = item.get_closest_marker("backend")
        if name is None and marker is not None:
            name = marker.args[0]
        wanted = (name is None or selected(name)) and id(item) not in halved
        (keep if wanted and (slow or item.get_closest_marker("slow") is None) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test: failures reproduce."""
    return np.random.default_rng(20190101)


# CI runs with HYPOTHESIS_PROFILE=ci: the same examples every run, no example database.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--run-slow``, and the random campaign's options (tests/fuzz, docs/accuracy.md)."""
    parser.addoption(
        "--run-slow", action="store_true", help="also run the tests marked slow (or CONVSV_RUN_SLOW=1)"
    )
    group = parser.getgroup("convsv fuzz campaign (tests/fuzz)")
    group.addoption(
        "--examples",
        type=int,
        default=int(os.environ.get("CONVSV_FUZZ_EXAMPLES", "40")),
        help="configurations per backend on NumPy and PyTorch, a tenth on array_api_strict and JAX "
        "x64, a hundredth on float32 JAX (default $CONVSV_FUZZ_EXAMPLES or 40)",
    )
    group.addoption("--fuzz-seed", type=int, default=20190101, help="the campaign's seed (default 20190101)")
    group.addoption(
        "--fuzz-part",
        default=None,
        metavar="K/N",
        help="run part K of N of the campaign (its configurations split evenly, 1 <= K <= N); "
        "python tests/fuzz/summary.py combines the parts' summaries",
    )
    group.addoption(
        "--fuzz-summary",
        default=os.environ.get("CONVSV_FUZZ_SUMMARY"),
        help="write the campaign's counts and worst errors to this JSON file and a .md beside it",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what tests recorded with ``record_property("summary", line)`` (works under xdist)."""
    from fuzz.summary import report as fuzz_report

    fuzz_report(terminalreporter)  # the random campaign's table, if it ran
    lines = [
        value
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", ())
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("recorded by the tests")
        for line in sorted(lines):
            terminalreporter.write_line(line)
