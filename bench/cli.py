"""``python -m bench``: run the scenarios, redraw the charts, check or write the README's figures.

    python -m bench run [--quick] [--scenario NAME ...] [--target NAME ...] [--repeats N] [--allow-dirty]
                        [--set SCENARIO.KEY=JSON ...] [--workers-list 1,2,4] [--label TEXT] [--out DIR]
    python -m bench charts [--out DIR]
    python -m bench headline [--check | --write]
    python -m bench list
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .procstat import cores, cpu_model, raise_open_files
from .provenance import DirtyTree, git_state, machine_state, require_clean, run_info
from .report import SCHEMA, environment, fmt_value, load_results, write_readme, write_result
from .scenarios import PLANNED, SCENARIOS, Ctx, by_name, default_names
from .servers import ROOT, TARGETS
from .targets import ROWS

DEFAULT_OUT = ROOT / "results"
QUICK_OUT = DEFAULT_OUT / "quick"
REPO_ROOT = ROOT  # where the provenance checks look (tests point it elsewhere)
README = ROOT / "README.md"


def _workers_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 or v > 256 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be 1..256")
    return values


def _setting(text: str) -> tuple[str, str, Any]:
    name, _, rest = text.partition(".")
    key, eq, raw = rest.partition("=")
    if not name or not key or not eq:
        raise argparse.ArgumentTypeError(f"expected SCENARIO.KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="fanwire benchmark harness")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run scenarios and write <out>/<scenario>.json, charts and README.md")
    r.add_argument("--quick", action="store_true",
                   help="every scenario at a tiny size, into results/quick/ (checks the harness, not the server)")
    r.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(s.name for s in SCENARIOS)}")
    names = sorted(set(TARGETS) | {t.server for t in TARGETS.values()})
    r.add_argument("--target", action="append", choices=names, default=[], metavar="NAME",
                   help=f"only this server (repeatable; default all): {', '.join(names)}")
    r.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="runs of every figure, interleaved with its baselines (default 3; 1 with --quick)")
    r.add_argument("--allow-dirty", action="store_true",
                   help="run from a tree with uncommitted changes; every result and chart says so")
    r.add_argument("--set", action="append", type=_setting, default=[], metavar="SCENARIO.KEY=VALUE",
                   help="change one setting of a scenario (a JSON value), e.g. --set scale.conns=20000")
    r.add_argument("--workers-list", type=_workers_list, default=None, metavar="N,N,...",
                   help="worker counts for the scaling scenario (default 1..cores)")
    r.add_argument("--label", default="",
                   help="suffix for the result files (scaling-LABEL.json), e.g. '16cores' on another machine")
    r.add_argument("--out", type=Path, default=None,
                   help="results directory (default results/, with --quick results/quick/)")
    r.add_argument("--no-charts", action="store_true", help="do not draw charts / README afterwards")
    c = sub.add_parser("charts", help="redraw every chart and results/README.md from the JSON alone")
    c.add_argument("--out", type=Path, default=DEFAULT_OUT)
    h = sub.add_parser("headline", help="the README's Figures table: check it against results/ or rewrite it")
    h.add_argument("--write", action="store_true", help="rewrite the table in README.md from results/")
    h.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sub.add_parser("list", help="list the scenarios and targets")
    return p


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        el = time.monotonic() - self.t0
        print(f"[{int(el // 60):02d}:{el % 60:04.1f}] {line}", flush=True)


def cmd_run(ns: argparse.Namespace) -> int:
    names = ns.scenario or default_names(ns.quick)
    scenarios = by_name(names)
    out: Path = ns.out or (QUICK_OUT if ns.quick else DEFAULT_OUT)
    overrides = [f"{n}.{k}={json.dumps(v)}" for n, k, v in ns.set]
    for n, _, _ in ns.set:
        by_name([n])
    state = git_state(REPO_ROOT)
    try:
        require_clean(state, ns.allow_dirty or ns.quick)
    except DirtyTree as exc:
        print(f"python -m bench run: refused: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").mkdir(exist_ok=True)
    log = Progress()
    ncpu = len(cores())
    nofile = raise_open_files()
    start_state = machine_state(0.3 if ns.quick else 1.0)
    log(f"fanwire bench{' --quick' if ns.quick else ''}: {', '.join(s.name for s in scenarios)} on "
        f"{cpu_model()}, {ncpu} cores (load average {start_state['loadavg']}, busy {start_state['busy_pct']} %, "
        f"steal {start_state['steal_pct']} %), {nofile:,} open files per process, results in {out}")
    if not state.clean:
        log(f"warning: uncommitted changes ({len(state.dirty)} paths): every result will say so")
    if start_state["busy"]:
        log(f"warning: the machine is busy ({'; '.join(start_state['why'])}): figures will be low and noisy")
    repeats = ns.repeats if ns.repeats is not None else (1 if ns.quick else 3)
    run = run_info(state, scenarios=names, default=default_names(ns.quick), quick=ns.quick,
                   allow_dirty=ns.allow_dirty, targets=ns.target, overrides=overrides, repeats=ns.repeats,
                   argv=sys.argv[1:])
    ctx = Ctx(quick=ns.quick, out=out, log=log, workers_list=ns.workers_list, targets=tuple(ns.target),
              repeats=repeats)
    failed = []
    for i, sc in enumerate(scenarios):
        log(f"== {sc.name}: {sc.title}")
        t0 = time.monotonic()
        env = environment()
        env["run"] = run
        env["machine_at_start"] = start_state if i == 0 else machine_state(0.2 if ns.quick else 0.5,
                                                                           check_load=False)
        if env["machine_at_start"]["busy"] and i:
            log(f"warning: busy machine before {sc.name}: {'; '.join(env['machine_at_start']['why'])}")
        params = sc.params(ns.quick)
        for n, k, v in ns.set:
            if n == sc.name:
                params[k] = v
        if ns.repeats is not None:
            params.pop("repeats", None)
        ctx.skipped = {}
        try:
            body = sc.run(ctx, params)
        except Exception:
            log(f"{sc.name} FAILED:\n{traceback.format_exc()}")
            failed.append(sc.name)
            continue
        result = {"schema": SCHEMA, "scenario": sc.name, "title": sc.title, "quick": bool(ns.quick),
                  "label": ns.label, "env": env, "repeats": ctx.reps(params), **body,
                  "duration_s": round(time.monotonic() - t0, 1)}
        path = write_result(out, result)
        log(f"{sc.name}: {result['duration_s']} s -> {path}")
    if not ns.no_charts:
        from .charts import draw_all

        files = draw_all(out, log)
        readme = write_readme(out)
        log(f"charts: {', '.join(f.name for f in files)}; table: {readme}")
        _update_headline(out, log)
    print_table(out)
    log(f"done in {time.monotonic() - log.t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _update_headline(out: Path, log: Any) -> None:
    """The README's Figures table follows results/ (never a quick run's, never another directory's)."""
    if out.resolve() != DEFAULT_OUT.resolve() or not README.exists():
        return
    from .headline import write_readme_table

    if write_readme_table(README, out):
        log(f"README.md: Figures table rewritten from {out}")


