"""The ``$stats`` stream (server/statsfeed.py): the snapshot on its own, who publishes for a node, then real
servers: two subscribers on different workers get one snapshot per second naming both workers; the
publisher hands over when its subscriber leaves; nothing is published once nobody is subscribed; the admin
grant with auth on; a worker held on purpose shows its loop lag; two nodes over Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from server import App, Context, Server
from server.metrics import Metrics
from server.protocol import STATS_ROOM
from server.security.auth import issue
from server.statsfeed import MAX_WORKERS, YIELD_S, StatsFeed, snapshot

from ..helpers import (
    NO_REDIS_REASON,
    RedisServer,
    ServerProcess,
    T,
    connect,
    connect_spread,
    decode,
    recv_until,
    redis_server_binary,
    request,
    scrape_metrics,
    send,
)

SECRET = "statsfeed-tests-secret-0123456789abcdef"


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def worker_snap(node: str, wid: int, clients: int, lag: float = 0.5, with_metrics: bool = True) -> dict[str, Any]:
    m = Metrics()
    m.count_in("chat", 10)
    s: dict[str, Any] = {"id": wid, "pid": 1000 + wid, "node": node, "clients": clients, "loop_lag_ms": lag,
                         "room_counts": {f"room{i}": 1 for i in range(50)}}
    if with_metrics:
        s["metrics"] = m.snapshot(clients, 3, wid, 1.0, True, lag / 1000)
    return s


# --- the snapshot -------------------------------------------------------------------------------------------

def test_snapshot_covers_this_nodes_families_and_lists_every_worker() -> None:
    snaps = [worker_snap("a", 1, 4), worker_snap("a", 0, 2), worker_snap("b", 0, 7, with_metrics=False),
             worker_snap("b", 1, 1, with_metrics=True)]  # metrics of another node are never added in
    data = snapshot(snaps, "a", 0, "redis", True, 1234)
    assert data["ts_ms"] == 1234 and data["node"] == "a" and data["worker"] == 0
    assert data["bus"] == {"name": "redis", "up": True, "nodes": ["a", "b"]}
    assert [(w["node"], w["id"], w["connections"]) for w in data["workers"]] == [
        ("a", 0, 2), ("a", 1, 4), ("b", 0, 7), ("b", 1, 1)]
    assert data["workers"][0] == {"id": 0, "node": "a", "pid": 1000, "connections": 2, "loop_lag_ms": 0.5}
    fam = data["families"]
    assert fam["fanwire_connections"] == {"": 6}, "this node's workers only"
    assert fam["fanwire_messages_in_total"] == {'type="chat"': 2}
    assert fam["fanwire_loop_lag_seconds"] == {'worker="0"': 0.0005, 'worker="1"': 0.0005}
    # per node figures name this node alone: publishers of several nodes add up without counting twice
    assert fam["fanwire_cluster_node_connections"] == {'node="a"': 6}
    assert fam["fanwire_cluster_node_workers"] == {'node="a"': 2}
    assert "room0" not in json.dumps(data), "no room names: the size does not grow with the rooms"


def test_snapshot_tolerates_odd_entries_and_is_bounded() -> None:
    odd: list[dict[str, Any]] = [{}, {"id": "x", "pid": None, "node": 5, "clients": -1.5, "loop_lag_ms": "slow",
                                      "metrics": "none"}]
    data = snapshot(odd, "a", 3, "pipe", False, 1)
    assert data["workers"] == [{"id": 0, "node": "a", "pid": 0, "connections": 0, "loop_lag_ms": None},
                               {"id": 0, "node": "a", "pid": 0, "connections": 0, "loop_lag_ms": None}]
    many = [worker_snap(f"n{i}", 0, 1, with_metrics=False) for i in range(MAX_WORKERS + 50)]
    data = snapshot(many, "a", 0, "redis", True, 1)
    assert len(data["workers"]) == MAX_WORKERS
    orjson.dumps(data)  # JSON all the way


# --- who publishes for a node ---------------------------------------------------------------------------------

class Host:
    """A stand-in for the worker's messaging: rooms, and what was injected."""

    def __init__(self, node: str, worker_id: int) -> None:
        self.node = node
        self.worker_id = worker_id
        self.hub = self
        self.rooms: dict[str, set[int]] = {}
        self.gatherer = self
        self.bus = self
        self.name = "pipe"

    def healthy(self) -> bool:
        return True

    async def gather(self, rooms: list[str], all_rooms: bool) -> list[dict[str, Any]]:
        return [worker_snap(self.node, self.worker_id, 1)]

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> asyncio.Future[dict[str, Any]]:
        raise AssertionError("not called in these tests")


