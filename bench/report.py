"""Result files: the environment block every JSON carries, writing and reading results, what a result
says about where it comes from (:func:`flags`), and the generated ``results/README.md`` (from the JSON
alone): every figure with its spread, its conditions, the ratios the conditions allow, how to reproduce
it, and the conformance summary when there is one."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from .procstat import cores, cpu_model
from .provenance import git_state
from .servers import SERVER_LABELS
from .stats import ratio
from .targets import ROWS, Row

__all__ = ["SCHEMA", "environment", "flags", "fmt_value", "load_results", "readme", "set_of", "validate",
           "write_readme", "write_result"]

SCHEMA: Final = 2
SCHEMAS: Final = (1, 2)  # what load_results reads: 1 is the harness before repeats and saturation flags
ROOT = Path(__file__).resolve().parent.parent
LIBRARIES: Final = ("websockets", "uvloop", "orjson", "msgpack", "picows", "matplotlib")
NOT_RESULTS: Final = ("micro.json", "conformance.json")

REQUIRED: Final = {
    "schema": int, "scenario": str, "title": str, "quick": bool, "label": str, "env": dict, "config": dict,
    "runs": list, "summary": dict, "duration_s": float,
}
ENV_REQUIRED: Final = ("date", "git_commit", "platform", "cpu_model", "cores", "python", "versions")


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
    state = git_state(ROOT)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": state.commit,
        "git_dirty": not state.clean,
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
            problems.append(f"summary[{key!r}] is not a map of server -> value")
    return problems


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """Every result file in ``out``, by file stem (``throughput``, ``scaling-16cores``...)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        if path.name in NOT_RESULTS:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") in SCHEMAS and "scenario" in data:
            found[path.stem] = data
    return found


# --- where a result comes from -------------------------------------------------------------------------

