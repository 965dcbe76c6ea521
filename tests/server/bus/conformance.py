"""The bus conformance suite: every Bus implementation must pass it.

A factory is an async context manager ``make(n)`` yielding ``n`` started buses that form one group,
each with its :class:`Recorder` handler (``bus.recorder``). Implementations add a test module that
parametrizes ``bus_factory`` and imports these tests.

Payloads are what the worker publishes: JSON objects whose ``type`` is ``chat`` (room set) or ``broadcast``.
A bus may route rooms by interest (:meth:`Bus.room_members`), so every bus declares the rooms it receives,
as the hub does when a room gains its first local member.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from server.bus import Bus, Publication

from ...helpers import T

Factory = Callable[[int], AbstractAsyncContextManager[list[Bus]]]


class Recorder:
    def __init__(self, name: int) -> None:
        self.name = name
        self.got: list[Publication] = []
        self.event = asyncio.Event()

    def on_publication(self, pub: Publication) -> None:
        self.got.append(pub)
        self.event.set()

    def stats_snapshot(self, query: Any = None) -> dict[str, Any]:
        return {"id": self.name, "clients": self.name * 10}


def rec(bus: Bus) -> Recorder:
    return bus.recorder  # type: ignore[attr-defined, no-any-return]


async def wait_for(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def _all_see_each_other(buses: list[Bus], rooms: tuple[str, ...] = ()) -> None:
    for b in buses:
        for room in rooms:
            b.room_members(room, 1)
    await wait_for(lambda: all(b.peer_count() >= len(buses) - 1 for b in buses))


def chat(n: int) -> bytes:
    return b'{"type":"chat","n":%d}' % n


async def check_publish_reaches_others_once(make: Factory) -> None:
    async with make(3) as buses:
        await _all_see_each_other(buses, ("room1",))
        buses[0].publish(Publication("room1", b'{"type":"chat"}', int(time.time() * 1000), "0"))
        buses[0].publish(Publication(None, b'{"type":"broadcast"}', int(time.time() * 1000), "0"))
        await wait_for(lambda: len(rec(buses[1]).got) == 2 and len(rec(buses[2]).got) == 2)
        await asyncio.sleep(0.1)
        assert rec(buses[0]).got == []
        for b in buses[1:]:
            got = rec(b).got
            assert [(p.room, p.payload) for p in got] == [("room1", b'{"type":"chat"}'),
                                                          (None, b'{"type":"broadcast"}')]


async def check_order_preserved(make: Factory) -> None:
    async with make(2) as buses:
        await _all_see_each_other(buses, ("r",))
        for i in range(2000):
            if i % 7 == 3:  # interleave another channel: order holds per sender, not per room
                buses[0].publish(Publication(None, b'{"type":"broadcast","n":%d}' % i, int(time.time() * 1000)))
            else:
                buses[0].publish(Publication("r", chat(i), int(time.time() * 1000)))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await wait_for(lambda: len(rec(buses[1]).got) == 2000, 10)
        assert [json.loads(p.payload)["n"] for p in rec(buses[1]).got] == list(range(2000))


async def check_large_payload(make: Factory) -> None:
    async with make(2) as buses:
        await _all_see_each_other(buses)
        payload = b'{"type":"broadcast","data":"' + b"abcdefghijklmnopqrstuvwxyz012345" * 65536 + b'"}'  # 2 MiB
        buses[1].publish(Publication(None, payload, int(time.time() * 1000)))
        await wait_for(lambda: len(rec(buses[0]).got) == 1, 10)
        assert rec(buses[0]).got[0].payload == payload


async def check_gather_stats(make: Factory) -> None:
    async with make(3) as buses:
        await _all_see_each_other(buses)
        snaps = await buses[0].gather_stats(T(2.0))
        assert sorted(s["id"] for s in snaps) == [rec(buses[1]).name, rec(buses[2]).name]


async def check_close_leaves_group(make: Factory) -> None:
    async with make(3) as buses:
        await _all_see_each_other(buses, ("r",))
        await buses[2].close()
        await wait_for(lambda: buses[0].peer_count() == 1 and buses[1].peer_count() == 1)
        buses[0].publish(Publication("r", chat(1), int(time.time() * 1000)))
        await wait_for(lambda: len(rec(buses[1]).got) == 1)
        snaps = await buses[0].gather_stats(T(1.0))
        assert [s["id"] for s in snaps] == [rec(buses[1]).name]


CHECKS = [check_publish_reaches_others_once, check_order_preserved, check_large_payload, check_gather_stats,
          check_close_leaves_group]


