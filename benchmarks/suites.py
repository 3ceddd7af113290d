"""The benchmark suites: each returns plain JSON-ready data, measured in this process.

Imported by ``run.py`` only after it has fixed the thread settings (environment
variables are read when NumPy and PyTorch load). Every time is the median of
repeated calls after one warm-up call, measured with ``time.perf_counter``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from models import cifar_resnet
from torch.utils._python_dispatch import TorchDispatchMode

import convsv
import convsv.torch

#: ``operator_norm`` methods to time, those the installed convsv accepts.
NORM_METHODS = ("auto", "svd", "eigh", "gram", "power")
#: Largest side of a dense layer matrix whose SVD is timed (a 2048^2 SVD takes seconds).
DENSE_MAX_SIDE = 2048

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress, with the seconds since start, on stderr."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def accepts(function: Callable[..., Any], option: str) -> bool:
    """Whether ``function`` takes a keyword ``option`` (the core is gaining options)."""
    return option in inspect.signature(function).parameters


def supported_options() -> dict[str, bool]:
    """Which of the core's newer options the installed convsv has."""
    return {
        "operator_norm(method=)": accepts(convsv.operator_norm, "method"),
        "singular_values(chunk_size=)": accepts(convsv.singular_values, "chunk_size"),
        "singular_values(max_memory=)": accepts(convsv.singular_values, "max_memory"),
        "operator_norm(chunk_size=)": accepts(convsv.operator_norm, "chunk_size"),
        "operator_norm(max_memory=)": accepts(convsv.operator_norm, "max_memory"),
    }


class Timer:
    """Median wall time of a call: one warm-up call, then up to ``repeats`` timed calls.

    Timed calls stop early once they have used ``budget`` seconds (at least one
    always runs), so a 20-second call is not repeated five times. ``setup`` runs
    before every call, untimed (to restore weights, say). On CUDA the device is
    synchronised before the clock is read.
    """

    def __init__(self, repeats: int, budget: float, device: str) -> None:
        self.repeats, self.budget, self.device = repeats, budget, device

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> tuple[Any, dict]:
        """``(result of the last call, {"median_s", "min_s", "runs", "warmup_s"})``."""
        times = []
        for attempt in range(self.repeats + 1):
            if setup is not None:
                setup()
            self._sync()
            start = time.perf_counter()
            result = fn()
            self._sync()
            times.append(time.perf_counter() - start)
            if attempt >= 1 and sum(times[1:]) >= self.budget:
                break
        warmup, timed = times[0], times[1:]
        stats = {"median_s": statistics.median(timed), "min_s": min(timed), "runs": len(timed)}
        return result, {**stats, "warmup_s": warmup}


def he_kernel(rng: np.random.Generator, k: int, c_in: int, c_out: int, dtype: str) -> np.ndarray:
    """A random He-initialised ``k x k x c_in x c_out`` (HWIO) kernel."""
    kernel = rng.standard_normal((k, k, c_in, c_out)) * np.sqrt(2.0 / (k * k * c_in))
    return kernel.astype(dtype)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy float64 copy of a NumPy array or torch tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def spectrum_difference(values: Any, reference: Any) -> float:
    """``max |a - b| / max b`` over both spectra flattened and sorted (relative to the norm)."""
    a, b = np.sort(to_numpy(values).ravel()), np.sort(to_numpy(reference).ravel())
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def relative(value: Any, reference: Any) -> float:
    """``(value - reference) / reference``, signed."""
    value, reference = float(to_numpy(value)), float(to_numpy(reference))
    return (value - reference) / reference


# --- layers ---------------------------------------------------------------------------------------


def numpy_two_liner(kernel: np.ndarray, n: int) -> np.ndarray:
    """The paper's two lines: every singular value, one SVD per frequency."""
    return np.linalg.svd(np.fft.fft2(kernel, (n, n), axes=(0, 1)), compute_uv=False)