def print_table(out: Path) -> None:
    results = {k: v for k, v in load_results(out).items() if not v.get("label")}
    width = max(len(r.metric) for r in ROWS)
    print(f"{'metric':<{width}}  {'fanwire':>12}  {'baseline':>12}  goal")
    for row in ROWS:
        res = results.get(row.scenario)
        if not res or row.field not in res.get("summary", {}):
            continue
        entry = res["summary"][row.field]
        f, b = entry.get("fanwire"), entry.get("baseline")
        met = row.met(f if isinstance(f, (int, float)) else None)
        mark = "" if met is None else ("met" if met else "MISSED")
        fs = f"{f:,.2f}" if isinstance(f, float) else (f"{f:,}" if isinstance(f, int) else "n/a")
        if row.unit == "%" and isinstance(f, (int, float)):
            fs = fmt_value(f, row.unit)  # a delivered fraction below 100 never prints as 100.00
        bs = f"{b:,.2f}" if isinstance(b, float) else (f"{b:,}" if isinstance(b, int) else "n/a")
        print(f"{row.metric:<{width}}  {fs:>12}  {bs:>12}  {row.goal} {mark}".rstrip())


def cmd_charts(ns: argparse.Namespace) -> int:
    from .charts import draw_all

    files = draw_all(ns.out)
    readme = write_readme(ns.out)
    print(f"wrote {', '.join(str(f) for f in files)} and {readme}")
    _update_headline(ns.out, print)
    return 0 if files else 1


def cmd_headline(ns: argparse.Namespace) -> int:
    from .headline import check_readme, write_readme_table

    if ns.write:
        changed = write_readme_table(README, ns.out)
        print("README.md: Figures table " + ("rewritten" if changed else "unchanged"))
        return 0
    problems = check_readme(README.read_text(), ns.out)
    for line in problems:
        print(line)
    print(f"README.md Figures table: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_list(ns: argparse.Namespace) -> int:
    for sc in SCENARIOS:
        extra = "" if sc.in_quick_run else "  (not in --quick)"
        print(f"{sc.name:<11} {sc.title}{extra}")
    for name, why in PLANNED.items():
        print(f"{name:<11} planned: {why}")
    print()
    for t in TARGETS.values():
        missing = t.missing()
        print(f"{t.name:<16} {t.label}" + (f"  [not available: {missing}]" if missing else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "charts": cmd_charts, "headline": cmd_headline, "list": cmd_list}[ns.command]
    try:
        return handler(ns)
    except KeyError as exc:
        print(f"python -m bench: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

