"""scaling: 64 B JSON round trips against the number of fanwire workers; the one-process baselines as
reference lines (they cannot use a second core)."""

from __future__ import annotations

import os
from typing import Any

from ..loadgen import new_marker, ping_frame, pong_expect
from ..servers import TARGETS
from .common import Ctx, cpu_line, file_figure, open_conns, pingpong, plan_note, session

__all__ = ["run_scaling"]


def run_scaling(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    workers_list = ctx.workers_list or p.get("workers_list") or list(range(1, ctx.ncpu + 1))
    plan_targets: list[tuple[str, int]] = []
    if ctx.wants("fanwire"):
        plan_targets += [("fanwire", w) for w in workers_list]
    plan_targets += [(t, 1) for t in ctx.pick(p["baselines"])]
    for rep in range(ctx.reps(p)):
        for target, w in plan_targets:
            conns = max(p["conns"], p["conns_per_worker"] * w)
            marker = new_marker()
            frame = ping_frame(p["codec"], p["size"], mask, marker)
            with session(ctx, target, w) as (srv, pool, plan):
                open_conns(pool, srv, conns, None, codec=p["codec"])
                r = pingpong(pool, srv, frame, pong_expect(marker), p["inflight"], p["batch"], p["warmup"],
                             p["duration"], plan)
                pool.call("close", {}, timeout=10)
            run = {"target": target, "server": TARGETS[target].server, "repeat": rep, "workers": w, "conns": conns,
                   "size": p["size"], "codec": p["codec"], "cores": plan.describe(), **r,
                   "msgs_per_s_per_worker": round(r["msgs_per_s"] / w, 1)}
            runs.append(run)
            ctx.log(f"scaling: {target} x{w} (repeat {rep + 1}): {r['msgs_per_s']:,.0f} msg/s "
                    f"({r['msgs_per_s'] / w:,.0f} per worker), {r['server_us_per_msg']} us/msg ({cpu_line(r)}; "
                    f"{plan_note(plan)})")
    return {"config": {**p, "workers_list": workers_list}, "runs": runs, "summary": summarize(ctx, runs),
            "skipped": dict(ctx.skipped)}


def summarize(ctx: Ctx, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in dict.fromkeys(r["server"] for r in runs):
        mine = [r for r in runs if r["server"] == server]
        for w in sorted({r["workers"] for r in mine}):
            at = [r for r in mine if r["workers"] == w]
            file_figure(summary, f"msgs_per_s_x{w}", server, at, lambda r: r["msgs_per_s"],
                        f"{w} worker(s) on {ctx.ncpu} cores" + ("; server and load share cores"
                                                                  if at[0]["cores"]["shared"] else "")
                        + f", median of {len(at)}", "msg/s")
        # the best worker count, by median
        best_w = max(sorted({r["workers"] for r in mine}),
                     key=lambda w: summary[f"msgs_per_s_x{w}"].get(server) or 0)
        at = [r for r in mine if r["workers"] == best_w]
        file_figure(summary, "best_msgs_per_s", server, at, lambda r: r["msgs_per_s"],
                    f"{best_w} worker(s) on {ctx.ncpu} cores" + ("; server and load share cores"
                                                                  if at[0]["cores"]["shared"] else "")
                    + f", median of {len(at)}", "msg/s")
    return summary
