"""The ``resnet50`` suite: peak memory of the full spectrum of every ResNet-50 convolution.

The work runs in a fresh interpreter (this file, run as a script), which imports
NumPy and convsv only (PyTorch too with ``--device cuda``) and prints one JSON line
per layer, then a summary line, on stdout; progress goes to stderr.

Linux carries a process's resident size at spawn into the child's ``ru_maxrss``
(``execve`` keeps the larger of the two high-water marks), so the parent side,
:func:`run_suite`, imports nothing heavy: ``run.py`` calls it before it loads NumPy
and PyTorch. The child also reports ``VmHWM`` from ``/proc/self/status``, the
high-water mark of its own address space alone, as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from models import ConvShape, resnet50_convs

#: Memory bound passed to ``singular_values`` (bytes), where it accepts ``max_memory=``.
MAX_MEMORY = 2**30
#: Layers the ``--quick`` run computes: the cheapest few.
QUICK_LAYERS = 4


def block_bytes(conv: ConvShape, itemsize: int = 8) -> int:
    """Bytes of all the layer's per-frequency blocks at once, in complex64.

    ``(n/s)^2`` blocks of ``(s^2 c_in) x c_out`` with circular padding and stride ``s``.
    """
    m = conv.input_size // conv.stride
    return m * m * conv.stride**2 * conv.c_in * conv.c_out * itemsize


def svd_work(conv: ConvShape) -> int:
    """A cost estimate of the layer's SVDs: blocks x rows x columns x min(rows, columns)."""
    m, rows = conv.input_size // conv.stride, conv.stride**2 * conv.c_in
    return m * m * rows * conv.c_out * min(rows, conv.c_out)


def run_suite(device: str, quick: bool, timeout: float) -> dict:
    """Run the child on every layer (``quick``: the cheapest few) and collect what it printed."""
    convs = resnet50_convs()
    chosen = sorted(convs, key=svd_work)[:QUICK_LAYERS] if quick else convs
    command = [sys.executable, str(Path(__file__).resolve()), "--device", device]
    command += ["--layers", ",".join(c.name for c in chosen)]
    print(
        f"resnet50: {len(chosen)} layers in a subprocess (timeout {timeout:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    parent_rss = peak_rss_bytes()
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        killer = threading.Timer(timeout, child.kill)  # what was printed before survives
        killer.start()
        lines = [json.loads(line) for line in child.stdout if line.startswith("{")]
        child.wait()
        killer.cancel()
    estimate = {c.name: block_bytes(c) for c in convs}
    per_layer = [
        {**line, "block_bytes_complex64": estimate[line["layer"]]} for line in lines if "layer" in line
    ]
    header = next((line for line in lines if "options" in line and "summary" not in line), {})
    return {
        "layers_requested": len(chosen),
        "layers_done": len(per_layer),
        "options": header.get("options"),
        "options_supported": header.get("options_supported"),
        "backend": header.get("backend"),
        "returncode": child.returncode,
        "timed_out": child.returncode is not None and child.returncode < 0,
        "timeout_s": timeout,
        "parent_ru_maxrss_at_spawn": parent_rss,
        "wall_s": time.perf_counter() - start,
        "summary": next((line for line in lines if line.get("summary")), None),
        "per_layer": per_layer,
    }


# --- the child --------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """``ru_maxrss`` of this process (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm_bytes() -> int | None:
    """Peak resident size of this process's own address space, from ``/proc/self/status``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child(names: list[str], device: str) -> None:
    import inspect

    import numpy as np

    import convsv

    accepted = inspect.signature(convsv.singular_values).parameters
    options = {"max_memory": MAX_MEMORY} if "max_memory" in accepted else {}
    supported = {name: name in accepted for name in ("chunk_size", "max_memory")}
    backend = "numpy" if device == "cpu" else f"torch-{device}"
    print(json.dumps({"options": options, "options_supported": supported, "backend": backend}), flush=True)
    if device == "cuda":
        import torch
    convs = [conv for conv in resnet50_convs() if conv.name in set(names)]
    baseline = {"ru_maxrss": peak_rss_bytes(), "vm_hwm": vm_hwm_bytes()}
    rng = np.random.default_rng(0)
    total_values, start = 0, time.perf_counter()
    for conv in convs:
        shape = (conv.kernel, conv.kernel, conv.c_in, conv.c_out)
        kernel = (rng.standard_normal(shape) * np.sqrt(2.0 / (conv.kernel**2 * conv.c_in))).astype(np.float32)
        if device == "cuda":
            kernel = torch.from_numpy(kernel).to("cuda")
        began = time.perf_counter()
        values = convsv.singular_values(kernel, conv.input_size, stride=conv.stride, **options)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        count = int(np.prod(values.shape))
        total_values += count
        line = {"layer": conv.name, **conv._asdict(), "seconds": seconds, "values": count}
        line.update(peak_rss_so_far=peak_rss_bytes(), vm_hwm_so_far=vm_hwm_bytes())
        print(json.dumps(line), flush=True)
        print(
            f"  resnet50 {conv.name}: {seconds:.2f} s, peak RSS {line['peak_rss_so_far'] / 2**20:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
        del values, kernel
    summary = {
        "summary": True,
        "layers": len(convs),
        "total_seconds": time.perf_counter() - start,
        "singular_values": total_values,
        "baseline_ru_maxrss": baseline["ru_maxrss"],
        "baseline_vm_hwm": baseline["vm_hwm"],
        "peak_ru_maxrss": peak_rss_bytes(),
        "peak_vm_hwm": vm_hwm_bytes(),
    }
    if device == "cuda":
        summary["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the resnet50 suite's child process")
    parser.add_argument("--layers", required=True, help="comma-separated layer names")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    child(args.layers.split(","), args.device)
