"""bench.report and bench.targets: the generated results/README.md says plainly where a goal is missed,
prints a ratio only where the conditions allow one, flags every caveat, says how to reproduce every
figure, and adds the conformance summary when there is one; core plans; micro.json stays small."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from bench.procstat import CorePlan, cpu_seconds, rss_bytes
from bench.report import SCHEMA, environment, flags, fmt_value, load_results, readme, validate, write_result
from bench.targets import ROWS

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent.parent


def result(scenario: str, summary: dict[str, Any], label: str = "", **env: Any) -> dict[str, Any]:
    e = environment()
    e["run"] = {"id": "run-1", "complete": True, "partial": []}
    e["git_dirty"] = False
    e.update(env)
    return {"schema": SCHEMA, "scenario": scenario, "title": scenario.title(), "quick": False, "label": label,
            "env": e, "config": {}, "runs": [{"target": "fanwire"}], "summary": summary, "duration_s": 1.0,
            "repeats": 3}


def cond(**kw: Any) -> dict[str, Any]:
    return {"valid": True, "saturated": False, "load_bound": False, **kw}


def line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


def test_environment_has_what_a_reader_needs() -> None:
    env = environment()
    for key in ("date", "git_commit", "platform", "cpu_model", "cores", "python", "versions"):
        assert env[key] not in (None, "")
    assert env["versions"]["websockets"] and "picows" in env["versions"]


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


def test_readme_marks_missed_goals_and_ratios_with_their_conditions(tmp_path: Path) -> None:
    write_result(tmp_path, result("throughput", {
        "small_msgs_per_s": {"fanwire": 80000.0, "baseline": 40000.0, "baseline-uvloop": 50000.0, "note": "1 worker",
                             "conditions": {"fanwire": cond(), "baseline": cond(), "baseline-uvloop": cond()},
                             "stats": {"fanwire": {"n": 3, "spread_pct": 4.0}}},
        "large_msgs_per_s": {"fanwire": 40000.0, "baseline": 10000.0,
                             "conditions": {"fanwire": cond(), "baseline": cond(load_bound=True)}},
        "echo_16k_msgs_per_s": {"fanwire": 80000.0, "picows": 100000.0,
                                "conditions": {"fanwire": cond(), "picows": cond()}},
    }))
    write_result(tmp_path, result("latency", {"p99_ms_at_20k": {
        "fanwire": 0.18, "baseline": 17.0,
        "conditions": {"fanwire": cond(server_cpu_pct=20.0),
                       "baseline": cond(saturated=True, server_cpu_pct=99.0, saturated_why=["server at 99 % CPU"])}}}))
    write_result(tmp_path, result("connect", {"handshake_p99_ms": {"fanwire": 1.0, "baseline": 4.0,
                                                                   "conditions": {"fanwire": cond(), "baseline": cond()}}}))
    write_result(tmp_path, result("scaling", {"best_msgs_per_s": {"fanwire": 9.0}}, label="16cores"))
    text = readme(load_results(tmp_path), tmp_path)
    small = line(text, "| Round trips/s, 64 B JSON")
    assert "**missed**" in small and "2.00x" in small and "1.60x" in small and "80,000 ±2%" in small
    large = line(text, "| Round trips/s, 16 KiB JSON")
    assert "| met |" in large and "no ratio: websockets, as documented: load generator at its limit" in large
    lat = line(text, "| Round-trip latency p99 at 20k")
    assert "17.0 (saturated)" in lat and "no ratio: websockets, as documented saturated" in lat
    assert "95" not in lat.split("|")[8]  # no 95x ratio against a saturated baseline
    hs = line(text, "| Handshake time p99")
    assert "4.00x" in hs and "| met |" in hs  # lower is better: baseline / fanwire
    echo = line(text, "| Echo round trips/s, 16 KiB")
    assert "picows: 100,000" in echo and "**missed**" in echo  # goal: >= 1.0x picows
    assert "server at 99 % CPU" in text  # the conditions of the saturated side are spelled out
    assert "scaling-16cores.json" in text and "not part of this set" in text
    # how to reproduce every figure
    assert "## How to reproduce" in text
    for sc in ("connect", "throughput", "latency", "fanout", "codecs", "scaling", "scale"):
        assert f'`make bench ARGS="--scenario {sc}"`' in text


def test_flags_say_what_a_reader_must_know() -> None:
    clean = result("throughput", {})
    assert flags(clean, {"run": "run-1", "commit": clean["env"]["git_commit"]}) == []
    dirty = result("throughput", {}, git_dirty=True,
                   machine_at_start={"busy": True, "why": ["load average 3.00 on 2 cores"]},
                   run={"id": "run-2", "complete": False, "partial": ["only throughput"]})
    dirty["quick"] = True
    fl = flags(dirty, {"run": "run-1", "commit": dirty["env"]["git_commit"]})
    assert fl[0].startswith("quick run")
    assert "uncommitted changes" in fl and any("busy machine" in f for f in fl)
    assert any("re-run alone (only throughput)" in f for f in fl) and any("another run" in f for f in fl)
    old = result("throughput", {})
    old["schema"] = 1
    assert any("previous harness" in f for f in flags(old))


def test_the_readme_of_a_dirty_or_quick_set_says_so(tmp_path: Path) -> None:
    res = result("throughput", {"small_msgs_per_s": {"fanwire": 1.0}}, git_dirty=True)
    res["quick"] = True
    write_result(tmp_path, res)
    text = readme(load_results(tmp_path), tmp_path)
    assert "`--quick` run" in text and "uncommitted changes" in text


def test_conformance_summary_is_included_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_result(tmp_path, result("throughput", {"small_msgs_per_s": {"fanwire": 1.0}}))
    assert "## Conformance" not in readme(load_results(tmp_path), tmp_path)  # no file: no section
    (tmp_path / "conformance.json").write_text(json.dumps({"cases": 3}))
    fake = types.ModuleType("bench.conformance")
    fake.summary_markdown = lambda data: f"| cases | {data['cases']} |"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.conformance", fake)
    text = readme(load_results(tmp_path), tmp_path)
    assert "## Conformance (Autobahn|Testsuite)" in text and "| cases | 3 |" in text
    assert "conformance.json" not in load_results(tmp_path)  # not a scenario result
    # the module missing: the section is skipped, nothing fails
    monkeypatch.setitem(sys.modules, "bench.conformance", None)
    assert "## Conformance" not in readme(load_results(tmp_path), tmp_path)


def test_numbers_are_printed_with_separators() -> None:
    assert fmt_value(164518.5, "msg/s") == "164,500"
    assert fmt_value(4567.0, "conn/s") == "4,567"
    assert fmt_value(0.1785, "ms") == "0.18" and fmt_value(10.6875, "ms") == "10.7" and fmt_value(362.5, "ms") == "362"
    assert fmt_value(None, "ms") == "n/a"


def test_every_row_names_a_known_scenario() -> None:
    from bench.charts import CHARTS
    from bench.scenarios import SCENARIOS

    names = {s.name for s in SCENARIOS}
    assert set(CHARTS) == names
    for row in ROWS:
        assert row.scenario in names
        assert row.goal_value is None or row.goal
        assert row.goal_vs is None or row.goal
    assert ROWS[0].met(1.5) is True and ROWS[0].met(2.5) is False and ROWS[0].met(None) is None
    vs = next(r for r in ROWS if r.goal_vs)
    assert vs.met(100.0, peer=100.0) is True and vs.met(90.0, peer=100.0) is False and vs.met(90.0) is None


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

    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))  # burn a little CPU
    after = cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before
    assert (rss_bytes(os.getpid()) or 0) > 1_000_000
    assert cpu_seconds(2**22 + 12345) is None


def test_micro_json_keeps_statistics_only() -> None:
    path = ROOT / "results" / "micro.json"
    if not path.exists():
        pytest.skip("no results/micro.json")
    assert path.stat().st_size < 1_000_000
    data = json.loads(path.read_text())
    assert data["benchmarks"] and all("data" not in b["stats"] for b in data["benchmarks"])
    assert all({"min", "median", "mean", "stddev", "rounds"} <= set(b["stats"]) for b in data["benchmarks"])