def torch_two_liner(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """The same two lines in PyTorch."""
    return torch.linalg.svdvals(torch.fft.fft2(kernel, s=(n, n), dim=(0, 1)))


def reshape_power_state(weight: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, v)`` as ``torch.nn.utils.parametrizations.spectral_norm`` leaves them: 15 initial steps."""
    matrix = weight.reshape(weight.shape[0], -1)
    u = torch.as_tensor(rng.standard_normal(matrix.shape[0]), dtype=weight.dtype, device=weight.device)
    v = torch.as_tensor(rng.standard_normal(matrix.shape[1]), dtype=weight.dtype, device=weight.device)
    u, v = u / u.norm(), v / v.norm()
    for _ in range(15):
        u, v = power_step(matrix, u, v)[:2]
    return u, v


def power_step(matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One step of torch's ``_SpectralNorm._power_method`` and its estimate ``u^T W v``."""
    u = torch.nn.functional.normalize(matrix @ v, dim=0, eps=1e-12)
    v = torch.nn.functional.normalize(matrix.T @ u, dim=0, eps=1e-12)
    return u, v, torch.dot(u, matrix @ v)


def time_convsv(timer: Timer, kernel: Any, n: int, spectrum: Any, norm: Any) -> dict:
    """convsv's spectrum and operator norms of one kernel, against the two-liner's ``spectrum``, ``norm``.

    Each of :data:`NORM_METHODS` is timed where convsv accepts it; without a
    ``method=`` option the default is timed as ``"default"`` and the methods are
    recorded as ``"unsupported"``.
    """
    values, spectrum_time = timer(lambda: convsv.singular_values(kernel, n))
    out: dict[str, Any] = {
        "spectrum": spectrum_time,
        "spectrum_diff": spectrum_difference(values, spectrum),
        "operator_norm": {},
    }
    norms = out["operator_norm"]
    if not accepts(convsv.operator_norm, "method"):
        value, norm_time = timer(lambda: convsv.operator_norm(kernel, n))
        norms["default"] = {**norm_time, "rel_diff": relative(value, norm)}
        norms.update(dict.fromkeys(NORM_METHODS, "unsupported"))
        return out
    for method in NORM_METHODS:
        try:
            value, norm_time = timer(lambda method=method: convsv.operator_norm(kernel, n, method=method))
        except ValueError as error:  # a method this version does not know
            norms[method] = f"unsupported ({error})"
            continue
        norms[method] = {**norm_time, "rel_diff": relative(value, norm)}
    return out


def layer_row(timer: Timer, rng: np.random.Generator, shape: tuple, dtype: str, device: str) -> dict:
    """Every method on one layer shape: times, ratios and errors."""
    k, c_in, c_out, n = shape
    kernel = he_kernel(rng, k, c_in, c_out, dtype)
    row: dict[str, Any] = {"shape": f"{k}x{k}x{c_in}x{c_out} @{n}", "n": n, "dtype": dtype, "device": device}

    # NumPy (always on the host): the two-liner, its max, the dense SVD, convsv.
    spectrum, two_liner = timer(lambda: numpy_two_liner(kernel, n))
    norm, max_time = timer(lambda: spectrum.max())
    numpy_row = {"two_liner": two_liner, "two_liner_norm_s": two_liner["median_s"] + max_time["median_s"]}
    numpy_row.update(time_convsv(timer, kernel, n, spectrum, norm))
    row["numpy"] = numpy_row
    row["true_norm"] = float(norm)
    side = n * n * max(c_in, c_out)
    if side <= DENSE_MAX_SIDE:
        dense_values, dense = timer(lambda: np.linalg.svd(convsv.conv_matrix(kernel, n), compute_uv=False))
        row["dense"] = {**dense, "side": side, "spectrum_diff": spectrum_difference(dense_values, spectrum)}
    else:
        row["dense"] = {"skipped": f"matrix side {side} > {DENSE_MAX_SIDE}"}

    # PyTorch on the chosen device: the two-liner, the reshape spectral norm, convsv.
    tensor = torch.from_numpy(kernel).to(device)
    t_spectrum, t_two_liner = timer(lambda: torch_two_liner(tensor, n))
    t_norm, t_max_time = timer(lambda: t_spectrum.max())
    torch_row = {
        "two_liner": t_two_liner,
        "two_liner_norm_s": t_two_liner["median_s"] + t_max_time["median_s"],
    }
    torch_row.update(time_convsv(timer, tensor, n, t_spectrum, t_norm))
    weight = tensor.permute(3, 2, 0, 1).contiguous()  # OIHW, as torch.nn.Conv2d holds it
    reshaped, reshape_time = timer(lambda: torch.linalg.matrix_norm(weight.reshape(c_out, -1), ord=2))
    u, v = reshape_power_state(weight, rng)
    step, step_time = timer(lambda: power_step(weight.reshape(c_out, -1), u, v))
    torch_row["reshape_norm"] = {**reshape_time, "rel_err": relative(reshaped, t_norm)}
    torch_row["reshape_power_step"] = {**step_time, "rel_err": relative(step[2], t_norm)}
    row["torch"] = torch_row

    for backend in ("numpy", "torch"):
        part = row[backend]
        part["spectrum_ratio"] = part["two_liner"]["median_s"] / part["spectrum"]["median_s"]
        norms = part["operator_norm"]
        main = norms["auto"] if isinstance(norms.get("auto"), dict) else norms["default"]
        part["norm_ratio"] = part["two_liner_norm_s"] / main["median_s"]
    return row


LAYER_SHAPES = [  # (k, c_in, c_out, n)
    (3, 16, 16, 8),
    (3, 32, 32, 8),
    (3, 64, 64, 32),
    (3, 128, 128, 16),
    (3, 256, 256, 8),
    (3, 512, 512, 7),
    (3, 512, 512, 14),
    (7, 3, 64, 224),
]
FLOAT64_SHAPES = [(3, 16, 16, 8), (3, 64, 64, 32), (3, 128, 128, 16)]
QUICK_LAYER_SHAPES = [(3, 16, 16, 8), (3, 64, 64, 16)]
QUICK_FLOAT64_SHAPES = [(3, 16, 16, 8)]


def layers(timer: Timer, device: str, quick: bool) -> list[dict]:
    """The ``layers`` suite: one row per (shape, dtype)."""
    rng = np.random.default_rng(0)
    shapes = QUICK_LAYER_SHAPES if quick else LAYER_SHAPES
    float64 = QUICK_FLOAT64_SHAPES if quick else FLOAT64_SHAPES
    rows = []
    for shape in shapes:
        for dtype in ("float32", "float64") if shape in float64 else ("float32",):
            log(f"layers: {shape} {dtype}")
            rows.append(layer_row(timer, rng, shape, dtype, device))
    return rows


# --- sweep ----------------------------------------------------------------------------------------


def sweep_point(timer: Timer, kernel: np.ndarray, n: int, device: str) -> dict:
    """Two-liner, convsv spectrum and convsv norm of one kernel: NumPy on the CPU, PyTorch on CUDA."""
    if device == "cpu":
        spectrum, two_liner = timer(lambda: numpy_two_liner(kernel, n))
    else:
        kernel = torch.from_numpy(kernel).to(device)
        spectrum, two_liner = timer(lambda: torch_two_liner(kernel, n))
    values, convsv_spectrum = timer(lambda: convsv.singular_values(kernel, n))
    norm, convsv_norm = timer(lambda: convsv.operator_norm(kernel, n))
    return {
        "backend": "numpy" if device == "cpu" else f"torch-{device}",
        "two_liner": two_liner,
        "convsv_spectrum": convsv_spectrum,
        "convsv_norm": convsv_norm,
        "spectrum_diff": spectrum_difference(values, spectrum),
        "norm_rel_diff": relative(norm, to_numpy(spectrum).max()),
    }


def sweep(timer: Timer, device: str, quick: bool) -> list[dict]:
    """Figure 1 of the paper: time against channels (in = out) for 3x3 and 11x11 kernels."""
    rng = np.random.default_rng(1)
    configs = {  # (kernel size, input size) -> channel counts
        (3, 16): (16, 32, 64) if quick else (16, 32, 64, 128, 256),
        (11, 64): (16,) if quick else (16, 32, 64, 128),
    }
    rows = []
    for (k, n), channels in configs.items():
        for c in channels:
            log(f"sweep: {k}x{k}x{c}x{c} @{n}")
            point = sweep_point(timer, he_kernel(rng, k, c, c, "float32"), n, device)
            rows.append({"kernel": k, "n": n, "channels": c, **point})
    return rows


# --- zero padding --------------------------------------------------------------------------------

#: He-initialised 3x3 layers (channels, map) of the zero-padded norm's targets.
ZERO_PADDED = ((64, 32), (128, 16), (256, 8), (512, 4))
ZERO_PADDED_QUICK = ((16, 8), (32, 4))
#: Power iteration steps of the comparison, and the most tried when counting the steps to match convsv.
POWER_STEPS = 100
POWER_MAX_STEPS = 4000


def power_iteration(weight: torch.Tensor, n: int, steps: int, start: torch.Tensor) -> list[float]:
    """``steps`` of power iteration on ``A^T A`` with PyTorch's own ``conv2d``/``conv_transpose2d``.

    Returns the estimate ``sqrt(||A^T A v||)`` after every step (the last is the result).
    """
    functional = torch.nn.functional
    v = start / torch.linalg.vector_norm(start)
    estimates = []
    for _ in range(steps):
        u = functional.conv2d(v, weight, padding=1)
        v = functional.conv_transpose2d(u, weight, padding=1)
        size = torch.linalg.vector_norm(v)
        v = v / size
        estimates.append(float(size) ** 0.5)
    return estimates


class CountConvolutions(TorchDispatchMode):
    """Counts the convolutions (forward and transposed) PyTorch runs inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten.convolution.default
        return func(*args, **(kwargs or {}))


def fewest_lanczos_steps(weight: torch.Tensor, tol: float, start: torch.Tensor, most: int = 400) -> int:
    """Steps unrestarted, fully reorthogonalised Golub-Kahan-Lanczos needs to certify the norm to ``tol``.

    The same certificate as convsv's (Ritz residual ``/ sqrt(2) <= tol * value``), read off the
    bidiagonal after every step. A floor for any method that certifies this way: each step costs
    one convolution and its transpose, as a power step does.
    """
    functional = torch.nn.functional

    def forward(x: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(x.reshape(start.shape), weight, padding=1).reshape(-1)

    def backward(y: torch.Tensor) -> torch.Tensor:
        return functional.conv_transpose2d(y.reshape(start.shape), weight, padding=1).reshape(-1)

    v = start.reshape(-1) / torch.linalg.vector_norm(start)
    u = forward(v)
    alphas, betas = [torch.linalg.vector_norm(u)], []
    rights, lefts = [v], [u / alphas[0]]
    for step in range(1, most + 1):
        w = backward(lefts[-1]) - alphas[-1] * rights[-1]
        basis = torch.stack(rights)
        for _ in range(2):  # twice is enough (Kahan)
            w = w - basis.T @ (basis @ w)
        betas.append(torch.linalg.vector_norm(w))
        diagonal, upper = torch.stack(alphas).double(), torch.stack(betas).double()[:-1]
        bidiagonal = torch.diag(diagonal) + torch.diag(upper, 1)
        left, values, _ = torch.linalg.svd(bidiagonal)
        if float(betas[-1] * abs(left[-1, 0])) <= 2**0.5 * tol * float(values[0]):
            return step
        rights.append(w / betas[-1])
        z = forward(rights[-1]) - betas[-1] * lefts[-1]
        others = torch.stack(lefts)
        for _ in range(2):
            z = z - others.T @ (others @ z)
        alphas.append(torch.linalg.vector_norm(z))
        lefts.append(z / alphas[-1])
    return most


def zero_padding(timer: Timer, device: str, quick: bool) -> list[dict]:
    """The zero-padded norm (``padding=1``, default tol) against power iteration with torch's convolutions."""
    rng = np.random.default_rng(2)
    rows = []
    for c, n in ZERO_PADDED_QUICK if quick else ZERO_PADDED:
        log(f"zero padding: 3x3x{c}x{c} @{n}")
        kernel = he_kernel(rng, 3, c, c, "float32")
        weight = torch.asarray(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))), device=device)
        tensor = torch.asarray(kernel, device=device)
        start = torch.asarray(rng.standard_normal((1, c, n, n)).astype(np.float32), device=device)
        # The reference: float64 Lanczos to 1e-12 (the tests check this route against dense SVDs).
        reference = float(convsv.operator_norm(kernel.astype(np.float64), n, padding=1, tol=1e-12))
        power, power_time = timer(functools.partial(power_iteration, weight, n, POWER_STEPS, start))
        from_torch, torch_time = timer(functools.partial(convsv.operator_norm, tensor, n, padding=1))
        from_numpy, numpy_time = timer(functools.partial(convsv.operator_norm, kernel, n, padding=1))
        # The circular layer on the padded map: the certified upper bound.
        bound, bound_time = timer(functools.partial(convsv.operator_norm, kernel, n + 2))
        with CountConvolutions() as counted:
            convsv.operator_norm(tensor, n, padding=1)
        error = abs(float(to_numpy(from_torch)) - reference) / reference
        row = {
            "channels": c,
            "n": n,
            "reference": reference,
            "power_100": power_time,
            "power_100_rel_error": (power[-1] - reference) / reference,
            "convsv_torch": torch_time,
            "convsv_torch_rel_error": relative(from_torch, reference),
            "convsv_numpy": numpy_time,
            "convsv_numpy_rel_error": relative(from_numpy, reference),
            "circular_bound": bound_time,
            "circular_bound_over_norm": float(to_numpy(bound)) / reference,
            "ratio_torch": torch_time["median_s"] / power_time["median_s"],
            "ratio_numpy": numpy_time["median_s"] / power_time["median_s"],
            # Each Lanczos step is a convolution and its transpose, as a power step is: the torch
            # ratio cannot fall below steps / 100, whatever else the step costs.
            "convsv_convolutions": counted.count,
            "fewest_lanczos_steps": fewest_lanczos_steps(weight, 1e-5, start),
        }
        if not quick:  # how long power iteration must run to be as close as convsv's value
            estimates = power_iteration(weight, n, POWER_MAX_STEPS, start)
            close = [
                i + 1 for i, e in enumerate(estimates) if abs(e - reference) <= max(error, 1e-6) * reference
            ]
            row["power_steps_to_match"] = close[0] if close else None
        rows.append(row)
    return rows


