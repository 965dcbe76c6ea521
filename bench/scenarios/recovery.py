"""recovery: nothing lost across reconnects (protocol v1.1), and what sequencing and history cost.

Two parts, interleaved in every repeat:

- **Cuts** (``chaos``): fanwire with ``workers`` workers (2: subscribers on both, so most of them get each
  stream through the pipe bus from the worker that sequences it). ``subs`` raw v1.1 subscribers
  (:mod:`bench.recoveryload`) join ``rooms`` rooms and ``$broadcast``; one publisher publishes ``rate``
  messages/s to each stream, each acknowledged. Inside the window every subscriber is cut (TCP reset, no
  close frame) once every ``cut_every`` seconds, the cuts spread evenly over the period, and reconnects
  ``down_s`` later with its session and ``since``. Publishing stops at the end of the window; the
  subscribers are given ``settle_s`` to catch up; then each one's offsets are checked against the
  publisher's acks (:mod:`bench.completeness`): every offset of every stream exactly once, in order.
  Figures: the delivered fraction (goal 100.00 %), duplicates, out-of-order and missing deliveries,
  history losses (``recovered: false``, epoch changes), the time to recover (reconnect's TCP connect to
  the last ``joined``, i.e. caught up) and its handshake part.
- **The price** (``price``): fanwire with one worker on its own core, started twice per repeat, with
  history on (the default, ``--history-size 256``) and off (``--history-size 0``), in alternating order:
  the same closed-loop ping/pong as ``throughput`` (round trips/s, server CPU per round trip) and the same
  broadcast fan-out windows as ``fanout`` (server CPU per delivery), each window checked as there. The
  ratios on/off are taken repeat by repeat (both measured minutes apart, on the same machine) and their
  median is the figure. Offsets are assigned with history off too, so this measures history, not
  sequencing: a server that cannot turn sequencing off cannot show its price in one run.

A run whose measurement failed (the publisher could not publish or was not acknowledged, a subscriber
could not be set up, messages that were not ours) is *invalid* and left out of the medians; a run where
the server lost, duplicated or reordered something is valid, and misses the goal (``goal_met: false``,
with the reasons): the failures are the figure, never filtered out.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..completeness import AckLog, delivered_pct, failures, merge_counts
from ..hist import Histogram
from ..loadgen import LoadError, LoadPool, new_marker, ping_frame, pong_expect
from ..procstat import CorePlan, CpuWindow, others_pct
from ..promtext import Metrics, fetch
from ..recoveryload import stream_names
from ..servers import Server
from ..stats import CPU_SATURATED_PCT, load_bound, median_index, saturation, spread
from .common import (
    HOST,
    Ctx,
    conditions,
    cpu_line,
    file_figure,
    open_conns,
    pingpong,
    session,
    sleep_until,
    split,
)
from .fanout import fanout_window, subs_label

__all__ = ["check_params", "run_recovery"]

HISTORY_OFF = ["--history-size", "0"]
SERVER_HISTORY_SIZE = 256  # the server's default --history-size, which the cuts rely on
METRICS = ("fanwire_dropped_messages_total", "fanwire_slow_consumers_total", "fanwire_connections_opened_total",
           "fanwire_errors_total", "fanwire_bus_dropped_total")


def check_params(p: dict[str, Any]) -> None:
    """Refuse settings under which the scenario itself would cause a history loss: a subscriber that is
    down for ``down_s`` (plus up to a second to reconnect and rejoin) must find what it missed still in
    the stream's history, which keeps the last 256 messages by default."""
    c = p["chaos"]
    worst = c["rate"] * (c["down_s"] + 1.0)
    if worst > SERVER_HISTORY_SIZE / 2:
        raise ValueError(f"recovery: {c['rate']}/s per stream x {c['down_s']} s down could outrun the server's "
                         f"history ({SERVER_HISTORY_SIZE} messages): lower chaos.rate or chaos.down_s")
    if c["cut_every"] <= c["down_s"] + 0.05:
        raise ValueError("recovery: chaos.cut_every must leave time to reconnect after chaos.down_s")


def _metrics(port: int) -> Metrics:
    try:
        return fetch(HOST, port)
    except OSError:
        return Metrics()


