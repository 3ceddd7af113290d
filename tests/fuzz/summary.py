"""The campaign's summary: checks, worst error and failures per backend and quantity.

Each test item of ``test_campaign.py`` records its counts as a ``fuzz`` user
property (these travel from xdist workers to the controller);
``tests/conftest.py``'s ``pytest_terminal_summary`` calls :func:`report`,
which merges them, prints the table (one line per backend unless ``-v``) and,
with ``--fuzz-summary PATH`` (or
``CONVSV_FUZZ_SUMMARY``), writes it as JSON to ``PATH`` and as a Markdown
table to ``PATH`` with the suffix ``.md``.
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
            for key, entry in item["stats"].items():
                total = backend["stats"].setdefault(key, dict.fromkeys(entry, 0))
                for count in ("count", "failures", "exceptions"):
                    total[count] += entry[count]
                total["worst"] = max(total["worst"], entry["worst"])
                total["ratio"] = max(total["ratio"], entry["ratio"])
    return backends


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"Command: `{summary['command']}` (seed {summary['seed']}, `--examples {summary['examples']}`)",
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        path.with_suffix(".md").write_text(text, encoding="utf-8")
        terminalreporter.write_line(f"fuzz summary written to {path} and {path.with_suffix('.md')}")
