"""Test, lint, type-check and documentation sessions.

``nox`` runs the default sessions: the core test suite once per array backend
(numpy, array_api_strict, torch, jax) on the CPU, the command line on every model
format (``cli``), the training adapters once per framework (``adapters-torch``,
``adapters-keras-jax``, ``adapters-keras-torch``, ``adapters-keras-tensorflow``,
``adapters-optax``), the experiments' ``--quick`` runs (``experiments``), ``lint``,
``typecheck`` and ``docs``. ``nox -t gpu`` runs the GPU session in the current
interpreter (for machines with CUDA, torch/jax/cupy preinstalled and no package
index). ``nox -s bench`` runs the benchmarks (not a default session;
``nox -s bench -- --quick`` for a smoke run).
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
TEST_ENV = {"CONVSV_REQUIRE_BACKENDS": "1", "HYPOTHESIS_PROFILE": "ci", **THREADS}


@nox.session
@nox.parametrize("backend", list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """The test suite on one CPU backend (the tests of the others are deselected)."""
    session.install(*BACKENDS[backend], "-e", ".[test]")
    # Two workers: the suite is single-threaded work (SVD batches, JAX compiles) on a 2-core CI.
    session.run(
        "pytest",
        "-n",
        "2",
        "--ignore=tests/adapters",
        "--ignore=tests/experiments",
        *session.posargs,
        env={**TEST_ENV, "CONVSV_BACKENDS": backend},
    )


# Each adapter session: the framework(s) it needs, environment variables, and its tests and doctests.
ADAPTERS = {
    "torch": ([TORCH], {}, "torch"),
    "keras-jax": (["jax", "keras>=3.5"], {"KERAS_BACKEND": "jax"}, "keras"),
    "keras-torch": ([TORCH, "keras>=3.5"], {"KERAS_BACKEND": "torch"}, "keras"),
    "keras-tensorflow": (["tensorflow-cpu==2.21.0", "keras>=3.5"], {"KERAS_BACKEND": "tensorflow"}, "keras"),
    "optax": (
        ["jax", "optax>=0.2.3", "flax>=0.10", "equinox>=0.11"],
        {"JAX_DEFAULT_PRNG_IMPL": "rbg"},
        "optax",
    ),
}


def _adapter_session(name: str) -> None:
    packages, env, module = ADAPTERS[name]

    @nox.session(name=f"adapters-{name}")
    def session(session: nox.Session) -> None:
        session.install(*packages, "scikit-learn", "-e", ".[test]")
        session.run(
            "pytest",
            "-n",
            "2",
            f"tests/adapters/test_{module}.py",
            f"src/convsv/{module}.py",
            *session.posargs,
            env={**TEST_ENV, **env, "CONVSV_REQUIRE_ADAPTERS": "1"},
        )

    session.__doc__ = f"The {name} training adapter's tests and doctests."


for _name in ADAPTERS:
    _adapter_session(_name)


# `convsv analyze` reads every model format: the frameworks that write them are installed to make
# test models, and a missing one fails the session instead of skipping.
FORMATS = [TORCH, "jax", "keras>=3.5", "onnx>=1.14", "safetensors>=0.4", "matplotlib", "scikit-learn"]


@nox.session
def cli(session: nox.Session) -> None:
    """The command line (``convsv analyze`` on every model format, the bundled model, ``convsv spectrum``)."""
    session.install(*FORMATS, "-e", ".[test]")
    session.run(
        "pytest",
        "-n",
        "2",
        "tests/test_analyze.py",
        "tests/test_bundled_model.py",
        "tests/test_cli.py",
        *session.posargs,
        env={**TEST_ENV, "CONVSV_BACKENDS": "numpy", "CONVSV_REQUIRE_FORMATS": "1", "KERAS_BACKEND": "jax"},
    )


# The experiments' --quick runs, on tiny generated data (CIFAR-format files written by the tests).
EXPERIMENTS = [TORCH, "jax", "matplotlib", "scikit-learn"]


@nox.session
def experiments(session: nox.Session) -> None:
    """Every script in experiments/ in its ``--quick`` mode, its outputs checked for the expected fields."""
    session.install(*EXPERIMENTS, "-e", ".[test]")
    session.run(
        "pytest",
        "-n",
        "2",
        "tests/experiments",
        *session.posargs,
        env={**TEST_ENV, "CONVSV_BACKENDS": "numpy"},
    )


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


@nox.session(name="bench-smoke")
def bench_smoke(session: nox.Session) -> None:
    """The benchmarks' ``--quick`` run, checked for complete, sane output (not for speed)."""
    session.install(TORCH, "numpy", "matplotlib", "pytest", "-e", ".")
    session.run("pytest", "-p", "no:randomly", "benchmarks/test_quick_run.py", env=THREADS)


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
