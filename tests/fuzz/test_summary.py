"""The campaign's parts combine into the summary of the whole (``summary.combine``)."""

from __future__ import annotations

import json

import pytest

from .summary import combine, main


def _part(k: int, n: int, configs: int, worst: float, failures: int = 0, seed: int = 1) -> dict:
    entry = {"count": configs, "worst": worst, "ratio": worst * 10, "failures": failures, "exceptions": 0}
    return {
        "command": f"pytest tests/fuzz --fuzz-part {k}/{n}",
        "seed": seed,
        "examples": 100,
        "part": f"{k}/{n}",
        "python": "3.11",
        "machine": "test",
        "backends": {
            "numpy": {"configs": configs, "failures": failures, "exceptions": 0, "stats": {"a|double": entry}}
        },
    }


def test_parts_add_up_and_keep_the_worst_error():
    summary = combine([_part(2, 2, 30, 1e-12, failures=1), _part(1, 2, 20, 1e-10)])
    numpy = summary["backends"]["numpy"]
    assert (numpy["configs"], numpy["failures"]) == (50, 1)
    assert numpy["stats"]["a|double"] == {
        "count": 50,
        "worst": 1e-10,
        "ratio": 1e-9,
        "failures": 1,
        "exceptions": 0,
    }
    assert [p["part"] for p in summary["parts"]] == ["1/2", "2/2"]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([_part(1, 3, 1, 0.0), _part(2, 3, 1, 0.0)], r"parts \[1, 2\] of 3"),
        ([_part(1, 2, 1, 0.0), _part(1, 2, 1, 0.0)], r"parts \[1, 1\] of 2"),
        ([_part(1, 2, 1, 0.0), _part(2, 2, 1, 0.0, seed=2)], "is not of the campaign"),
        ([_part(1, 2, 1, 0.0), _part(2, 3, 1, 0.0)], "is not of the campaign"),
    ],
    ids=["missing", "twice", "other-seed", "other-split"],
)
def test_parts_of_other_campaigns_or_missing_parts_are_refused(parts, message):
    with pytest.raises(ValueError, match=message):
        combine(parts)


def test_the_command_line_writes_json_and_table(tmp_path, capsys):
    paths = []
    for k in (1, 2):
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text(json.dumps(_part(k, 2, 10, 1e-12)), encoding="utf-8")
    assert main([str(tmp_path / "all.json"), *map(str, paths)]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["backends"]["numpy"]["configs"] == 20
    table = (tmp_path / "all.md").read_text()
    assert "--fuzz-part 1/2" in table
    assert "| numpy | 20 | 0 | 0 |" in table
    assert "numpy: 20 configurations, 0 failures" in capsys.readouterr().out