def set_of(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The results set this directory mostly holds: the run id (and commit) most of the unlabelled files
    share; files from elsewhere are flagged next to it."""
    main = [r for r in results.values() if not r.get("label")]
    runs = Counter((r["env"].get("run") or {}).get("id") or f"commit {r['env'].get('git_commit')}" for r in main)
    commits = Counter(str(r["env"].get("git_commit")) for r in main)
    run_id = runs.most_common(1)[0][0] if runs else None
    commit = commits.most_common(1)[0][0] if commits else None
    return {"run": run_id, "commit": commit, "files": len(main)}


def flags(res: dict[str, Any], the_set: dict[str, Any] | None = None) -> list[str]:
    """What a reader must know before trusting ``res``: quick, uncommitted changes, busy machine, re-run
    alone, from another run or commit, the previous harness. Empty for a clean, complete, quiet run."""
    env = res.get("env", {})
    run = env.get("run") or {}
    out = []
    if res.get("quick"):
        out.append("quick run: not a measurement")
    if env.get("git_dirty"):
        out.append("uncommitted changes")
    busy = env.get("machine_at_start") or {}
    if busy.get("busy"):
        out.append("busy machine: " + "; ".join(busy.get("why", [])))
    if res.get("schema") == 1:
        out.append("previous harness: one run, conditions not recorded (possibly unequal), no reply checks")
    elif run and not run.get("complete", True):
        out.append("re-run alone (" + "; ".join(run.get("partial", [])) + ")")
    if the_set and not res.get("label"):
        rid = run.get("id") or f"commit {env.get('git_commit')}"
        if the_set.get("commit") and str(env.get("git_commit")) != the_set["commit"]:
            out.append(f"from another commit ({str(env.get('git_commit'))[:10]})")
        elif the_set.get("run") and rid != the_set["run"]:
            out.append(f"from another run ({rid})")
    return out


# --- formatting -------------------------------------------------------------------------------------------

def fmt_value(value: float | None, unit: str) -> str:
    """A figure as the tables print it: 3 significant digits for times and sizes, 4 for rates, thousands
    separators, at most 2 decimals."""
    if value is None:
        return "n/a"
    v = float(value)
    if unit == "%" and 99.0 <= v <= 100.0:  # a delivered fraction: a loss must never round up to 100
        return "100.00" if v == 100.0 else f"{math.floor(v * 10000) / 10000:.4f}"
    if unit in ("ms", "us", "KB", "x", "%", "s", "CPU s"):
        if v == 0:
            return "0"
        digits = max(0, min(2, 2 - int(_floor_log10(abs(v)))))
        return f"{v:,.{digits}f}"
    if abs(v) >= 10000:
        step = 10 ** (int(_floor_log10(abs(v))) - 3)
        return f"{round(v / step) * step:,.0f}"
    return f"{v:,.0f}"


def _floor_log10(v: float) -> float:
    return math.floor(math.log10(v)) if v > 0 else 0


def _cond(entry: dict[str, Any], server: str) -> dict[str, Any]:
    c = (entry.get("conditions") or {}).get(server)
    return c if isinstance(c, dict) else {}


def value_cell(entry: dict[str, Any], server: str, unit: str, spread: bool = True) -> str:
    """One server's figure: the median, its spread, and the flags that change what it means."""
    v = entry.get(server)
    cond = _cond(entry, server)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        if cond and cond.get("valid") is False:
            return "invalid"
        return "not run"
    text = f"{fmt_value(v, unit)}"
    st = (entry.get("stats") or {}).get(server) or {}
    if spread and st.get("n", 1) > 1 and st.get("spread_pct") is not None:
        text += f" ±{st['spread_pct'] / 2:.0f}%"
    tags = []
    if cond.get("saturated"):
        tags.append("saturated")
    if cond.get("load_bound"):
        tags.append("load-bound")
    if (st.get("invalid") or 0) > 0:
        tags.append(f"{st['invalid']} invalid run(s) left out")
    if tags:
        text += f" ({', '.join(tags)})"
    return text


def ratio_text(row: Row, entry: dict[str, Any], a: str, b: str) -> str:
    av, bv = entry.get(a), entry.get(b)
    if not isinstance(bv, (int, float)) or not isinstance(av, (int, float)):
        return "-"
    if "conditions" not in entry:
        return "no ratio: conditions not recorded (previous harness)"
    r, why = ratio(row.better, row.kind, float(av), float(bv), _cond(entry, a), _cond(entry, b),
                   a, SERVER_LABELS.get(b, b))
    return f"{r:.2f}x" if r is not None else f"no ratio: {why}"


def peer_of(row: Row, entry: dict[str, Any]) -> str | None:
    """The fastest peer (picows) or the floor, whichever this figure has."""
    if row.goal_vs:
        return row.goal_vs[0]
    for p in ("picows", "floor"):
        if p in entry:
            return p
    return None


def verdict(row: Row, entry: dict[str, Any]) -> str:
    f = entry.get("fanwire")
    peer = row.goal_vs[0] if row.goal_vs else None
    pv = entry.get(peer) if peer else None
    fval = float(f) if isinstance(f, (int, float)) else None
    met = row.met(fval, float(pv) if isinstance(pv, (int, float)) else None)
    if met is None:
        if (row.goal_value is not None or row.goal_vs) and fval is None:
            return "**missed** (no figure)"
        return ""
    return "met" if met else "**missed**"


# --- results/README.md -----------------------------------------------------------------------------------

SERVER_COLUMNS: Final = ("fanwire", "baseline", "baseline-uvloop")


def _reproduce(scenario: str) -> str:
    return f"`make bench ARGS=\"--scenario {scenario}\"` (= `python -m bench run --scenario {scenario}`)"


def readme(results: dict[str, dict[str, Any]], out: Path | None = None) -> str:
    from .scenarios import SCENARIOS

    out = out or ROOT / "results"
    the_set = set_of(results)
    main = {stem: r for stem, r in results.items() if not r.get("label")}
    lines = [
        "# fanwire benchmark results",
        "",
        "Generated by `python -m bench charts` (and at the end of every `python -m bench run`) from the JSON "
        "files in this directory; do not edit by hand. How they are measured: [docs/bench.md](../docs/bench.md).",
        "",
    ]
    # provenance
    if main:
        e = next(iter(main.values()))["env"]
        lines += [
            "## Where these figures come from",
            "",
            f"Results set: commit `{str(the_set['commit'])[:12]}`, run `{the_set['run']}`; machine: "
            f"{e.get('cpu_model')}, {e.get('cores')} cores, {e.get('python')}, websockets "
            f"{e.get('versions', {}).get('websockets')}, uvloop {e.get('versions', {}).get('uvloop')}, picows "
            f"{e.get('versions', {}).get('picows') or 'not installed'}.",
            "",
            "| file | commit | date | repeats | load average / busy CPU at start | what to know |",
            "|---|---|---|---:|---|---|",
        ]
        for stem, r in sorted(results.items()):
            env = r["env"]
            m = env.get("machine_at_start") or {}
            load = m.get("loadavg") or env.get("loadavg_at_start") or []
            state = f"{load[0] if load else '?'} / {m['busy_pct']} %" if m.get("busy_pct") is not None else (
                f"{load[0] if load else '?'} / not recorded")
            fl = flags(r, the_set)
            if r.get("label"):
                fl.append(f"label `{r['label']}`: {env.get('cores')} cores, not part of this set")
            fl += [f"{t} not run: {why}" for t, why in (r.get("skipped") or {}).items()]
            lines.append(f"| [{stem}.json]({stem}.json) | `{str(env.get('git_commit'))[:10]}`"
                         f"{' + uncommitted changes' if env.get('git_dirty') else ''} | {str(env.get('date'))[:10]} | "
                         f"{r.get('repeats', 1)} | {state} | {'; '.join(fl) or 'clean, complete run'} |")
        lines.append("")
        if any(r.get("quick") for r in main.values()):
            lines += ["**These figures come from a `--quick` run: tiny sizes, not meaningful as measurements.**", ""]
    if not main:
        lines += ["No results from this machine yet: run `make bench`.", ""]
    else:
        lines += [
            "## Figures",
            "",
            "Each figure is the median of its runs (interleaved with the other servers'); ± is half the spread "
            "(max - min) in % of the median. *saturated*: the server did not keep up (or was at its CPU limit), "
            "so its latency includes queueing; *load-bound*: the load generator was at its limit. A ratio (how "
            "many times better fanwire is) is printed only where both sides were measured under conditions "
            "that allow it; otherwise the reason is. **missed** marks a goal fanwire does not reach.",
            "",
            "| figure | documented | goal | fanwire | websockets, as documented | websockets + uvloop + orjson | "
            "picows / floor | vs websockets | vs websockets + uvloop + orjson | goal |",
            "|---|---|---|---:|---:|---:|---:|---|---|---|",
        ]
    notes: list[str] = []
    for row in ROWS:
        res = main.get(row.scenario)
        if res is None:
            continue
        entry = res.get("summary", {}).get(row.field)
        if not isinstance(entry, dict):
            continue
        cells = [value_cell(entry, s, row.unit) for s in SERVER_COLUMNS]
        peer = peer_of(row, entry)
        peer_cell = f"{peer}: {value_cell(entry, peer, row.unit)}" if peer else "-"
        metric = f"{row.metric} ({row.unit})"
        text = _notes_text(entry)
        fl = flags(res, the_set)
        if fl:
            text = (text + "; " if text else "") + "**" + "; ".join(fl) + "**"
        if text:
            notes.append(f"{row.metric}: {text}")
            metric += f" [{len(notes)}]"
        lines.append(f"| {metric} | {row.documented or '-'} | {row.goal or '-'} | {' | '.join(cells)} | {peer_cell} | "
                     f"{ratio_text(row, entry, 'fanwire', 'baseline')} | "
                     f"{ratio_text(row, entry, 'fanwire', 'baseline-uvloop')} | {verdict(row, entry)} |")
    if notes:
        lines += ["", "Conditions:", ""]
        lines += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    # reproduce
    lines += ["", "## How to reproduce", "",
              "Everything, on a quiet machine, from a clean commit: `make bench` (it refuses uncommitted changes "
              "unless given `ARGS=--allow-dirty`, and then says so everywhere). One scenario alone (its file then "
              "says *re-run alone*):", "",
              "| scenario | command | how | figures |", "|---|---|---|---|"]
    for sc in SCENARIOS:
        figs = ", ".join(f"`{r.field}`" for r in ROWS if r.scenario == sc.name) or "-"
        lines.append(f"| {sc.name} | {_reproduce(sc.name)} | {sc.how or sc.title} | {figs} |")
    lines += ["", "Charts only, from the JSON: `make charts`. A scenario at another size: "
              "`python -m bench run --scenario scale --set scale.conns=20000 --set scale.hold_s=10` (marked as such)."]
    conformance = _conformance(out)
    if conformance:
        lines += ["", "## Conformance (Autobahn|Testsuite)", "", conformance.strip()]
    lines += ["", "## Files", ""]
    for stem, r in sorted(results.items()):
        label = f" (label `{r['label']}`, {r['env'].get('cores')} cores)" if r.get("label") else ""
        chart = f" -- chart: [{r['scenario']}.png]({r['scenario']}.png)"
        lines.append(f"- [{stem}.json]({stem}.json): {r.get('title', '')}{label}{chart}, "
                     f"{r.get('duration_s', 0):.0f} s")
    if (out / "micro.json").exists():
        lines.append("- [micro.json](micro.json): pytest-benchmark micro-benchmarks, statistics only "
                     "(`make bench-micro`)")
    if (out / "conformance.json").exists():
        lines.append("- [conformance.json](conformance.json): Autobahn|Testsuite results (`make conformance`)")
    return "\n".join(lines) + "\n"


def _notes_text(entry: dict[str, Any]) -> str:
    """The conditions of a figure: its setting (said once when every server shares it), then each
    server's CPU and, where it applies, why it counts as saturated."""
    notes = entry.get("notes")
    if isinstance(notes, dict) and notes:
        texts = list(dict.fromkeys(str(t) for t in notes.values()))
        parts = [texts[0]] if len(texts) == 1 else [f"{SERVER_LABELS.get(s, s)}: {t}" for s, t in notes.items()]
    else:
        parts = [str(entry.get("note", ""))] if entry.get("note") else []
    cpu = []
    for server, cond in (entry.get("conditions") or {}).items():
        if not isinstance(cond, dict):
            continue
        text = ""
        if cond.get("server_cpu_pct") is not None:
            text = (f"server CPU {cond['server_cpu_pct']:.0f} %, load CPU "
                    f"{cond.get('load_cpu_pct') or 0:.0f} %")
        if cond.get("saturated_why"):
            text += ("; " if text else "") + "saturated: " + "; ".join(cond["saturated_why"])
        if text:
            cpu.append(f"{SERVER_LABELS.get(server, server)} {text}")
    if cpu:
        parts.append("; ".join(cpu))
    return "; ".join(parts)


def _conformance(out: Path) -> str:
    """The conformance summary table, when ``conformance.json`` exists and bench.conformance provides it."""
    path = out / "conformance.json"
    if not path.exists():
        return ""
    try:
        mod = importlib.import_module("bench.conformance")
        summary_markdown = mod.summary_markdown
    except (ImportError, AttributeError):
        return ""
    try:
        data = json.loads(path.read_text())
        return str(summary_markdown(data))
    except Exception as exc:  # another engineer's module: a failure here must not cost the whole README
        return f"(conformance summary could not be drawn: {type(exc).__name__}: {exc})"


def write_readme(out: Path) -> Path:
    path = out / "README.md"
    path.write_text(readme(load_results(out), out))
    return path
