"""The bus conformance suite against PipeBus (socketpairs within one process), on asyncio and on uvloop; stale
records, and back-pressure: congestion when a peer stops reading, drained callbacks, and drops past max_queue."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from server.bus import Bus, Publication
from server.bus import pipeframe as bf
from server.bus.pipebus import MAX_PACKET, PipeBus, make_mesh
from server.metrics import Metrics

from ...helpers import T
from .conformance import CHECKS, Factory, Recorder, wait_for

LOOPS = ["asyncio", "uvloop"]


def run(coro: Awaitable[None], loop: str, timeout: float = 30) -> None:
    if loop == "uvloop":
        uvloop.run(asyncio.wait_for(coro, T(timeout)))
    else:
        asyncio.run(asyncio.wait_for(coro, T(timeout)))


@contextlib.asynccontextmanager
async def pipe_buses(n: int) -> AsyncIterator[list[Bus]]:
    mesh = make_mesh(n)
    buses: list[Bus] = []
    for ep in range(n):
        bus = PipeBus(ep, ep, mesh[ep], Metrics(), boot_ts_ms=0)
        bus.recorder = Recorder(ep)  # type: ignore[attr-defined]
        buses.append(bus)
    for b in buses:
        await b.start(b.recorder)  # type: ignore[attr-defined]
    try:
        yield buses
    finally:
        for b in buses:
            await b.close()
        for socks in mesh.values():
            for s in socks.values():
                s.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_pipebus_conformance(check: Callable[[Factory], Awaitable[None]], loop: str) -> None:
    run(check(pipe_buses), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_pipebus_drops_stale_records(loop: str) -> None:
    """Records written before a worker booted (left by its dead predecessor) are dropped and counted."""

    async def main() -> None:
        mesh = make_mesh(2)
        m0, m1 = Metrics(), Metrics()
        old = PipeBus(0, 0, mesh[0], m0, boot_ts_ms=0)
        r0 = Recorder(0)
        await old.start(r0)
        # endpoint 1 is empty; pretend it was alive, publish into its socket
        old.peers[1].alive = True
        old.publish(Publication("r", b"old", int(time.time() * 1000) - 5000))
        await wait_for(lambda: m0.bus_frames_out == 2)  # HELLO, then the publication: in the socket
        new = PipeBus(1, 1, mesh[1], m1)
        r1 = Recorder(1)
        await new.start(r1)
        await wait_for(lambda: m1.bus_dropped.get("stale", 0) == 1)
        assert r1.got == []
        old.publish(Publication("r", b"fresh", int(time.time() * 1000)))
        await wait_for(lambda: bool(r1.got))
        assert [p.payload for p in r1.got] == [b"fresh"]
        assert m1.bus_dropped == {"stale": 1}
        await old.close()
        await new.close()
        for socks in mesh.values():
            for s in socks.values():
                s.close()

    run(main(), loop, 10)


# --- back-pressure ---------------------------------------------------------------------------------------------


class Peer:
    """The other end of a bus's socket, played by the test: it says HELLO, then reads only when told to."""

    def __init__(self, sock: socket.socket, endpoint: int = 1) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.reasm = bf.Reassembler(64 << 20)
        self.records: list[tuple[int, bytes]] = []  # (kind, body) of every record read
        sock.setblocking(False)

    def hello(self) -> None:
        rec = bf.record(bf.HELLO, self.endpoint, int(time.time() * 1000), bf.hello_body(self.endpoint, 4242))
        for pkt in bf.packets([rec], MAX_PACKET):
            self.sock.send(pkt)

    def read_some(self) -> int:
        """Read what is waiting (at most 64 packets); returns how many packets were read."""
        n = 0
        while n < 64:
            try:
                pkt = self.sock.recv(MAX_PACKET + 64)
            except BlockingIOError:
                break
            n += 1
            batch = self.reasm.feed(pkt)
            if batch is not None:
                for rec in bf.split_batch(batch):
                    kind, _, _, body = bf.parse_record(rec)
                    self.records.append((kind, body))
        return n

    def payloads(self) -> list[bytes]:
        return [bf.parse_publish(body)[1] for kind, body in self.records if kind == bf.PUBLISH]


def payload(i: int, size: int) -> bytes:
    return b"%08d" % i + b"x" * (size - 8)


