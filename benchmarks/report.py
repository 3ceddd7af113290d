"""Write the results as Markdown tables and the Figure-1 plot (matplotlib, Agg backend)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The targets the results are checked against (ratios are two-liner time / convsv time).
TARGETS = {
    "spectrum_ratio": 1.8,
    "norm_ratio": 20.0,
    "float64_diff": 1e-10,
    "clip_fraction": 0.05,
    "zero_pad_torch": 0.5,  # convsv's zero-padded norm / 100 power steps with torch's convolutions
    "zero_pad_numpy": 1.0,
}
#: Peak memory target of the resnet50 suite, bytes.
PEAK_TARGET = 2 * 10**9
MIB = 2**20

Column = tuple[str, Callable[[Any], str]]


def ms(stats: Any) -> str:
    """A timing (dict with ``median_s``, or seconds) in milliseconds, or the reason it is missing."""
    if isinstance(stats, dict) and "median_s" in stats:
        stats = stats["median_s"]
    if isinstance(stats, (int, float)):
        return f"{1e3 * stats:.3g}"
    if isinstance(stats, dict):
        return str(stats.get("skipped", "—"))
    return "—" if stats is None else str(stats)


def sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(columns: list[Column], rows: list[Any]) -> list[str]:
    """A Markdown table: one column per ``(header, cell function)``, one line per row."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    return [*lines, *("| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows), ""]


def step_ratios(times: dict[str, list[float]], base: str, label: str) -> list[str]:
    """Each method's median step and its median ratio, round by round, to ``base``'s (``label``)."""
    lines = [f"| normalisation | median step (ms) | median ratio to {label} |", "|---|---:|---:|"]
    for name, values in times.items():
        ratio = statistics.median(t / b for t, b in zip(values, times[base], strict=True))
        lines.append(f"| {name} | {1e3 * statistics.median(values):.1f} | {ratio:.3f} |")
    return lines


def machine_section(info: dict) -> list[str]:
    m, s = info["machine"], info["settings"]
    env = ", ".join(f"{k}={v}" for k, v in s["thread_env"].items())
    supported = ", ".join(f"`{k}` {'yes' if v else 'no'}" for k, v in info["supported"].items())
    return [
        "# convsv benchmarks",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpus_available']} of {m['cpu_count']} cores, "
        f"{m['memory_gib']:.0f} GiB; {m['platform']}; device: {m['device_name']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Threads: {s['threads']} (CPU affinity {s['affinity']}; {env}; torch {s['torch_threads']}), "
        "the same for every method",
        f"- Timing: median of up to {s['repeats']} calls after one warm-up call; a measurement stops "
        f"repeating after {s['budget_s']} s of timed calls; quick={s['quick']}",
        f"- Load average at start / end: {m['loadavg_start']} / {info.get('loadavg_end')}",
        f"- convsv options supported: {supported}",
        f"- Total run time: {info.get('total_s', 0):.0f} s",
        "",
    ]


def timed_methods(rows: list[dict]) -> list[str]:
    """The ``operator_norm`` methods that were timed (the others were not accepted)."""
    norms = rows[0]["numpy"]["operator_norm"]
    return [m for m, v in norms.items() if isinstance(v, dict)]


