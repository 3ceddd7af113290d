"""A random campaign: every public function on every backend against the dense matrix.

Each configuration (``configs.draw``: 1-D to 3-D, kernels 1-4, channels 1-4,
groups, strides and dilations 1-3, transposed or not, circular or zero
padding of every kind, four dtypes, two layouts, kernels scaled to the ends
of their precision's range, rank-deficient kernels) is built on the backend
under test, and each result is checked for namespace, device and dtype,
then against the dense matrix of the same layer from PyTorch's own
convolution (``truth.py``) and its NumPy SVD. Every error is measured
relative to the layer's norm. Any exception is a failure, as is any number
outside its tolerance; a chunk reports all of its failures with the line
that redraws the configuration.

``--examples N`` configurations per backend on NumPy and PyTorch, ``N / 10``
(at least one) on array_api_strict and JAX with x64, whose calls cost more
(JAX compiles each new layer), and ``N / 100`` on float32 JAX (the x64
variant's code in single precision, at the same compile cost); there, each
circular configuration runs one of the ``operator_norm`` methods in turn
rather than all five. ``--fuzz-seed`` picks another campaign and
``--fuzz-summary PATH`` writes the counts and worst errors (``summary.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import pytest

import convsv

from . import truth
from .configs import ALL_DTYPES, METHODS, Config, draw

# The campaign gives each backend its own share of --examples (SLOW), float32 JAX included.
pytestmark = pytest.mark.every_jax_case

CHUNK = 25  # configurations per test item (items spread over the xdist workers)
# The share of --examples on the backends whose calls cost more (see the module's docstring).
SLOW = {"array_api_strict": 10, "jax": 100, "jax-x64": 10, "jax-gpu": 10}
# Round-off allowed, relative to the layer's norm.
RTOL = {"single": 1e-4, "double": 1e-9}
# convsv's default stopping tolerance (gram, power, Lanczos).
NORM_TOL = {"single": 1e-5, "double": 1e-6}
# A power iteration stops when it moves by at most tol in a step: not certified; this is its slack.
POWER_SLACK = 1e-3
# A tight zero-padded projection lands in [max_norm (1 - 8e-4), max_norm (1 + tol)] (documented).
LEVEL_SLACK = 8e-4
# Gradients are compared where the largest singular value is this far (relative) from the next.
GAP = 1e-2


def examples_for(config: pytest.Config, backend_name: str) -> int:
    examples = config.getoption("--examples")
    return max(1, examples // SLOW[backend_name]) if backend_name in SLOW else examples


def part(config: pytest.Config) -> tuple[int, int]:
    """``--fuzz-part K/N`` as ``(K, N)``; ``(1, 1)``, the whole campaign, without it."""
    value = config.getoption("--fuzz-part")
    if value is None:
        return 1, 1
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        msg = f"--fuzz-part must be K/N, e.g. 2/3, not {value!r}"
        raise pytest.UsageError(msg) from None
    if not 1 <= k <= n:
        msg = f"--fuzz-part {value}: K must be between 1 and N"
        raise pytest.UsageError(msg)
    return k, n


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chunk" in metafunc.fixturenames:
        chunks = max(1, math.ceil(metafunc.config.getoption("--examples") / CHUNK))
        k, n = part(metafunc.config)
        metafunc.parametrize("chunk", range((k - 1) * chunks // n, k * chunks // n))


def _dtypes(backend: Any) -> tuple[str, ...]:
    dtypes = tuple(d for d in ALL_DTYPES if hasattr(backend.xp, d))
    return dtypes if backend.float64 else tuple(d for d in dtypes if d in ("float32", "complex64"))


def _real(dtype: str) -> str:
    return {"complex64": "float32", "complex128": "float64"}.get(dtype, dtype)


def _spatial_first(kernel: np.ndarray, layout: str) -> np.ndarray:
    if layout.startswith("OI"):
        d = kernel.ndim - 2
        return np.transpose(kernel, (*range(2, d + 2), 1, 0))
    return kernel


class Failure(Exception):
    """A number outside its tolerance (the message says which and by how much)."""


class Skip(Exception):
    """The check does not apply (its call failed, and that failure is reported once, elsewhere)."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


