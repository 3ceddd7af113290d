"""The campaign's summary: checks, worst error and failures per backend and quantity.

Each test item of ``test_campaign.py`` records its counts as a ``fuzz`` user
property (these travel from xdist workers to the controller);
``tests/conftest.py``'s ``pytest_terminal_summary`` calls :func:`report`,
which merges them, prints the table (one line per backend unless ``-v``) and,
with ``--fuzz-summary PATH`` (or
``CONVSV_FUZZ_SUMMARY``), writes it as JSON to ``PATH`` and as a Markdown
table to ``PATH`` with the suffix ``.md``. A campaign run in parts
(``--fuzz-part K/N``) is put together by running this file:
``python tests/fuzz/summary.py OUT.json PART1.json ... PARTN.json``.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def merge(reports: list[Any]) -> dict[str, Any]:
    """Per backend: configurations run, and per ``quantity|precision`` the merged counts."""
    backends: dict[str, Any] = {}
    for report in reports:
        for name, value in getattr(report, "user_properties", ()):
            if name != "fuzz":
                continue
            item = json.loads(value)
            backend = backends.setdefault(item["backend"], {"configs": 0, "stats": {}})
            backend["configs"] += item["configs"]
            add_stats(backend["stats"], item["stats"])
    return backends


def add_stats(total: dict[str, Any], stats: dict[str, Any]) -> None:
    """Add the counts of ``stats`` (per ``quantity|precision``) into ``total``; keep the worst errors."""
    for key, entry in stats.items():
        into = total.setdefault(key, dict.fromkeys(entry, 0))
        for count in ("count", "failures", "exceptions"):
            into[count] += entry[count]
        into["worst"] = max(into["worst"], entry["worst"])
        into["ratio"] = max(into["ratio"], entry["ratio"])


def markdown(summary: dict[str, Any]) -> str:
    parts = summary.get("parts")
    if parts is None:  # one run
        run = f"seed {summary['seed']}, `--examples {summary['examples']}`"
        head = [f"Command: `{summary['command']}` ({run})"]
    else:
        head = [
            f"Seed {summary['seed']}, `--examples {summary['examples']}`, in {len(parts)} parts, "
            "combined with `python tests/fuzz/summary.py`:",
            "",
            *(f"- `{p['command']}` ({p['machine']}, Python {p['python']})" for p in parts),
        ]
    lines = [
        *head,
        "",
        "| backend | configurations | failures | of which exceptions |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, backend in summary["backends"].items():
        lines.append(f"| {name} | {backend['configs']} | {backend['failures']} | {backend['exceptions']} |")
    lines += [
        "",
        "| backend | quantity | precision | checks | worst error | worst error / tolerance | failures "
        "| exceptions |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, backend in summary["backends"].items():
        for key in sorted(backend["stats"]):
            quantity, precision = key.rsplit("|", 1)
            e = backend["stats"][key]
            lines.append(
                f"| {name} | {quantity} | {precision} | {e['count']} | {e['worst']:.2g} | "
                f"{e['ratio']:.2g} | {e['failures']} | {e['exceptions']} |"
            )
    return "\n".join(lines) + "\n"


def report(terminalreporter: Any) -> None:
    """Print (and with ``--fuzz-summary``, write) the merged summary, if the campaign ran."""
    config = terminalreporter.config
    stats = terminalreporter.stats
    reports = [r for outcome in ("passed", "failed") for r in stats.get(outcome, []) if r.when == "call"]
    backends = merge(reports)
    if not backends:
        return
    for backend in backends.values():
        for count in ("failures", "exceptions"):
            backend[count] = sum(e[count] for e in backend["stats"].values())
    summary = {
        "command": " ".join(["pytest", *config.invocation_params.args]),
        "seed": config.getoption("--fuzz-seed"),
        "examples": config.getoption("--examples"),
        "part": config.getoption("--fuzz-part") or "1/1",
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "backends": backends,
    }
    text = markdown(summary)
    path = config.getoption("--fuzz-summary")
    terminalreporter.section("fuzz campaign (tests/fuzz)")
    if path or config.option.verbose > 0:
        for line in text.splitlines():
            terminalreporter.write_line(line)
    else:  # the default test run: one line per backend (-v or --fuzz-summary for the table)
        for name, backend in backends.items():
            terminalreporter.write_line(
                f"{name}: {backend['configs']} configurations, {backend['failures']} failures "
                f"({backend['exceptions']} exceptions)"
            )
    if path:
        write(summary, Path(path))
        terminalreporter.write_line(f"fuzz summary written to {path} and {Path(path).with_suffix('.md')}")


def write(summary: dict[str, Any], path: Path) -> None:
    """The summary as JSON to ``path`` and as the Markdown table beside it (suffix ``.md``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(summary), encoding="utf-8")


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the summaries of ``--fuzz-part 1/N`` ... ``N/N`` of one campaign.

    Refuses parts of different campaigns (seed, ``--examples``, ``N``), a part
    given twice, and a missing part: the result claims the whole campaign.
    """
    first = parts[0]
    numbers = [tuple(int(v) for v in p["part"].split("/")) for p in parts]  # (K, N) of each part
    n = numbers[0][1]
    for p, (_, n_p) in zip(parts, numbers, strict=True):
        if (p["seed"], p["examples"], n_p) != (first["seed"], first["examples"], n):
            msg = f"part {p['part']} ({p['command']}) is not of the campaign of {first['command']}"
            raise ValueError(msg)
    have = sorted(k for k, _ in numbers)
    if have != list(range(1, n + 1)):
        msg = f"parts {have} of {n}: every part from 1 to {n} is needed, each once"
        raise ValueError(msg)
    backends: dict[str, Any] = {}
    for p in parts:
        for name, backend in p["backends"].items():
            total = backends.setdefault(name, {"configs": 0, "failures": 0, "exceptions": 0, "stats": {}})
            for count in ("configs", "failures", "exceptions"):
                total[count] += backend[count]
            add_stats(total["stats"], backend["stats"])
    keep = ("command", "part", "python", "machine")
    ordered = [p for _, p in sorted(zip(numbers, parts, strict=True), key=lambda pair: pair[0])]
    return {
        "seed": first["seed"],
        "examples": first["examples"],
        "parts": [{k: p[k] for k in keep} for p in ordered],
        "backends": dict(sorted(backends.items())),
    }


def main(argv: list[str] | None = None) -> int:
    """``python tests/fuzz/summary.py OUT.json PART.json ...``: combine the parts' summaries."""
    import argparse

    parser = argparse.ArgumentParser(description=combine.__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the combined summary (JSON; the table goes beside it)")
    parser.add_argument("parts", type=Path, nargs="+", help="the parts' --fuzz-summary files")
    args = parser.parse_args(argv)
    try:
        summary = combine([json.loads(p.read_text(encoding="utf-8")) for p in args.parts])
    except ValueError as exc:
        parser.error(str(exc))
    write(summary, args.out)
    for name, backend in summary["backends"].items():
        print(f"{name}: {backend['configs']} configurations, {backend['failures']} failures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
