"""``python -m bench``: run the scenarios, redraw the charts, list the scenarios.

    python -m bench run [--quick] [--scenario NAME ...] [--workers-list 1,2,4] [--label TEXT] [--out DIR]
    python -m bench charts [--out DIR]
    python -m bench list
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from .procstat import cores, cpu_model, raise_open_files
from .report import SCHEMA, environment, load_results, write_readme, write_result
from .scenarios import SCENARIOS, Ctx, by_name
from .servers import ROOT, TARGETS
from .targets import ROWS

DEFAULT_OUT = ROOT / "results"


def _workers_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 or v > 256 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be 1..256")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="fanwire benchmark harness")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run scenarios and write results/<scenario>.json, charts and README.md")
    r.add_argument("--quick", action="store_true", help="every scenario at a tiny size (well under 90 s)")
    r.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(s.name for s in SCENARIOS)}")
    r.add_argument("--workers-list", type=_workers_list, default=None, metavar="N,N,...",
                   help="worker counts for the scaling scenario (default 1..cores)")
    r.add_argument("--label", default="",
                   help="suffix for the result files (scaling-LABEL.json), e.g. '16cores' on another machine")
    r.add_argument("--target", action="append", choices=TARGETS, default=[],
                   help="only this server (repeatable; default both)")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default results/)")
    r.add_argument("--no-charts", action="store_true", help="do not draw charts / README afterwards")
    c = sub.add_parser("charts", help="redraw every chart and results/README.md from the JSON alone")
    c.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sub.add_parser("list", help="list the scenarios")
    return p


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        el = time.monotonic() - self.t0
        print(f"[{int(el // 60):02d}:{el % 60:04.1f}] {line}", flush=True)


def cmd_run(ns: argparse.Namespace) -> int:
    scenarios = by_name(ns.scenario) if ns.scenario else list(SCENARIOS)
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").mkdir(exist_ok=True)
    log = Progress()
    ncpu = len(cores())
    nofile = raise_open_files()
    load = os.getloadavg()
    log(f"fanwire bench{' --quick' if ns.quick else ''}: {', '.join(s.name for s in scenarios)} on "
        f"{cpu_model()}, {ncpu} cores (load average {load[0]:.2f}), {nofile:,} open files per process, "
        f"results in {out}")
    if load[0] > ncpu * 0.5:
        log(f"warning: the machine is busy (load {load[0]:.2f} on {ncpu} cores); figures will be low and noisy")
    ctx = Ctx(quick=ns.quick, out=out, log=log, workers_list=ns.workers_list,
              targets=tuple(ns.target) if ns.target else TARGETS)
    failed = []
    for sc in scenarios:
        log(f"== {sc.name}: {sc.title}")
        t0 = time.monotonic()
        env = environment()
        try:
            body = sc.run(ctx, sc.params(ns.quick))
        except Exception:
            log(f"{sc.name} FAILED:\n{traceback.format_exc()}")
            failed.append(sc.name)
            continue
        result = {"schema": SCHEMA, "scenario": sc.name, "title": sc.title, "quick": bool(ns.quick),
                  "label": ns.label, "env": env, **body, "duration_s": round(time.monotonic() - t0, 1)}
        path = write_result(out, result)
        log(f"{sc.name}: {result['duration_s']} s -> {path.relative_to(out.parent) if out.parent in path.parents else path}")
    if not ns.no_charts:
        from .charts import draw_all

        files = draw_all(out, log)
        readme = write_readme(out)
        log(f"charts: {', '.join(f.name for f in files)}; table: {readme}")
    print_table(out)
    log(f"done in {time.monotonic() - log.t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


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
        bs = f"{b:,.2f}" if isinstance(b, float) else (f"{b:,}" if isinstance(b, int) else "n/a")
        print(f"{row.metric:<{width}}  {fs:>12}  {bs:>12}  {row.goal} {mark}".rstrip())


def cmd_charts(ns: argparse.Namespace) -> int:
    from .charts import draw_all

    files = draw_all(ns.out)
    readme = write_readme(ns.out)
    print(f"wrote {', '.join(str(f) for f in files)} and {readme}")
    return 0 if files else 1


def cmd_list(ns: argparse.Namespace) -> int:
    for sc in SCENARIOS:
        print(f"{sc.name:<11} {sc.title}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "charts": cmd_charts, "list": cmd_list}[ns.command]
    try:
        return handler(ns)
    except KeyError as exc:
        print(f"python -m bench: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
