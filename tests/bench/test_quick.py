"""``python -m bench run --quick`` end to end, small: every scenario of the quick run at its tiny size,
fanwire (and the floor) only, one repeat, against real servers; then the charts again from the JSON alone.

Checks the harness, not the server: every result is well formed and carries its provenance, every window
was valid (every reply was the one we asked for, nothing lost), no connection started early, every chart
and the README table are drawn. ``make bench-quick`` runs every server (about a minute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.charts import CHARTS
from bench.report import validate
from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_quick_run_writes_every_result_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--quick", "--out", str(out), "--target", "fanwire",
                           "--target", "floor", "--target", "ceiling", "--set", "fanout.redis=null", "--no-charts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    quick = [sc for sc in SCENARIOS if sc.in_quick_run]
    assert {sc.name for sc in SCENARIOS} - {sc.name for sc in quick} == {"scale"}
    for sc in quick:
        data = json.loads((out / f"{sc.name}.json").read_text())
        assert validate(data) == [], sc.name
        assert data["quick"] is True and data["scenario"] == sc.name and data["repeats"] == 1
        run = data["env"]["run"]
        assert run["quick"] and not run["complete"] and "only targets fanwire, floor, ceiling" in run["partial"]
        assert "machine_at_start" in data["env"]
        assert data["runs"] and {r["server"] for r in data["runs"]} >= {"fanwire"}
        for r in data["runs"]:
            if sc.name == "connect":
                assert r["early_starts"] in (None, 0), r
                assert r["opened"] == r["conns"], r
            else:
                assert r["valid"] is True, (sc.name, r.get("verdict"))
        assert data["summary"], sc.name
        for key, entry in data["summary"].items():
            assert "fanwire" in entry, (sc.name, key)
    thr = json.loads((out / "throughput.json").read_text())  # the ceiling answered every ping with a pong
    assert [r["valid"] for r in thr["runs"] if r["server"] == "ceiling"] == [True]
    assert 0 < thr["summary"]["small_vs_ceiling"]["fanwire"] < 10
    fan = json.loads((out / "fanout.json").read_text())
    assert {r["server"] for r in fan["runs"]} == {"fanwire", "floor", "fanwire-2w"}
    assert any(k.startswith("p99_vs_floor_") for k in fan["summary"])
    assert any(k.startswith("read_p99_vs_floor_") for k in fan["summary"])
    for r in fan["runs"]:  # timed to the arrival at each socket (the kernel's stamp), and to the read
        assert r["latency_to"] == "arrival" and r["unstamped"] == 0, r
        assert r["read_latency_ms"]["count"] == r["latency_ms"]["count"] > 0
        assert r["read_latency_ms"]["p50"] >= r["latency_ms"]["p50"]
    # charts and the table come from the JSON alone
    proc = subprocess.run([sys.executable, "-m", "bench", "charts", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CHARTS:
        if name == "scale":
            continue
        png = out / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "README.md").read_text()
    assert "| figure | documented | goal | fanwire |" in table and "`--quick` run" in table
    assert "## How to reproduce" in table
    assert (out / "README.md").exists()
