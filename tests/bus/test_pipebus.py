"""The bus conformance suite against PipeBus (socketpairs within one process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.bus import Bus
from server.metrics import Metrics
from server.pipebus import PipeBus, make_mesh

from .conformance import CHECKS, Factory, Recorder


@contextlib.asynccontextmanager
async def pipe_buses(n: int) -> AsyncIterator[list[Bus]]:
    mesh = make_mesh(n)
    buses: list[Bus] = []
    for ep in range(n):
        bus = PipeBus(ep, ep, mesh[ep], Metrics(), boot_ts_ms=0)
        bus.recorder = Recorder(ep)  # type: ignore[attr-defined]
        buses.append(bus)
    for bus in buses:
        await bus.start(bus.recorder)  # type: ignore[attr-defined]
    try:
        yield buses
    finally:
        for bus in buses:
            await bus.close()
        for socks in mesh.values():
            for s in socks.values():
                s.close()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_pipebus_conformance(check: Callable[[Factory], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(check(pipe_buses), 30))


def test_pipebus_drops_stale_records() -> None:
    """Records written before a worker booted (left by its dead predecessor) are dropped and counted."""
    import time

    from server.bus import Publication

    async def main() -> None:
        mesh = make_mesh(2)
        m0, m1 = Metrics(), Metrics()
        old = PipeBus(0, 0, mesh[0], m0, boot_ts_ms=0)
        r0 = Recorder(0)
        await old.start(r0)
        # endpoint 1 is empty; pretend it was alive, publish into its socket
        old.peers[1].alive = True
        old.publish(Publication("r", b"old", int(time.time() * 1000) - 5000))
        await asyncio.sleep(0.05)
        new = PipeBus(1, 1, mesh[1], m1)
        r1 = Recorder(1)
        await new.start(r1)
        await asyncio.sleep(0.1)
        assert r1.got == []
        assert m1.bus_dropped.get("stale", 0) >= 1
        old.publish(Publication("r", b"fresh", int(time.time() * 1000)))
        for _ in range(100):
            if r1.got:
                break
            await asyncio.sleep(0.01)
        assert [p.payload for p in r1.got] == [b"fresh"]
        await old.close()
        await new.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_pipebus_bounded_queue_counts_drops() -> None:
    """A peer that never reads: the writer's queue stays bounded and the overflow is counted."""
    from server.bus import Publication

    async def main() -> None:
        mesh = make_mesh(2)
        m0 = Metrics()
        bus = PipeBus(0, 0, mesh[0], m0, max_queue=256 * 1024, boot_ts_ms=0)
        await bus.start(Recorder(0))
        bus.peers[1].alive = True  # a peer that is "alive" but never reads
        payload = b"x" * 8192
        for _ in range(2000):  # 16 MiB offered
            bus.publish(Publication(None, payload, 1))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert bus.peers[1].queued <= 256 * 1024
        assert m0.bus_dropped.get("queue_full", 0) > 0
        await bus.close()

    asyncio.run(asyncio.wait_for(main(), 20))
