"""The benchmark scenarios: a declarative list, each with a full and a ``--quick`` size.

Every scenario starts its servers fresh (fanwire and the baseline, one after the other, never at the same
time), places them and the load processes on cores (:class:`~bench.procstat.CorePlan`), warms up before
every measured window, and returns one result: ``config``, ``runs`` (one entry per target and setting,
with the raw histograms) and ``summary`` (the figures the README table and the charts use).

All traffic goes to 127.0.0.0/8. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import orjson

from .hist import Histogram
from .loadgen import LoadError, LoadPool, ping_frame
from .procstat import MAX_LOAD_PROCESSES, CorePlan, CpuWindow, cores, others_pct
from .servers import Server, free_port
from .wsproto import OP_BINARY, OP_TEXT, masked_frame

__all__ = ["SCENARIOS", "Ctx", "Scenario", "by_name"]

HOST = "127.0.0.1"
PORTS_PER_SOURCE = 15_000  # well under the ~28,000 ephemeral ports per (source, destination) pair


def conns_per_load_process() -> int:
    """Connections one load process may hold: 60 % of its open-file limit (20,000 here), at most 12,000."""
    import resource

    return max(500, min(12_000, int(resource.getrlimit(resource.RLIMIT_NOFILE)[0] * 0.6)))


@dataclass
class Ctx:
    """What a scenario gets: its size, where to write, how to report progress."""

    quick: bool
    out: Path
    log: Callable[[str], None] = print
    workers_list: list[int] | None = None
    targets: tuple[str, ...] = ("fanwire", "baseline")
    cpus: list[int] = field(default_factory=cores)

    @property
    def ncpu(self) -> int:
        return len(self.cpus)


Runner = Callable[[Ctx, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Runner
    full: dict[str, Any]
    quick: dict[str, Any]

    def params(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)


# ---------------------------------------------------------------------------------------------------
# shared steps


@contextmanager
def session(ctx: Ctx, kind: str, workers: int = 1, mode: str = "chat", load_procs: int = 0,
            plan: CorePlan | None = None) -> Iterator[tuple[Server, LoadPool, CorePlan]]:
    """A fresh server and a pool of load processes, both pinned by the plan; stopped on exit (the
    server first, so the load processes can answer its close frames)."""
    server_procs = workers if kind == "fanwire" else 1
    plan = plan or CorePlan.make(server_procs, ctx.cpus)
    srv = Server(kind, workers, mode=mode, log_dir=ctx.out / "tmp", plan=plan)
    pool = LoadPool(plan.load_processes(load_procs), None if plan.shared else plan.load)
    try:
        srv.start()
        pool.start()
        yield srv, pool, plan
    finally:
        try:
            srv.stop()
        finally:
            pool.close()


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def sources_for(count: int) -> list[str]:
    """Source addresses so no (source, destination) pair runs out of ephemeral ports."""
    n = math.ceil(count / PORTS_PER_SOURCE)
    return [f"127.0.0.{i + 1}" for i in range(n)] if n > 1 else []


def open_conns(pool: LoadPool, srv: Server, count: int, rate: float | None, codec: str = "json",
               max_pending: int = 256, timeout: float = 10.0) -> dict[str, Any]:
    """Open ``count`` connections spread over the pool; the arrival rate is split likewise.
    Returns the merged handshake histogram (us), errors, and connections per second."""
    counts = split(count, pool.n)
    sources = sources_for(count)
    start_at = time.monotonic() + 0.2
    sub = "fanwire.msgpack" if codec == "msgpack" else "fanwire.json"
    args = [{"host": HOST, "port": srv.port, "count": n, "rate": (rate * n / count) if rate else None,
             "start_at": start_at, "subprotocol": sub, "codec": codec,
             "expect_welcome": srv.kind == "fanwire" and srv.mode == "chat", "sources": sources,
             "max_pending": max_pending, "timeout": timeout,
             "deadline": 60.0 + (count / rate if rate else count / 500)} for n in counts]
    cpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    cpu.start()
    gcpu.start()
    results = pool.call("open", args, timeout=120.0 + (count / rate if rate else count / 500))
    cpu.stop()
    gcpu.stop()
    hist = Histogram.merged(r["handshake_us"] for r in results)
    errors: dict[str, int] = {}
    workers: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in r["workers"].items():
            workers[str(k)] = workers.get(str(k), 0) + v
    firsts = [r["first_ns"] for r in results if r["first_ns"]]
    lasts = [r["last_ns"] for r in results if r["last_ns"]]
    span = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
    opened = hist.count
    if opened == 0:
        raise LoadError(f"no connection to {srv.kind} opened: {errors}")
    return {"requested": count, "opened": opened, "errors": errors, "rate": rate,
            "handshake_ms": hist.summary(1000), "handshake_us": hist.to_dict(),
            "conn_per_s": round(opened / span, 1) if span > 0 else None, "span_s": round(span, 3),
            "conns_per_worker": workers, "server_cpu": cpu.report(), "load_cpu": gcpu.report(),
            "server_cpu_s": round(cpu.seconds, 3),
            "server_us_per_handshake": round(cpu.seconds * 1e6 / opened, 1) if opened else None}


def pingpong(pool: LoadPool, srv: Server, frame: bytes, inflight: int, batch: int, warmup: float,
             duration: float) -> dict[str, Any]:
    """Closed-loop pipelined round trips on the pool's open connections; server and load CPU are read
    from /proc over exactly the measured window."""
    start_at = time.monotonic() + 0.2
    tickets = pool.submit("pingpong", {"frame": frame, "inflight": inflight, "batch": batch,
                                       "start_at": start_at, "warmup": warmup, "duration": duration})
    scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    _sleep_until(start_at + warmup)
    scpu.start()
    gcpu.start()
    _sleep_until(start_at + warmup + duration)
    scpu.stop()
    gcpu.stop()
    results = pool.wait(tickets, timeout=duration + warmup + 30)
    received = sum(r["received"] for r in results)
    window = max(r["window_s"] for r in results)
    rx = sum(r["rx_bytes"] for r in results)
    return {
        "msgs_per_s": round(received / window, 1),
        "received": received,
        "window_s": round(window, 3),
        "server_cpu": scpu.report(),
        "load_cpu": gcpu.report(),
        "other_cpu_pct": others_pct(scpu, gcpu),
        "server_us_per_msg": round(scpu.seconds * 1e6 / received, 3) if received else None,
        "wire_bytes_out_per_msg": len(frame),
        "wire_bytes_in_per_msg": round(rx / received, 1) if received else None,
        "conns": sum(r["conns"] for r in results),
        "closed": sum(r["closed"] for r in results),
        "outstanding_after_drain": sum(r["outstanding"] for r in results),
        "load_shape": {"inflight_per_conn": inflight, "resend_batch": batch, "load_processes": pool.n},
    }


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _cpu_line(r: dict[str, Any]) -> str:
    s = r.get("server_cpu", {}).get("cpu_pct")
    g = r.get("load_cpu", {}).get("cpu_pct")
    line = f"server CPU {s}%, load CPU {g}%"
    other = r.get("other_cpu_pct") or 0
    if other >= 15:
        line += f", other CPU {other}% (other processes, kernel)"
    steal = r.get("server_cpu", {}).get("machine_steal_pct") or 0
    if steal >= 5:
        line += f", stolen by the hypervisor {steal}%"
    return line


def _target_label(kind: str, mode: str = "chat") -> str:
    return "fanwire-echo" if kind == "fanwire" and mode == "echo" else kind


def _plan_note(plan: CorePlan) -> str:
    return "shared cores" if plan.shared else f"server cores {list(plan.server)}, load cores {list(plan.load)}"


# ---------------------------------------------------------------------------------------------------
# 1. connect


def run_connect(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for level in p["levels"]:
        for kind in level["targets"]:
            if kind not in ctx.targets:
                continue
            count = int(level["conns"])
            workers = int(level.get("workers", 2))
            nproc = max(CorePlan.make(workers if kind == "fanwire" else 1, ctx.cpus).load_processes(),
                        math.ceil(count / conns_per_load_process()))
            ctx.log(f"connect: {kind} ({workers if kind == 'fanwire' else 1} proc), {count:,} connections"
                    f" at {level.get('rate') or 'max'} conn/s over {nproc} load processes")
            with session(ctx, kind, workers, load_procs=nproc) as (srv, pool, plan):
                time.sleep(0.3)
                rss0 = srv.rss()
                o = open_conns(pool, srv, count, level.get("rate"), timeout=p.get("timeout", 15.0))
                time.sleep(p.get("settle_s", 1.0))
                rss1 = srv.rss()
                per_conn = (rss1 - rss0) / o["opened"] / 1000 if o["opened"] else None
                # one broadcast, and the time until every connection has it
                now = time.monotonic()
                pool.call("listen", {"w0": now, "w1": now + 3600, "sample_every": 1}, timeout=30)
                pub = pool.call("publish", {"rate": 0, "start_at": time.monotonic() + 0.05, "count": 1,
                                            "size": 60}, timeout=30, only=[0])[0]
                reach = pool.call("wait_all", {"expect": 1, "timeout": p.get("broadcast_timeout", 20.0)},
                                  timeout=60)
                got = pool.call("collect", {}, timeout=30)
                hist = Histogram.merged(h for g in got for h in g["hists"].values())
                reached = sum(r["reached"] for r in reach)
                alive = sum(r["conns"] for r in reach)
                run = {"target": kind, "workers": srv.workers, "conns": count, "load_processes": pool.n,
                       "sources": sources_for(count) or [HOST], "cores": plan.describe(), **o,
                       "rss_before_bytes": rss0, "rss_after_bytes": rss1,
                       "rss_per_conn_kb": round(per_conn, 2) if per_conn is not None else None,
                       "broadcast": {"sent": pub["sent"], "reached": reached, "open": alive,
                                     "ms": hist.summary(1000), "latency_us": hist.to_dict()},
                       "held_all": o["opened"] == count and reached == count}
                runs.append(run)
                hs = o["handshake_ms"]
                ctx.log(f"  opened {o['opened']:,}/{count:,} (errors {o['errors'] or 'none'}), handshake p50 "
                        f"{hs['p50']} ms p99 {hs['p99']} ms max {hs['max']} ms, {o['conn_per_s']} conn/s, "
                        f"{run['rss_per_conn_kb']} KB/conn, broadcast reached {reached:,} in "
                        f"{hist.summary(1000)['max']} ms")
    summary: dict[str, Any] = {}
    for kind in ("fanwire", "baseline"):
        mine = [r for r in runs if r["target"] == kind]
        if not mine:
            continue
        first = mine[0]
        _put(summary, "handshake_p99_ms", kind, first["handshake_ms"]["p99"],
             f"at {first['rate'] or 'max'} conn/s arrival, {first['conns']:,} connections")
        _put(summary, "handshake_p50_ms", kind, first["handshake_ms"]["p50"])
        unthrottled = [r["conn_per_s"] for r in mine if not r["rate"] and r["conn_per_s"]]
        _put(summary, "handshakes_per_s", kind, max(unthrottled) if unthrottled else None)
        ref = p.get("rss_reference_conns")
        at = [r for r in mine if r["conns"] == ref] or mine[-1:]
        _put(summary, "rss_per_conn_kb", kind, at[0]["rss_per_conn_kb"], f"at {at[0]['conns']:,} connections")
        held = [r["conns"] for r in mine if r["held_all"]]
        _put(summary, "max_connections", kind, max(held) if held else 0,
             "largest level tried: " + f"{max(r['conns'] for r in mine):,}")
        # compare at the largest level every target ran; the larger ones go in the note
        common = [c for c in sorted({r["conns"] for r in mine})
                  if all(any(r["conns"] == c for r in runs if r["target"] == t) for t in {x["target"] for x in runs})]
        at = [r for r in mine if r["conns"] == (common[-1] if common else mine[-1]["conns"])]
        extra = "; ".join(f"{r['broadcast']['ms']['max']} ms at {r['conns']:,}" for r in mine
                          if r["conns"] > at[-1]["conns"])
        _put(summary, "broadcast_all_ms", kind, at[-1]["broadcast"]["ms"]["max"],
             f"at {at[-1]['conns']:,} connections" + (f" ({extra})" if extra else ""))
    return {"config": p, "runs": runs, "summary": summary}


def _put(summary: dict[str, Any], key: str, target: str, value: Any, note: str = "") -> None:
    entry = summary.setdefault(key, {})
    entry[target] = value
    if note and target == "fanwire":
        entry["note"] = note


# ---------------------------------------------------------------------------------------------------
# 2. throughput


def run_throughput(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    for kind, mode in p["targets"]:
        if kind not in ctx.targets:
            continue
        workers = p["workers"]
        with session(ctx, kind, workers, mode=mode) as (srv, pool, plan):
            for size, codec in p["messages"]:
                open_conns(pool, srv, p["conns"], None, codec=codec)
                frame = ping_frame(codec, size, mask) if mode == "chat" else masked_frame(
                    OP_TEXT if codec == "json" else OP_BINARY, b"x" * size, mask)
                r = pingpong(pool, srv, frame, p["inflight"], p["batch"], p["warmup"], p["duration"])
                pool.call("close", {}, timeout=10)
                run = {"target": _target_label(kind, mode), "workers": srv.workers, "size": size, "codec": codec,
                       "conns": p["conns"], "cores": plan.describe(), **r}
                runs.append(run)
                ctx.log(f"throughput: {run['target']} {size} B {codec}: {r['msgs_per_s']:,.0f} msg/s, "
                        f"{r['server_us_per_msg']} us/msg ({_cpu_line(r)})")
    summary: dict[str, Any] = {}
    for r in runs:
        t = r["target"]
        if t == "fanwire-echo":
            continue
        small = r["size"] <= 1024
        key = ("small" if small else "large") + ("" if r["codec"] == "json" else "_msgpack") + "_msgs_per_s"
        _put(summary, key, t, r["msgs_per_s"], f"{r['size']} B, {r['conns']} connections x "
             f"{r['load_shape']['inflight_per_conn']} in flight, server {_server_pct(r)}% CPU")
        if small and r["codec"] == "json":
            _put(summary, "small_us_per_msg", t, r["server_us_per_msg"])
    return {"config": _jsonable(p), "runs": runs, "summary": summary}


def _server_pct(r: dict[str, Any]) -> Any:
    return r.get("server_cpu", {}).get("cpu_pct")


def _jsonable(p: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(p))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------
# 3. latency


def run_latency(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for kind in ("fanwire", "baseline"):
        if kind not in ctx.targets:
            continue
        # open-loop senders spin between sends (timers are 1 ms coarse): keep them few
        nproc = p.get("load_processes") or min(
            p["max_load_processes"], CorePlan.make(p["workers"] if kind == "fanwire" else 1, ctx.cpus).load_processes())
        with session(ctx, kind, p["workers"], load_procs=nproc) as (srv, pool, plan):
            open_conns(pool, srv, p["conns"], None, codec=p["codec"])
            for rate in p["rates"]:
                start_at = time.monotonic() + 0.2
                per = rate / pool.n
                tickets = pool.submit("openloop", {"rate": per, "start_at": start_at, "warmup": p["warmup"],
                                                   "duration": p["duration"], "codec": p["codec"],
                                                   "size": p["size"], "drain": p["drain"]})
                scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
                _sleep_until(start_at + p["warmup"])
                scpu.start()
                gcpu.start()
                _sleep_until(start_at + p["warmup"] + p["duration"])
                scpu.stop()
                gcpu.stop()
                res = pool.wait(tickets, timeout=p["warmup"] + p["duration"] + p["drain"] + 40)
                hist = Histogram.merged(r["latency_us"] for r in res)
                lag = Histogram.merged(r["send_lag_us"] for r in res)
                sent_w = sum(r["sent_window"] for r in res)
                got_w = sum(r["replies_window"] for r in res)
                lat = hist.summary(1000)
                saturated = got_w < 0.95 * sent_w or (lat["p99"] or 0) > p["saturation_p99_ms"]
                # the load processes could not keep to the schedule: part of the latency is theirs
                load_bound = (lag.percentile(99) or 0) > 1000
                run = {"target": kind, "workers": srv.workers, "offered_per_s": rate,
                       "achieved_per_s": round(got_w / p["duration"], 1), "sent_window": sent_w,
                       "replies_window": got_w, "lost": sum(r["sent"] - r["received"] for r in res),
                       "latency_ms": lat, "latency_us": hist.to_dict(), "send_lag_ms": lag.summary(1000),
                       "server_cpu": scpu.report(), "load_cpu": gcpu.report(),
                       "other_cpu_pct": others_pct(scpu, gcpu),
                       "server_us_per_msg": round(scpu.seconds * 1e6 / got_w, 3) if got_w else None,
                       "saturated": saturated, "load_bound": load_bound, "conns": p["conns"],
                       "load_processes": pool.n,
                       "cores": plan.describe()}
                runs.append(run)
                ctx.log(f"latency: {kind} {rate:,}/s offered: {run['achieved_per_s']:,.0f}/s, p50 {lat['p50']} "
                        f"p99 {lat['p99']} p99.9 {lat['p99_9']} max {lat['max']} ms; send lag p99 "
                        f"{run['send_lag_ms']['p99']} ms ({_cpu_line(run)}){' SATURATED' if saturated else ''}{' (load processes late)' if load_bound else ''}")
                if saturated:
                    break
    summary: dict[str, Any] = {}
    ref = p["reference_rate"]
    for kind in ("fanwire", "baseline"):
        mine = [r for r in runs if r["target"] == kind]
        if not mine:
            continue
        at = [r for r in mine if r["offered_per_s"] == ref]
        if at:
            r0, note = at[0], ""
        else:
            r0 = max(mine, key=lambda r: r["offered_per_s"])
            note = f"{ref:,}/s not reached; figure at {r0['offered_per_s']:,}/s"
            if not r0["saturated"] and ctx.quick:
                note += " (quick run)"
            elif r0["saturated"]:
                note += " (saturated)"
        if at and at[0]["saturated"]:
            note = "saturated at this rate"
        _put(summary, "p99_ms_at_20k", kind, r0["latency_ms"]["p99"], note)
        _put(summary, "p50_ms_at_20k", kind, r0["latency_ms"]["p50"])
        ok = [r["offered_per_s"] for r in mine if not r["saturated"] and (r["latency_ms"]["p99"] or 1e9) <= 1.0]
        _put(summary, "max_rate_p99_1ms", kind, max(ok) if ok else 0)
        unsat = [r["achieved_per_s"] for r in mine if not r["saturated"]]
        _put(summary, "max_unsaturated_per_s", kind, max(unsat) if unsat else 0)
    return {"config": p, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------------------------------
# 4. fanout


def run_fanout(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for group in p["groups"]:
        subs = int(group["subs"])
        for kind in ("fanwire", "baseline"):
            if kind not in ctx.targets:
                continue
            nproc = max(p.get("load_processes", min(ctx.ncpu, MAX_LOAD_PROCESSES)),
                        math.ceil(subs / conns_per_load_process()))
            with session(ctx, kind, p["workers"], load_procs=nproc) as (srv, pool, plan):
                o = open_conns(pool, srv, subs, None)
                ctx.log(f"fanout: {kind}, {o['opened']:,} subscribers over {srv.workers} worker(s) "
                        f"{o['conns_per_worker']}, {pool.n} load processes")
                for rate in group["rates"]:
                    offered = rate * o["opened"]
                    run = {"target": kind, "workers": srv.workers, "subscribers": o["opened"],
                           **_fanout_window(pool, srv.pids, p, rate, offered, group.get("sample_every", 1), True),
                           "load_processes": pool.n, "cores": plan.describe()}
                    lat = run["latency_ms"]
                    runs.append(run)
                    ctx.log(f"  {rate}/s x {o['opened']:,}: {run['deliveries_per_s']:,.0f} deliveries/s of "
                            f"{offered:,}; p50 {lat['p50']} p99 {lat['p99']} ms (same worker p99 "
                            f"{run['same_worker_ms']['p99']}, cross {run['cross_worker_ms']['p99']}); "
                            f"{_cpu_line(run)}{' SATURATED' if run['saturated'] else ''}")
                    if run["saturated"]:
                        break
    redis_note = ""
    if p.get("redis") and "fanwire" in ctx.targets:
        redis_runs, redis_note = run_fanout_redis(ctx, p, p["redis"])
        runs += redis_runs
    summary: dict[str, Any] = {}
    biggest = max((r["subscribers"] for r in runs if r["target"] != REDIS_TARGET), default=0)
    for kind in ("fanwire", "baseline"):
        mine = [r for r in runs if r["target"] == kind]
        if not mine:
            continue
        top = max(r["subscribers"] for r in mine)
        at = [r for r in mine if r["subscribers"] == top]
        good = [r for r in at if not r["saturated"] and (r["latency_ms"]["p99"] or 1e9) <= p["goal_p99_ms"]]
        best = max(good or at, key=lambda r: r["deliveries_per_s"])
        _put(summary, "deliveries_per_s", kind, best["deliveries_per_s"],
             f"{best['subscribers']:,} subscribers, {best['rate']} broadcasts/s over {best['workers']} "
             f"worker(s), the best rate with p99 <= {p['goal_p99_ms']:g} ms"
             + ("" if good else " (none had it: best rate shown)")
             + f"; server at {best['server_cpu']['cpu_pct']}% CPU, load processes at "
               f"{best['load_cpu']['cpu_pct']}% CPU (of {100 * ctx.ncpu}%)")
        _put(summary, "p99_ms", kind, best["latency_ms"]["p99"],
             f"same worker p99 {best['same_worker_ms']['p99']} ms, cross worker p99 "
             f"{best['cross_worker_ms']['p99']} ms" if kind == "fanwire" else "")
        if top != biggest and kind == "fanwire":
            summary["deliveries_per_s"]["note"] += f" (the {biggest:,} group did not run for fanwire)"
    redis = [r for r in runs if r["target"] == REDIS_TARGET]
    if redis:
        best = max(redis, key=lambda r: r["deliveries_per_s"] if not r["saturated"] else 0)
        pipe = next((r for r in runs if r["target"] == "fanwire" and r["subscribers"] == best["subscribers"]
                     and r["rate"] == best["rate"]), None)
        pipe_txt = (f"; the pipe bus (1 node x 2 workers) at the same setting: {pipe['deliveries_per_s']:,.0f}"
                    f" deliveries/s, p99 {pipe['latency_ms']['p99']} ms" if pipe else "")
        _put(summary, "redis_deliveries_per_s", "fanwire", best["deliveries_per_s"],
             f"2 nodes x 1 worker sharing one redis-server, {best['subscribers']:,} subscribers split over the "
             f"nodes, {best['rate']} broadcasts/s from node a{pipe_txt}")
        _put(summary, "redis_p99_ms", "fanwire", best["latency_ms"]["p99"])
    elif redis_note:
        summary["redis_skipped"] = redis_note
    return {"config": p, "runs": runs, "summary": summary}


def _fanout_window(pool: LoadPool, server_pids: list[int], p: dict[str, Any], rate: float, offered: float,
                   sample_every: int, by_worker: bool) -> dict[str, Any]:
    """One measured fan-out window: the first load process publishes ``rate`` broadcasts/s on an open-loop
    schedule, every load process counts deliveries and samples their latency. ``by_worker`` splits the
    latency into receivers on the publisher's worker and on the others (one node only). ``saturated``:
    fewer than 90 % of the ``offered`` deliveries/s arrived, or p99 passed the scenario's bound."""
    start_at = time.monotonic() + 0.3
    w0 = start_at + p["warmup"]
    w1 = w0 + p["duration"]
    pool.call("listen", {"w0": w0, "w1": w1, "sample_every": sample_every}, timeout=30)
    count = int(rate * (p["warmup"] + p["duration"]))
    tickets = pool.submit("publish", {"rate": rate, "start_at": start_at, "count": count, "size": p["size"]},
                          only=[0])
    scpu, gcpu = CpuWindow(server_pids), CpuWindow(pool.pids)
    _sleep_until(w0)
    scpu.start()
    gcpu.start()
    _sleep_until(w1)
    scpu.stop()
    gcpu.stop()
    pub = pool.wait(tickets, timeout=30)[0]
    time.sleep(p["drain"])
    got = pool.call("collect", {}, timeout=30)
    same, cross, both = Histogram(), Histogram(), Histogram()
    for g in got:
        for w, hd in g["hists"].items():
            h = Histogram.from_dict(hd)
            both.merge(h)
            if by_worker:
                (same if int(w) == pub["worker"] else cross).merge(h)
    delivered = sum(g["win_rx"] for g in got)
    per_s = round(delivered / p["duration"], 1)
    lat = both.summary(1000)
    return {"rate": rate, "offered_deliveries_per_s": offered, "deliveries_per_s": per_s,
            "saturated": per_s < 0.9 * offered or (lat["p99"] or 0) > p["saturation_p99_ms"],
            "published": pub["sent"], "publisher_worker": pub["worker"], "latency_ms": lat,
            "latency_us": both.to_dict(),
            "same_worker_ms": same.summary(1000), "same_worker_us": same.to_dict(),
            "cross_worker_ms": cross.summary(1000), "cross_worker_us": cross.to_dict(),
            "server_cpu": scpu.report(), "load_cpu": gcpu.report(), "other_cpu_pct": others_pct(scpu, gcpu),
            "server_us_per_delivery": round(scpu.seconds * 1e6 / delivered, 3) if delivered else None,
            "sampled_subscribers": f"1 in {sample_every}"}


