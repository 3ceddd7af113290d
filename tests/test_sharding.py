"""JAX kernels split over a mesh of devices: the same numbers as unsplit, projections keep the split.

The checks run in a subprocess with four host devices: ``XLA_FLAGS`` sets the
device count when JAX is imported, once per process. A kernel split on its
output-channel axis over a four-device mesh, with explicit and with automatic
axes, goes through every public function eagerly, under ``jax.jit``, and op by
op (``jax.disable_jit``: the arrays the core creates are then concrete and
placed by hand); each result is compared with the unsplit kernel's, the
projections must come back split as the kernel was, the norms replicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import require

pytestmark = pytest.mark.backend("jax")

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import convsv

assert jax.device_count() == 4, jax.devices()
N = (6, 7)  # 4 rows of the half spectrum (split in 4), 7 frequencies a row (padded to 8)
CALLS = {
    "singular_values": lambda a: convsv.singular_values(a, N),
    "singular_values_chunked": lambda a: convsv.singular_values(a, N, chunk_size=13),
    "singular_values_zero_padded": lambda a: convsv.singular_values(a, N, padding=1, k=3),
    "operator_norm": lambda a: convsv.operator_norm(a, N),
    "operator_norm_zero_padded": lambda a: convsv.operator_norm(a, N, padding=1),
    "operator_norm_bounds": lambda a: convsv.operator_norm_bounds(a, N, padding=1),
    "clip_operator_norm": lambda a: convsv.clip_operator_norm(a, N, 1.0, iterations=2, return_info=True),
    "clip_singular_values": lambda a: convsv.clip_singular_values(a, N, 1.0),
}
# Results of the kernel's own rank are projections (split as the kernel); norms, bounds and the
# projection's info are replicated scalars; spectra lie on the mesh, replicated or split by
# frequency (XLA's choice in the automatic mode).
OP_BY_OP = ("operator_norm", "clip_operator_norm")
PROJECTIONS = ("clip_operator_norm", "clip_singular_values")

kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 4, 8)), jnp.float32)
reference = {name: call(kernel) for name, call in CALLS.items()}


def check(results, kernel_split, projections):
    worst, problems = 0.0, []
    for name, result in results.items():
        for i, (got, want) in enumerate(zip(jax.tree.leaves(result), jax.tree.leaves(reference[name]))):
            got_host, want_host = np.asarray(got, np.float64), np.asarray(want, np.float64)
            scale = max(float(np.max(np.abs(want_host), initial=0.0)), 1.0)
            worst = max(worst, float(np.max(np.abs(got_host - want_host), initial=0.0)) / scale)
            sharding = got.sharding
            if len(sharding.device_set) != 4:
                problems.append(f"{name}[{i}] on {len(sharding.device_set)} devices")
            if got.ndim == kernel.ndim:
                if not sharding.is_equivalent_to(kernel_split.sharding, got.ndim) and name in projections:
                    problems.append(f"{name}[{i}] split as {sharding}, not as the kernel")
            elif got.ndim == 0 and not sharding.is_fully_replicated:
                problems.append(f"{name}[{i}] not replicated: {sharding}")
    return worst, problems


report = {}
for mode in ("Explicit", "Auto"):
    mesh = jax.make_mesh((4,), ("x",), axis_types=(getattr(AxisType, mode),))
    split = jax.device_put(kernel, NamedSharding(mesh, P(None, None, None, "x")))
    assert split.sharding.spec == P(None, None, None, "x")
    runs = {
        "eager": lambda: {name: call(split) for name, call in CALLS.items()},
        "jit": lambda: jax.jit(lambda a: {name: call(a) for name, call in CALLS.items()})(split),
    }
    for how, run in runs.items():
        # Traced in the automatic mode, the kernel's sharding is unknown to the core: XLA places
        # the full-size kernel of clip_singular_values as it likes.
        projections = PROJECTIONS[:1] if (mode, how) == ("Auto", "jit") else PROJECTIONS
        try:
            report[f"{mode}-{how}"] = check(run(), split, projections)
        except Exception as error:
            report[f"{mode}-{how}"] = (None, [f"{type(error).__name__}: {str(error)[:300]}"])
    try:
        with jax.disable_jit():
            results = {name: CALLS[name](split) for name in OP_BY_OP}
        report[f"{mode}-op-by-op"] = check(results, split, PROJECTIONS)
    except Exception as error:
        report[f"{mode}-op-by-op"] = (None, [f"{type(error).__name__}: {str(error)[:300]}"])

# Transformations: shard_map with the kernel whole on each device (each computes alone), the
# gradient of the norm (under jit: eager grad under explicit axes needs jax.set_mesh, as JAX's
# own functions do), and vmap.
norm = lambda a: convsv.operator_norm(a, N)
clip = lambda a: convsv.clip_operator_norm(a, N, 1.0, iterations=2)  # as in CALLS
reference_grad = jax.grad(norm)(kernel)
for mode in ("Explicit", "Auto"):
    mesh = jax.make_mesh((4,), ("x",), axis_types=(getattr(AxisType, mode),))
    split = jax.device_put(kernel, NamedSharding(mesh, P(None, None, None, "x")))
    try:
        whole = jax.device_put(kernel, NamedSharding(mesh, P()))
        each = jax.shard_map(lambda a: (norm(a), clip(a)), mesh=mesh, in_specs=P(), out_specs=(P(), P()))
        value, projected = jax.jit(each)(whole)
        gradient = jax.jit(jax.grad(norm))(split)
        values = jax.vmap(norm)(jnp.stack([split, 2 * split]))
        worst = max(
            abs(float(value) - float(reference["operator_norm"])) / float(reference["operator_norm"]),
            float(jnp.max(jnp.abs(projected - reference["clip_operator_norm"][0]))),
            float(jnp.max(jnp.abs(gradient - reference_grad))),
            float(jnp.max(jnp.abs(values - jnp.asarray([1.0, 2.0]) * reference["operator_norm"]))) / 2,
        )
        report[f"{mode}-transforms"] = (worst, [])
    except Exception as error:
        report[f"{mode}-transforms"] = (None, [f"{type(error).__name__}: {str(error)[:300]}"])

# The frequency blocks are spread over the mesh: the memory XLA plans per device for a larger
# layer's spectrum falls with the device count (compiled, not run).
large = jnp.zeros((3, 3, 64, 64), jnp.float32)
for mode in ("Explicit", "Auto"):
    memory = []
    for count in (1, 2, 4):
        axis_types = (getattr(AxisType, mode),)
        mesh = jax.make_mesh((count,), ("x",), axis_types=axis_types, devices=jax.devices()[:count])
        split = jax.device_put(large, NamedSharding(mesh, P(None, None, None, "x")))
        compiled = jax.jit(lambda a: convsv.singular_values(a, (32, 32))).lower(split).compile()
        memory.append(compiled.memory_analysis().temp_size_in_bytes)
    falls = memory[0] > memory[1] > memory[2]
    report[f"{mode}-memory"] = (memory, [] if falls else [f"bytes per device: {memory}"])
print(json.dumps(report))
"""


def test_a_kernel_split_over_four_devices():
    require("jax")
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = ("eager", "jit", "op-by-op", "transforms", "memory")
    assert set(report) == {f"{mode}-{run}" for mode in ("Explicit", "Auto") for run in runs}
    failed = {run: problems for run, (_, problems) in report.items() if problems}
    assert not failed, failed
    # float32 against the unsplit float32 computation: the same operations, summed in another order.
    errors = {run: worst for run, (worst, _) in report.items() if not run.endswith("memory")}
    assert all(worst <= 1e-5 for worst in errors.values()), errors
