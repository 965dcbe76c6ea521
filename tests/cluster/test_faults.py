"""Cluster faults: Redis killed and restarted mid-traffic, Redis absent at boot, a node dying, a bad URL.

What must hold: each node keeps serving its local traffic (workers of one node never need Redis to reach
each other), /healthz says "bus": "degraded" and /metrics fanwire_bus_up 0 while Redis is away, what could not
be relayed is counted, no client sees an error or a close, no worker dies, and cross-node traffic resumes by
itself when Redis returns."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from ..helpers import (
    NO_REDIS_REASON,
    PYTHON,
    ROOT,
    RedisServer,
    ServerProcess,
    T,
    connect_spread,
    decode,
    free_port,
    redis_server_binary,
    request,
    send,
)
from .nodes import health_by_worker, metrics, node, wait_until

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason=NO_REDIS_REASON)


def run(coro: Any, timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro, T(timeout)))


async def spread(srv: ServerProcess) -> list[ClientConnection]:
    by_worker = await connect_spread(srv.url, srv.workers, 1)
    return [ws for w in sorted(by_worker) for ws in by_worker[w]]


async def next_chat(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next chat or broadcast; fails on an error message (none may reach a client)."""
    while True:
        msg = decode(await asyncio.wait_for(ws.recv(), T(timeout)))
        assert msg.get("type") != "error", msg
        if msg.get("type") in ("chat", "broadcast"):
            return msg  # type: ignore[no-any-return]


async def nothing_more(conns: list[ClientConnection], wait: float = 0.3) -> None:
    """No chat or broadcast arrives on any of ``conns`` within ``wait`` seconds."""
    await asyncio.sleep(wait)
    for ws in conns:
        with pytest.raises(TimeoutError):
            await next_chat(ws, 0.01)


async def say(sender: ClientConnection, receivers: list[ClientConnection], **msg: Any) -> str:
    text = f"{msg.pop('label', 'm')} {uuid.uuid4().hex[:8]}"
    msg.setdefault("room", "lobby")  # explicit: a join makes the joined room the sender's current room
    await send(sender, {"type": "chat", "text": text, **msg})
    for i, ws in enumerate(receivers):
        try:
            got = await next_chat(ws)
        except TimeoutError:
            welcome: dict[str, Any] = ws.welcome  # type: ignore[attr-defined]
            raise AssertionError(f"receiver {i} (worker {welcome['worker']}, {welcome['node']}) did not get "
                                 f"{text!r}") from None
        assert got["text"] == text, (got, text)
    return text


def degraded(h: dict[str, Any]) -> bool:
    return bool(h["bus"] == "degraded")


def ok(h: dict[str, Any]) -> bool:
    return bool(h["bus"] == "ok")


def test_redis_killed_and_restarted_mid_traffic() -> None:
    with RedisServer() as redis:
        a, b = node(redis.url, "fault-a"), node(redis.url, "fault-b")
        with a, b:
            pids = (a.worker_pids(), b.worker_pids())

            async def main() -> None:
                on_a, on_b = await spread(a), await spread(b)  # one client on each worker of each node
                everyone = on_a + on_b
                assert (await request(on_b[0], {"type": "join", "room": "ops"}))["type"] == "joined"
                await say(on_a[0], everyone, label="before")
                await say(on_a[1], [on_b[0]], room="ops", label="room before")

                redis.kill()
                await asyncio.to_thread(health_by_worker, a, degraded)
                await asyncio.to_thread(health_by_worker, b, degraded)
                # each node keeps its local traffic, across its workers, in both directions
                for _ in range(3):
                    await say(on_a[0], on_a, label="local a")
                    await say(on_a[1], on_a, label="local a")
                    await say(on_b[1], on_b, label="local b")
                    await say(on_b[0], on_b, label="local b")
                await send(on_a[1], {"type": "chat", "room": "ops", "text": "lost in the outage"})
                await nothing_more(everyone)  # nothing crossed, nothing is queued for later either
                m = await asyncio.to_thread(metrics, a)
                assert m["fanwire_bus_up"] == 0
                assert m['fanwire_bus_dropped_total{reason="redis_down"}'] >= 7  # 6 lobby chats + 1 to "ops"
                stats = await request(on_a[0], {"type": "custom", "action": "get_stats"})
                assert stats["partial"] is True and [n["node"] for n in stats["nodes"]] == ["fault-a"]
                assert stats["clients"] == 2

                redis.start()  # same port, empty: the nodes reconnect, resubscribe, re-announce themselves
                await asyncio.to_thread(health_by_worker, a, ok, 15)
                await asyncio.to_thread(health_by_worker, b, ok, 15)
                await say(on_a[0], everyone, label="after")
                await say(on_b[1], everyone, label="after")
                await say(on_a[1], [on_b[0]], room="ops", label="room after")  # its subscription came back
                await nothing_more(everyone)
                m = await asyncio.to_thread(metrics, b)
                assert m["fanwire_bus_up"] == 1 and m["fanwire_redis_reconnects_total"] >= 2
                for ws in everyone:
                    assert ws.close_code is None  # nobody was disconnected
                await asyncio.gather(*(ws.close() for ws in everyone))

            try:
                run(main())
            except AssertionError as exc:  # say what the nodes logged
                raise AssertionError(f"{exc}\n--- node a ---\n{a.output()}\n--- node b ---\n{b.output()}") from None
            assert (a.worker_pids(), b.worker_pids()) == pids  # no worker died or was replaced
            for srv in (a, b):
                assert "Traceback" not in srv.output(), srv.output()


