"""The README's headline figures: every number in its Figures table equals the value in the JSON file
and key its row cites (at the precision printed), against the committed results; and the check itself
catches a wrong number, a figure printed where none was measured, and a missing "saturated"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.headline import BEGIN, END, check_readme, render, write_readme_table
from bench.report import SCHEMA, environment

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent.parent


def test_every_readme_headline_equals_the_json_it_cites() -> None:
    text = (ROOT / "README.md").read_text()
    assert BEGIN in text and END in text
    assert check_readme(text, ROOT / "results") == []


def result(scenario: str, summary: dict[str, Any]) -> dict[str, Any]:
    env = environment()
    env["run"] = {"id": "r1", "complete": True}
    env["git_dirty"] = False
    return {"schema": SCHEMA, "scenario": scenario, "title": scenario, "quick": False, "label": "", "env": env,
            "config": {}, "runs": [], "summary": summary, "duration_s": 1.0, "repeats": 3}


def write(out: Path, res: dict[str, Any]) -> None:
    (out / f"{res['scenario']}.json").write_text(json.dumps(res))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    write(out, result("connect", {"handshake_p99_ms": {
        "fanwire": 1.4315, "baseline": 10.6875, "baseline-uvloop": 3.2, "note": "1,000 at 1,000 conn/s",
        "conditions": {"fanwire": {"saturated": False, "valid": True},
                       "baseline": {"saturated": True, "valid": True},
                       "baseline-uvloop": {"saturated": False, "valid": True}}}}))
    write(out, result("throughput", {"echo_16k_msgs_per_s": {
        "fanwire": 79123.4, "baseline-uvloop": 45000.0, "picows": 105432.1, "conditions": {}}}))
    return out


def readme_with(table: str) -> str:
    return f"# x\n\n## Figures\n\n{table}\n\nmore text\n\n## Set-up\n"


def test_a_generated_table_passes_its_own_check(results: Path) -> None:
    table = render(results)
    assert "| handshake p99 at 1,000 conn/s | ~10 ms | 1.43 ms | 10.7 ms (saturated) | 3.20 ms |" in table
    assert "picows: 105,400" in table
    assert "vs websockets, as documented: no ratio: websockets, as documented saturated" in table
    assert "| echo round trips/s, 16 KiB |" in table and "fan-out" not in table  # unmeasured rows left out
    assert check_readme(readme_with(table), results) == []


def test_the_check_catches_a_wrong_number(results: Path) -> None:
    table = render(results).replace("1.43 ms", "1.38 ms")
    problems = check_readme(readme_with(table), results)
    assert len(problems) == 1 and "1.38" in problems[0] and "1.4315" in problems[0]
    # printed with fewer digits, a rounded value is still equal
    assert check_readme(readme_with(render(results).replace("1.43 ms", "1.4 ms")), results) == []


def test_the_check_catches_a_figure_that_was_not_measured(results: Path) -> None:
    table = render(results).replace("| 45,000 |", "| not run |")
    assert any("not run" in p for p in check_readme(readme_with(table), results))
    res = json.loads((results / "connect.json").read_text())
    del res["summary"]["handshake_p99_ms"]["baseline-uvloop"]
    write(results, res)
    assert any("no figure" in p for p in check_readme(readme_with(render(results).replace(
        "| not run | - | 1,000", "| 3.20 ms | - | 1,000")), results))


def test_the_check_catches_a_missing_saturated_mark(results: Path) -> None:
    table = render(results).replace("10.7 ms (saturated)", "10.7 ms")
    assert any("saturated" in p for p in check_readme(readme_with(table), results))


def test_the_check_needs_a_source_for_every_row(results: Path) -> None:
    table = render(results).replace("`handshake_p99_ms`", "`no_such_key`")
    assert any("no summary key" in p for p in check_readme(readme_with(table), results))
    assert check_readme("# nothing here\n", results) == ["README.md has no '## Figures' table"]


def test_write_replaces_only_the_block(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n## Figures\n\n{BEGIN}\nold\n{END}\n\nkept\n")
    assert write_readme_table(readme, results) is True
    text = readme.read_text()
    assert text.startswith("# title\n\n## Figures\n\n") and text.endswith("\n\nkept\n") and "old" not in text
    assert write_readme_table(readme, results) is False  # unchanged the second time