async def bus_with_a_silent_peer(metrics: Metrics, **kw: Any) -> tuple[PipeBus, Peer, list[socket.socket]]:
    mesh = make_mesh(2)
    # a small send buffer: the kernel stops taking packets after a few KiB, so the bus's own queue fills fast
    mesh[0][1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    bus = PipeBus(0, 0, mesh[0], metrics, boot_ts_ms=0, heartbeat_s=3600, **kw)
    peer = Peer(mesh[1][0])
    await bus.start(Recorder(0))
    peer.hello()
    await wait_for(lambda: bus.peer_count() == 1)
    return bus, peer, [mesh[0][1], mesh[1][0]]


@pytest.mark.parametrize("loop", LOOPS)
def test_pipebus_pushes_back_when_a_peer_stops_reading(loop: str) -> None:
    high, low, size = 256 * 1024, 64 * 1024, 2000

    async def main() -> None:
        m = Metrics()
        bus, peer, socks = await bus_with_a_silent_peer(m, high_water=high, low_water=low)
        sent = 0
        while not bus.congested():  # one publication per tick, as publishers do
            bus.publish(Publication(None, payload(sent, size), 1))
            sent += 1
            await asyncio.sleep(0)
            assert sent < 10_000, "never congested"
        await asyncio.sleep(0)  # the last flush ran
        assert bus.congested()
        assert bus.peers[1].queued > high - size  # what the socket would not take waits in the bus's queue
        assert m.bus_dropped == {}

        calls: list[str] = []
        bus.on_drained(lambda: calls.append("first"))
        bus.on_drained(lambda: calls.append("second"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == []  # congested: the publishers wait

        seen: list[tuple[int, bool]] = []  # (queued, released) as the peer drains, packet batch by batch
        while not calls:
            if peer.read_some() == 0:
                await asyncio.sleep(0.001)  # the peer's socket is empty until the bus's writer runs
            await asyncio.sleep(0)
            seen.append((bus.peers[1].queued, bool(calls)))
            assert len(seen) < 100_000, "never drained"
        assert calls == ["first", "second"]
        assert any(low <= q <= high and not released for q, released in seen)  # not congested, yet held
        assert all(q < low for q, released in seen if released)
        assert not bus.congested()
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == ["first", "second"]  # each called once

        bus.on_drained(lambda: calls.append("later"))  # not congested: called from the loop at once
        assert calls == ["first", "second"]
        await asyncio.sleep(0)
        assert calls == ["first", "second", "later"]

        await wait_for(lambda: peer.read_some() == 0 and bus.peers[1].queued == 0
                       and len(peer.payloads()) == sent)
        assert peer.payloads() == [payload(i, size) for i in range(sent)]  # nothing lost, in order
        assert m.bus_dropped == {}
        await bus.close()
        for s in socks:
            s.close()

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_pipebus_drops_past_max_queue_and_counts_them(loop: str) -> None:
    max_queue, size, offered = 64 * 1024, 3000, 60

    async def main() -> None:
        m = Metrics()
        bus, peer, socks = await bus_with_a_silent_peer(m, max_queue=max_queue, high_water=16 * 1024,
                                                        low_water=4 * 1024)
        await asyncio.sleep(0)  # the HELLO_ACK went out
        packet = len(next(bf.packets([bf.record(bf.PUBLISH, 0, 1, bf.publish_body(None, payload(0, size)))],
                                     MAX_PACKET)))
        for i in range(offered):
            queued = bus.peers[1].queued
            dropped = m.bus_dropped.get("queue_full", 0)
            bus.publish(Publication(None, payload(i, size), 1))
            await asyncio.sleep(0)
            assert bus.peers[1].queued <= max_queue
            if m.bus_dropped.get("queue_full", 0) > dropped:
                assert queued + packet > max_queue  # a drop only when the queue could not take it
        dropped = m.bus_dropped.get("queue_full", 0)
        assert 0 < dropped < offered
        assert bus.congested()
        while peer.read_some() or bus.peers[1].queued:
            await asyncio.sleep(0.001)
        await wait_for(lambda: peer.read_some() == 0 and bus.peers[1].queued == 0)
        kept = offered - dropped
        assert peer.payloads() == [payload(i, size) for i in range(kept)]  # the first ones, whole and in order
        assert m.bus_dropped == {"queue_full": dropped}
        await bus.close()
        for s in socks:
            s.close()

    run(main(), loop)