def layers_section(rows: list[dict]) -> list[str]:
    lines = [
        "## layers: one layer, every method",
        "",
        "Times in ms. Ratio = the paper's two-liner / convsv, same backend (targets: spectrum >= "
        f"{TARGETS['spectrum_ratio']}x, operator norm >= {TARGETS['norm_ratio']:.0f}x). Dense = "
        "`np.linalg.svd(convsv.conv_matrix(K, n))`, only for matrices up to 2048 x 2048.",
        "",
    ]
    lines += table(
        [
            ("layer", lambda r: r["shape"]),
            ("dtype", lambda r: r["dtype"]),
            ("NumPy two-liner", lambda r: ms(r["numpy"]["two_liner"])),
            ("convsv NumPy", lambda r: ms(r["numpy"]["spectrum"])),
            ("ratio", lambda r: f"{r['numpy']['spectrum_ratio']:.2f}"),
            ("torch two-liner", lambda r: ms(r["torch"]["two_liner"])),
            ("convsv torch", lambda r: ms(r["torch"]["spectrum"])),
            ("ratio", lambda r: f"{r['torch']['spectrum_ratio']:.2f}"),
            ("dense SVD", lambda r: ms(r["dense"])),
        ],
        rows,
    )
    # One line per (row, backend) for the norm and accuracy tables.
    parts = [(r, b, r[b]) for r in rows for b in ("numpy", "torch")]
    methods = timed_methods(rows)
    not_timed = [m for m in rows[0]["numpy"]["operator_norm"] if m not in methods]
    lines += [
        "### Operator norm",
        "",
        "Times in ms. The two-liner's norm is its spectrum time plus the `.max()` of its result. "
        "Ratio = two-liner norm / convsv `operator_norm` with the default method. Reshape norm = "
        "`torch.linalg.matrix_norm(W.reshape(c_out, -1), ord=2)`, what `spectral_norm` estimates; "
        "1 power step = what `torch.nn.utils.parametrizations.spectral_norm` does per forward pass.",
        "",
    ]
    torch_only = lambda f: lambda p: f(p) if p[1] == "torch" else ""  # noqa: E731
    lines += table(
        [
            ("layer", lambda p: p[0]["shape"]),
            ("dtype", lambda p: p[0]["dtype"]),
            ("backend", lambda p: p[1]),
            ("two-liner", lambda p: ms(p[2]["two_liner_norm_s"])),
            *((f"convsv {m}", lambda p, m=m: ms(p[2]["operator_norm"][m])) for m in methods),
            ("ratio", lambda p: f"{p[2]['norm_ratio']:.1f}"),
            ("reshape norm", torch_only(lambda p: ms(p[2]["reshape_norm"]))),
            ("1 power step", torch_only(lambda p: ms(p[2]["reshape_power_step"]))),
        ],
        parts,
    )
    if not_timed:
        lines += [f"Not timed (not accepted by this convsv): {', '.join(not_timed)}.", ""]
    lines += [
        "### Accuracy",
        "",
        "Spectrum diff: `max |a - b| / max b` over the sorted, flattened spectra, against the two-liner of "
        f"the same backend (target <= {TARGETS['float64_diff']:.0e} in float64). Norms: `(value - "
        "two-liner max) / two-liner max`. The reshape norm is a different, cheaper quantity; its error is "
        "against the true operator norm (1 step: after the 15 initial steps `spectral_norm` takes).",
        "",
    ]
    lines += table(
        [
            ("layer", lambda p: p[0]["shape"]),
            ("dtype", lambda p: p[0]["dtype"]),
            ("backend", lambda p: p[1]),
            ("convsv spectrum", lambda p: sci(p[2]["spectrum_diff"])),
            ("dense spectrum", lambda p: sci(p[0]["dense"].get("spectrum_diff")) if p[1] == "numpy" else ""),
            *((f"norm {m}", lambda p, m=m: sci(p[2]["operator_norm"][m]["rel_diff"])) for m in methods),
            ("reshape norm", torch_only(lambda p: f"{p[2]['reshape_norm']['rel_err']:+.1%}")),
            ("1 power step", torch_only(lambda p: f"{p[2]['reshape_power_step']['rel_err']:+.1%}")),
        ],
        parts,
    )
    spectrum = min(p["spectrum_ratio"] for _, _, p in parts)
    norm = min(p["norm_ratio"] for _, _, p in parts)
    f64 = max((p["spectrum_diff"] for r, _, p in parts if r["dtype"] == "float64"), default=0.0)
    lines += [
        f"Targets on every row: spectrum ratio >= {TARGETS['spectrum_ratio']}: "
        f"{mark(spectrum >= TARGETS['spectrum_ratio'])} (min {spectrum:.2f}); norm ratio >= "
        f"{TARGETS['norm_ratio']:.0f}: {mark(norm >= TARGETS['norm_ratio'])} (min {norm:.1f}); float64 "
        f"spectrum diff <= {TARGETS['float64_diff']:.0e}: {mark(f64 <= TARGETS['float64_diff'])} "
        f"(max {f64:.1e}).",
        "",
    ]
    return lines


def sweep_section(rows: list[dict]) -> list[str]:
    lines = ["## sweep: time against channels (the paper's Figure 1)", "", "![sweep](results.png)", ""]
    return lines + table(
        [
            ("kernel @n", lambda r: f"{r['kernel']}x{r['kernel']} @{r['n']}"),
            ("channels", lambda r: str(r["channels"])),
            ("backend", lambda r: r["backend"]),
            ("two-liner ms", lambda r: ms(r["two_liner"])),
            ("convsv spectrum ms", lambda r: ms(r["convsv_spectrum"])),
            ("convsv norm ms", lambda r: ms(r["convsv_norm"])),
            (
                "spectrum ratio",
                lambda r: f"{r['two_liner']['median_s'] / r['convsv_spectrum']['median_s']:.2f}",
            ),
            ("norm ratio", lambda r: f"{r['two_liner']['median_s'] / r['convsv_norm']['median_s']:.1f}"),
            ("spectrum diff", lambda r: sci(r["spectrum_diff"])),
            ("norm diff", lambda r: sci(r["norm_rel_diff"])),
        ],
        rows,
    )