def _metric_deltas(m0: Metrics, m1: Metrics) -> dict[str, float]:
    return {name: round((m1.total(name) or 0.0) - (m0.total(name) or 0.0), 1) for name in METRICS}


# ---------------------------------------------------------------------------------------------------
# the cuts


def chaos_run(ctx: Ctx, p: dict[str, Any], rep: int) -> dict[str, Any]:
    """One window of cuts under steady publishing; the verdict from offsets."""
    c = p["chaos"]
    workers = int(c["workers"])
    subs = int(c["subs"])
    marker = new_marker()
    streams = stream_names(int(c["rooms"]), marker[2:])
    plan = CorePlan.make(workers, ctx.cpus)
    nproc = max(1, min(int(c["load_processes"]), subs))
    extra = [str(a) for a in c.get("server_args") or []]
    with session(ctx, "fanwire", workers, load_procs=nproc, plan=plan, extra_args=extra) as (srv, pool, plan):
        counts = split(subs, pool.n)
        firsts = [sum(counts[:i]) for i in range(pool.n)]
        common = {"host": HOST, "port": srv.port, "streams": streams, "marker": marker, "total": subs,
                  "codec": c["codec"], "down_s": c["down_s"], "timeout": 10.0}
        setup = pool.call("recovery_open", [{**common, "count": n, "first": f, "publisher": i == 0}
                                            for i, (n, f) in enumerate(zip(counts, firsts))], timeout=120)
        live = sum(s["live"] for s in setup)
        ctx.log(f"recovery: fanwire x{srv.workers}, {live:,} of {subs:,} subscribers on {len(streams)} streams, "
                f"{pool.n} load processes; cut every {c['cut_every']} s, down {c['down_s']} s, "
                f"{c['rate']}/s per stream")
        m0 = _metrics(srv.port)
        start_at = time.monotonic() + 0.3
        w0 = start_at + c["warmup"]
        w1 = w0 + c["duration"]
        tickets = pool.submit("recovery_run", {"start_at": start_at, "warmup": c["warmup"], "duration": c["duration"],
                                               "cut_every": c["cut_every"], "rate": c["rate"]})
        scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
        sleep_until(w0)
        scpu.start()
        gcpu.start()
        sleep_until(w1)
        scpu.stop()
        gcpu.stop()
        ran = pool.wait(tickets, timeout=c["duration"] + c["warmup"] + 60)
        pub = ran[0]["publisher"]
        ends = AckLog.ends(pub["acks"])
        settled = pool.call("recovery_settle", {"ends": ends, "timeout": c["settle_s"]}, timeout=c["settle_s"] + 60)
        m1 = _metrics(srv.port)
        pool.call("recovery_close", {}, timeout=30)
        return _chaos_result(c, rep, srv, plan, pool, setup, pub, ran, settled, scpu, gcpu, _metric_deltas(m0, m1),
                             streams)


