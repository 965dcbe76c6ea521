"""A/B: the same two measurements against several fanwire variants, in one run, repeats interleaved.

For questions of the kind "did this change cost anything?": a refactor (the tree before against the tree
after), an option (``--app`` with handlers against none), a feature switched off. Each variant is a source
tree and extra server arguments; every repeat runs every variant in turn, so a drift of the machine hits
them alike. Measured per variant, one worker on one pinned core:

- ``pingpong``: closed-loop 64 B JSON ping/pong round trips/s (50 connections), and server CPU per round trip;
- ``fanout``: 1,000 subscribers, 100 broadcasts/s of 64 B: server CPU per delivery and latency p50/p99.

::

    python -m bench.ab --variant now=. --variant app=.:--app=bench.apps.handlers:app --repeats 5
    git worktree add /tmp/before <commit>; python -m bench.ab --variant before=/tmp/before --variant now=.

Prints medians, spreads and each variant's ratio to the first one; writes ``results/ab-<label>.json``
(raw windows included, histograms excluded). Not part of ``make bench``: it answers one question at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .loadgen import new_marker, ping_frame, pong_expect
from .procstat import CorePlan, cores
from .provenance import git_state, machine_state
from .scenarios.common import open_conns, pingpong
from .scenarios.fanout import fanout_window
from .servers import ROOT, Server
from .stats import spread

FANOUT = {"warmup": 1.0, "duration": 4.0, "drain": 1.0, "drain_max": 10.0, "size": 64, "saturation_p99_ms": 200.0}


class TreeServer(Server):
    """fanwire from another source tree (e.g. a git worktree of an older commit), with extra arguments."""

    def __init__(self, tree: Path, args: Sequence[str], log_dir: Path, plan: CorePlan) -> None:
        super().__init__("fanwire", 1, log_dir=log_dir, plan=plan, extra_args=args)
        self.tree = tree

    def command(self) -> list[str]:
        argv = self.spec.argv(self.host, self.port, self.workers)[2:]  # after "-m server"
        boot = (f"import sys; sys.path.insert(0, {str(self.tree)!r}); import runpy; "
                "runpy.run_module('server', run_name='__main__', alter_sys=True)")
        return [sys.executable, "-c", boot, *argv, *self.extra_args]


def parse_variant(text: str) -> tuple[str, Path, list[str]]:
    """``name=TREE[:ARG,ARG...]``."""
    name, _, rest = text.partition("=")
    tree, _, args = rest.partition(":")
    if not name or not tree:
        raise argparse.ArgumentTypeError(f"a variant is name=TREE[:ARG,ARG...], got {text!r}")
    return name, Path(tree).resolve(), [a for a in args.split(",") if a]


def measure(name: str, tree: Path, args: list[str], out: Path, repeat: int) -> dict[str, Any]:
    from .loadgen import LoadPool

    plan = CorePlan.make(1, cores())
    srv = TreeServer(tree, args, out / "tmp", plan)
    pool = LoadPool(plan.load_processes(0), None if plan.shared else plan.load)
    try:
        srv.start()
        pool.start()
        open_conns(pool, srv, 50, None)
        marker = new_marker()
        pp = pingpong(pool, srv, ping_frame("json", 64, os.urandom(4), marker), pong_expect(marker), 64, 16,
                      1.0, 4.0, plan)
        pool.call("close", {}, timeout=10)
        o = open_conns(pool, srv, 1000, None)
        fo = fanout_window(pool, srv.pids, FANOUT, 100, o["opened"], 1, False, 1)
    finally:
        try:
            srv.stop()
        finally:
            pool.close()
    return {"variant": name, "repeat": repeat, "tree": str(tree), "args": args,
            "pingpong_msgs_per_s": pp["msgs_per_s"], "pingpong_us_per_msg": pp["server_us_per_msg"],
            "pingpong_valid": pp["valid"], "fanout_us_per_delivery": fo["server_us_per_delivery"],
            "fanout_p50_ms": fo["latency_ms"]["p50"], "fanout_p99_ms": fo["latency_ms"]["p99"],
            "fanout_valid": fo["valid"], "fanout_saturated": fo["saturated"]}


FIGURES = (("pingpong_msgs_per_s", "ping/pong round trips/s", "higher"),
           ("pingpong_us_per_msg", "server CPU per round trip, us", "lower"),
           ("fanout_us_per_delivery", "server CPU per delivery, us", "lower"),
           ("fanout_p50_ms", "fan-out p50, ms", "lower"),
           ("fanout_p99_ms", "fan-out p99, ms", "lower"))


def summarize(names: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        per = {n: spread([r[key] for r in runs if r["variant"] == n and r["pingpong_valid"] and r["fanout_valid"]])
               for n in names}
        base = per[names[0]]["median"]
        for n in names:
            med = per[n]["median"]
            per[n]["ratio_to_first"] = round(med / base, 3) if med is not None and base else None
        out[key] = per
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", type=parse_variant, required=True,
                    help="name=TREE[:ARG,ARG...] (repeatable; the first is the reference)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="ab")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ns = ap.parse_args(argv)
    names = [v[0] for v in ns.variant]
    machine = machine_state()
    if machine["busy"]:
        print(f"warning: the machine is busy ({'; '.join(machine['why'])}): the figures will say so")
    runs = []
    for rep in range(ns.repeats):
        for name, tree, args in ns.variant:
            r = measure(name, tree, args, ns.out, rep)
            runs.append(r)
            print(f"{name} (repeat {rep + 1}): {r['pingpong_msgs_per_s']:,.0f} rt/s, {r['pingpong_us_per_msg']} us/rt; "
                  f"fan-out {r['fanout_us_per_delivery']} us/delivery, p50 {r['fanout_p50_ms']} p99 "
                  f"{r['fanout_p99_ms']} ms{'' if r['pingpong_valid'] and r['fanout_valid'] else ' INVALID'}",
                  flush=True)
    summary = summarize(names, runs)
    print(f"\nmedians of {ns.repeats} (spread = (max - min) / median), ratio to {names[0]}:")
    for key, label, better in FIGURES:
        cells = [f"{n} {s['median']} ({s['spread_pct']} %, x{s['ratio_to_first']})" for n, s in summary[key].items()]
        print(f"  {label} ({better} is better): " + "; ".join(cells))
    trees = {str(t): git_state(t) for _, t, _ in ns.variant}
    doc = {"label": ns.label, "repeats": ns.repeats, "machine_at_start": machine, "machine": platform.node(),
           "when": time.time(), "runs": runs, "summary": summary,
           "variants": [{"name": n, "tree": str(t), "args": a, "commit": trees[str(t)].commit,
                         "dirty": list(trees[str(t)].dirty)} for n, t, a in ns.variant]}
    ns.out.mkdir(parents=True, exist_ok=True)
    path = ns.out / f"ab-{ns.label}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
