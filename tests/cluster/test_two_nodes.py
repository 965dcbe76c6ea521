"""Two fanwire nodes (two workers each) on two ports sharing one Redis behave as one server: chat, rooms,
broadcast, per-sender order and cluster-wide stats, across nodes and codecs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from ..helpers import RedisServer, ServerProcess, T, connect, connect_spread, recv_until, request, send
from .nodes import metrics, node, wait_until


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = node(redis_server.url, "node-a")
    b = node(redis_server.url, "node-b")
    with a, b:
        yield a, b


def run(coro: Any, timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, T(timeout)))


async def spread(srv: ServerProcess, codec: str = "json") -> list[ClientConnection]:
    by_worker = await connect_spread(srv.url, srv.workers, 1, codec)
    return [ws for conns in by_worker.values() for ws in conns]


async def close_all(conns: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


def is_text(text: str) -> Any:
    return lambda m: m.get("type") in ("chat", "broadcast") and m.get("text") == text


def test_chat_reaches_every_worker_of_both_nodes(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = cluster

    async def main() -> None:
        on_a = await spread(a)
        on_b = await spread(b, "msgpack")  # JSON and msgpack clients share rooms across nodes too
        everyone = on_a + on_b
        try:
            for i, sender in enumerate(everyone):
                text = f"hello {i} {uuid.uuid4().hex}"
                await send(sender, {"type": "chat", "text": text, "user": f"u{i}"})
                got = await asyncio.gather(*(recv_until(ws, is_text(text)) for ws in everyone))
                assert all(m["room"] == "lobby" and m["user"] == f"u{i}" for m in got)
                assert len({m["from"] for m in got}) == 1
        finally:
            await close_all(everyone)

    run(main())


def test_rooms_across_nodes(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    """A room's chat reaches its members on the other node, and only them; leaving stops it."""
    a, b = cluster
    room = f"games-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        publisher = await connect(a.url)  # publishes to the room without being in it
        member = await connect(b.url)
        bystander = await connect(b.url)
        try:
            assert (await request(member, {"type": "join", "room": room}))["type"] == "joined"
            await send(publisher, {"type": "chat", "room": room, "text": "to the room"})
            msg = await recv_until(member, is_text("to the room"))
            assert msg["room"] == room
            # the bystander (lobby only) gets the lobby marker but never the room chat
            await send(publisher, {"type": "chat", "text": "marker 1"})
            first = await recv_until(bystander, lambda m: m.get("type") == "chat")
            assert first["text"] == "marker 1"
            assert (await request(member, {"type": "leave", "room": room}))["type"] == "left"
            await asyncio.sleep(0.05)
            await send(publisher, {"type": "chat", "room": room, "text": "after leaving"})
            await send(publisher, {"type": "chat", "text": "marker 2"})
            nxt = await recv_until(member, lambda m: m.get("type") == "chat" and m.get("text") != "marker 1")
            assert nxt["text"] == "marker 2"
        finally:
            await close_all([publisher, member, bystander])

    run(main())


def test_broadcast_reaches_every_client_of_every_node(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = cluster

    async def main() -> None:
        on_a, on_b = await spread(a), await spread(b)
        everyone = on_a + on_b
        try:
            for sender in (on_a[0], on_b[-1]):
                await request(sender, {"type": "join", "room": "elsewhere"})
                text = f"to all {uuid.uuid4().hex}"
                await send(sender, {"type": "broadcast", "text": text})
                got = await asyncio.gather(*(recv_until(ws, is_text(text)) for ws in everyone))
                assert all(m["type"] == "broadcast" for m in got)
        finally:
            await close_all(everyone)

    run(main())


def test_per_sender_order_across_nodes(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    """A sender's messages keep their order in each stream (the room; the broadcast stream), on every
    receiver of another node. Since protocol v1.1 each stream is sequenced on its own, so the two streams
    may interleave differently on different receivers: order is promised per stream (docs/protocol.md)."""
    a, b = cluster
    room = f"order-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        sender = await connect(a.url, max_queue=None)  # gets its own broadcasts, unread: never pause reading
        receivers = [await connect(b.url) for _ in range(3)]
        try:
            for ws in receivers:
                await request(ws, {"type": "join", "room": room})
            await asyncio.sleep(0.05)
            n = 300
            for i in range(n):
                await send(sender, {"type": "chat", "room": room, "text": str(i)} if i % 5 else
                           {"type": "broadcast", "text": str(i)})
            for ws in receivers:
                seen: dict[str, list[int]] = {"chat": [], "broadcast": []}
                deadline = time.monotonic() + T(10)
                while sum(map(len, seen.values())) < n and time.monotonic() < deadline:
                    m = await recv_until(ws, lambda m: m.get("type") in ("chat", "broadcast"))
                    if m.get("from") == sender.welcome["client_id"]:  # type: ignore[attr-defined]
                        seen[m["type"]].append(int(m["text"]))
                assert seen["chat"] == [i for i in range(n) if i % 5]
                assert seen["broadcast"] == [i for i in range(n) if not i % 5]
        finally:
            await close_all([sender, *receivers])

    run(main())


def test_cluster_stats_and_metrics(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    """get_stats answers for the whole cluster (totals, workers of both nodes, per-node entries); /metrics
    keeps the node's own families and adds fanwire_cluster_* gauges."""
    a, b = cluster
    room = f"stats-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        on_a = [await connect(a.url) for _ in range(2)]
        on_b = [await connect(b.url) for _ in range(3)]
        try:
            await request(on_b[0], {"type": "join", "room": room})
            await request(on_a[0], {"type": "join", "room": room})
            await request(on_a[1], {"type": "join", "room": room})  # a client sees the rooms it is in
            stats: dict[str, Any] = {}
            deadline = time.monotonic() + T(8)
            while time.monotonic() < deadline:  # the other node's figures are refreshed every second
                stats = await request(on_a[1], {"type": "custom", "action": "get_stats"})
                nodes = {n["node"]: n for n in stats.get("nodes", [])}
                if (stats["clients"] == 5 and stats["rooms"].get(room) == 3 and
                        nodes.get("node-b", {}).get("clients") == 3):
                    break
                await asyncio.sleep(0.2)
            assert stats["clients"] == 5, stats
            assert stats["rooms"]["lobby"] == 5 and stats["rooms"][room] == 3
            assert stats["partial"] is False
            nodes = {n["node"]: n for n in stats["nodes"]}
            assert set(nodes) == {"node-a", "node-b"}
            assert nodes["node-a"]["clients"] == 2 and nodes["node-b"]["clients"] == 3
            assert nodes["node-a"]["workers"] == 2 and nodes["node-b"]["workers"] == 2
            assert sorted((w["node"], w["id"]) for w in stats["workers"]) == [
                ("node-a", 0), ("node-a", 1), ("node-b", 0), ("node-b", 1)]
        finally:
            await close_all(on_a + on_b)

    run(main())
    m: dict[str, float] = {}

    def cluster_counts_settled() -> bool:
        nonlocal m
        m = metrics(a)
        return m.get("fanwire_cluster_nodes") == 2 and m.get('fanwire_cluster_node_connections{node="node-b"}') == 0

    wait_until(cluster_counts_settled, 8, "cluster gauges")
    assert m['fanwire_cluster_node_workers{node="node-a"}'] == 2
    assert m["fanwire_bus_up"] == 1 and m["fanwire_workers"] == 2  # node-local families stay node-local
