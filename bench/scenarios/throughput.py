"""throughput: pipelined round trips on one server core, for the chat protocol (ping/pong, JSON and
msgpack, 64 B and 16 KiB) and for plain echo (fanwire --mode echo, websockets' echo on uvloop, picows;
64 B, 16 KiB and 64 KiB), every server in turn and every repeat interleaved. The raw-socket ceiling of
JSON ping/pong (``ceiling``) runs the 64 B JSON ping/pong right after fanwire in each repeat, and
``small_vs_ceiling`` is fanwire's rate over the ceiling's, repeat by repeat."""

from __future__ import annotations

import os
from typing import Any

from ..loadgen import echo_expect, echo_payload, new_marker, ping_frame, pong_expect
from ..servers import TARGETS
from ..wsproto import OP_BINARY, OP_TEXT, masked_frame
from .common import Ctx, cpu_line, file_figure, open_conns, pingpong, session

__all__ = ["run_throughput", "size_label"]


def size_label(size: int) -> str:
    return f"{size // 1024}k" if size >= 1024 and size % 1024 == 0 else str(size)


def _shape(p: dict[str, Any], size: int) -> tuple[int, int]:
    big = p.get("large") or {}
    if big and size >= big["min_size"]:
        return int(big["inflight"]), int(big["batch"])
    return int(p["inflight"]), int(p["batch"])


def run_throughput(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    plan_targets = [(t, "chat", p["chat"]["messages"]) for t in ctx.pick(p["chat"]["targets"])]
    ceiling = p.get("ceiling") or {}
    plan_targets[1:1] = [(t, "chat", ceiling["messages"]) for t in ctx.pick(ceiling.get("targets", []))]
    plan_targets += [(t, "echo", p["echo"]["messages"]) for t in ctx.pick(p["echo"]["targets"])]
    for rep in range(ctx.reps(p)):
        for target, kind, messages in plan_targets:
            with session(ctx, target, p["workers"]) as (srv, pool, plan):
                for size, codec in messages:
                    marker = new_marker()
                    open_conns(pool, srv, p["conns"], None, codec="msgpack" if codec == "msgpack" else "json")
                    if kind == "chat":
                        frame = ping_frame(codec, size, mask, marker)
                        expect = pong_expect(marker)
                    else:
                        op = OP_TEXT if codec == "text" else OP_BINARY
                        payload = echo_payload(size, marker)
                        frame = masked_frame(op, payload, mask)
                        expect = echo_expect(payload, op)
                    inflight, batch = _shape(p, size)
                    r = pingpong(pool, srv, frame, expect, inflight, batch, p["warmup"], p["duration"], plan)
                    pool.call("close", {}, timeout=10)
                    run = {"target": target, "server": TARGETS[target].server, "kind": kind, "repeat": rep,
                           "workers": srv.workers, "size": size, "codec": codec, "conns": p["conns"],
                           "cores": plan.describe(), **r}
                    runs.append(run)
                    ctx.log(f"throughput: {target} {size:,} B {codec} (repeat {rep + 1}): {r['msgs_per_s']:,.0f} "
                            f"msg/s, {r['server_us_per_msg']} us/msg ({cpu_line(r)})")
    return {"config": p, "runs": runs, "summary": summarize(p, runs), "skipped": dict(ctx.skipped)}


def figure_key(kind: str, size: int, codec: str) -> str:
    if kind == "echo":
        return f"echo_{size_label(size)}_msgs_per_s"
    return ("small" if size <= 1024 else "large") + ("" if codec == "json" else "_msgpack") + "_msgs_per_s"


def summarize(p: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    settings = list(dict.fromkeys((r["kind"], r["size"], r["codec"]) for r in runs))
    for kind, size, codec in settings:
        key = figure_key(kind, size, codec)
        for server in dict.fromkeys(r["server"] for r in runs if r["kind"] == kind):
            mine = [r for r in runs if (r["kind"], r["size"], r["codec"], r["server"]) == (kind, size, codec, server)]
            if not mine:
                continue
            inflight, batch = _shape(p, size)
            what = "echo" if kind == "echo" else "ping/pong"
            note = (f"{size:,} B {codec} {what}, {p['conns']} connections x {inflight} in flight (re-sent in "
                    f"batches of {batch}), one server core, median of {len(mine)}")
            file_figure(summary, key, server, mine, lambda r: r["msgs_per_s"], note, "msg/s")
            file_figure(summary, key.replace("_msgs_per_s", "_us_per_msg"), server, mine,
                        lambda r: r["server_us_per_msg"], note, "us")
    small = [r for r in runs if (r["kind"], r["size"], r["codec"]) == ("chat", 64, "json")]
    paired = []
    for r in small:
        if r["server"] != "fanwire" or not r.get("valid", True):
            continue
        top = next((c for c in small if c["server"] == "ceiling" and c["repeat"] == r["repeat"]
                    and c.get("valid", True)), None)
        if top and top["msgs_per_s"]:
            paired.append({**r, "vs_ceiling": r["msgs_per_s"] / top["msgs_per_s"]})
    if paired:
        file_figure(summary, "small_vs_ceiling", "fanwire", paired, lambda r: r["vs_ceiling"],
                    f"64 B JSON ping/pong, fanwire's round trips/s over the raw-socket ceiling's (a JSON pong to "
                    f"each ping, no validation), same repeat, one server core each; median of {len(paired)}", "x")
    return summary
