"""Result files: the environment block every JSON carries, writing and reading results, and the
generated ``results/README.md`` table (from the JSON alone)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from .procstat import cores, cpu_model
from .targets import ROWS, Row

__all__ = ["SCHEMA", "environment", "load_results", "readme", "validate", "write_readme", "write_result"]

SCHEMA: Final = 1
ROOT = Path(__file__).resolve().parent.parent
LIBRARIES: Final = ("websockets", "uvloop", "orjson", "msgpack", "matplotlib")

REQUIRED: Final = {
    "schema": int, "scenario": str, "title": str, "quick": bool, "label": str, "env": dict, "config": dict,
    "runs": list, "summary": dict, "duration_s": float,
}
ENV_REQUIRED: Final = ("date", "git_commit", "platform", "cpu_model", "cores", "python", "versions")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        with open("/proc/loadavg") as f:
            loadavg = f.read().split()[:3]
    except OSError:
        loadavg = []
    dirty = _git("status", "--porcelain", "--", "server", "bench")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(dirty),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cores": len(cores()),
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_at_start": [float(x) for x in loadavg],
        "argv": sys.argv[1:],
    }


def result_name(scenario: str, label: str = "") -> str:
    return f"{scenario}-{label}.json" if label else f"{scenario}.json"


def write_result(out: Path, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(result["scenario"], result.get("label", ""))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def validate(result: dict[str, Any]) -> list[str]:
    """Problems with a result's shape (empty when it is well formed)."""
    problems = []
    for key, typ in REQUIRED.items():
        if key not in result:
            problems.append(f"missing {key!r}")
        elif not isinstance(result[key], typ) or (typ is int and isinstance(result[key], bool)):
            problems.append(f"{key!r} is {type(result[key]).__name__}, not {typ.__name__}")
    env = result.get("env", {})
    for key in ENV_REQUIRED:
        if key not in env:
            problems.append(f"env lacks {key!r}")
    if result.get("schema") != SCHEMA:
        problems.append(f"schema {result.get('schema')!r} is not {SCHEMA}")
    for i, run in enumerate(result.get("runs", [])):
        if not isinstance(run, dict) or "target" not in run:
            problems.append(f"runs[{i}] has no 'target'")
    for key, val in result.get("summary", {}).items():
        if not isinstance(val, dict):
            problems.append(f"summary[{key!r}] is not a map of target -> value")
    return problems


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """Every result file in ``out``, by file stem (``throughput``, ``scaling-16cores``...)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        if path.name == "micro.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA and "scenario" in data:
            found[path.stem] = data
    return found


# --- the README table ----------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ms", "us", "KB", "x"):
        return f"{value:,.3g}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def _ratio(row: Row, f: float | None, b: float | None) -> str:
    if f is None or b is None or f <= 0 or b <= 0:
        return "n/a"
    r = b / f if row.better == "lower" else f / b
    return f"{r:.2f}x"


def _cell(summary: dict[str, Any], field: str, target: str) -> tuple[float | None, str]:
    entry = summary.get(field) or {}
    v = entry.get(target)
    note = entry.get("note", "")
    return (float(v) if isinstance(v, (int, float)) else None), note


def readme(results: dict[str, dict[str, Any]], out: Path | None = None) -> str:
    lines = [
        "# fanwire benchmark results",
        "",
        "Generated by `python -m bench charts` from the JSON files in this directory; do not edit by hand.",
        "How they are measured: [docs/bench.md](../docs/bench.md). *ratio* is how many times better fanwire is",
        "than the baseline (a single-process `websockets` server written the way its documentation shows),",
        "whichever direction is better for the metric. **missed** marks a goal fanwire does not reach.",
        "",
    ]
    main = {stem: r for stem, r in results.items() if not r.get("label")}
    envs = [r["env"] for r in main.values()]
    if envs:
        e = envs[0]
        quick = any(r.get("quick") for r in main.values())
        lines += [
            f"Machine: {e.get('cpu_model')}, {e.get('cores')} cores, {e.get('python')}, "
            f"websockets {e.get('versions', {}).get('websockets')}, uvloop {e.get('versions', {}).get('uvloop')}; "
            f"commit `{str(e.get('git_commit'))[:12]}`{' (uncommitted changes)' if e.get('git_dirty') else ''}; "
            f"{e.get('date')}.",
            "",
        ]
        if quick:
            lines += ["**These figures come from a `--quick` run: tiny sizes, not meaningful as measurements.**",
                      ""]
    if not main:
        lines += ["No results from this machine yet: run `make bench`."]
    else:
        lines += [
            "| metric | documented target | our goal | fanwire | baseline | ratio | goal |",
            "|---|---|---|---:|---:|---:|---|",
        ]
    notes: list[str] = []
    for row in ROWS:
        res = main.get(row.scenario)
        if res is None:
            continue
        summary = res.get("summary", {})
        if row.field not in summary:
            continue
        f, note = _cell(summary, row.field, "fanwire")
        b, _ = _cell(summary, row.field, "baseline")
        met = row.met(f)
        verdict = "" if met is None else ("met" if met else "**missed**")
        if row.goal_value is not None and f is None:
            verdict = "**missed** (no figure)"
        metric = f"{row.metric} ({row.unit})"
        if note:
            notes.append(f"- {row.metric}: {note}")
            metric += f" [{len(notes)}]"
        lines.append(f"| {metric} | {row.documented or '-'} | {row.goal or '-'} | {_fmt(f, row.unit)} | "
                     f"{_fmt(b, row.unit)} | {_ratio(row, f, b)} | {verdict} |")
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{i}. {n[2:]}" for i, n in enumerate(notes, 1)]
    lines += ["", "## Files", ""]
    for stem, r in sorted(results.items()):
        label = f" (label `{r['label']}`, {r['env'].get('cores')} cores)" if r.get("label") else ""
        chart = f" -- chart: [{r['scenario']}.png]({r['scenario']}.png)"
        lines.append(f"- [{stem}.json]({stem}.json): {r.get('title', '')}{label}{chart}, "
                     f"{r.get('duration_s', 0):.0f} s")
    if ((out or ROOT / "results") / "micro.json").exists():
        lines.append("- [micro.json](micro.json): pytest-benchmark micro-benchmarks (`make bench-micro`)")
    return "\n".join(lines) + "\n"


def write_readme(out: Path) -> Path:
    path = out / "README.md"
    path.write_text(readme(load_results(out), out))
    return path
