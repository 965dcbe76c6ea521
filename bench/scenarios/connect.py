"""connect: handshake time at a controlled arrival rate, connections per second, memory per idle
connection and one broadcast to all (at equal worker counts), and how many connections each server holds
before it fails (every server is run up its ladder until it fails, bounded by the largest level)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ..hist import Histogram
from ..loadgen import LoadError, LoadPool, new_marker
from ..procstat import CpuWindow
from ..servers import TARGETS, Server
from ..stats import saturation
from .common import Ctx, conditions, conns_per_load_process, cpu_line, file_figure, open_conns, session

__all__ = ["run_connect"]


def broadcast_all(pool: LoadPool, srv: Server, timeout: float, arrival: bool = False,
                  windows: Sequence[CpuWindow] = ()) -> dict[str, Any]:
    """One broadcast from the first connection, and the time until every open connection has it.

    Each receiver's latency runs from the broadcast's scheduled send time to the moment its load process
    read it (and checked it is ours, by the marker in its first bytes). Since there is one message, sent
    at a known time, no receiver parses a timestamp out of it: with 100,000 receivers the load processes,
    which share the cores with the server, would spend more CPU on that than the server on delivering.

    ``arrival``: the load processes do not read while the broadcast arrives; each receiver's latency runs
    to its arrival at the receiving socket instead (:mod:`bench.arrival`), so the server has the cores to
    itself, as it would with its clients on other machines. The receivers then read it and count it as
    usual (``reached``, ``missing``, ``unexpected``).

    ``windows`` (CPU windows) run from the send until every receiver has read it, or (``arrival``) until
    every arrival was stamped."""
    marker = new_marker()
    now = time.monotonic()
    pool.call("listen", {"w0": now, "w1": now + 3600, "sample_every": 0, "marker": marker}, timeout=30)
    arrived: list[dict[str, Any]] = []
    if arrival:
        pool.call("hush", {}, timeout=60)
        start_at = time.monotonic() + 0.3  # every load process is idle by then (else: late_start)
        publish = {"marker": marker, "size": 60}
        tickets = pool.submit("arrivals", [{"start_at": start_at, "timeout": timeout,
                                            "publish": publish if i == 0 else None} for i in range(pool.n)])
        time.sleep(max(0.0, start_at - time.monotonic()))
        for w in windows:
            w.start()
        arrived = pool.wait(tickets, timeout=timeout + 60)
        for w in windows:
            w.stop()
        sent = sum(a["sent"] for a in arrived)
    else:
        start_at = time.monotonic() + 0.05
        for w in windows:
            w.start()
        sent = pool.call("publish", {"rate": 0, "start_at": start_at, "count": 1, "size": 60,
                                     "marker": marker}, timeout=30, only=[0])[0]["sent"]
    since_ns = int(start_at * 1e9)
    reach = pool.call("wait_all", {"expect": 1, "timeout": timeout}, timeout=timeout + 30)
    if not arrival:
        for w in windows:
            w.stop()
    got = pool.call("collect", {"expected_each": 1, "arrivals_since_ns": since_ns}, timeout=30)
    hist = Histogram.merged(a["arrivals"] for a in arrived) if arrived else \
        Histogram.merged(g["arrivals"] for g in got)
    out = {"sent": sent, "reached": sum(r["reached"] for r in reach),
           "open": sum(r["conns"] for r in reach), "missing": sum(g["missing"] for g in got),
           "unexpected": sum(g["unexpected"] for g in got), "timed": "arrival" if arrival else "read",
           "ms": hist.summary(1000), "latency_us": hist.to_dict()}
    if arrived:
        workers = sorted({w for a in arrived for w in a["per_worker"]}, key=int)
        out["per_worker_ms"] = {w: Histogram.merged(a["per_worker"][w] for a in arrived if w in a["per_worker"])
                                .summary(1000) for w in workers}
        for k in ("stamped", "late", "by_poll", "not_ours", "unarrived", "ended", "controls", "late_start"):
            out[k] = sum(a[k] for a in arrived)
        out["slack_ms"] = min(a["slack_ms"] for a in arrived)  # the least time to spare before the send
    return out


def _level(ctx: Ctx, p: dict[str, Any], target: str, conns: int, rate: float | None, workers: int,
           what: str, repeat: int) -> dict[str, Any]:
    spec = TARGETS[target]
    nproc = max(1, math.ceil(conns / conns_per_load_process()))
    w = workers if spec.multi else 1
    ctx.log(f"connect/{what}: {target} ({w} proc), {conns:,} connections at {rate or 'max'} conn/s over "
            f"{nproc} load process(es)")
    with session(ctx, target, workers, load_procs=nproc) as (srv, pool, plan):
        time.sleep(0.3)
        rss0 = srv.rss()
        o = open_conns(pool, srv, conns, rate, timeout=p["timeout"], require=False)
        time.sleep(p["settle_s"])
        rss1 = srv.rss()
        per_conn = (rss1 - rss0) / o["opened"] / 1000 if o["opened"] else None
        bc = broadcast_all(pool, srv, p["broadcast_timeout"]) if o["opened"] else None
    held = o["opened"] == conns and bc is not None and bc["reached"] == conns
    run = {"target": target, "server": spec.server, "what": what, "repeat": repeat, "workers": w, "conns": conns,
           "cores": plan.describe(), **o, "rss_before_bytes": rss0, "rss_after_bytes": rss1,
           "rss_per_conn_kb": round(per_conn, 2) if per_conn is not None else None, "broadcast": bc,
           "held_all": held, "valid": held}
    if rate:
        sat = saturation(offered=rate, achieved=o["conn_per_s"] or 0, p99_ms=o["handshake_ms"]["p99"],
                         bound_ms=p["saturation_p99_ms"], server_cpu_pct=o["server_cpu"]["cpu_pct"],
                         server_procs=w, min_share=0.9)
        run["saturated"] = sat["saturated"]
        run["saturated_why"] = sat["why"]
    hs = o["handshake_ms"]
    early = f", {o['early_starts']} early starts, start lag p99 {o['start_lag_ms']['p99']} ms" if rate else ""
    ctx.log(f"  opened {o['opened']:,}/{conns:,} (errors {o['errors'] or 'none'}), handshake p50 {hs['p50']} ms "
            f"p99 {hs['p99']} ms max {hs['max']} ms{early}, {o['conn_per_s']} conn/s, {run['rss_per_conn_kb']} "
            f"KB/conn, broadcast reached {bc['reached'] if bc else 0:,} in {bc['ms']['max'] if bc else None} ms "
            f"({cpu_line(o)})")
    return run


def run_connect(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    targets = ctx.pick(p["targets"])
    hs, idle, cap = p["handshake"], p["idle"], p["capacity"]
    for rep in range(ctx.reps(p)):
        for t in targets:
            runs.append(_level(ctx, p, t, hs["conns"], hs["rate"], hs["workers"], "handshake", rep))
        for t in targets:
            runs.append(_level(ctx, p, t, idle["conns"], None, idle["workers"], "idle", rep))
    # the capacity ladder: once, each server up to its first failure
    failed: dict[str, dict[str, Any]] = {}
    for t in targets:
        for level in cap["levels"]:
            try:
                run = _level(ctx, p, t, int(level), None, cap["workers"], "capacity", 0)
            except LoadError as exc:
                ctx.log(f"  {t} failed at {level:,}: {exc}")
                failed[t] = {"conns": level, "opened": 0, "errors": {"load": str(exc)[:200]}}
                break
            runs.append(run)
            if not run["held_all"]:
                failed[t] = {"conns": level, "opened": run["opened"], "errors": run["errors"],
                             "reached": (run["broadcast"] or {}).get("reached")}
                break
    return {"config": p, "runs": runs, "summary": summarize(ctx, p, runs, failed), "skipped": dict(ctx.skipped)}


def summarize(ctx: Ctx, p: dict[str, Any], runs: list[dict[str, Any]],
              failed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    hs, idle, cap = p["handshake"], p["idle"], p["capacity"]
    servers = list(dict.fromkeys(r["server"] for r in runs))
    for server in servers:
        mine = [r for r in runs if r["server"] == server]
        h = [r for r in mine if r["what"] == "handshake"]
        i = [r for r in mine if r["what"] == "idle"]
        c = [r for r in mine if r["what"] == "capacity"]
        early = sum(r["early_starts"] or 0 for r in h)
        hs_note = (f"{hs['conns']:,} connections at {hs['rate']:,} conn/s, one server core, load on the other; "
                   f"from each connection's real start to the 101 response; {early} early starts")

        def hs_cond(r: dict[str, Any]) -> dict[str, Any]:
            return {**conditions(r), "early_starts": r["early_starts"],
                    "start_lag_p99_ms": (r["start_lag_ms"] or {}).get("p99")}

        for r in h:  # the handshake figures need every connection, not the broadcast
            r["valid"] = r["opened"] == r["conns"]
        file_figure(summary, "handshake_p99_ms", server, h, lambda r: r["handshake_ms"]["p99"], hs_note, "ms",
                    hs_cond)
        file_figure(summary, "handshake_p50_ms", server, h, lambda r: r["handshake_ms"]["p50"], hs_note, "ms",
                    hs_cond)
        idle_note = f"{idle['conns']:,} connections, {idle['workers']} server process(es), unthrottled"
        file_figure(summary, "handshakes_per_s", server, i, lambda r: r["conn_per_s"], idle_note, "conn/s")
        file_figure(summary, "rss_per_conn_kb", server, i, lambda r: r["rss_per_conn_kb"],
                    f"(RSS after - before) / connections at {idle['conns']:,} idle connections, "
                    f"{p['settle_s']} s after the last handshake", "KB")
        file_figure(summary, "broadcast_all_ms", server, i,
                    lambda r: (r["broadcast"] or {}).get("ms", {}).get("max"),
                    f"one broadcast until the last of {idle['conns']:,} connections has it", "ms")
        held = [r["conns"] for r in c if r["held_all"]]
        procs = c[0]["workers"] if c else 1
        f = failed.get(next((r["target"] for r in mine), ""), {})
        tried = max([r["conns"] for r in c] + [f.get("conns", 0)], default=0)
        if f:
            note = (f"{procs} server process(es); held {max(held, default=0):,}, failed at {f['conns']:,} "
                    f"({f.get('opened', 0):,} opened; errors {f.get('errors') or 'none'})")
        else:
            note = f"{procs} server process(es); held every level up to {tried:,} (the largest tried)"
        entry = summary.setdefault("max_connections", {})
        entry[server] = max(held, default=0)
        entry.setdefault("conditions", {})[server] = {"workers": procs, "failed_at": f.get("conns"),
                                                       "opened_at_failure": f.get("opened"),
                                                       "errors_at_failure": f.get("errors"),
                                                       "largest_tried": tried, "valid": True}
        entry.setdefault("notes", {})[server] = note
        entry.setdefault("stats", {})[server] = {"n": 1, "ladder": cap["levels"], "once": True}
        if server == "fanwire":
            entry["note"] = note
        entry["unit"] = "conns"
    return summary