def zeropad_section(rows: list[dict]) -> list[str]:
    lines = [
        "## zeropad: the zero-padded norm against power iteration",
        "",
        "He-initialised float32 3x3 layers, `padding=1`. Power = 100 steps with PyTorch's `conv2d` and "
        "`conv_transpose2d`; convsv = `operator_norm(K, n, padding=1)` (default tol 1e-5: a singular value "
        "within it, certified) on a torch tensor and on a NumPy array; bound = the circular layer on the "
        "padded map (`operator_norm(K, n + 2)`). Errors against float64 Lanczos to 1e-12. Targets: torch "
        f"ratio <= {TARGETS['zero_pad_torch']}, NumPy ratio <= {TARGETS['zero_pad_numpy']}. "
        "convsv convolutions = those PyTorch ran in one torch call (a Lanczos step is two, as a power "
        "step is; the float64 check adds two); fewest steps = unrestarted, fully reorthogonalised "
        "Lanczos to convsv's certificate (residual / sqrt(2) <= 1e-5 of the value), the floor of "
        "any method that certifies from a Ritz residual: the torch ratio cannot fall below it / 100.",
        "",
    ]

    def target(value: float, key: str) -> str:
        return f"{value:.2f} {mark(value <= TARGETS[key])}"

    lines += table(
        [
            ("layer", lambda r: f"3x3x{r['channels']}x{r['channels']} @{r['n']}"),
            ("power ms", lambda r: ms(r["power_100"])),
            ("power error", lambda r: sci(r["power_100_rel_error"])),
            ("steps to match", lambda r: str(r.get("power_steps_to_match", "-"))),
            ("convsv torch ms", lambda r: ms(r["convsv_torch"])),
            ("torch ratio", lambda r: target(r["ratio_torch"], "zero_pad_torch")),
            ("convsv NumPy ms", lambda r: ms(r["convsv_numpy"])),
            ("NumPy ratio", lambda r: target(r["ratio_numpy"], "zero_pad_numpy")),
            ("convsv error", lambda r: sci(r["convsv_torch_rel_error"])),
            ("convsv convolutions", lambda r: str(r["convsv_convolutions"])),
            ("fewest steps", lambda r: str(r["fewest_lanczos_steps"])),
            ("bound ms", lambda r: ms(r["circular_bound"])),
            ("bound / norm", lambda r: f"{r['circular_bound_over_norm']:.4f}"),
        ],
        rows,
    )
    return [*lines, ""]


def resnet32_section(r: dict) -> list[str]:
    lines = [
        "## resnet32: clipping every 100 steps",
        "",
        f"CIFAR ResNet-{r.get('depth', 32)}, {r['conv_layers']} convolutions, "
        f"{r['parameters']:,} parameters; one training "
        f"step (forward, backward, SGD) at batch {r['batch']}: {ms(r['train_step'])} ms. Fraction = one "
        f"`clip_operator_norm_` of the model / (100 x step) (target <= {TARGETS['clip_fraction']:.0%}).",
        "",
    ]
    done = [(label, p) for label, p in r["projections"].items() if isinstance(p, dict)]

    def steps(p: dict) -> str:
        return f"{max(p['iterations'])} / {sum(p['iterations']) / len(p['iterations']):.1f}"

    lines += table(
        [
            ("projection", lambda lp: f"{lp[0]} {lp[1]['options'] or ''}".strip()),
            ("time ms", lambda lp: ms(lp[1])),
            ("fraction", lambda lp: f"{lp[1]['fraction_every_100']:.2%}"),
            ("meets target", lambda lp: mark(lp[1]["fraction_every_100"] <= TARGETS["clip_fraction"])),
            ("max norm before", lambda lp: f"{lp[1]['max_norm_before']:.4g}"),
            ("max norm after", lambda lp: f"{lp[1]['max_norm_after']:.6g}"),
            (
                "zero-padded norms after",
                lambda lp: "{min:.4f}..{max:.4f}".format(**lp[1]["zero_padded_norms_after"]),
            ),
            ("projection steps max / mean", lambda lp: steps(lp[1])),
        ],
        done,
    )
    return lines + [f"{k}: {p}" for k, p in r["projections"].items() if not isinstance(p, dict)] + [""]


