"""Test, lint, type-check and documentation sessions.

``nox`` runs the default sessions: ``tests`` (in one environment, the core test suite on every
CPU array backend -- numpy, array_api_strict, torch, jax -- then the training adapters on
PyTorch and JAX, then the command line on every model format with the experiments' and the
benchmarks' quick runs), ``adapters-tensorflow`` (Keras on TensorFlow, which gets its own
environment), ``lint`` and ``docs`` (the type check, then the pages built and their examples
run). The parts of ``tests`` are sessions of their own for development, not run by default:
``core``, ``backend(name='torch')`` (the core suite on one backend), ``adapters-torch``,
``adapters-jax``, ``scripts``, ``sharded`` (the multi-process and multi-device tests); so is
``typecheck``. ``nox -t gpu`` runs the GPU session (``tests-gpu``) in the current interpreter
(for machines with CUDA, torch/jax/cupy preinstalled and no package index). ``nox -s bench``
runs the benchmarks (``nox -s bench -- --quick`` for a smoke run); ``nox -s fuzz`` the random
campaign against dense ground truth at full size (docs/accuracy.md; ``tests`` runs it small).

Sessions share environments where their packages agree, because on a
two-core CI machine installing PyTorch and JAX took a minute or more per
environment.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

# torch is pinned to the CPU build these machines hold on disk: an open range
# can make pip pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
BACKENDS = {
    "numpy": [],
    "array_api_strict": [],
    "torch": [TORCH],
    "jax": ["jax"],
}
# One BLAS thread per process: the suites run two xdist workers on two cores, and two
# multi-threaded SVDs per core were measured 5x slower than one thread each.
THREADS = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")
# XLA's backend at optimisation level 0: the JAX tests compile hundreds of small programs, once
# each, and level 0 halved the compile of a zero-padded norm (2.0 s -> 0.9 s) for no difference
# in the numbers.
XLA = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
# Every session runs the tests marked slow too (a plain `pytest` leaves them out).
TEST_ENV = {
    "CONVSV_REQUIRE_BACKENDS": "1",
    "CONVSV_RUN_SLOW": "1",
    "HYPOTHESIS_PROFILE": "ci",
    **THREADS,
    **XLA,
}
CORE_TESTS = ["--ignore=tests/adapters", "--ignore=tests/experiments"]


def _core(session: nox.Session, backends: list[str], **extra: str) -> None:
    env = {**TEST_ENV, "CONVSV_BACKENDS": ",".join(backends), **extra}
    session.run("pytest", "-n", "2", *CORE_TESTS, *session.posargs, env=env)


# The adapter runs: the frameworks each needs, and per test run its environment and module.
ADAPTERS = {
    "torch": (
        [TORCH, "keras>=3.5"],
        [({}, "torch"), ({"KERAS_BACKEND": "torch"}, "keras")],
    ),
    "jax": (
        ["jax", "keras>=3.5", "optax>=0.2.3", "flax>=0.10", "equinox>=0.11"],
        [
            ({"KERAS_BACKEND": "jax"}, "keras"),
            ({"JAX_DEFAULT_PRNG_IMPL": "rbg"}, "optax"),
            ({}, "equinox"),
            ({}, "flax"),
        ],
    ),
    "tensorflow": (["tensorflow-cpu==2.21.0", "keras>=3.5"], [({"KERAS_BACKEND": "tensorflow"}, "keras")]),
}


def _adapter_parts() -> dict[str, list[str]]:
    """The private modules that hold part of each public adapter: conftest.py's table, the one copy."""
    spec = importlib.util.spec_from_file_location("convsv_conftest", Path(__file__).with_name("conftest.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.ADAPTER_PARTS)


ADAPTER_PARTS = _adapter_parts()


def _adapter_files(module: str) -> list[str]:
    """An adapter's tests and the sources whose doctests need its framework (as conftest.py says)."""
    sources = [f"src/convsv/{name}.py" for name in (module, *ADAPTER_PARTS.get(module, []))]
    return [*sorted(glob.glob(f"tests/adapters/test_{module}*.py")), *sources]


def _adapter_runs(session: nox.Session, runs: list[tuple[dict[str, str], str]]) -> None:
    for env, module in runs:
        session.run(
            "pytest",
            "-n",
            "2",
            *_adapter_files(module),
            *session.posargs,
            env={**TEST_ENV, **env, "CONVSV_REQUIRE_ADAPTERS": "1"},
        )


# `convsv analyze` reads every model format: the frameworks that write them are installed to make
# test models, and a missing one fails the session instead of skipping. The experiments and the
# benchmarks' quick run need a subset of the same packages.
FORMATS = [TORCH, "jax", "keras>=3.5", "onnx>=1.14", "safetensors>=0.4", "matplotlib", "scikit-learn"]
SCRIPTS = [
    "tests/analyze",
    "tests/test_bundled_model.py",
    "tests/test_cli.py",
    "tests/experiments",
    "benchmarks/test_quick_run.py",
]


def _scripts(session: nox.Session) -> None:
    env = {**TEST_ENV, "CONVSV_BACKENDS": "numpy", "CONVSV_REQUIRE_FORMATS": "1", "KERAS_BACKEND": "jax"}
    session.run("pytest", "-n", "2", *SCRIPTS, *session.posargs, env=env)


# The adapter runs with an environment of their own (Keras picks its backend at import, optax its
# PRNG) need a process each; the PyTorch adapter and the scripts run with the core suite, in one
# run that two workers share.
OWN_PROCESS = [(env, module) for name in ("torch", "jax") for env, module in ADAPTERS[name][1] if env]


@nox.session
def tests(session: nox.Session) -> None:
    """The core suite on every CPU backend, the adapters on PyTorch and JAX, the command line and scripts."""
    packages = {*FORMATS, *ADAPTERS["torch"][0], *ADAPTERS["jax"][0]}
    session.install(*sorted(packages), "-e", ".[test]")
    env = {
        **TEST_ENV,
        "CONVSV_BACKENDS": ",".join(BACKENDS),
        "CONVSV_REQUIRE_ADAPTERS": "1",
        "CONVSV_REQUIRE_FORMATS": "1",
        "KERAS_BACKEND": "jax",  # the Keras models the command line's tests write
    }
    modules = sorted({module for _, module in OWN_PROCESS})
    ignored = [f"--ignore={path}" for m in modules for path in _adapter_files(m)]
    paths = ["tests", "src/convsv", "benchmarks/test_quick_run.py"]  # SCRIPTS are under tests/ but one
    session.run("pytest", "-n", "2", *ignored, *paths, *session.posargs, env=env)
    _adapter_runs(session, OWN_PROCESS)


@nox.session(default=False)
def core(session: nox.Session) -> None:
    """The core test suite on every CPU backend, in one run (two workers share the work)."""
    session.install(TORCH, "jax", "-e", ".[test]")
    _core(session, list(BACKENDS))


@nox.session(default=False)
@nox.parametrize("name", list(BACKENDS))
def backend(session: nox.Session, name: str) -> None:
    """The core test suite on one CPU backend (the tests of the others are deselected).

    On jax every case runs in both precisions (``tests`` runs about half of them in float32).
    """
    session.install(*BACKENDS[name], "-e", ".[test]")
    _core(session, [name], CONVSV_JAX_EVERY_CASE="1")


def _adapter_session(name: str) -> None:
    @nox.session(name=f"adapters-{name}", default=name == "tensorflow")
    def session(session: nox.Session) -> None:
        session.install(*ADAPTERS[name][0], "scikit-learn", "-e", ".[test]")
        _adapter_runs(session, ADAPTERS[name][1])

    session.__doc__ = f"The tests and doctests of the training adapters that run on {name}."


for _name in ADAPTERS:
    _adapter_session(_name)


@nox.session(default=False)
def scripts(session: nox.Session) -> None:
    """The command line on every model format, the experiments' and the benchmarks' ``--quick`` runs."""
    session.install(*FORMATS, "-e", ".[test]")
    _scripts(session)


# The tests that start several processes (FSDP2 over gloo) or devices (JAX host devices); the
# default `tests` session runs them with the rest.
SHARDED = [
    "tests/test_sharding.py",
    "tests/adapters/test_torch_sharded.py",
    "benchmarks/test_quick_run.py::test_sharded_memory_quick_run",
]


@nox.session(default=False)
def sharded(session: nox.Session) -> None:
    """The multi-process and multi-device tests alone: FSDP2 and DTensor, JAX meshes, their examples."""
    session.install(*ADAPTERS["torch"][0], *ADAPTERS["jax"][0], "scikit-learn", "-e", ".[test]")
    env = {**TEST_ENV, "CONVSV_BACKENDS": "numpy,torch,jax", "CONVSV_REQUIRE_ADAPTERS": "1"}
    session.run("pytest", "-n", "2", *SHARDED, *session.posargs, env=env)


@nox.session(name="tests-gpu", venv_backend="none", default=False, tags=["gpu"])
def tests_gpu(session: nox.Session) -> None:
    """Every backend, GPU variants required, in the current interpreter (no installs)."""
    session.run(
        "python",
        "-m",
        "pytest",
        *session.posargs,
        env={**TEST_ENV, "CONVSV_REQUIRE_GPU": "1", "CONVSV_REQUIRE_BACKENDS": "0"},
    )


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The benchmarks (benchmarks/README.md); arguments after ``--`` go to benchmarks/run.py."""
    session.install(TORCH, "numpy", "matplotlib", "threadpoolctl", "-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)


# The random campaign's full run: 10,000 configurations on NumPy and PyTorch, 1,000 on array_api_strict
# and JAX x64, 100 on float32 JAX (tests/fuzz/test_campaign.py); the summary is the table
# docs/accuracy.md shows.
FUZZ_EXAMPLES = "10000"
FUZZ_SUMMARY = "docs/accuracy-results.json"


@nox.session(default=False)
def fuzz(session: nox.Session) -> None:
    """The random campaign on every CPU backend; writes docs/accuracy-results.{json,md}.

    Arguments after ``--`` go to pytest, e.g. ``nox -s fuzz -- --examples 1000`` for a shorter run.
    """
    session.install(TORCH, "jax", "-e", ".[test]")
    env = {**TEST_ENV, "CONVSV_BACKENDS": ",".join(BACKENDS)}
    args = ["--examples", FUZZ_EXAMPLES, "--fuzz-summary", FUZZ_SUMMARY, "-p", "no:cacheprovider"]
    session.run("pytest", "-n", "2", "tests/fuzz", *args, *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


# The type check sees the frameworks the adapters import (their real types).
TYPED_FRAMEWORKS = [TORCH, "jax", "flax>=0.10", "equinox>=0.11"]


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """Mypy, strict, on the package."""
    session.install(*TYPED_FRAMEWORKS, "-e", ".[typecheck,keras,optax]")
    session.run("mypy")


def _remote_assets(site: Path) -> list[str]:
    """The scripts and stylesheets that the built pages would fetch from elsewhere (links are fine)."""
    tag = re.compile(r"<(?:script[^>]*\ssrc|link[^>]*rel=\"stylesheet\"[^>]*\shref)=\"(https?:[^\"]+)\"")
    return sorted({url for page in site.rglob("*.html") for url in tag.findall(page.read_text("utf-8"))})


@nox.session
def docs(session: nox.Session) -> None:
    """Mypy; the documentation built with warnings as errors; every example in it and the README run."""
    # The API pages import the adapters, so their frameworks are installed too (Keras on JAX);
    # onnx reads the model.onnx of the command line examples. The type check's packages are a
    # subset, so it runs here rather than in an environment of its own.
    frameworks = [*TYPED_FRAMEWORKS, "keras>=3.5", "optax>=0.2.3", "onnx>=1.14"]
    session.install(*frameworks, "-e", ".[docs,test,typecheck,keras,optax]")
    # Mypy and Sphinx each use one core: on two, the type check runs beside the build.
    typecheck = subprocess.Popen(
        [str(Path(session.bin) / "mypy")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # CONVSV_REQUIRE_FORMATS: a command line example whose package is missing fails instead of skipping.
    env = {**TEST_ENV, "KERAS_BACKEND": "jax", "CONVSV_REQUIRE_FORMATS": "1"}
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", "docs/_build/html", env=env)
    remote = _remote_assets(Path("docs/_build/html"))
    if remote:  # the pages are read offline too: math, styles and scripts come with them
        session.error(f"built pages load from the network: {remote[:5]}")
    report, _ = typecheck.communicate()
    session.log(f"mypy:\n{report}")
    if typecheck.returncode:
        session.error("mypy failed")
    # Every page's doctests (subfolders included), and the console examples and the rule that
    # every Python block is a doctest (tests/test_docs_examples.py).
    pages = sorted(str(page) for page in Path("docs").rglob("*.md") if "_build" not in page.parts)
    examples = ["README.md", *pages, "tests/test_docs_examples.py"]
    session.run("pytest", "-n", "2", *examples, "-p", "no:cacheprovider", env=env)