def publication(node: Any, worker: Any) -> bytes:
    return orjson.dumps({"type": "publication", "room": STATS_ROOM, "offset": 1, "epoch": "e",
                         "data": {"node": node, "worker": worker}})


def test_one_worker_publishes_for_its_node() -> None:
    loop = asyncio.new_event_loop()
    now = [50.0]
    host = Host("a", 1)
    feed = StatsFeed(host, loop, lambda coro: coro.close(), clock=lambda: now[0])
    assert not feed.should_publish(now[0]), "nobody subscribed: nothing to do"
    host.rooms[STATS_ROOM] = {1}
    assert feed.should_publish(now[0])
    for ignored in (publication("b", 0), publication("a", 1), publication("a", "0"), b"{not json", b"[1]",
                    publication(None, 0), orjson.dumps({"data": None})):
        feed.heard(ignored)  # another node, itself, malformed: none of them makes it yield
    assert feed.should_publish(now[0])
    feed.heard(publication("a", 2))
    assert not feed.should_publish(now[0]), "worker 2 publishes for node a already: it keeps the role"
    now[0] += YIELD_S - 0.1
    assert not feed.should_publish(now[0])
    now[0] += 0.2
    assert feed.should_publish(now[0]), "worker 2 went silent: this one takes over"
    feed._last = now[0]  # ... and publishes; then both publish at once for a moment:
    feed.heard(publication("a", 2))
    assert feed.should_publish(now[0]), "the lower id stays"
    feed.heard(publication("a", 0))
    assert not feed.should_publish(now[0]), "the higher id yields"
    host.rooms[STATS_ROOM] = set()
    now[0] += YIELD_S + 1
    assert not feed.should_publish(now[0])
    loop.close()


# --- a real 2-worker server --------------------------------------------------------------------------------

def is_stats(msg: Any) -> bool:
    return isinstance(msg, dict) and msg.get("type") == "publication" and msg.get("room") == STATS_ROOM


