"""NodeBus: the pipe bus inside the node composed with the Redis bus across nodes, with fake buses on both sides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from server.bus import Bus, BusHandler, Publication
from server.bus.nodebus import NodeBus
from server.stats import StatsQuery


class FakeBus(Bus):
    """Records what the NodeBus asks of it; its answers are set by the test."""

    def __init__(self, snaps: list[dict[str, Any]] | None = None) -> None:
        self.snaps = snaps or []
        self.started: list[BusHandler] = []
        self.published: list[Publication] = []
        self.members: list[tuple[str, int]] = []
        self.queries: list[tuple[float, StatsQuery | None]] = []
        self.closed = 0
        self.close_error: Exception | None = None
        self.is_congested = False
        self.is_healthy = True
        self.complete = True
        self.peers = 0
        self.waiting: list[Callable[[], None]] = []

    async def start(self, handler: BusHandler) -> None:
        self.started.append(handler)

    def publish(self, pub: Publication) -> None:
        self.published.append(pub)

    def room_members(self, room: str, count: int) -> None:
        self.members.append((room, count))

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        self.queries.append((timeout, query))
        await asyncio.sleep(0)
        return list(self.snaps)

    async def close(self) -> None:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error

    def congested(self) -> bool:
        return self.is_congested

    def on_drained(self, callback: Callable[[], None]) -> None:
        if self.is_congested:
            self.waiting.append(callback)
        else:
            callback()

    def drain(self) -> None:
        self.is_congested = False
        waiting, self.waiting = self.waiting, []
        for cb in waiting:
            cb()

    def healthy(self) -> bool:
        return self.is_healthy

    def stats_complete(self) -> bool:
        return self.complete

    def peer_count(self) -> int:
        return self.peers


class Handler:
    def on_publication(self, pub: Publication) -> None:
        pass

    def stats_snapshot(self, query: StatsQuery | None = None) -> dict[str, Any]:
        return {}


def node(local_snaps: list[dict[str, Any]] | None = None,
         remote_snaps: list[dict[str, Any]] | None = None) -> tuple[NodeBus, FakeBus, FakeBus]:
    local, remote = FakeBus(local_snaps), FakeBus(remote_snaps)
    return NodeBus(local, remote), local, remote


def test_start_starts_both_with_the_same_handler() -> None:
    bus, local, remote = node()
    handler = Handler()
    asyncio.run(bus.start(handler))
    assert local.started == [handler] and remote.started == [handler]


def test_publish_goes_to_both() -> None:
    bus, local, remote = node()
    pubs = [Publication("lobby", b'{"type":"chat"}', 1, "0"), Publication(None, b'{"type":"broadcast"}', 2, "0")]
    for p in pubs:
        bus.publish(p)
    assert local.published == pubs and remote.published == pubs
    assert local.published[0] is pubs[0] and remote.published[0] is pubs[0]


def test_room_members_goes_to_both() -> None:
    bus, local, remote = node()
    bus.room_members("lobby", 3)
    bus.room_members("lobby", 0)
    assert local.members == remote.members == [("lobby", 3), ("lobby", 0)]


def test_gather_stats_concatenates_and_passes_the_query_to_both() -> None:
    bus, local, remote = node([{"id": 1}, {"id": 2}], [{"id": 0, "node": "b"}])
    query = StatsQuery()
    query.add(["lobby"], False)
    snaps = asyncio.run(bus.gather_stats(1.5, query))
    assert snaps == [{"id": 1}, {"id": 2}, {"id": 0, "node": "b"}]
    assert local.queries == [(1.5, query)] and remote.queries == [(1.5, query)]
    assert local.queries[0][1] is query and remote.queries[0][1] is query
    assert asyncio.run(bus.gather_stats(0.5)) == snaps
    assert local.queries[1] == (0.5, None) and remote.queries[1] == (0.5, None)


def test_gather_stats_asks_both_at_once() -> None:
    bus, local, remote = node([{"id": 1}], [{"id": 2}])
    order: list[str] = []
    gate = asyncio.Event()

    async def slow_local(timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        order.append("local asked")
        await gate.wait()  # the remote must be asked while the local is still waiting
        return [{"id": 1}]

    async def remote_answers(timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        order.append("remote asked")
        gate.set()
        return [{"id": 2}]

    local.gather_stats = slow_local  # type: ignore[method-assign]
    remote.gather_stats = remote_answers  # type: ignore[method-assign]
    assert asyncio.run(asyncio.wait_for(bus.gather_stats(1.0), 2.0)) == [{"id": 1}, {"id": 2}]
    assert order == ["local asked", "remote asked"]


def test_close_closes_both() -> None:
    bus, local, remote = node()
    asyncio.run(bus.close())
    assert local.closed == 1 and remote.closed == 1


def test_close_closes_the_local_bus_even_if_the_remote_raises() -> None:
    bus, local, remote = node()
    remote.close_error = ConnectionError("redis is gone")
    asyncio.run(bus.close())  # the remote's failure is swallowed
    assert remote.closed == 1 and local.closed == 1


def test_a_local_close_error_still_surfaces() -> None:
    bus, local, remote = node()
    local.close_error = OSError("pipe broke")
    with pytest.raises(OSError, match="pipe broke"):
        asyncio.run(bus.close())
    assert remote.closed == 1 and local.closed == 1


@pytest.mark.parametrize(("local", "remote"), [(False, False), (True, False), (False, True), (True, True)])
def test_congested_if_either_is(local: bool, remote: bool) -> None:
    bus, lb, rb = node()
    lb.is_congested, rb.is_congested = local, remote
    assert bus.congested() is (local or remote)


@pytest.mark.parametrize(("local", "remote"), [(False, False), (True, False), (False, True), (True, True)])
def test_healthy_and_complete_only_if_both_are(local: bool, remote: bool) -> None:
    bus, lb, rb = node()
    lb.is_healthy, rb.is_healthy = local, remote
    assert bus.healthy() is (local and remote)
    lb.complete, rb.complete = local, remote
    assert bus.stats_complete() is (local and remote)


def test_stats_complete_is_not_healthy() -> None:
    bus, lb, rb = node()
    lb.is_healthy = rb.is_healthy = False
    assert bus.stats_complete() is True  # each side says for itself


def test_peer_count_adds_both() -> None:
    bus, lb, rb = node()
    lb.peers, rb.peers = 3, 2
    assert bus.peer_count() == 5


def test_on_drained_at_once_when_neither_is_congested() -> None:
    bus, _, _ = node()
    called: list[int] = []
    bus.on_drained(lambda: called.append(1))
    assert called == [1]


def test_on_drained_waits_for_both_to_drain_in_turn() -> None:
    bus, lb, rb = node()
    lb.is_congested = rb.is_congested = True
    called: list[int] = []
    bus.on_drained(lambda: called.append(1))
    assert called == [] and len(lb.waiting) == 1 and rb.waiting == []
    lb.drain()
    assert called == [] and len(rb.waiting) == 1  # the remote is still congested: wait for it too
    rb.drain()
    assert called == [1]


def test_on_drained_rechecks_the_local_bus_after_the_remote_drains() -> None:
    bus, lb, rb = node()
    rb.is_congested = True
    called: list[int] = []
    bus.on_drained(lambda: called.append(1))
    assert rb.waiting and not lb.waiting
    lb.is_congested = True  # the local bus filled up meanwhile
    rb.drain()
    assert called == [] and len(lb.waiting) == 1
    lb.drain()
    assert called == [1]

