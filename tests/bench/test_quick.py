"""``python -m bench run --quick`` end to end: every scenario at a tiny size, against real servers.

Checks the JSON schema of every result, that every chart is drawn, that the README table is generated,
and that ``python -m bench charts`` redraws the charts from the JSON alone.
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_quick_run_writes_every_result_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for sc in SCENARIOS:
        data = json.loads((out / f"{sc.name}.json").read_text())
        assert validate(data) == [], sc.name
        assert data["quick"] is True and data["scenario"] == sc.name
        targets = {r["target"] for r in data["runs"]}
        assert {"fanwire", "baseline"} <= targets, (sc.name, targets)
        assert data["summary"], sc.name
        for entry in data["summary"].values():
            assert "fanwire" in entry
    for name in CHARTS:
        png = out / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "README.md").read_text()
    assert "| metric | documented target | our goal | fanwire | baseline | ratio | goal |" in table
    assert "quick" in table
    # charts come from the JSON alone
    for name in CHARTS:
        (out / f"{name}.png").unlink()
    (out / "README.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "bench", "charts", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CHARTS:
        assert (out / f"{name}.png").exists(), name
    assert (out / "README.md").exists()