async def stats_for(ws: ClientConnection, seconds: float,
                    until: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
    """Every ``$stats`` publication ``ws`` receives within ``seconds`` (or until ``until`` says enough)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + T(seconds)
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = decode(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if is_stats(msg):
            out.append(msg)
            if until is not None and until(out):
                break
    return out


async def subscribe(ws: ClientConnection) -> dict[str, Any]:
    joined = await request(ws, {"type": "join", "room": STATS_ROOM})
    assert joined["type"] == "joined" and joined["room"] == STATS_ROOM, joined
    return joined  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(2, extra_args=["--log-level", "warning"]) as s:
        yield s


def test_subscribers_on_two_workers_get_one_snapshot_per_second_naming_both(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2)
        w0, w1 = by_worker[0][0], by_worker[1][0]
        await subscribe(w0)
        await subscribe(w1)
        await recv_until(w0, is_stats, timeout=5)
        await recv_until(w1, is_stats, timeout=5)
        got0, got1 = await asyncio.gather(stats_for(w0, 3.3), stats_for(w1, 3.3))
        for got in (got0, got1):
            assert 2 <= len(got) <= 4, [m["data"]["ts_ms"] for m in got]  # one a second, not one per worker
            offsets = [m["offset"] for m in got]
            assert offsets == list(range(offsets[0], offsets[0] + len(got))), offsets
            assert len({m["epoch"] for m in got}) == 1
            assert len({m["data"]["worker"] for m in got}) == 1, "one publisher for the node"
            stamps = [m["data"]["ts_ms"] for m in got]
            assert all(b - a >= 600 for a, b in itertools.pairwise(stamps)), stamps
        assert [m["offset"] for m in got0][-2:] == [m["offset"] for m in got1][-2:], "the same publications"
        data = got1[-1]["data"]
        pids = srv.worker_pids()
        assert {(w["id"], w["pid"]) for w in data["workers"]} == set(pids.items())
        assert all(w["node"] == data["node"] and w["connections"] == 1 for w in data["workers"])
        assert all(0 <= w["loop_lag_ms"] < 1000 for w in data["workers"])
        assert data["bus"] == {"name": "pipe", "up": True, "nodes": [data["node"]]}
        fam = data["families"]
        assert fam["fanwire_connections"] == {"": 2}
        assert set(fam["fanwire_loop_lag_seconds"]) == {'worker="0"', 'worker="1"'}
        assert fam["fanwire_messages_out_total"]['type="publication"'] >= 2

        # the publisher's subscriber leaves: the other worker takes over, after a gap of about YIELD_S
        publisher = data["worker"]
        leaving, staying = (w0, w1) if publisher == 0 else (w1, w0)
        last = (got0 if publisher == 1 else got1)[-1]
        await request(leaving, {"type": "leave", "room": STATS_ROOM})
        later = await stats_for(staying, YIELD_S + 3.5,
                                lambda got: sum(m["data"]["worker"] != publisher for m in got) >= 2)
        assert later and later[-1]["data"]["worker"] == 1 - publisher, [m["data"]["worker"] for m in later]
        stamps = [last["data"]["ts_ms"]] + [m["data"]["ts_ms"] for m in later]
        assert max(b - a for a, b in itertools.pairwise(stamps)) <= (YIELD_S + 1.6) * 1000, stamps
        offsets = [last["offset"]] + [m["offset"] for m in later]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), "one stream, no gap"
        for ws in (w0, w1):
            await ws.close()

    run(main())


def test_nothing_is_published_while_nobody_is_subscribed(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        await subscribe(ws)
        last = (await recv_until(ws, is_stats, timeout=5))["offset"]
        await request(ws, {"type": "leave", "room": STATS_ROOM})
        before = scrape_metrics(srv.port)
        more = await stats_for(ws, 3)
        assert len(more) <= 1, "at most the one that was on its way"
        after = scrape_metrics(srv.port)
        key = 'fanwire_publishes_total{scope="stats"}'
        assert after.get(key, 0) - before.get(key, 0) <= 1, (before.get(key), after.get(key))
        joined = await subscribe(ws)
        assert joined["offset"] <= last + 1, "the stream stood still while nobody was subscribed"
        assert (await recv_until(ws, is_stats, timeout=5))["offset"] == joined["offset"] + 1
        await ws.close()

    run(main())


# --- with authentication: the admin grant ---------------------------------------------------------------------

def test_stats_needs_the_admin_grant_when_auth_is_on() -> None:
    with ServerProcess(1, extra_args=["--auth-secret", SECRET, "--log-level", "warning"]) as srv:
        async def main() -> None:
            user = await connect(f"{srv.url}/?token={issue(SECRET, 'bob', ['*'], 60, broadcast=True)}")
            reply = await request(user, {"type": "join", "room": STATS_ROOM})
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
            assert not await stats_for(user, 1.5)
            ops = await connect(srv.url, additional_headers={
                "Authorization": f"Bearer {issue(SECRET, 'ops', ['*'], 60, admin=True)}"})
            await subscribe(ops)
            data = (await recv_until(ops, is_stats, timeout=5))["data"]
            assert data["workers"][0]["connections"] == 2
            await user.close()
            await ops.close()

        run(main())


# --- the loop lag of a worker held on purpose ------------------------------------------------------------------

held = App()


@held.action("hold")
def hold(ctx: Context, data: Any) -> Any:
    time.sleep(0.3)  # a sync action runs on the worker's loop: it holds the loop
    return ctx.worker


def test_a_held_worker_shows_its_loop_lag_and_an_idle_one_does_not() -> None:
    with Server(app=held, port=0, workers=2, log_level="warning") as server:
        assert server.url is not None
        url = server.url
        port = int(url.rsplit(":", 1)[1])

        async def main() -> None:
            by_worker = await connect_spread(url, 2)
            watcher, busy = by_worker[0][0], by_worker[1][0]
            await subscribe(watcher)
            await recv_until(watcher, is_stats, timeout=5)
            await send(busy, {"type": "custom", "action": "hold", "id": 1})
            assert (await recv_until(busy, lambda m: m.get("id") == 1))["data"] == 1
            m = await asyncio.to_thread(scrape_metrics, port)
            assert m['fanwire_loop_lag_seconds{worker="1"}'] >= 0.2, m
            assert m['fanwire_loop_lag_seconds{worker="0"}'] < 0.1, m
            deadline = time.monotonic() + T(5)
            while True:
                assert time.monotonic() < deadline, "no snapshot showed the held worker's lag"
                workers = {w["id"]: w for w in (await recv_until(watcher, is_stats, timeout=5))["data"]["workers"]}
                if workers[1]["loop_lag_ms"] >= 200:
                    break
            assert workers[0]["loop_lag_ms"] < 100, workers
            for ws in (watcher, busy):
                await ws.close()

        run(main())


# --- two nodes over Redis -----------------------------------------------------------------------------------------

@pytest.mark.skipif(redis_server_binary() is None, reason=NO_REDIS_REASON)
def test_a_dashboard_on_one_node_learns_of_the_other(redis_server: RedisServer) -> None:
    from ..cluster.nodes import node

    with node(redis_server.url, "sa", 1) as a, node(redis_server.url, "sb", 1) as b:
        async def main() -> None:
            on_b = await connect(b.url)
            dash = await connect(a.url)
            await subscribe(dash)
            b_pid = b.worker_pids()[0]
            deadline = time.monotonic() + T(10)
            while True:  # the other node's figures arrive through Redis (refreshed every second)
                assert time.monotonic() < deadline, "node sb never showed up on sa's $stats"
                data = (await recv_until(dash, is_stats, timeout=5))["data"]
                theirs = [w for w in data["workers"] if w["node"] == "sb"]
                if theirs and theirs[0]["connections"] == 1:
                    break
            assert data["node"] == "sa" and data["bus"]["name"] == "redis" and data["bus"]["nodes"] == ["sa", "sb"]
            assert theirs[0]["pid"] == b_pid and theirs[0]["id"] == 0
            assert data["families"]["fanwire_connections"] == {"": 1}, "sa's own families only"
            assert data["families"]["fanwire_cluster_node_connections"] == {'node="sa"': 1}

            # a subscriber on sb too: sb publishes its own snapshot, and sa's dashboard hears both nodes
            await subscribe(on_b)
            deadline = time.monotonic() + T(10)
            while True:
                assert time.monotonic() < deadline, "sb's snapshots never reached sa"
                msg = await recv_until(dash, is_stats, timeout=5)
                if msg["data"]["node"] == "sb":
                    break
            got = await stats_for(dash, 3.3)
            by_node = {n: [m for m in got if m["data"]["node"] == n] for n in ("sa", "sb")}
            assert all(2 <= len(v) <= 4 for v in by_node.values()), {n: len(v) for n, v in by_node.items()}
            theirs_fam = by_node["sb"][-1]["data"]["families"]
            assert theirs_fam["fanwire_cluster_node_connections"] == {'node="sb"': 1}
            assert theirs_fam["fanwire_connections"] == {"": 1}
            for ws in (on_b, dash):
                await ws.close()

        run(main())
