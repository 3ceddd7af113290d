"""Test, lint, type-check and documentation sessions.

``nox`` runs the default sessions, each in one environment: the core test
suite on every CPU array backend (numpy, array_api_strict, torch, jax) in one
run (``core``), the command line on every model format with the experiments'
and the benchmarks' quick runs (``scripts``), the training adapters
(``adapters-torch``: PyTorch and Keras on PyTorch; ``adapters-jax``: Keras on
JAX and optax; ``adapters-tensorflow``: Keras on TensorFlow), ``lint``,
``typecheck`` and ``docs``. ``nox -s "tests(backend='torch')"`` runs the core
suite on one backend. ``nox -t gpu`` runs the GPU session in the current
interpreter (for machines with CUDA, torch/jax/cupy preinstalled and no
package index). ``nox -s bench`` runs the benchmarks (not a default session;
``nox -s bench -- --quick`` for a smoke run).

Sessions share environments where their packages agree, because on a
two-core CI machine installing PyTorch and JAX once per session cost minutes.
"""

from __future__ import annotations

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
TEST_ENV = {"CONVSV_REQUIRE_BACKENDS": "1", "HYPOTHESIS_PROFILE": "ci", **THREADS, **XLA}
CORE_TESTS = ["--ignore=tests/adapters", "--ignore=tests/experiments"]


@nox.session
def core(session: nox.Session) -> None:
    """The core test suite on every CPU backend, in one run (two workers share the work)."""
    session.install(TORCH, "jax", "-e", ".[test]")
    session.run(
        "pytest",
        "-n",
        "2",
        *CORE_TESTS,
        *session.posargs,
        env={**TEST_ENV, "CONVSV_BACKENDS": ",".join(BACKENDS)},
    )


@nox.session(default=False)
@nox.parametrize("backend", list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """The core test suite on one CPU backend (the tests of the others are deselected)."""
    session.install(*BACKENDS[backend], "-e", ".[test]")
    env = {**TEST_ENV, "CONVSV_BACKENDS": backend}
    session.run("pytest", "-n", "2", *CORE_TESTS, *session.posargs, env=env)


# The adapter sessions: the frameworks each installs, and per test run its environment and module.
ADAPTERS = {
    "torch": (
        [TORCH, "keras>=3.5"],
        [({}, "torch"), ({"KERAS_BACKEND": "torch"}, "keras")],
    ),
    "jax": (
        ["jax", "keras>=3.5", "optax>=0.2.3", "flax>=0.10", "equinox>=0.11"],
        [({"KERAS_BACKEND": "jax"}, "keras"), ({"JAX_DEFAULT_PRNG_IMPL": "rbg"}, "optax")],
    ),
    "tensorflow": (["tensorflow-cpu==2.21.0", "keras>=3.5"], [({"KERAS_BACKEND": "tensorflow"}, "keras")]),
}


def _adapter_session(name: str) -> None:
    packages, runs = ADAPTERS[name]

    @nox.session(name=f"adapters-{name}")
    def session(session: nox.Session) -> None:
        session.install(*packages, "scikit-learn", "-e", ".[test]")
        for env, module in runs:
            session.run(
                "pytest",
                "-n",
                "2",
                f"tests/adapters/test_{module}.py",
                f"src/convsv/{module}.py",
                *session.posargs,
                env={**TEST_ENV, **env, "CONVSV_REQUIRE_ADAPTERS": "1"},
            )

    session.__doc__ = f"The tests and doctests of the training adapters that run on {name}."


for _name in ADAPTERS:
    _adapter_session(_name)


# `convsv analyze` reads every model format: the frameworks that write them are installed to make
# test models, and a missing one fails the session instead of skipping. The experiments and the
# benchmarks' quick run need a subset of the same packages.
FORMATS = [TORCH, "jax", "keras>=3.5", "onnx>=1.14", "safetensors>=0.4", "matplotlib", "scikit-learn"]
SCRIPTS = [
    "tests/test_analyze.py",
    "tests/test_bundled_model.py",
    "tests/test_cli.py",
    "tests/experiments",
    "benchmarks/test_quick_run.py",
]


@nox.session
def scripts(session: nox.Session) -> None:
    """The command line on every model format, the experiments' and the benchmarks' ``--quick`` runs."""
    session.install(*FORMATS, "-e", ".[test]")
    env = {**TEST_ENV, "CONVSV_BACKENDS": "numpy", "CONVSV_REQUIRE_FORMATS": "1", "KERAS_BACKEND": "jax"}
    session.run("pytest", "-n", "2", *SCRIPTS, *session.posargs, env=env)


@nox.session(venv_backend="none", default=False, tags=["gpu"])
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


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy, strict, on the package, with the frameworks the adapters import (their real types)."""
    session.install(TORCH, "jax", "flax>=0.10", "equinox>=0.11", "-e", ".[typecheck,keras,optax]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors, and run every example in it and in the README."""
    # The API pages import the adapters, so their frameworks are installed too (Keras on JAX);
    # onnx reads the model.onnx of the command line examples.
    session.install(TORCH, "jax", "keras>=3.5", "optax>=0.2.3", "flax>=0.10", "equinox>=0.11", "onnx>=1.14")
    session.install("-e", ".[docs,test]")
    # CONVSV_REQUIRE_FORMATS: a command line example whose package is missing fails instead of skipping.
    env = {**TEST_ENV, "KERAS_BACKEND": "jax", "CONVSV_REQUIRE_FORMATS": "1"}
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", "docs/_build/html", env=env)
    # Every page's doctests (subfolders included), and the console examples and the rule that
    # every Python block is a doctest (tests/test_docs_examples.py).
    pages = sorted(str(page) for page in Path("docs").rglob("*.md") if "_build" not in page.parts)
    examples = ["README.md", *pages, "tests/test_docs_examples.py"]
    session.run("pytest", "-n", "2", *examples, "-p", "no:cacheprovider", env=env)
