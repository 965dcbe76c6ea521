"""bench.report and bench.targets: the README table says plainly where a goal is missed; core plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.procstat import CorePlan, cpu_seconds, rss_bytes
from bench.report import SCHEMA, environment, load_results, readme, validate, write_result
from bench.targets import ROWS

pytestmark = pytest.mark.timeout(30)


def result(scenario: str, summary: dict[str, Any], label: str = "") -> dict[str, Any]:
    return {"schema": SCHEMA, "scenario": scenario, "title": scenario.title(), "quick": False, "label": label,
            "env": environment(), "config": {}, "runs": [{"target": "fanwire"}], "summary": summary,
            "duration_s": 1.0}


def test_environment_has_what_a_reader_needs() -> None:
    env = environment()
    for key in ("date", "git_commit", "platform", "cpu_model", "cores", "python", "versions"):
        assert env[key] not in (None, "")
    assert env["versions"]["websockets"]


def test_validate_accepts_a_result_and_names_problems() -> None:
    good = result("throughput", {"small_msgs_per_s": {"fanwire": 1.0, "baseline": 2.0}})
    assert validate(good) == []
    bad = dict(good)
    del bad["env"]
    bad["quick"] = "no"
    bad["summary"] = {"x": 3}
    problems = validate(bad)
    assert any("env" in p for p in problems) and any("quick" in p for p in problems)
    assert any("summary" in p for p in problems)


def test_readme_marks_missed_goals_and_ratios(tmp_path: Path) -> None:
    write_result(tmp_path, result("throughput", {
        "small_msgs_per_s": {"fanwire": 80000.0, "baseline": 40000.0, "note": "1 worker"},
        "large_msgs_per_s": {"fanwire": 40000.0, "baseline": 10000.0},
    }))
    write_result(tmp_path, result("connect", {"handshake_p99_ms": {"fanwire": 1.0, "baseline": 4.0}}))
    write_result(tmp_path, result("scaling", {"best_msgs_per_s": {"fanwire": 9.0}}, label="16cores"))
    text = readme(load_results(tmp_path), tmp_path)
    small = next(line for line in text.splitlines() if line.startswith("| Round trips/s, 64 B JSON"))
    assert "**missed**" in small and "2.00x" in small and "80,000" in small and "[1]" in small
    large = next(line for line in text.splitlines() if line.startswith("| Round trips/s, 16 KiB JSON"))
    assert "| met |" in large and "4.00x" in large
    hs = next(line for line in text.splitlines() if line.startswith("| Handshake time p99"))
    assert "4.00x" in hs and "| met |" in hs  # lower is better: baseline / fanwire
    assert "scaling-16cores.json" in text and "1 worker" in text


def test_every_row_names_a_known_scenario() -> None:
    from bench.charts import CHARTS
    from bench.scenarios import SCENARIOS

    names = {s.name for s in SCENARIOS}
    assert set(CHARTS) == names
    for row in ROWS:
        assert row.scenario in names
        assert row.goal_value is None or row.goal
    assert ROWS[0].met(1.5) is True and ROWS[0].met(2.5) is False and ROWS[0].met(None) is None


def test_core_plans() -> None:
    two = CorePlan.make(1, [0, 1])
    assert two.server == ((0,),) and two.load == (1,) and not two.shared and two.load_processes() == 1
    shared = CorePlan.make(2, [0, 1])
    assert shared.shared and shared.load == (0, 1) and shared.load_processes() == 1
    big = CorePlan.make(4, list(range(16)))
    assert big.load == tuple(range(4, 16)) and big.load_processes() == 8 and big.load_processes(3) == 3
    many = CorePlan.make(4, [0, 1])
    assert many.server == ((0,), (1,), (0,), (1,))


def test_proc_readers() -> None:
    import os

    assert (cpu_seconds(os.getpid()) or 0) >= 0
    assert (rss_bytes(os.getpid()) or 0) > 1_000_000
    assert cpu_seconds(2**22 + 12345) is None