REDIS_TARGET = "fanwire-redis"


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port (no persistence); yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise LoadError("no redis-server binary")
    port = free_port(HOST)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise LoadError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_fanout_redis(ctx: Ctx, p: dict[str, Any], rp: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The same fan-out over the Redis bus: two nodes of one worker each share one redis-server, the
    subscribers are split between them, and the publisher sits on node a, so half the deliveries cross
    Redis. Compared with the pipe bus (one node, two workers) at the same settings."""
    runs: list[dict[str, Any]] = []
    subs = int(rp["subs"])
    try:
        cm = redis_server()
        url = cm.__enter__()
    except LoadError as exc:
        ctx.log(f"fanout: Redis bus skipped: {exc}")
        return runs, f"skipped: {exc}"
    try:
        plan = CorePlan.make(2, ctx.cpus)
        nodes = [Server("fanwire", 1, log_dir=ctx.out / "tmp", plan=CorePlan(plan.server[i:i + 1], plan.load,
                                                                              plan.shared),
                        extra_args=["--bus", "redis", "--redis-url", url, "--node-id", name])
                 for i, name in enumerate(("a", "b"))]
        nproc = max(p.get("load_processes", min(ctx.ncpu, MAX_LOAD_PROCESSES)),
                    math.ceil(subs / conns_per_load_process()))
        pool = LoadPool(plan.load_processes(nproc), None if plan.shared else plan.load)
        try:
            for srv in nodes:
                srv.start()
            pool.start()
            opened = sum(open_conns(pool, srv, n, None)["opened"] for srv, n in zip(nodes, split(subs, 2)))
            time.sleep(0.5)  # subscriptions settle
            ctx.log(f"fanout: fanwire over Redis, {opened:,} subscribers on 2 nodes x 1 worker")
            pids = [pid for srv in nodes for pid in srv.pids]
            for rate in rp["rates"]:
                offered = rate * opened
                run = {"target": REDIS_TARGET, "bus": "redis", "workers": 2, "nodes": 2, "subscribers": opened,
                       **_fanout_window(pool, pids, p, rate, offered, rp.get("sample_every", 1), False),
                       "load_processes": pool.n, "cores": plan.describe()}
                lat = run["latency_ms"]
                runs.append(run)
                ctx.log(f"  redis bus {rate}/s x {opened:,}: {run['deliveries_per_s']:,.0f} deliveries/s of "
                        f"{offered:,}; p50 {lat['p50']} p99 {lat['p99']} ms; {_cpu_line(run)}"
                        f"{' SATURATED' if run['saturated'] else ''}")
                if run["saturated"]:
                    break
        finally:
            for srv in nodes:
                srv.stop()
            pool.close()
    finally:
        cm.__exit__(None, None, None)
    return runs, ""


# ---------------------------------------------------------------------------------------------------
# 5. codecs

TYPICAL = {"user": "alice", "room": "lobby", "text": "hello everyone, how is it going today?", "seq": 123456,
           "tags": ["chat", "general", "en"], "score": 0.75, "ok": True, "reply_to": None}


def typical_frame(codec: str, mask: bytes) -> bytes:
    msg = {"type": "ping", "id": 42, "ts": TYPICAL}
    if codec == "json":
        return masked_frame(OP_TEXT, orjson.dumps(msg), mask)
    return masked_frame(OP_BINARY, bytes(msgpack.packb(msg)), mask)


def run_codecs(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    for kind in ("fanwire", "baseline"):
        if kind not in ctx.targets:
            continue
        with session(ctx, kind, p["workers"]) as (srv, pool, plan):
            for codec in p["codecs"]:
                open_conns(pool, srv, p["conns"], None, codec=codec)
                frame = typical_frame(codec, mask)
                r = pingpong(pool, srv, frame, p["inflight"], p["batch"], p["warmup"], p["duration"])
                pool.call("close", {}, timeout=10)
                run = {"target": kind, "workers": srv.workers, "codec": codec, "conns": p["conns"],
                       "message": "typical", "cores": plan.describe(), **r}
                runs.append(run)
                ctx.log(f"codecs: {kind} {codec}: {r['msgs_per_s']:,.0f} msg/s, {r['server_us_per_msg']} us/msg, "
                        f"{r['wire_bytes_out_per_msg']} B out / {r['wire_bytes_in_per_msg']} B back ({_cpu_line(r)})")
    summary: dict[str, Any] = {}
    for r in runs:
        _put(summary, f"{r['codec']}_msgs_per_s", r["target"], r["msgs_per_s"])
        _put(summary, f"{r['codec']}_us_per_msg", r["target"], r["server_us_per_msg"])
    for kind in ("fanwire", "baseline"):
        by = {r["codec"]: r for r in runs if r["target"] == kind}
        if "json" in by and "msgpack" in by and by["json"]["wire_bytes_in_per_msg"]:
            j, m = by["json"], by["msgpack"]
            ratio = ((m["wire_bytes_out_per_msg"] + (m["wire_bytes_in_per_msg"] or 0))
                     / (j["wire_bytes_out_per_msg"] + j["wire_bytes_in_per_msg"]))
            _put(summary, "msgpack_wire_ratio", kind, round(ratio, 3), "request + reply frames")
    return {"config": {**p, "typical_message": TYPICAL}, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------------------------------
# 6. scaling


def run_scaling(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    frame = ping_frame(p["codec"], p["size"], mask)
    workers_list = ctx.workers_list or p.get("workers_list") or list(range(1, ctx.ncpu + 1))
    plan_targets: list[tuple[str, int]] = [("fanwire", w) for w in workers_list]
    if "baseline" in ctx.targets:
        plan_targets.append(("baseline", 1))
    for kind, w in plan_targets:
        if kind not in ctx.targets:
            continue
        conns = max(p["conns"], p["conns_per_worker"] * w)
        with session(ctx, kind, w) as (srv, pool, plan):
            open_conns(pool, srv, conns, None, codec=p["codec"])
            r = pingpong(pool, srv, frame, p["inflight"], p["batch"], p["warmup"], p["duration"])
            pool.call("close", {}, timeout=10)
        run = {"target": kind, "workers": w, "conns": conns, "size": p["size"], "codec": p["codec"],
               "cores": plan.describe(), **r,
               "msgs_per_s_per_worker": round(r["msgs_per_s"] / w, 1)}
        runs.append(run)
        ctx.log(f"scaling: {kind} x{w}: {r['msgs_per_s']:,.0f} msg/s ({r['msgs_per_s'] / w:,.0f} per worker), "
                f"{r['server_us_per_msg']} us/msg ({_cpu_line(r)}; {_plan_note(plan)})")
    summary: dict[str, Any] = {}
    for kind in ("fanwire", "baseline"):
        mine = [r for r in runs if r["target"] == kind]
        if mine:
            best = max(mine, key=lambda r: r["msgs_per_s"])
            _put(summary, "best_msgs_per_s", kind, best["msgs_per_s"],
                 f"{best['workers']} worker(s) on {ctx.ncpu} cores" + (
                     "; server and load share cores" if best["cores"]["shared"] else ""))
    return {"config": {**p, "workers_list": workers_list}, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------------------------------
# the list

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "connect", "Connections: handshake time, connections/s, memory per idle connection, broadcast to all",
        run_connect,
        # the 1k level measures handshake time: one worker, so server and load get separate cores
        full={"levels": [{"conns": 1000, "rate": 1000, "workers": 1, "targets": ["fanwire", "baseline"]},
                         {"conns": 10000, "rate": None, "workers": 2, "targets": ["fanwire", "baseline"]},
                         {"conns": 60000, "rate": None, "workers": 4, "targets": ["fanwire"]}],
              "rss_reference_conns": 10000, "settle_s": 1.5, "timeout": 15.0, "broadcast_timeout": 20.0},
        quick={"levels": [{"conns": 200, "rate": 500, "workers": 1, "targets": ["fanwire", "baseline"]},
                          {"conns": 400, "rate": None, "workers": 2, "targets": ["fanwire", "baseline"]}],
               "rss_reference_conns": 400, "settle_s": 0.3, "timeout": 10.0, "broadcast_timeout": 5.0},
    ),
    Scenario(
        "throughput", "Throughput: pipelined ping/pong round trips, 64 B and 16 KiB, JSON and msgpack",
        run_throughput,
        full={"targets": [("fanwire", "chat"), ("baseline", "chat"), ("fanwire", "echo")],
              "messages": [(64, "json"), (64, "msgpack"), (16384, "json"), (16384, "msgpack")],
              "conns": 100, "inflight": 16, "batch": 4, "warmup": 1.0, "duration": 4.0, "workers": 1},
        quick={"targets": [("fanwire", "chat"), ("baseline", "chat"), ("fanwire", "echo")],
               "messages": [(64, "json"), (64, "msgpack"), (16384, "json"), (16384, "msgpack")],
               "conns": 100, "inflight": 16, "batch": 4, "warmup": 0.2, "duration": 0.4, "workers": 1},
    ),
    Scenario(
        "latency", "Latency: open-loop round trips at fixed offered rates, until saturation",
        run_latency,
        full={"rates": [1000, 5000, 10000, 20000, 30000, 50000, 75000, 100000, 150000, 200000],
              "reference_rate": 20000, "conns": 100, "codec": "json", "size": 64, "warmup": 0.5,
              "duration": 2.5, "drain": 2.0, "workers": 1, "saturation_p99_ms": 200.0, "max_load_processes": 2},
        quick={"rates": [1000, 5000], "reference_rate": 20000, "conns": 50, "codec": "json", "size": 64,
               "warmup": 0.2, "duration": 0.4, "drain": 1.0, "workers": 1, "saturation_p99_ms": 200.0,
               "max_load_processes": 2},
    ),
    Scenario(
        "fanout", "Fan-out: broadcasts to 1k and 10k subscribers across workers, deliveries/s and latency",
        run_fanout,
        full={"groups": [{"subs": 1000, "rates": [50, 200, 500], "sample_every": 1},
                         {"subs": 10000, "rates": [5, 20, 50], "sample_every": 10}],
              "redis": {"subs": 1000, "rates": [50, 200, 500], "sample_every": 1},
              "workers": 2, "size": 100, "warmup": 0.5, "duration": 3.0, "drain": 1.0,
              "saturation_p99_ms": 1000.0, "goal_p99_ms": 50.0},
        quick={"groups": [{"subs": 100, "rates": [20, 100], "sample_every": 1}],
               "redis": {"subs": 100, "rates": [20], "sample_every": 1},
               "workers": 2, "size": 100, "warmup": 0.2, "duration": 0.4, "drain": 0.3,
               "saturation_p99_ms": 1000.0, "goal_p99_ms": 50.0},
    ),
    Scenario(
        "codecs", "Codecs: JSON vs msgpack for a typical message: msg/s, server CPU, bytes on the wire",
        run_codecs,
        full={"codecs": ["json", "msgpack"], "conns": 100, "inflight": 16, "batch": 4, "warmup": 1.0,
              "duration": 3.0, "workers": 1},
        quick={"codecs": ["json", "msgpack"], "conns": 50, "inflight": 16, "batch": 4, "warmup": 0.2,
               "duration": 0.4, "workers": 1},
    ),
    Scenario(
        "scaling", "Scaling: round trips/s against the number of workers",
        run_scaling,
        full={"conns": 100, "conns_per_worker": 50, "inflight": 16, "batch": 4, "warmup": 1.0, "duration": 4.0,
              "size": 64, "codec": "json"},
        quick={"conns": 50, "conns_per_worker": 25, "inflight": 16, "batch": 4, "warmup": 0.2,
               "duration": 0.4, "size": 64, "codec": "json"},
    ),
)


def by_name(names: Sequence[str]) -> list[Scenario]:
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]
