"""latency: open-loop round trips at fixed offered rates until the server is overloaded, one server core;
every latency figure carries the server's and the load's CPU and a ``saturated`` flag."""

from __future__ import annotations

import time
from typing import Any

from ..hist import Histogram
from ..procstat import CorePlan, CpuWindow, others_pct
from ..servers import TARGETS
from ..stats import saturation, window_verdict
from .common import Ctx, conditions, cpu_line, file_figure, open_conns, session, sleep_until

__all__ = ["run_latency"]


def run_latency(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    targets = ctx.pick(p["targets"])
    for rep in range(ctx.reps(p)):
        for target in targets:
            # open-loop senders spin between sends (timers are 1 ms coarse): keep them few
            procs = p["workers"] if TARGETS[target].multi else 1
            nproc = p.get("load_processes") or min(p["max_load_processes"],
                                                    CorePlan.make(procs, ctx.cpus).load_processes())
            with session(ctx, target, p["workers"], load_procs=nproc) as (srv, pool, plan):
                open_conns(pool, srv, p["conns"], None, codec=p["codec"])
                for rate in p["rates"]:
                    run = _window(ctx, p, srv, pool, plan, rate, rep)
                    runs.append(run)
                    if run["overloaded"]:
                        break
    return {"config": p, "runs": runs, "summary": summarize(p, runs), "skipped": dict(ctx.skipped)}


def _window(ctx: Ctx, p: dict[str, Any], srv: Any, pool: Any, plan: CorePlan, rate: int, rep: int) -> dict[str, Any]:
    start_at = time.monotonic() + 0.2
    per = rate / pool.n
    tickets = pool.submit("openloop", {"rate": per, "start_at": start_at, "warmup": p["warmup"],
                                       "duration": p["duration"], "codec": p["codec"], "size": p["size"],
                                       "drain": p["drain"]})
    scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    sleep_until(start_at + p["warmup"])
    scpu.start()
    gcpu.start()
    sleep_until(start_at + p["warmup"] + p["duration"])
    scpu.stop()
    gcpu.stop()
    res = pool.wait(tickets, timeout=p["warmup"] + p["duration"] + p["drain"] + 40)
    hist = Histogram.merged(r["latency_us"] for r in res)
    lag = Histogram.merged(r["send_lag_us"] for r in res)
    sent_w = sum(r["sent_window"] for r in res)
    got_w = sum(r["replies_window"] for r in res)
    lat = hist.summary(1000)
    verdict = window_verdict(expected=sum(r["sent"] for r in res), ok=sum(r["received"] for r in res),
                             unexpected=sum(r["unexpected"] for r in res), closed=sum(r["closed"] for r in res))
    cpu = scpu.report()
    sat = saturation(offered=sent_w, achieved=got_w, p99_ms=lat["p99"], bound_ms=p["saturation_p99_ms"],
                     server_cpu_pct=cpu["cpu_pct"], server_procs=srv.workers)
    # overloaded: it no longer keeps up (not just busy): the ladder stops here
    overloaded = got_w < 0.95 * sent_w or (lat["p99"] or 0) > p["saturation_p99_ms"]
    # the load processes could not keep to the schedule: part of the latency is theirs
    load_bound = (lag.percentile(99) or 0) > 1000
    run = {"target": srv.target, "server": srv.kind, "repeat": rep, "workers": srv.workers, "offered_per_s": rate,
           "achieved_per_s": round(got_w / p["duration"], 1), "sent_window": sent_w, "replies_window": got_w,
           "valid": verdict["valid"], "verdict": verdict, "latency_ms": lat, "latency_us": hist.to_dict(),
           "send_lag_ms": lag.summary(1000), "server_cpu": cpu, "load_cpu": gcpu.report(),
           "other_cpu_pct": others_pct(scpu, gcpu),
           "server_us_per_msg": round(scpu.seconds * 1e6 / got_w, 3) if got_w else None,
           "saturated": sat["saturated"], "saturated_why": sat["why"], "overloaded": overloaded,
           "load_bound": load_bound, "conns": p["conns"], "load_processes": pool.n, "cores": plan.describe()}
    ctx.log(f"latency: {srv.target} {rate:,}/s offered (repeat {rep + 1}): {run['achieved_per_s']:,.0f}/s, p50 "
            f"{lat['p50']} p99 {lat['p99']} p99.9 {lat['p99_9']} max {lat['max']} ms; send lag p99 "
            f"{run['send_lag_ms']['p99']} ms ({cpu_line(run)})"
            f"{' SATURATED: ' + '; '.join(sat['why']) if sat['saturated'] else ''}"
            f"{' (load processes late)' if load_bound else ''}")
    return run


def summarize(p: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    ref = p["reference_rate"]
    reps = sorted({r["repeat"] for r in runs})
    for server in dict.fromkeys(r["server"] for r in runs):
        mine = [r for r in runs if r["server"] == server]
        at = [r for r in mine if r["offered_per_s"] == ref]
        top = max(r["offered_per_s"] for r in mine)
        note = (f"{ref:,} msg/s offered (open loop), {p['conns']} connections, {p['size']} B {p['codec']}, one "
                f"server core, median of {len(at)}")
        if not at:
            note = f"{ref:,}/s not reached: overloaded at {top:,}/s or below"
        file_figure(summary, "p99_ms_at_20k", server, at, lambda r: r["latency_ms"]["p99"], note, "ms")
        file_figure(summary, "p50_ms_at_20k", server, at, lambda r: r["latency_ms"]["p50"], note, "ms")
        file_figure(summary, "p99_9_ms_at_20k", server, at, lambda r: r["latency_ms"]["p99_9"], note, "ms")
        if not at:
            for key in ("p99_ms_at_20k", "p50_ms_at_20k", "p99_9_ms_at_20k"):
                summary.setdefault(key, {})[server] = None
                summary[key].setdefault("notes", {})[server] = note

        # per repeat: the highest rate with p99 <= 1 ms, and the highest rate not saturated
        def best(rep: int, ok: Any, mine: list[dict[str, Any]] = mine) -> dict[str, Any]:
            good = [r for r in mine if r["repeat"] == rep and r["valid"] and ok(r)]
            top_run = max(good, key=lambda r: r["offered_per_s"]) if good else None
            return {"valid": True, "value": top_run["offered_per_s"] if top_run else 0,
                    **({"cond": conditions(top_run)} if top_run else {"cond": {}})}

        for key, ok, text in (
                ("max_rate_p99_1ms", lambda r: not r["saturated"] and (r["latency_ms"]["p99"] or 1e9) <= 1.0,
                 "highest offered rate with p99 <= 1 ms, the server not saturated"),
                ("max_unsaturated_per_s", lambda r: not r["saturated"], "highest offered rate not saturated")):
            per_rep = [best(rep, ok) for rep in reps if any(r["repeat"] == rep for r in mine)]
            file_figure(summary, key, server, per_rep, lambda r: r["value"], f"{text}, median of {len(per_rep)}",
                        "msg/s", lambda r: r["cond"])
    return summary