def test_redis_absent_at_boot_then_arrives() -> None:
    """A node whose Redis is not there yet boots anyway, degraded, serves its local traffic, and joins the
    cluster by itself when Redis comes."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with node(url, "early", 2) as a:
        health_by_worker(a, degraded)

        async def local() -> None:
            on_a = await spread(a)
            await say(on_a[0], on_a, label="local")
            await say(on_a[1], on_a, label="local")
            await asyncio.gather(*(ws.close() for ws in on_a))

        run(local())
        with RedisServer(port), node(url, "late", 1) as b:
            health_by_worker(a, ok, 15)

            async def cross() -> None:
                on_a, on_b = await spread(a), await spread(b)
                await say(on_b[0], on_a + on_b, label="cross")
                await asyncio.gather(*(ws.close() for ws in on_a + on_b))

            run(cross())


def test_dead_node_leaves_the_cluster_within_the_ttl() -> None:
    with RedisServer() as redis:
        a, b = node(redis.url, "stays", 1), node(redis.url, "dies", 1)
        with a, b:
            wait_until(lambda: metrics(a).get("fanwire_cluster_nodes") == 2, 5, "both nodes seen")
            b.kill()  # SIGKILL: no goodbye, its entries expire
            wait_until(lambda: metrics(a).get("fanwire_cluster_nodes") == 1, 3.0 + 1.0 + 2.0,  # TTL + refresh
                       "dead node dropped")

            async def main() -> None:
                on_a = await spread(a)
                stats = await request(on_a[0], {"type": "custom", "action": "get_stats"})
                assert [n["node"] for n in stats["nodes"]] == ["stays"] and stats["partial"] is False
                await on_a[0].close()

            run(main())


def test_bad_redis_url_is_refused_at_the_command_line() -> None:
    res = subprocess.run([PYTHON, "-m", "server", "--bus", "redis", "--redis-url", "http://127.0.0.1:6379"],
                         cwd=ROOT, capture_output=True, text=True, timeout=T(20))
    assert res.returncode == 2
    assert "--redis-url must start with redis://" in res.stderr


def test_rolling_restart_of_a_node_keeps_the_cluster() -> None:
    """SIGHUP on node A: each worker is replaced (old and new side by side for a moment, same node name);
    afterwards A's new workers chat with B, and B counts A's workers exactly once."""
    import os
    import signal

    with RedisServer() as redis:
        a, b = node(redis.url, "roll-a"), node(redis.url, "roll-b", 1)
        with a, b:
            old = a.worker_pids()
            os.kill(a.pid, signal.SIGHUP)
            for w, pid in old.items():
                a.wait_worker_replaced(w, pid, 15)
            a.wait_pids_gone(list(old.values()))  # the old workers closed their clients with 1012 and left

            async def main() -> None:
                on_b = await spread(b)
                on_a = await spread(a)
                await say(on_a[1], on_a + on_b, label="after restart")
                await say(on_b[0], on_a + on_b, label="after restart")
                stats: dict[str, Any] = {}
                for _ in range(40):  # a retiring worker's goodbye must not erase its replacement's entry
                    stats = await request(on_b[0], {"type": "custom", "action": "get_stats"})
                    nodes = {n["node"]: n for n in stats["nodes"]}
                    if nodes.get("roll-a", {}).get("workers") == 2 and nodes["roll-a"]["clients"] == 2:
                        break
                    await asyncio.sleep(0.2)
                assert {n["node"]: n["workers"] for n in stats["nodes"]} == {"roll-a": 2, "roll-b": 1}, stats
                pids = {w["pid"] for w in stats["workers"] if w["node"] == "roll-a"}
                assert pids == set(a.worker_pids().values())
                await asyncio.gather(*(ws.close() for ws in on_a + on_b))

            run(main())
