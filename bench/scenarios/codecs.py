"""codecs: a typical ~200 B message as JSON and as msgpack, pipelined, one server core: round trips/s,
server CPU per round trip, bytes on the wire."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import orjson

from ..loadgen import new_marker, pong_expect
from ..servers import TARGETS
from ..wsproto import OP_BINARY, OP_TEXT, masked_frame
from .common import Ctx, cpu_line, file_figure, open_conns, pingpong, session

__all__ = ["TYPICAL", "run_codecs", "typical_frame"]

TYPICAL = {"user": "alice", "room": "lobby", "text": "hello everyone, how is it going today?", "seq": 123456,
           "tags": ["chat", "general", "en"], "score": 0.75, "ok": True, "reply_to": None}


def typical_frame(codec: str, mask: bytes, marker: str = "alice") -> bytes:
    """A ping whose ``ts`` is the typical message, with ``marker`` as its user (12 chars instead of 5)."""
    msg = {"type": "ping", "id": 42, "ts": {**TYPICAL, "user": marker}}
    if codec == "json":
        return masked_frame(OP_TEXT, orjson.dumps(msg), mask)
    return masked_frame(OP_BINARY, bytes(msgpack.packb(msg)), mask)


def run_codecs(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    mask = os.urandom(4)
    targets = ctx.pick(p["targets"])
    for rep in range(ctx.reps(p)):
        for target in targets:
            with session(ctx, target, p["workers"]) as (srv, pool, plan):
                for codec in p["codecs"]:
                    marker = new_marker()
                    open_conns(pool, srv, p["conns"], None, codec=codec)
                    frame = typical_frame(codec, mask, marker)
                    r = pingpong(pool, srv, frame, {**pong_expect(marker), "head": 512}, p["inflight"], p["batch"],
                                 p["warmup"], p["duration"], plan)
                    pool.call("close", {}, timeout=10)
                    run = {"target": target, "server": TARGETS[target].server, "repeat": rep,
                           "workers": srv.workers, "codec": codec, "conns": p["conns"], "message": "typical",
                           "cores": plan.describe(), **r}
                    runs.append(run)
                    ctx.log(f"codecs: {target} {codec} (repeat {rep + 1}): {r['msgs_per_s']:,.0f} msg/s, "
                            f"{r['server_us_per_msg']} us/msg, {r['wire_bytes_out_per_msg']} B out / "
                            f"{r['wire_bytes_in_per_msg']} B back ({cpu_line(r)})")
    return {"config": {**p, "typical_message": TYPICAL}, "runs": runs, "summary": summarize(p, runs),
            "skipped": dict(ctx.skipped)}


def summarize(p: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in dict.fromkeys(r["server"] for r in runs):
        for codec in p["codecs"]:
            mine = [r for r in runs if r["server"] == server and r["codec"] == codec]
            if not mine:
                continue
            note = (f"a typical ~200 B message, {p['conns']} connections x {p['inflight']} in flight, one server "
                    f"core, median of {len(mine)}")
            file_figure(summary, f"{codec}_msgs_per_s", server, mine, lambda r: r["msgs_per_s"], note, "msg/s")
            file_figure(summary, f"{codec}_us_per_msg", server, mine, lambda r: r["server_us_per_msg"], note, "us")
        by = {c: [r for r in runs if r["server"] == server and r["codec"] == c] for c in ("json", "msgpack")}
        if by["json"] and by["msgpack"]:
            j, m = by["json"][0], by["msgpack"][0]
            if j["wire_bytes_in_per_msg"] and m["wire_bytes_in_per_msg"]:
                ratio = ((m["wire_bytes_out_per_msg"] + m["wire_bytes_in_per_msg"])
                         / (j["wire_bytes_out_per_msg"] + j["wire_bytes_in_per_msg"]))
                file_figure(summary, "msgpack_wire_ratio", server, [{"v": ratio}], lambda r: r["v"],
                            "request + reply frames", "x")
    return summary