def _merge_maps(maps: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def _chaos_result(c: dict[str, Any], rep: int, srv: Server, plan: CorePlan, pool: LoadPool,
                  setup: list[dict[str, Any]], pub: dict[str, Any], ran: list[dict[str, Any]],
                  settled: list[dict[str, Any]], scpu: CpuWindow, gcpu: CpuWindow, metrics: dict[str, float],
                  streams: list[str]) -> dict[str, Any]:
    counts = merge_counts(s["completeness"] for s in settled)
    total = merge_counts({k: v for k, v in s.items() if isinstance(v, int) and not isinstance(v, bool)}
                         for s in settled)
    errors = _merge_maps([s["errors"] for s in settled])
    recover = Histogram.merged(s["recover_us"] for s in settled)
    handshake = Histogram.merged(s["handshake_us"] for s in settled)
    lag = Histogram.from_dict(pub["send_lag_us"])
    win_rx = sum(r["win_rx"] for r in ran)
    subs = int(c["subs"])
    live0 = sum(s["live"] for s in setup)
    # the measurement itself: did the load do what it had to?
    invalid = []
    if live0 < subs:
        invalid.append(f"{subs - live0:,} of {subs:,} subscribers could not be set up")
    if pub["sent"] < pub["scheduled"]:
        invalid.append(f"published {pub['sent']:,} of {pub['scheduled']:,}")
    if pub["unacked"]:
        invalid.append(f"{pub['unacked']:,} publications never acknowledged")
    if pub["closed"]:
        invalid.append("the publisher's connection closed")
    if pub["unexpected"] or total["unexpected"]:
        invalid.append(f"{pub['unexpected'] + total['unexpected']:,} messages that were not ours or not v1.1")
    ack_gaps = AckLog.gaps(pub["acks"])
    # the server: what the goal (every offset exactly once, in order, no history lost) says
    goal_counts = {**counts, "recovered_false": total["recovered_false"],
                   "errors": sum(errors.values()) + pub["failed"]}
    why = failures(goal_counts)
    if total["not_live"]:
        why.append(f"{total['not_live']:,} subscribers not connected and caught up after {c['settle_s']} s")
    if ack_gaps:
        why.append(f"{ack_gaps:,} offsets skipped in the publisher's acknowledgements")
    if total["short_replays"]:
        why.append(f"{total['short_replays']:,} joins answered recovered before the replay was complete")
    server_cpu = scpu.report()
    load_cpu = gcpu.report()
    sat_why = saturation(offered=0, achieved=0, p99_ms=None, bound_ms=0, server_cpu_pct=server_cpu["cpu_pct"],
                         server_procs=len(plan.server))["why"]
    lag_p99 = (lag.summary(1000).get("p99") or 0.0)
    if lag_p99 > c.get("max_send_lag_ms", 50.0):
        sat_why.append(f"the publisher was {lag_p99:.0f} ms late (p99)")
    lb = load_bound(load_cpu["cpu_pct"], len(plan.load))
    if lb and not plan.shared:
        sat_why.append(f"load processes at {load_cpu['cpu_pct']:.0f} % CPU")
    if plan.shared and (server_cpu["cpu_pct"] + load_cpu["cpu_pct"]) >= CPU_SATURATED_PCT * len(plan.load):
        sat_why.append(f"server and load together at {server_cpu['cpu_pct'] + load_cpu['cpu_pct']:.0f} % of "
                       f"{len(plan.load)} shared cores")
    rejoins = total["rejoins"]
    return {
        "target": "fanwire", "server": "fanwire", "kind": "chaos", "repeat": rep, "workers": srv.workers,
        "subscribers": subs, "streams": len(streams), "rate_per_stream": c["rate"], "cut_every_s": c["cut_every"],
        "down_s": c["down_s"], "window_s": c["duration"], "codec": c["codec"],
        "server_args": [str(a) for a in c.get("server_args") or []],
        "valid": not invalid, "verdict": {"valid": not invalid, "reasons": invalid},
        "goal_met": not invalid and not why, "goal_missed_why": why,
        "delivered_pct": delivered_pct(counts), "completeness": counts,
        "duplicates": counts["duplicates"], "out_of_order": counts["late"] + counts["stale"],
        "missing": counts["missing"], "history_lost": total["recovered_false"] + counts["epoch_changes"],
        "cuts": total["cuts"], "skipped_cuts": total["skipped_cuts"], "reconnects": total["reconnects"],
        "recoveries": total["recovered"], "interrupted": total["interrupted"], "rejoins": rejoins,
        "replayed": total["replayed"], "replayed_per_rejoin": round(total["replayed"] / rejoins, 2) if rejoins else None,
        "recover_ms": recover.summary(1000), "recover_us": recover.to_dict(),
        "handshake_ms": handshake.summary(1000), "handshake_us": handshake.to_dict(),
        "server_drops": total["server_drops"], "sessions_changed": total["sessions_changed"],
        "not_live": total["not_live"], "errors": errors, "connect_errors": _merge_maps([s["connect_errors"]
                                                                                        for s in settled]),
        "close_codes": _merge_maps([s["close_codes"] for s in settled]),
        "examples": [e for s in settled for e in s["examples"]][:3],
        "settle_s": max(s["settle_s"] for s in settled),
        "publisher": {k: v for k, v in pub.items() if k not in ("acks", "send_lag_us")} | {
            "acks": pub["acks"], "ack_gaps": ack_gaps, "send_lag_ms": lag.summary(1000)},
        "deliveries_per_s": round(win_rx / c["duration"], 1),
        "server_us_per_delivery": round(scpu.seconds * 1e6 / win_rx, 3) if win_rx else None,
        "server_cpu": server_cpu, "load_cpu": load_cpu, "other_cpu_pct": others_pct(scpu, gcpu),
        "load_bound": lb and not plan.shared, "saturated": bool(sat_why), "saturated_why": sat_why,
        "server_metrics": metrics, "load_processes": pool.n, "cores": plan.describe(),
    }


# ---------------------------------------------------------------------------------------------------
# the price of history: one server core, history on and off


def price_runs(ctx: Ctx, p: dict[str, Any], history: str, rep: int) -> list[dict[str, Any]]:
    q = p["price"]
    pp = q["pingpong"]
    runs: list[dict[str, Any]] = []
    extra = HISTORY_OFF if history == "off" else []
    nproc = max(1, int(q["load_processes"]))
    with session(ctx, "fanwire", int(q["workers"]), load_procs=nproc, extra_args=extra) as (srv, pool, plan):
        base = {"target": "fanwire", "server": "fanwire", "history": history, "repeat": rep, "workers": srv.workers,
                "cores": plan.describe(), "load_processes": pool.n, "server_args": extra}
        marker = new_marker()
        open_conns(pool, srv, pp["conns"], None)
        frame = ping_frame("json", pp["size"], os.urandom(4), marker)
        r = pingpong(pool, srv, frame, pong_expect(marker), pp["inflight"], pp["batch"], pp["warmup"],
                     pp["duration"], plan)
        pool.call("close", {}, timeout=10)
        run = {**base, "kind": "pingpong", "size": pp["size"], "conns": pp["conns"], **r}
        runs.append(run)
        ctx.log(f"recovery: history {history}, ping/pong (repeat {rep + 1}): {r['msgs_per_s']:,.0f} msg/s, "
                f"{r['server_us_per_msg']} us/msg ({cpu_line(r)})")
        window = {k: q[k] for k in ("warmup", "duration", "drain", "size", "saturation_p99_ms")}
        for f in q["fanout"]:
            o = open_conns(pool, srv, int(f["subs"]), None)
            w = fanout_window(pool, srv.pids, window, f["rate"], o["opened"], f.get("sample_every", 1), False,
                              srv.workers)
            pool.call("close", {}, timeout=30)
            run = {**base, "kind": "fanout", "group": int(f["subs"]), "subscribers": o["opened"], **w}
            runs.append(run)
            ctx.log(f"recovery: history {history}, fan-out {f['rate']}/s x {o['opened']:,} (repeat {rep + 1}): "
                    f"{w['deliveries_per_s']:,.0f} deliveries/s, {w['server_us_per_delivery']} us/delivery, p99 "
                    f"{w['latency_ms']['p99']} ms ({cpu_line(w)})")
    return runs


# ---------------------------------------------------------------------------------------------------


def run_recovery(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    check_params(p)
    runs: list[dict[str, Any]] = []
    for rep in range(ctx.reps(p)):
        for history in (("on", "off") if rep % 2 == 0 else ("off", "on")):
            runs += price_runs(ctx, p, history, rep)
        try:
            run = chaos_run(ctx, p, rep)
        except LoadError as exc:
            ctx.log(f"recovery: cuts (repeat {rep + 1}) failed: {exc}")
            raise
        runs.append(run)
        _log_chaos(ctx, run)
    return {"config": p, "runs": runs, "summary": summarize(p, runs), "skipped": dict(ctx.skipped)}


def _log_chaos(ctx: Ctx, r: dict[str, Any]) -> None:
    cnt = r["completeness"]
    rec = r["recover_ms"]
    ctx.log(f"recovery: cuts (repeat {r['repeat'] + 1}): delivered {r['delivered_pct']} % ({cnt['delivered']:,} of "
            f"{cnt['owed']:,}), {r['duplicates']} duplicates, {r['out_of_order']} out of order, "
            f"{r['history_lost']} history losses; {r['cuts']:,} cuts, {r['recoveries']:,} recoveries: p50 "
            f"{rec['p50']} p99 {rec['p99']} ms, {r['replayed_per_rejoin']} replayed per rejoin; {cpu_line(r)}"
            + (f"; {r['server_drops']:,} connections closed by the server" if r["server_drops"] else "")
            + ("" if r["valid"] else f"; INVALID: {'; '.join(r['verdict']['reasons'])}")
            + ("" if r["goal_met"] else f"; GOAL MISSED: {'; '.join(r['goal_missed_why'])}")
            + (f"; SATURATED: {'; '.join(r['saturated_why'])}" if r["saturated"] else ""))


# ---------------------------------------------------------------------------------------------------
# the summary


def _total(summary: dict[str, Any], key: str, runs: list[dict[str, Any]], field: str, note: str, unit: str) -> None:
    """A count summed over every repeat (valid or not: a duplicate is one whatever else went wrong)."""
    values = [r[field] for r in runs]
    st = spread(values)
    st["invalid"] = sum(not r["valid"] for r in runs)
    entry = summary.setdefault(key, {})
    entry["fanwire"] = sum(values) if runs else None
    entry["stats"] = {"fanwire": {k: v for k, v in st.items()}}
    if runs:
        mid = runs[median_index([float(v) for v in values])]
        entry["conditions"] = {"fanwire": conditions(mid)}
    entry["note"] = note
    entry["notes"] = {"fanwire": note}
    entry["unit"] = unit


def _ratio(summary: dict[str, Any], key: str, on: list[dict[str, Any]], off: list[dict[str, Any]], field: str,
           note: str) -> None:
    """history on / history off, repeat by repeat (valid windows only); the median is the figure."""
    pairs = []
    for r in on:
        o = next((x for x in off if x["repeat"] == r["repeat"]), None)
        if o is None or not r.get("valid", True) or not o.get("valid", True) or not r.get(field) or not o.get(field):
            continue
        pairs.append((r[field] / o[field], r, o))
    st = spread([v for v, _, _ in pairs])
    st["invalid"] = len(on) - len(pairs)
    entry = summary.setdefault(key, {})
    entry["fanwire"] = round(st["median"], 4) if st["median"] is not None else None
    entry["stats"] = {"fanwire": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()
                                  if k != "values"} | {"values": [round(v, 4) for v in st["values"]]}}
    if pairs:
        _, r, o = pairs[median_index([v for v, _, _ in pairs])]
        cond = conditions(r)
        cond["history_off"] = conditions(o)
        cond["saturated"] = bool(r.get("saturated") or o.get("saturated"))
        cond["load_bound"] = bool(r.get("load_bound") or o.get("load_bound"))
        entry["conditions"] = {"fanwire": cond}
    entry["note"] = note
    entry["notes"] = {"fanwire": note}
    entry["unit"] = "x"


def summarize(p: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    chaos = [r for r in runs if r["kind"] == "chaos"]
    if chaos:
        c = p["chaos"]
        r0 = chaos[0]
        setting = (f"fanwire x{r0['workers']} ({'shared cores' if r0['cores']['shared'] else 'own cores'}), "
                   f"{r0['subscribers']:,} raw v1.1 subscribers x {r0['streams']} streams ({c['rooms']} "
                   f"room{'' if c['rooms'] == 1 else 's'} + $broadcast), {c['rate']}/s per stream, each subscriber cut (TCP reset) every {c['cut_every']} s "
                   f"and back {c['down_s']} s later, {c['duration']} s window")
        worst = min((r["delivered_pct"] for r in chaos if r["delivered_pct"] is not None), default=None)
        owed = sum(r["completeness"]["owed"] for r in chaos)
        file_figure(summary, "delivered_pct", "fanwire", chaos, lambda r: r["delivered_pct"],
                    f"{setting}; median of {len(chaos)}, worst {worst} %, {owed:,} deliveries owed in all "
                    "(every offset of every stream once per subscriber, from the publisher's acks)", "%", digits=6)
        what = f"summed over {len(chaos)} run{'' if len(chaos) == 1 else 's'}; {setting}"
        _total(summary, "duplicates", chaos, "duplicates", what, "msgs")
        _total(summary, "out_of_order", chaos, "out_of_order", what, "msgs")
        _total(summary, "missing", chaos, "missing", what, "msgs")
        _total(summary, "history_lost", chaos, "history_lost", what + " (recovered: false answers and epoch "
               "changes; the scenario causes no history loss)", "events")
        _total(summary, "recoveries", chaos, "recoveries", what, "recoveries")
        note = f"{setting}; from the reconnect's TCP connect to the last joined (caught up); median of {len(chaos)}"
        file_figure(summary, "recover_p50_ms", "fanwire", chaos, lambda r: r["recover_ms"]["p50"], note, "ms")
        file_figure(summary, "recover_p99_ms", "fanwire", chaos, lambda r: r["recover_ms"]["p99"], note, "ms")
        file_figure(summary, "recover_max_ms", "fanwire", chaos, lambda r: r["recover_ms"]["max"], note, "ms")
        file_figure(summary, "handshake_p99_ms", "fanwire", chaos, lambda r: r["handshake_ms"]["p99"],
                    f"{setting}; the handshake part of a recovery (connect to 101); median of {len(chaos)}", "ms")
        file_figure(summary, "replayed_per_rejoin", "fanwire", chaos, lambda r: r["replayed_per_rejoin"],
                    f"{setting}; messages replayed per join with since; median of {len(chaos)}", "msgs")
        file_figure(summary, "chaos_us_per_delivery", "fanwire", chaos, lambda r: r["server_us_per_delivery"],
                    f"{setting}; server CPU per delivery under the cuts (reconnects and replays included); median "
                    f"of {len(chaos)}", "us")
        summary["goal_met"] = {"fanwire": sum(bool(r["goal_met"]) for r in chaos), "unit": "runs",
                               "note": f"runs that met the goal (every owed offset exactly once, in order, no "
                                       f"history lost), of {len(chaos)}",
                               "why": {str(r["repeat"]): r["goal_missed_why"] for r in chaos if not r["goal_met"]}}
    price = [r for r in runs if r["kind"] in ("pingpong", "fanout")]
    pp = [r for r in price if r["kind"] == "pingpong"]
    if pp:
        q = p["price"]["pingpong"]
        on = [r for r in pp if r["history"] == "on"]
        off = [r for r in pp if r["history"] == "off"]
        note = (f"{q['size']} B JSON ping/pong, {q['conns']} connections x {q['inflight']} in flight (batches of "
                f"{q['batch']}), one server core; history on (default) and off (--history-size 0) started in turn "
                f"in every repeat")
        for hist, mine in (("on", on), ("off", off)):
            file_figure(summary, f"pingpong_msgs_per_s_history_{hist}", "fanwire", mine, lambda r: r["msgs_per_s"],
                        f"{note}; median of {len(mine)}", "msg/s")
            file_figure(summary, f"pingpong_us_per_msg_history_{hist}", "fanwire", mine,
                        lambda r: r["server_us_per_msg"], f"{note}; median of {len(mine)}", "us")
        _ratio(summary, "pingpong_ratio", on, off, "msgs_per_s",
               f"round trips/s with history on / off, repeat by repeat, median; {note} (goal >= 0.95: unchanged)")
        _ratio(summary, "pingpong_cpu_ratio", on, off, "server_us_per_msg",
               f"server CPU per round trip with history on / off, repeat by repeat, median; {note}")
    fo = [r for r in price if r["kind"] == "fanout"]
    for f in p["price"]["fanout"] if fo else []:
        subs, rate = int(f["subs"]), f["rate"]
        g = f"{subs_label(subs)}_{rate}"
        at = [r for r in fo if r["group"] == subs and r["rate"] == rate]
        on = [r for r in at if r["history"] == "on"]
        off = [r for r in at if r["history"] == "off"]
        note = (f"{subs:,} subscribers x {rate} broadcasts/s ({subs * rate:,} deliveries/s offered), one server "
                f"core, {p['price']['size']} B messages; history on (default) and off (--history-size 0)")
        for hist, mine in (("on", on), ("off", off)):
            file_figure(summary, f"fanout_us_per_delivery_history_{hist}_{g}", "fanwire", mine,
                        lambda r: r["server_us_per_delivery"], f"{note}; median of {len(mine)}", "us")
            file_figure(summary, f"fanout_p99_ms_history_{hist}_{g}", "fanwire", mine,
                        lambda r: r["latency_ms"]["p99"], f"{note}; median of {len(mine)}", "ms")
        _ratio(summary, f"fanout_cpu_ratio_{g}", on, off, "server_us_per_delivery",
               f"server CPU per delivery with history on / off, repeat by repeat, median; {note} (goal <= 1.10)")
    return summary
