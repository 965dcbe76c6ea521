"""fanout: broadcasts to 1,000 and 10,000 subscribers on one server core, fanwire next to the raw-socket
floor and the websockets baselines at the same offered rates; then fanwire's cross-worker path (2 workers
on the pipe bus) and the Redis bus (2 nodes), each against itself."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..hist import Histogram
from ..loadgen import LoadError, LoadPool, new_marker
from ..procstat import CorePlan, CpuWindow, others_pct
from ..servers import Server, free_port
from ..stats import saturation, spread, window_verdict
from .common import (
    HOST,
    Ctx,
    conns_per_load_process,
    cpu_line,
    file_figure,
    open_conns,
    session,
    sleep_until,
    split,
)

__all__ = ["REDIS_TARGET", "run_fanout", "subs_label"]

REDIS_TARGET = "fanwire-redis"
CROSS_TARGET = "fanwire-2w"


def subs_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def fanout_window(pool: LoadPool, server_pids: list[int], p: dict[str, Any], rate: float, subscribers: int,
                  sample_every: int, by_worker: bool, server_procs: int) -> dict[str, Any]:
    """One measured fan-out window: the first load process publishes ``rate`` broadcasts/s on an open-loop
    schedule, every load process counts deliveries (only messages that carry this window's marker) and
    samples their latency. ``by_worker`` splits the latency into receivers on the publisher's worker and
    on the others (one node only). After a drain, every receiver must have had every broadcast exactly
    once (else the window is invalid). ``saturated``: fewer than 90 % of the offered deliveries/s
    arrived, p99 passed the scenario's bound, or the server was at its CPU limit.

    With ``p["arrival"]`` the latency runs from each broadcast's send to its arrival at each receiving
    socket (the kernel's stamp): the server's delivery, without the time the load processes take to
    read on the same cores, nor how late the publisher (a load process too) sent (``send_lag_ms``);
    ``read_latency_ms`` runs from the send to the read. Without it, both run from the publish schedule
    to the read."""
    marker = new_marker()
    offered = rate * subscribers
    stamped = bool(p.get("arrival", False))
    start_at = time.monotonic() + (0.6 if stamped else 0.3)
    w0 = start_at + p["warmup"]
    w1 = w0 + p["duration"]
    pool.call("listen", {"w0": w0, "w1": w1, "sample_every": sample_every, "marker": marker,
                         "stamped": stamped}, timeout=30)
    count = int(rate * (p["warmup"] + p["duration"]))
    tickets = pool.submit("publish", {"rate": rate, "start_at": start_at, "count": count, "size": p["size"],
                                      "marker": marker, "from_send": stamped}, only=[0])
    scpu, gcpu = CpuWindow(server_pids), CpuWindow(pool.pids)
    sleep_until(w0)
    scpu.start()
    gcpu.start()
    sleep_until(w1)
    scpu.stop()
    gcpu.stop()
    pub = pool.wait(tickets, timeout=30)[0]
    time.sleep(p["drain"])
    late = wait_for_stragglers(pool, pub["sent"], p.get("drain_max", 15.0))
    got = pool.call("collect", {"expected_each": pub["sent"]}, timeout=30)
    same, cross, both, read = Histogram(), Histogram(), Histogram(), Histogram()
    for g in got:
        for w, hd in g["hists"].items():
            h = Histogram.from_dict(hd)
            both.merge(h)
            if by_worker:
                (same if int(w) == pub["worker"] else cross).merge(h)
        for hd in g.get("read_hists", {}).values():
            read.merge(Histogram.from_dict(hd))
    delivered = sum(g["win_rx"] for g in got)
    per_s = round(delivered / p["duration"], 1)
    lat = both.summary(1000)
    cpu = scpu.report()
    sat = saturation(offered=offered, achieved=per_s, p99_ms=lat["p99"], bound_ms=p["saturation_p99_ms"],
                     server_cpu_pct=cpu["cpu_pct"], server_procs=server_procs, min_share=0.9)
    verdict = window_verdict(expected=sum(g["expected"] for g in got),
                             ok=sum(g["expected"] - g["missing"] for g in got),
                             unexpected=sum(g["unexpected"] for g in got), closed=sum(g["closed"] for g in got),
                             extra=sum(g["extra"] for g in got))
    if pub["sent"] < count:
        verdict["valid"] = False
        verdict["reasons"].append(f"published {pub['sent']} of {count}")
    return {"rate": rate, "offered_deliveries_per_s": offered, "deliveries_per_s": per_s,
            "saturated": sat["saturated"], "saturated_why": sat["why"],
            "overloaded": per_s < 0.9 * offered or (lat["p99"] or 0) > p["saturation_p99_ms"],
            "valid": verdict["valid"], "verdict": verdict,
            "published": pub["sent"], "publisher_worker": pub["worker"], "latency_ms": lat,
            "latency_us": both.to_dict(), "latency_to": "arrival" if stamped else "read",
            "read_latency_ms": read.summary(1000) if stamped else lat,
            "unstamped": sum(g.get("unstamped", 0) for g in got), "latency_from": "send" if stamped else "schedule",
            "send_lag_ms": Histogram.from_dict(pub["send_lag_us"]).summary(1000) if "send_lag_us" in pub else None,
            "same_worker_ms": same.summary(1000), "same_worker_us": same.to_dict(),
            "cross_worker_ms": cross.summary(1000), "cross_worker_us": cross.to_dict(),
            "server_cpu": cpu, "load_cpu": gcpu.report(), "other_cpu_pct": others_pct(scpu, gcpu),
            "server_us_per_delivery": round(scpu.seconds * 1e6 / delivered, 3) if delivered else None,
            "sampled_subscribers": f"1 in {sample_every}", "waited_for_late_s": late}


def wait_for_stragglers(pool: LoadPool, each: int, limit: float) -> float:
    """After the drain, keep waiting while deliveries still arrive (a late delivery is not a lost one),
    until all ``each`` x receivers are in, nothing came for a second, or ``limit`` seconds passed.
    Returns the seconds waited."""
    t0 = time.monotonic()
    last, since = -1, t0
    while time.monotonic() - t0 < limit:
        prog = pool.call("progress", {}, timeout=30)
        got = sum(x["received"] for x in prog)
        if got >= each * sum(x["conns"] for x in prog):
            break
        now = time.monotonic()
        if got != last:
            last, since = got, now
        elif now - since > 1.0:
            break
        time.sleep(0.1)
    return round(time.monotonic() - t0, 2)


def _log(ctx: Ctx, label: str, run: dict[str, Any]) -> None:
    lat = run["latency_ms"]
    ctx.log(f"  {label} {run['rate']}/s x {run['subscribers']:,} (repeat {run['repeat'] + 1}): "
            f"{run['deliveries_per_s']:,.0f} deliveries/s of {run['offered_deliveries_per_s']:,}; p50 {lat['p50']} "
            f"p99 {lat['p99']} ms; {cpu_line(run)}"
            f"{' SATURATED: ' + '; '.join(run['saturated_why']) if run['saturated'] else ''}")


def run_fanout(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    targets = ctx.pick(p["targets"])
    notes: dict[str, str] = {}
    for rep in range(ctx.reps(p)):
        for group in p["groups"]:
            subs = int(group["subs"])
            for target in targets:
                nproc = max(p["load_processes"], math.ceil(subs / conns_per_load_process()))
                with session(ctx, target, p["workers"], load_procs=nproc) as (srv, pool, plan):
                    o = open_conns(pool, srv, subs, None)
                    ctx.log(f"fanout: {target}, {o['opened']:,} subscribers over {srv.workers} server process(es), "
                            f"{pool.n} load processes")
                    for rate in group["rates"]:
                        run = {"target": target, "server": srv.kind, "group": subs, "repeat": rep,
                               "workers": srv.workers, "subscribers": o["opened"],
                               **fanout_window(pool, srv.pids, p, rate, o["opened"], group.get("sample_every", 1),
                                               False, srv.workers),
                               "load_processes": pool.n, "cores": plan.describe()}
                        runs.append(run)
                        _log(ctx, target, run)
                        if run["overloaded"]:
                            break
        cw = p.get("cross_worker")
        if cw and ctx.wants("fanwire"):
            runs += _cross_worker(ctx, p, cw, rep)
        if p.get("redis") and ctx.wants("fanwire"):
            redis_runs, note = run_fanout_redis(ctx, p, p["redis"], rep)
            runs += redis_runs
            if note:
                notes["redis"] = note
    return {"config": p, "runs": runs, "summary": summarize(p, runs, notes), "skipped": dict(ctx.skipped)}


def _cross_worker(ctx: Ctx, p: dict[str, Any], cw: dict[str, Any], rep: int) -> list[dict[str, Any]]:
    """fanwire with several workers: subscribers spread over them by the kernel (SO_REUSEPORT), the
    publisher on one; latency split into receivers on the publisher's worker and on the others."""
    runs = []
    subs = int(cw["subs"])
    with session(ctx, "fanwire", int(cw["workers"]), load_procs=p["load_processes"]) as (srv, pool, plan):
        o = open_conns(pool, srv, subs, None)
        ctx.log(f"fanout: fanwire x{srv.workers} (cross-worker), {o['opened']:,} subscribers {o['conns_per_worker']}")
        for rate in cw["rates"]:
            run = {"target": CROSS_TARGET, "server": CROSS_TARGET, "group": subs, "repeat": rep,
                   "workers": srv.workers, "subscribers": o["opened"],
                   **fanout_window(pool, srv.pids, p, rate, o["opened"], cw.get("sample_every", 1), True,
                                   srv.workers),
                   "load_processes": pool.n, "cores": plan.describe()}
            runs.append(run)
            _log(ctx, f"fanwire x{srv.workers}", run)
            if run["overloaded"]:
                break
    return runs


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


def run_fanout_redis(ctx: Ctx, p: dict[str, Any], rp: dict[str, Any],
                     rep: int) -> tuple[list[dict[str, Any]], str]:
    """The same fan-out over the Redis bus: two nodes of one worker each share one redis-server, the
    subscribers are split between them, and the publisher sits on node a, so half the deliveries cross
    Redis. Compared with fanwire's own pipe bus (one node, two workers) at the same settings."""
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
        nproc = max(p["load_processes"], math.ceil(subs / conns_per_load_process()))
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
                run = {"target": REDIS_TARGET, "server": REDIS_TARGET, "bus": "redis", "group": subs, "repeat": rep,
                       "workers": 2, "nodes": 2, "subscribers": opened,
                       **fanout_window(pool, pids, p, rate, opened, rp.get("sample_every", 1), False, 2),
                       "load_processes": pool.n, "cores": plan.describe()}
                runs.append(run)
                _log(ctx, "redis bus", run)
                if run["overloaded"]:
                    break
        finally:
            for srv in nodes:
                srv.stop()
            pool.close()
    finally:
        cm.__exit__(None, None, None)
    return runs, ""


def summarize(p: dict[str, Any], runs: list[dict[str, Any]], notes: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    single = [r for r in runs if r["target"] not in (REDIS_TARGET, CROSS_TARGET)]
    for group in p["groups"]:
        subs = int(group["subs"])
        g = subs_label(subs)
        for rate in group["rates"]:
            at = [r for r in single if r["group"] == subs and r["rate"] == rate]
            for server in dict.fromkeys(r["server"] for r in at):
                mine = [r for r in at if r["server"] == server]
                to = ("to the arrival at the receiving socket (the kernel's stamp)"
                      if mine[0].get("latency_to") == "arrival" else "to the read")
                since = "each broadcast's send" if mine[0].get("latency_from") == "send" else "the publish schedule"
                note = (f"{subs:,} subscribers x {rate} broadcasts/s ({rate * subs:,} deliveries/s offered), one "
                        f"server process, {p['size']} B messages, receivers in {mine[0]['load_processes']} load "
                        f"processes on the other core; latency from {since} {to}; median of {len(mine)}")
                file_figure(summary, f"p99_ms_{g}_{rate}", server, mine, lambda r: r["latency_ms"]["p99"], note, "ms")
                file_figure(summary, f"p50_ms_{g}_{rate}", server, mine, lambda r: r["latency_ms"]["p50"], note, "ms")
                file_figure(summary, f"read_p99_ms_{g}_{rate}", server, mine,
                            lambda r: r.get("read_latency_ms", r["latency_ms"])["p99"],
                            note.replace(to, "to the read by the load process"), "ms")
                file_figure(summary, f"deliveries_per_s_{g}_{rate}", server, mine, lambda r: r["deliveries_per_s"],
                            note, "deliv/s")
                file_figure(summary, f"us_per_delivery_{g}_{rate}", server, mine,
                            lambda r: r["server_us_per_delivery"], note, "us")
            # fanwire against the floor, repeat by repeat (both measured in the same repeat)
            for prefix, key, what in (("", "latency_ms", "p99"), ("read_", "read_latency_ms", "p99 to the read")):
                ratios = []
                for rep in sorted({r["repeat"] for r in at}):
                    fw = next((r for r in at if r["server"] == "fanwire" and r["repeat"] == rep and r["valid"]), None)
                    fl = next((r for r in at if r["server"] == "floor" and r["repeat"] == rep and r["valid"]), None)
                    if fw and fl:
                        a, b = fw.get(key, fw["latency_ms"])["p99"], fl.get(key, fl["latency_ms"])["p99"]
                        if a and b:
                            ratios.append(a / b)
                if ratios:
                    st = spread(ratios)
                    summary[f"{prefix}p99_vs_floor_{g}_{rate}"] = {
                        "fanwire": round(st["median"], 3), "unit": "x",
                        "stats": {"fanwire": {k: v for k, v in st.items()}},
                        "note": f"fanwire {what} / floor {what} at {subs:,} subscribers x {rate}/s, same repeat, "
                                f"median of {len(ratios)} (goal <= 1.2)"}
    # the largest group: the most deliveries/s each server received (at whichever rate), flagged saturated
    # when it did not keep up there
    if single:
        top = max(r["group"] for r in single)
        for server in dict.fromkeys(r["server"] for r in single if r["group"] == top):
            per_rep = []
            for rep in sorted({r["repeat"] for r in single}):
                mine = [r for r in single if r["group"] == top and r["server"] == server and r["repeat"] == rep
                        and r["valid"]]
                if mine:
                    per_rep.append(max(mine, key=lambda r: r["deliveries_per_s"]))
            file_figure(summary, "deliveries_per_s", server, per_rep, lambda r: r["deliveries_per_s"],
                        f"{top:,} subscribers, one server process: the most deliveries/s received at any rate tried "
                        f"({', '.join(str(x) for x in next(g['rates'] for g in p['groups'] if g['subs'] == top))}"
                        f" broadcasts/s), median of {len(per_rep)}", "deliv/s")
    for target, prefix in ((CROSS_TARGET, "cross"), (REDIS_TARGET, "redis")):
        mine = [r for r in runs if r["target"] == target]
        for rate in dict.fromkeys(r["rate"] for r in mine):
            at = [r for r in mine if r["rate"] == rate]
            g = subs_label(at[0]["group"])
            what = ("fanwire, 2 workers on the pipe bus (same and cross-worker receivers)" if prefix == "cross"
                    else "fanwire, Redis bus: 2 nodes x 1 worker sharing one redis-server, publisher on node a")
            note = f"{what}; {at[0]['group']:,} subscribers x {rate}/s; median of {len(at)}"
            file_figure(summary, f"{prefix}_p99_ms_{g}_{rate}", "fanwire", at, lambda r: r["latency_ms"]["p99"],
                        note, "ms")
            file_figure(summary, f"{prefix}_deliveries_per_s_{g}_{rate}", "fanwire", at,
                        lambda r: r["deliveries_per_s"], note, "deliv/s")
            if prefix == "cross":
                file_figure(summary, f"cross_worker_p99_ms_{g}_{rate}", "fanwire", at,
                            lambda r: r["cross_worker_ms"]["p99"], note, "ms")
                file_figure(summary, f"same_worker_p99_ms_{g}_{rate}", "fanwire", at,
                            lambda r: r["same_worker_ms"]["p99"], note, "ms")
    if "redis" in notes:
        summary["redis_skipped"] = {"note": notes["redis"]}
    return summary
