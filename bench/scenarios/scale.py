"""scale: many concurrent connections to one fanwire node (100,000 at full size on the 2-vCPU machine).

Every process stays under the hard limit of 20,000 open files: the server runs enough workers, the load
runs enough processes, and the connections come from several source addresses (127.0.0.1, .2, ...; about
28,000 ephemeral ports per source/destination pair, 15,000 used). Measured: connections per second,
server memory per idle connection, two broadcasts to all (p99 and last, and the CPU seconds the server
and the load processes spent meanwhile), then a hold of ``hold_s`` seconds of heartbeats: connections
dropped (client side, and the server's own ``/metrics``), pings answered, and the CPU the idle
connections cost.

The first broadcast is timed to its arrival at each receiving socket while the load processes idle
(:mod:`bench.arrival`): the clients of a real server are on other machines, and on this one the load
would otherwise take as much of the 2 cores as the server. The second is timed, as before, to each
receiver's read by its busy load process: that figure measures the load as much as the server, and is
shown beside the first.

Too long for ``--quick`` runs; ``--set scale.conns=20000 --set scale.hold_s=10`` tries it small.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..loadgen import LoadPool
from ..procstat import CpuWindow
from ..promtext import Metrics, fetch
from ..servers import Server
from .common import (
    FILES_PER_PROCESS,
    HOST,
    Ctx,
    conditions,
    cpu_line,
    file_figure,
    open_conns,
    session,
    sources_for,
)
from .connect import broadcast_all

__all__ = ["run_scale"]


def _metrics(port: int) -> Metrics:
    try:
        return fetch(HOST, port)
    except OSError:
        return Metrics()


def _plan(p: dict[str, Any]) -> tuple[int, int, list[str]]:
    conns = int(p["conns"])
    workers = int(p.get("workers") or 0) or math.ceil(conns / p["conns_per_worker"])
    nproc = math.ceil(conns / p["conns_per_load_process"])
    for what, n in (("server worker", conns / workers), ("load process", conns / nproc)):
        if n > 0.95 * FILES_PER_PROCESS:
            raise ValueError(f"scale: {n:,.0f} connections per {what} would pass the {FILES_PER_PROCESS:,} "
                             "open-file limit; raise workers / lower conns_per_load_process")
    return workers, nproc, sources_for(conns, int(p["conns_per_source"]))


def run_scale(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    if not ctx.wants("fanwire"):
        return {"config": p, "runs": runs, "summary": {}, "skipped": dict(ctx.skipped)}
    workers, nproc, sources = _plan(p)
    extra = ["--ping-interval", str(p["ping_interval"]), "--ping-timeout", str(p["ping_timeout"]),
             "--backlog", str(p["backlog"])]
    for rep in range(ctx.reps(p)):
        ctx.log(f"scale: fanwire x{workers}, {p['conns']:,} connections from {nproc} load processes and "
                f"{len(sources) or 1} source address(es); hold {p['hold_s']} s with heartbeats every "
                f"{p['ping_interval']} s")
        with session(ctx, "fanwire", workers, load_procs=nproc, extra_args=extra) as (srv, pool, plan):
            time.sleep(0.5)
            rss0 = srv.rss()
            o = open_conns(pool, srv, int(p["conns"]), None, sources=sources, timeout=p["timeout"],
                           max_pending=p["max_pending"], require=False)
            ctx.log(f"  opened {o['opened']:,} of {p['conns']:,} in {o['span_s']} s ({o['conn_per_s']} conn/s), "
                    f"errors {o['errors'] or 'none'}, per worker {o['conns_per_worker']}")
            time.sleep(p["settle_s"])
            rss1 = srv.rss()
            per_conn = (rss1 - rss0) / o["opened"] / 1000 if o["opened"] else None
            ctx.log(f"  {per_conn and round(per_conn, 2)} KB per idle connection")
            # one broadcast timed at its arrival (the load idle), then one timed as the busy load reads it
            bc, bcpu, lcpu = _broadcast(ctx, pool, srv, p, o["opened"], arrival=True)
            rbc, rbcpu, rlcpu = _broadcast(ctx, pool, srv, p, o["opened"], arrival=False)
            m0 = _metrics(srv.port)
            scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
            scpu.start()
            gcpu.start()
            held = pool.call("hold", {"duration": p["hold_s"]}, timeout=p["hold_s"] + 120)
            scpu.stop()
            gcpu.stop()
            m1 = _metrics(srv.port)
            rss2 = srv.rss()
        closed = sum(h["closed"] for h in held)
        alive = sum(h["alive"] for h in held)
        hb0 = m0.total("fanwire_heartbeat_timeouts_total") or 0.0
        hb1 = m1.total("fanwire_heartbeat_timeouts_total")
        server_conns = m1.total("fanwire_connections")
        close_codes: dict[str, int] = {}
        for h in held:
            for k, v in h["close_codes"].items():
                close_codes[k] = close_codes.get(k, 0) + v
        dropped = closed + (o["requested"] - o["opened"])
        run = {"target": "fanwire", "server": "fanwire", "repeat": rep, "workers": workers, "conns": p["conns"],
               "load_processes": pool.n, "sources": sources or [HOST], "cores": plan.describe(), **o,
               "rss_before_bytes": rss0, "rss_idle_bytes": rss1, "rss_after_hold_bytes": rss2,
               "rss_per_conn_kb": round(per_conn, 2) if per_conn is not None else None,
               "broadcast": bc, "broadcast_server_cpu": bcpu.report(), "broadcast_load_cpu": lcpu.report(),
               "broadcast_server_us_per_delivery": round(bcpu.seconds * 1e6 / bc["reached"], 2)
               if bc and bc["reached"] else None,
               "broadcast_read": rbc, "broadcast_read_server_cpu": rbcpu.report(),
               "broadcast_read_load_cpu": rlcpu.report(),
               "hold_s": p["hold_s"], "held_alive": alive, "dropped_in_hold": closed,
               "close_codes_in_hold": close_codes, "pings_answered": sum(h["pings_answered"] for h in held),
               "server_heartbeat_timeouts": None if hb1 is None else hb1 - hb0,
               "server_connections_after_hold": server_conns,
               "hold_server_cpu": scpu.report(), "hold_load_cpu": gcpu.report(),
               "idle_server_us_per_conn_s": round(scpu.seconds * 1e6 / max(1, alive) / scpu.wall, 3),
               "valid": o["opened"] == o["requested"] and closed == 0 and bc is not None and rbc is not None
               and bc["reached"] == bc["stamped"] == rbc["reached"] == o["opened"] and not bc["late_start"],
               "dropped": dropped}
        runs.append(run)
        ctx.log(f"  hold {p['hold_s']} s: {alive:,} alive, {closed:,} dropped (codes {close_codes or 'none'}), "
                f"{run['pings_answered']:,} pings answered, server heartbeat timeouts "
                f"{run['server_heartbeat_timeouts']}; idle CPU: {cpu_line({'server_cpu': run['hold_server_cpu'], 'load_cpu': run['hold_load_cpu']})}")
    return {"config": {**p, "workers": workers, "load_processes": nproc, "sources": sources or [HOST]},
            "runs": runs, "summary": summarize(p, runs), "skipped": dict(ctx.skipped)}


def _broadcast(ctx: Ctx, pool: LoadPool, srv: Server, p: dict[str, Any], opened: int, arrival: bool
               ) -> tuple[dict[str, Any] | None, CpuWindow, CpuWindow]:
    """One broadcast to all (:func:`~bench.scenarios.connect.broadcast_all`) and the CPU the server and the
    load processes spent from its send until every receiver had it."""
    scpu, lcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    bc = broadcast_all(pool, srv, p["broadcast_timeout"], arrival=arrival, windows=(scpu, lcpu)) if opened else None
    how = ("arrival at each receiving socket (the load idle)" if arrival else "read by the load processes")
    stamps = (f" ({bc['stamped']:,} stamped: {bc['by_poll']:,} by the poll, {bc['late']} late; {bc['not_ours']} "
              f"not ours, {bc['unarrived']} unarrived)" if bc and arrival else "")
    ctx.log(f"  one broadcast, timed to its {how}: reached {bc['reached'] if bc else 0:,}{stamps}; p99 "
            f"{bc['ms']['p99'] if bc else None} ms, last {bc['ms']['max'] if bc else None} ms; meanwhile the "
            f"server used {scpu.seconds:.2f} CPU seconds, the load {lcpu.seconds:.2f}, the machine "
            f"{scpu.machine_pct / 100 * scpu.wall:.2f} in {scpu.wall:.2f} s")
    return bc, scpu, lcpu


def summarize(p: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if not runs:
        return summary
    r0 = runs[0]
    note = (f"{p['conns']:,} connections to fanwire x{r0['workers']} from {r0['load_processes']} load processes and "
            f"{len(r0['sources'])} source addresses on {len(r0['cores']['load_cores'])} cores; "
            f"{len(runs)} run(s)")

    def cond(r: dict[str, Any]) -> dict[str, Any]:
        return {**conditions(r), "opened": r["opened"], "dropped": r["dropped"]}

    def every(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "valid": True}

    every_run = [every(r) for r in runs]  # the counts are figures even when the run was invalid
    file_figure(summary, "scale_conns_held", "fanwire", every_run, lambda r: r["held_alive"], note, "conns", cond)
    file_figure(summary, "scale_dropped", "fanwire", every_run, lambda r: r["dropped"],
                note + f"; dropped = never opened + closed during the {p['hold_s']} s hold", "conns", cond)
    file_figure(summary, "scale_rss_per_conn_kb", "fanwire", runs, lambda r: r["rss_per_conn_kb"], note, "KB", cond)
    file_figure(summary, "scale_conn_per_s", "fanwire", every_run, lambda r: r["conn_per_s"], note, "conn/s", cond)
    arrival = (note + "; from the scheduled send to each receiver's arrival: the kernel's stamp, or the time a poll "
               "saw its socket readable if earlier (bench.arrival); the load processes idle meanwhile")
    file_figure(summary, "scale_broadcast_p99_ms", "fanwire", runs,
                lambda r: (r["broadcast"] or {}).get("ms", {}).get("p99"), arrival, "ms", cond)
    file_figure(summary, "scale_broadcast_all_ms", "fanwire", runs,
                lambda r: (r["broadcast"] or {}).get("ms", {}).get("max"), arrival, "ms", cond)
    file_figure(summary, "scale_broadcast_server_cpu_s", "fanwire", runs,
                lambda r: (r.get("broadcast_server_cpu") or {}).get("cpu_s"),
                note + "; CPU seconds from the send until every arrival was stamped", "CPU s", cond)
    file_figure(summary, "scale_broadcast_load_cpu_s", "fanwire", runs,
                lambda r: (r.get("broadcast_load_cpu") or {}).get("cpu_s"),
                note + "; CPU seconds from the send until every arrival was stamped", "CPU s", cond)
    file_figure(summary, "scale_broadcast_read_p99_ms", "fanwire", runs,
                lambda r: (r.get("broadcast_read") or {}).get("ms", {}).get("p99"),
                note + "; a second broadcast, from its scheduled send to each receiver's read by its load process "
                "(the load processes share the cores with the server)", "ms", cond)
    file_figure(summary, "scale_idle_server_cpu_pct", "fanwire", every_run,
                lambda r: r["hold_server_cpu"]["cpu_pct"],
                note + f"; heartbeats every {p['ping_interval']} s", "%", cond)
    return summary