def resnet50_section(r: dict) -> list[str]:
    s = r["summary"]
    supported = ", ".join(f"`{k}=` {'yes' if v else 'no'}" for k, v in (r["options_supported"] or {}).items())
    lines = [
        "## resnet50: memory of the full spectrum of every convolution",
        "",
        "A fresh subprocess computes `convsv.singular_values` of each convolution of a torchvision-style "
        "ResNet-50 (float32 He-initialised weights, 224x224 input, circular padding, "
        f"{r['backend']}). Options "
        f"supported: {supported or 'unknown'}; used: `{r['options'] or 'none'}`. Peak = the child's "
        "`ru_maxrss` read at its end; VmHWM (its own address space's high-water mark) in brackets. The "
        f"parent held {r['parent_ru_maxrss_at_spawn'] / MIB:.0f} MiB when it started the child.",
        "",
    ]
    if s is None:
        done = r["per_layer"]
        peak = max((x["peak_rss_so_far"] for x in done), default=0)
        lines.append(
            f"**Incomplete**: {r['layers_done']} of {r['layers_requested']} layers "
            f"(return code {r['returncode']}, timed out after {r['timeout_s']:.0f} s: {r['timed_out']}); "
            f"{sum(x['values'] for x in done):,} singular values in {sum(x['seconds'] for x in done):.1f} s; "
            f"peak RSS so far {peak / MIB:.0f} MiB (under 2 GB so far: {mark(peak < PEAK_TARGET)})."
        )
    else:
        peak = s["peak_ru_maxrss"]
        lines.append(
            f"{s['layers']} layers, {s['singular_values']:,} singular values in {s['total_seconds']:.1f} s; "
            f"RSS after imports {s['baseline_ru_maxrss'] / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
            f"[{(s['peak_vm_hwm'] or 0) / MIB:.0f} MiB] (target < 2 GB: {mark(peak < PEAK_TARGET)})."
        )
    lines.append("")
    return lines + table(
        [
            ("layer", lambda x: x["layer"]),
            ("kernel", lambda x: f"{x['kernel']}x{x['kernel']}x{x['c_in']}x{x['c_out']}"),
            ("stride", lambda x: str(x["stride"])),
            ("input", lambda x: str(x["input_size"])),
            ("seconds", lambda x: f"{x['seconds']:.2f}"),
            ("values", lambda x: f"{x['values']:,}"),
            ("all blocks at once MiB", lambda x: f"{x['block_bytes_complex64'] / MIB:.0f}"),
            ("peak RSS so far MiB", lambda x: f"{x['peak_rss_so_far'] / MIB:.0f}"),
        ],
        r["per_layer"],
    )


SECTIONS = {
    "layers": layers_section,
    "sweep": sweep_section,
    "zeropad": zeropad_section,
    "resnet32": resnet32_section,
    "resnet50": resnet50_section,
}


def write_markdown(info: dict, path: Path) -> None:
    lines = machine_section(info)
    for name, section in SECTIONS.items():
        if name in info["suites"]:
            lines += section(info["suites"][name])
    path.write_text("\n".join(lines))


def write_plot(info: dict, path: Path) -> None:
    """Figure 1: time against channels, log-log, one panel per kernel size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rows = info["suites"].get("sweep", [])
    groups = sorted({(r["kernel"], r["n"]) for r in rows})
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5 * max(len(groups), 1), 4), squeeze=False)
    for ax, (k, n) in zip(axes[0], groups, strict=False):
        part = [r for r in rows if (r["kernel"], r["n"]) == (k, n)]
        channels = [r["channels"] for r in part]
        for key, label in [
            ("two_liner", "two-liner (fft2 + svd)"),
            ("convsv_spectrum", "convsv singular_values"),
            ("convsv_norm", "convsv operator_norm"),
        ]:
            ax.plot(channels, [r[key]["median_s"] for r in part], "o-", label=label)
        title = f"{k}x{k} kernels, {n}x{n} input ({part[0]['backend']})"
        ax.set(
            xscale="log", yscale="log", xlabel="channels (in = out)", ylabel="seconds (median)", title=title
        )
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(channels, [str(c) for c in channels])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if not groups:
        axes[0][0].text(0.5, 0.5, "sweep suite not run", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