class Run:
    """The checks of one configuration on one backend, recorded into ``stats`` and ``failures``."""

    def __init__(self, backend: Any, config: Config, stats: dict, failures: list[str]) -> None:
        self.backend, self.config, self.stats, self.failures = backend, config, stats, failures
        self.p = config.precision
        self.rtol = RTOL[self.p]
        self.kernel = config.kernel()  # spatial-first, float64/complex128, already rounded to dtype
        self.user = backend.asarray(config.in_layout(self.kernel), config.dtype)
        self.real = _real(config.dtype)
        self.matrix = truth.dense(self.kernel, config)
        self.s = truth.singular_values(self.matrix)
        self.norm = float(self.s[0]) if self.s.size else 0.0
        # Errors are relative to the norm; a zero layer is compared absolutely.
        self.ref = self.norm if self.norm > 0 else 1.0

    def call(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        return function(self.user, self.config.input_shape, *args, **self.config.options(), **kwargs)

    def record(self, quantity: str, check: Callable[[], tuple[float, float] | None]) -> None:
        """Run ``check``: it returns the measured error and its limit, or None where no claim applies."""
        problem = None
        try:
            outcome = check()
        except Skip:
            return
        except Failure as failure:
            outcome, problem = None, str(failure)
        except Exception as exc:  # any exception on a valid layer is a failure
            first = str(exc).splitlines()[0] if str(exc) else ""
            outcome, problem = None, f"raised {type(exc).__name__}: {first}"
        if outcome is None and problem is None:
            return
        key = f"{quantity}|{self.p}"
        entry = self.stats.setdefault(
            key, dict.fromkeys(("count", "worst", "ratio", "failures", "exceptions"), 0)
        )
        entry["count"] += 1
        if problem is not None:
            entry["exceptions"] += problem.startswith("raised ")
        else:
            error, limit = outcome
            error = float(error) if np.isfinite(error) else float("inf")
            entry["worst"] = max(entry["worst"], error)
            entry["ratio"] = max(entry["ratio"], error / limit)
            if error <= limit:
                return
            problem = f"error {error:.3g} > {limit:.3g}"
        entry["failures"] += 1
        where = f"{self.config}\n    {self.config.rerun()}"
        self.failures.append(f"{self.backend.name} {quantity}: {problem}\n    {where}")

    # --- the quantities ---------------------------------------------------------------------------

    def conv_matrix(self) -> tuple[float, float]:
        got = self.backend.check(self.call(convsv.conv_matrix), self.config.dtype)
        if got.shape != self.matrix.shape:
            fail(f"shape {got.shape}, dense matrix {self.matrix.shape}")
        return float(np.max(np.abs(got - self.matrix), initial=0.0)) / self.ref, self.rtol

    def spectrum(self) -> tuple[float, float]:
        got = self.backend.check(self.call(convsv.singular_values), self.real)
        c = self.config
        if c.circular:
            group_in, c_out = c.kernel_shape[-2:]
            m = tuple(n // s for n, s in zip(c.conv_input, c.stride, strict=True))
            expected = (*m, c.groups * min(math.prod(c.stride) * group_in, c_out // c.groups))
        else:
            expected = (self.s.size,)
        if got.shape != expected:
            fail(f"shape {got.shape}, expected {expected}")
        values = np.sort(got.reshape(-1))[::-1]
        if values.size > self.s.size:
            fail(f"{values.size} values, the dense matrix has {self.s.size}")
        # The dense matrix has no more nonzero singular values than convsv returns.
        rest = float(np.max(self.s[values.size :], initial=0.0))
        error = float(np.max(np.abs(values - self.s[: values.size]), initial=0.0))
        return max(error, rest) / self.ref, self.rtol

    def top_k(self) -> tuple[float, float]:
        k = self.config.k
        got = self.backend.check(self.call(convsv.singular_values, k=k), self.real)
        if got.shape != (k,):
            fail(f"shape {got.shape} for k={k}")
        return float(np.max(np.abs(got - self.s[:k]))) / self.ref, self.rtol

    def _norm_error(self, value: float, below: float, above: float) -> tuple[float, float]:
        """``|value - norm|``, after checking ``norm (1 - below) <= value <= norm (1 + above)``."""
        error = abs(value - self.norm) / self.ref
        low, high = self.norm - below * self.ref, self.norm + above * self.ref
        if not low <= value <= high:
            fail(f"{value!r} outside [{low!r}, {high!r}] (dense norm {self.norm!r})")
        return error, max(below, above)

    def operator_norm(self, method: str) -> tuple[float, float]:
        value = float(self.backend.check(self.call(convsv.operator_norm, method=method), self.real))
        tol = NORM_TOL[self.p]
        if not self.config.circular:  # Lanczos: certified within tol of a singular value, from below
            return self._norm_error(value, 2 * tol + self.rtol, self.rtol)
        if method == "gram":  # a certified upper bound within tol
            return self._norm_error(value, self.rtol, tol + self.rtol)
        if method == "power":  # an estimate from below
            return self._norm_error(value, POWER_SLACK, self.rtol)
        return self._norm_error(value, self.rtol, self.rtol)

    def bounds(self) -> tuple[float, float]:
        method = self.config.bounds_method
        lower, upper = self.call(convsv.operator_norm_bounds, method=method)
        lower = float(self.backend.check(lower, self.real))
        upper = float(self.backend.check(upper, self.real))
        tol, rtol = NORM_TOL[self.p], self.rtol
        slack = tol + rtol if method == "gram" else rtol
        if self.config.circular:
            errors = [self._norm_error(bound, slack, slack)[0] for bound in (lower, upper)]
            return max(errors), slack
        if not lower <= self.norm + rtol * self.ref or not upper >= self.norm - rtol * self.ref:
            fail(f"bounds [{lower!r}, {upper!r}] miss the dense norm {self.norm!r}")
        # The upper bound is documented as the circular layer's norm on the padded map.
        s = truth.singular_values(truth.padded_grid_dense(self.kernel, self.config))
        circular = float(s[0]) if s.size else 0.0
        if circular < self.norm * (1 - rtol):
            fail(f"the circular layer on the padded map has norm {circular!r} < {self.norm!r}")
        scale = circular if circular > 0 else self.ref  # a zero-padded layer can be 0 with a nonzero kernel
        upper_error = abs(upper - circular) / scale
        if not circular - rtol * scale <= upper <= circular + slack * scale:
            fail(f"upper {upper!r}, the padded map's circular norm is {circular!r}")
        lower_error, _ = self._norm_error(lower, 2 * tol + rtol, rtol)
        return max(upper_error, lower_error), max(slack, 2 * tol + rtol)

    def _result_norms(self, out: Any, full_size: bool = False) -> np.ndarray:
        kernel = _spatial_first(self.backend.check(out, self.config.dtype), self.config.layout)
        kernel = kernel.astype(np.result_type(kernel, np.float64))
        if full_size:
            return truth.singular_values(truth.full_size_dense(kernel, self.config))
        return truth.singular_values(truth.dense(kernel, self.config))

    def _bounds_of_clip(self) -> tuple[float, float | None]:
        c = self.config
        max_norm = c.clip_factor * self.norm if self.norm > 0 else 1.0
        return max_norm, None if c.min_factor is None else c.min_factor * max_norm

    def clip_operator_norm(self, quantity: str) -> None:
        c = self.config
        if c.circular and any(w > n for w, n in zip(c.span, c.conv_input, strict=True)):
            return  # documented: the dilated kernel must fit on the map
        max_norm, min_norm = self._bounds_of_clip()
        bound = "circular" if (min_norm is not None or c.index % 3 == 0) else "tight"
        options: dict[str, Any] = {
            "method": c.clip_method,
            "iterations": c.clip_iterations,
            "tol": c.clip_tol,
            "min_norm": min_norm,
            "return_info": True,
        }
        if not c.circular:
            options["bound"] = bound
            quantity = f"{quantity}[zero, bound={bound}]"
        else:
            quantity = f"{quantity}[circular]"
        result: dict[str, Any] = {}

        def clip() -> Any:
            # One call, shared by the checks below; only the first reports its exception.
            if "error" in result:
                raise Skip
            if "out" not in result:
                try:
                    result["out"], result["info"] = self.call(convsv.clip_operator_norm, max_norm, **options)
                except Exception as exc:
                    result["error"] = exc
                    raise
                result["s"] = self._result_norms(result["out"])
            return result["out"], result["info"], result["s"]

        ref = max_norm if max_norm > 0 else self.ref
        tol = c.clip_tol or 0.0
        rtol = self.rtol

        def above() -> tuple[float, float] | None:
            _, info, s = clip()
            reached = float(s[0]) if s.size else 0.0
            converged = bool(info.converged)
            if not c.circular and bound == "tight":
                limit = NORM_TOL[self.p] + rtol  # always, converged or not
            elif converged and c.clip_method != "dykstra":
                limit = tol + rtol
            else:  # no claim before the tolerance is met (Dykstra's also stops when it stops moving)
                return None
            excess = max(0.0, (reached - max_norm) / ref)
            if min_norm is not None and converged and c.circular:
                short = max(0.0, (min_norm * (1 - tol) - float(np.min(s))) / ref) if s.size else 0.0
                excess = max(excess, short)
            return excess, limit

        def unchanged() -> tuple[float, float] | None:
            # A layer already within the bound: the projection keeps it (circular: up to the FFT's
            # round-off; tight: documented as returned unchanged).
            out, _, _ = clip()
            within = self.norm <= max_norm * (1 - rtol) and min_norm is None
            if not within or (not c.circular and bound == "circular"):
                return None
            moved = np.max(np.abs(_spatial_first(self.backend.to_numpy(out), c.layout) - self.kernel))
            return float(moved) / (float(np.max(np.abs(self.kernel))) or 1.0), rtol

        def below() -> tuple[float, float] | None:
            _, _, s = clip()
            reached = float(s[0]) if s.size else 0.0
            if self.norm <= max_norm:
                return None
            return max(0.0, (max_norm - reached) / ref), LEVEL_SLACK + 2 * NORM_TOL[self.p] + rtol

        def info_norm() -> tuple[float, float]:
            out, info, s = clip()
            s0 = self.s
            if not c.circular and bound == "circular":  # the norms of the circular layer on the padded map
                grid = _spatial_first(self.backend.to_numpy(out), c.layout).astype(self.kernel.dtype)
                s = truth.singular_values(truth.padded_grid_dense(grid, c))
                s0 = truth.singular_values(truth.padded_grid_dense(self.kernel, c))
            tight = not c.circular and bound == "tight"
            errors = []
            for name, got, values in (("norm", info.norm, s), ("initial_norm", info.initial_norm, s0)):
                got = float(got)
                top = float(values[0]) if values.size else 0.0
                scale = top if top > 0 else ref
                if tight:  # documented: a Lanczos value, within tol of a singular value, from below
                    error = float(np.min(np.abs(values - got), initial=abs(got))) / scale
                    limit = 2 * NORM_TOL[self.p] + rtol
                else:  # the exact norm
                    error, limit = abs(got - top) / scale, rtol
                if error > limit or got > top + rtol * scale:
                    nearest = error * scale
                    fail(
                        f"info.{name} {got!r}, dense norm {top!r}, the nearest singular value {nearest!r} off"
                    )
                errors.append(error)
            return max(errors), 2 * NORM_TOL[self.p] + rtol if tight else rtol

        self.record(quantity, above)
        self.record(f"{quantity} keeps a layer within the bound", unchanged)
        if not c.circular and bound == "tight":
            self.record(f"{quantity} below the bound", below)
        self.record("ClipInfo norms", info_norm)

    def clip_singular_values(self) -> tuple[float, float]:
        c = self.config
        max_norm, min_norm = self._bounds_of_clip()
        out = self.call(convsv.clip_singular_values, max_norm, min_norm=min_norm)
        full = _spatial_first(self.backend.check(out, c.dtype), c.layout)
        group_in, c_out = c.kernel_shape[-2:]
        if full.shape != (*c.conv_input, group_in, c_out):
            fail(f"shape {full.shape}, expected {(*c.conv_input, group_in, c_out)}")
        got = truth.full_size_dense(full.astype(np.result_type(full, np.float64)), c)
        s = truth.singular_values(got)
        ref = max_norm if max_norm > 0 else self.ref
        error = max(0.0, float(s[0]) - max_norm) / ref
        if min_norm is not None:
            error = max(error, (min_norm - float(s[-1])) / ref)
        # Proposition 9: the projection is the dense matrix with its singular values clipped; unique
        # when every singular value it raises is well away from zero.
        if min_norm is None or float(self.s[-1]) > 1e-3 * self.ref:
            nearest = truth.dense_clip(self.matrix, max_norm, min_norm)
            error = max(error, float(np.max(np.abs(got - nearest))) / ref)
        return error, self.rtol * 10

    def gradient(self) -> tuple[float, float] | None:
        """The gradient of the norm against ``u^T (dM/dK) v`` of the dense SVD (PyTorch's autograd)."""
        import torch

        c = self.config
        s = self.s
        if self.norm == 0 or s.size < 1:
            return None
        top = int(np.sum(s > s[0] * (1 - 1e-9)))
        # A real circular kernel's top value is shared by f and -f (a pair, same gradient from either).
        if top > (2 if c.circular else 1) or (s.size > top and s[top] > s[0] * (1 - GAP)):
            return None
        u, _, vh = np.linalg.svd(self.matrix)
        weight = torch.tensor(c.in_layout(self.kernel), dtype=torch.float64, requires_grad=True)
        spatial = weight.permute(*range(2, c.ndim + 2), 1, 0) if c.layout.startswith("OI") else weight
        value = torch.from_numpy(u[:, 0]) @ truth.torch_matrix(spatial, c) @ torch.from_numpy(vh[0])
        value.backward()
        want = weight.grad.numpy()
        name = self.backend.name
        if name.startswith("torch"):
            kernel = self.user.detach().requires_grad_(True)
            norm = convsv.operator_norm(kernel, c.input_shape, **c.options())
            norm.backward()
            got = self.backend.check(kernel.grad, c.dtype)
        else:
            import jax

            got = jax.grad(lambda k: convsv.operator_norm(k, c.input_shape, **c.options()))(self.user)
            got = self.backend.check(got, c.dtype)
        error = float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))
        gap = 1 - s[top] / s[0] if s.size > top else 1.0
        limit = 10 * self.rtol if c.circular else max(10 * self.rtol, 10 * NORM_TOL[self.p] / gap)
        return error, limit

    def run(self) -> None:
        c = self.config
        if truth.HAVE_TORCH:  # the two ground truths agree

            def agree() -> tuple[float, float]:
                reference = truth.numpy_dense(self.kernel, c)
                return float(np.max(np.abs(reference - self.matrix), initial=0.0)) / self.ref, 1e-12

            self.record("ground truth: PyTorch vs NumPy reference", agree)
        self.record("conv_matrix", self.conv_matrix)
        padding = "circular" if c.circular else "zero"
        self.record(f"singular_values[{padding}]", self.spectrum)
        self.record(f"singular_values(k)[{padding}]", self.top_k)
        if c.circular:
            # Every method on NumPy and PyTorch; one per configuration, in turn, where each call compiles.
            slow = self.backend.name in SLOW
            for method in (METHODS[c.index % len(METHODS)],) if slow else METHODS:
                self.record(f"operator_norm[{method}]", lambda method=method: self.operator_norm(method))
        else:
            self.record("operator_norm[zero padding]", lambda: self.operator_norm("auto"))
        self.record(f"operator_norm_bounds[{padding}]", self.bounds)
        self.clip_operator_norm("clip_operator_norm")
        if c.circular:
            self.record("clip_singular_values", self.clip_singular_values)
        if (
            c.gradient
            and not c.complex
            and c.rank == "full"
            and truth.HAVE_TORCH
            and self.backend.name.startswith(("torch", "jax"))
        ):
            self.record(f"gradient[{padding}]", self.gradient)


def test_campaign(backend: Any, chunk: int, request: pytest.FixtureRequest, record_property: Any) -> None:
    """Configurations ``chunk * size .. (chunk + 1) * size`` of the campaign, on ``backend``."""
    config = request.config
    total = examples_for(config, backend.name)
    chunks = max(1, math.ceil(config.getoption("--examples") / CHUNK))
    indices = range(chunk * total // chunks, (chunk + 1) * total // chunks)
    seed = config.getoption("--fuzz-seed")
    stats: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    dtypes = _dtypes(backend)
    try:
        for index in indices:
            Run(backend, draw(seed, index, dtypes), stats, failures).run()
    finally:
        if backend.name.startswith("jax"):
            # Each compiled program holds memory maps (about 500 per configuration here): a worker
            # that keeps them all passes Linux's 65,530 (vm.max_map_count) after some 130
            # configurations, and XLA then crashes while compiling. Dropping them frees the maps.
            import jax

            jax.clear_caches()
    record_property("fuzz", json.dumps({"backend": backend.name, "configs": len(indices), "stats": stats}))
    if failures:
        shown = "\n".join(failures[:30])
        more = f"\n... and {len(failures) - 30} more" if len(failures) > 30 else ""
        pytest.fail(f"{len(failures)} failures in configurations {indices} (seed {seed}):\n{shown}{more}")