# --- resnet32 -------------------------------------------------------------------------------------


def zero_padded_norms(model: torch.nn.Module, shapes: dict) -> dict[str, float]:
    """Each convolution's operator norm as it computes (zero padding and all), after a projection."""
    norms = {}
    for name, layer in convsv.torch.conv_layers(model):
        options = convsv.torch.layer_options(layer, shapes[name])
        norms[name] = float(convsv.operator_norm(layer.weight.detach(), shapes[name], **options))
    return {"min": min(norms.values()), "max": max(norms.values())}


def resnet32_suite(timer: Timer, device: str, quick: bool) -> dict:
    """Clipping every convolution of a CIFAR ResNet-32 every 100 steps, as a fraction of training time."""
    torch.manual_seed(0)
    # --quick: ResNet-8 (7 convolutions) at batch 16, a smoke run of the same code.
    depth, batch = (8, 16) if quick else (32, 128)
    model = cifar_resnet(depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    log(f"resnet32: training step, batch {batch}")
    model.train()
    _, step = timer(train_step)
    shapes = convsv.torch.input_shapes(model, x[:1])
    weights = copy.deepcopy(model.state_dict())

    def restore() -> None:
        model.load_state_dict(weights)

    out: dict[str, Any] = {
        "depth": depth,
        "batch": batch,
        "conv_layers": len(shapes),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_step": step,
        "every": 100,
        "projections": {},
    }
    # Its convolutions pad with zeros: the default (bound="tight") lands each one's own norm on the
    # bound; bound="circular" is the projection before it, of the circular layer on the padded map.
    runs: dict[str, dict[str, Any]] = {"default": {}}
    if accepts(convsv.clip_operator_norm, "bound"):
        runs["circular bound"] = {"bound": "circular"}
    if not quick:
        runs["extrapolated"] = {"method": "extrapolated", "iterations": 50, "tol": 1e-5}
    for label, options in runs.items():
        log(f"resnet32: clip_operator_norm_ ({label})")
        report, clip = timer(
            lambda options=options: convsv.torch.clip_operator_norm_(
                model, 1.0, input_shapes=shapes, **options
            ),
            setup=restore,
        )
        out["projections"][label] = {
            "options": options,
            **clip,
            "fraction_every_100": clip["median_s"] / (100 * step["median_s"]),
            "max_norm_after": max(float(r.norm_after) for r in report),
            "max_norm_before": max(float(r.norm_before) for r in report),
            # Measured afresh, the same way for every run: each layer's own (zero-padded) norm.
            "zero_padded_norms_after": zero_padded_norms(model, shapes),
            "iterations": [int(r.iterations) for r in report],
        }
    if quick:
        out["projections"]["extrapolated"] = "skipped (--quick)"
    restore()
    return out
