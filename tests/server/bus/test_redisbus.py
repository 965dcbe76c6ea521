"""The bus conformance suite against RedisBus (a real redis-server of our own), and Redis-specific behaviour:
routing by interest, own-node echoes, batching, bad payloads from a misbehaving node, presence TTL, and a
Redis outage (down at start, killed and restarted mid-traffic)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from server.bus import Bus, Publication
from server.bus import redisframe as rf
from server.bus.redisbus import RedisBus
from server.metrics import Metrics

from ...helpers import NO_REDIS_REASON, RedisServer, T, free_port, redis_server_binary
from .conformance import CHECKS, Factory, Recorder, rec, wait_for

_prefixes = itertools.count()


def new_bus(url: str, node: str, worker: int = 0, prefix: str = "t:", **kw: Any) -> RedisBus:
    opts: dict[str, Any] = {"stats_interval": 0.1, "ttl": 1.0, "connect_timeout": 0.5, "command_timeout": 1.0,
                            "backoff_base": 0.05, "backoff_cap": 0.3}
    opts.update(kw)
    return RedisBus(url, node, worker, Metrics(), prefix=prefix, **opts)


def make_factory(url: str) -> Factory:
    @contextlib.asynccontextmanager
    async def redis_buses(n: int) -> AsyncIterator[list[Bus]]:
        prefix = f"conf{next(_prefixes)}:"  # a fresh namespace: checks never see each other
        buses: list[Bus] = []
        for i in range(n):
            rbus = new_bus(url, f"node{i}", prefix=prefix)
            rbus.recorder = Recorder(i)  # type: ignore[attr-defined]
            buses.append(rbus)
        for b in buses:
            await b.start(rec(b))
        assert all(b.healthy() for b in buses)
        try:
            yield buses
        finally:
            for b in buses:
                await b.close()

    return redis_buses


def run(coro: Coroutine[Any, Any, None], timeout: float = 30, loop: str = "uvloop") -> None:
    if loop == "uvloop":
        uvloop.run(asyncio.wait_for(coro, T(timeout)))
    else:
        asyncio.run(asyncio.wait_for(coro, T(timeout)))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_redisbus_conformance(redis_server: RedisServer, check: Callable[[Factory], Awaitable[None]],
                              loop: str) -> None:
    async def main() -> None:
        await check(make_factory(redis_server.url))

    run(main(), loop=loop)


def now_ms() -> int:
    return int(time.time() * 1000)


def chat(n: int) -> bytes:
    return b'{"type":"chat","n":%d}' % n


def test_rooms_are_routed_by_interest(redis_server: RedisServer) -> None:
    """A worker receives a room's traffic only while the hub says the room has members there."""
    async def main() -> None:
        a, b = new_bus(redis_server.url, "A", prefix="int:"), new_bus(redis_server.url, "B", prefix="int:")
        ra, rb = Recorder(0), Recorder(1)
        await a.start(ra)
        await b.start(rb)
        a.publish(Publication("games", chat(1), now_ms()))
        a.publish(Publication(None, b'{"type":"broadcast"}', now_ms()))
        await wait_for(lambda: len(rb.got) == 1)
        assert rb.got[0].room is None  # broadcasts always; "games" not (no member on B)
        b.room_members("games", 1)
        await subscribed(redis_server, b"int:", "games", 1)
        a.publish(Publication("games", chat(2), now_ms()))
        await wait_for(lambda: len(rb.got) == 2)
        assert rb.got[1].payload == chat(2) and rb.got[1].origin == "A/0"
        b.room_members("games", 0)
        await subscribed(redis_server, b"int:", "games", 0)
        a.publish(Publication("games", chat(3), now_ms()))
        a.publish(Publication(None, b'{"type":"broadcast","n":4}', now_ms()))
        await wait_for(lambda: len(rb.got) == 3)
        assert [p.room for p in rb.got] == [None, "games", None]
        await a.close()
        await b.close()

    run(main())


def test_always_rooms_are_subscribed_from_the_start(redis_server: RedisServer) -> None:
    """The default room is subscribed before any member arrives, and stays when the last one leaves."""
    async def main() -> None:
        a = new_bus(redis_server.url, "A", prefix="alw:")
        b = new_bus(redis_server.url, "B", prefix="alw:", always=("lobby",))
        rb = Recorder(1)
        await a.start(Recorder(0))
        await b.start(rb)
        a.publish(Publication("lobby", chat(1), now_ms()))
        await wait_for(lambda: len(rb.got) == 1)
        b.room_members("lobby", 1)
        b.room_members("lobby", 0)
        await asyncio.sleep(0.05)  # no change to wait for: the subscription must simply stay
        assert numsub(redis_server, rf.room_channel(b"alw:", "lobby")) == 1
        a.publish(Publication("lobby", chat(2), now_ms()))
        await wait_for(lambda: len(rb.got) == 2)
        await a.close()
        await b.close()

    run(main())


def test_own_node_is_not_delivered_twice(redis_server: RedisServer) -> None:
    """Two workers of one node: the pipe bus carries their traffic, so Redis echoes of it are dropped."""
    async def main() -> None:
        w0 = new_bus(redis_server.url, "N", 0, prefix="own:")
        w1 = new_bus(redis_server.url, "N", 1, prefix="own:")
        other = new_bus(redis_server.url, "M", 0, prefix="own:")
        r0, r1, ro = Recorder(0), Recorder(1), Recorder(2)
        for bus, r in ((w0, r0), (w1, r1), (other, ro)):
            await bus.start(r)
            bus.room_members("x", 1)
        await wait_for(lambda: other.peer_count() == 2 and w0.peer_count() == 1)
        assert w0.nodes() == ["M"] and other.nodes() == ["N"]
        w0.publish(Publication("x", chat(1), now_ms()))
        await wait_for(lambda: len(ro.got) == 1)
        await asyncio.sleep(0.1)
        assert r0.got == [] and r1.got == []
        for bus in (w0, w1, other):
            await bus.close()

    run(main())


def test_publishes_are_batched_per_tick(redis_server: RedisServer) -> None:
    """1,000 publications in one tick to one room go out as a handful of PUBLISH commands, in order."""
    async def main() -> None:
        a, b = new_bus(redis_server.url, "A", prefix="bat:"), new_bus(redis_server.url, "B", prefix="bat:")
        rb = Recorder(1)
        await a.start(Recorder(0))
        await b.start(rb)
        b.room_members("r", 1)
        await subscribed(redis_server, b"bat:", "r", 1)
        before = _publish_calls(redis_server)
        for i in range(1000):
            a.publish(Publication("r", chat(i), now_ms()))
        await wait_for(lambda: len(rb.got) == 1000)
        calls = _publish_calls(redis_server) - before
        assert calls <= 5, calls
        assert [p.payload for p in rb.got] == [chat(i) for i in range(1000)]
        await wait_for(lambda: a.metrics.redis_messages_out == 1000)  # counted once Redis answered
        assert b.metrics.redis_messages_in == 1000
        await a.close()
        await b.close()

    run(main())


def numsub(server: RedisServer, channel: bytes) -> int:
    """Subscribers of ``channel``, as Redis counts them (PUBSUB NUMSUB)."""
    lines = server.command("PUBSUB", "NUMSUB", channel.decode()).split(b"\r\n")  # *2 $n channel :count
    return int(next(line for line in lines if line.startswith(b":"))[1:])


async def subscribed(server: RedisServer, prefix: bytes, room: str, n: int) -> None:
    """Wait until ``room``'s channel has ``n`` subscribers (what a room_members() call leads to)."""
    channel = rf.room_channel(prefix, room)
    await wait_for(lambda: numsub(server, channel) == n)


def _publish_calls(server: RedisServer) -> int:
    info = server.command("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_publish:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_bad_and_oversized_payloads_are_dropped_and_counted(redis_server: RedisServer) -> None:
    """A misbehaving node publishes garbage on the channels: dropped, counted, and the bus keeps working."""
    async def main() -> None:
        import redis.asyncio as aredis

        b = new_bus(redis_server.url, "B", prefix="bad:", max_payload=1000, max_envelope=100_000)
        rb = Recorder(1)
        await b.start(rb)
        b.room_members("r", 1)
        await subscribed(redis_server, b"bad:", "r", 1)
        bch, rch = rf.broadcast_channel(b"bad:"), rf.room_channel(b"bad:", "r")
        head_b, head_r = rf.header(b"evil", 0, None), rf.header(b"evil", 0, "r")
        r = aredis.Redis.from_url(redis_server.url)
        await r.publish(bch, b"not an envelope")
        await r.publish(bch, head_b + b"\x00\x01")  # truncated record
        await r.publish(bch, head_b + rf.record(1, b"x" * 2000))  # over max_payload
        await r.publish(bch, b"\xfa\x01" + b"y" * 200_000)  # over max_envelope
        await r.publish(bch, head_b + rf.record(1, b"{not json"))
        await r.publish(bch, head_b + rf.record(1, b'{"type":"chat"}'))  # a chat on the broadcast channel
        await r.publish(rch, head_r + rf.record(1, b"[1,2]"))
        await r.publish(rch, head_r + rf.record(1, b'{"type":"chat","ok":1}') + rf.record(2, b"\xff\xfe"))
        await r.aclose()
        await wait_for(lambda: len(rb.got) == 1)
        await asyncio.sleep(0.05)
        assert rb.got[0].payload == b'{"type":"chat","ok":1}' and rb.got[0].room == "r"
        assert b.metrics.bus_dropped == {"redis_bad_frame": 2, "redis_oversized": 2, "redis_bad_payload": 4}
        assert b.healthy()
        await b.close()

    run(main())


def test_dead_node_leaves_presence_within_ttl(redis_server: RedisServer) -> None:
    """A node that stops refreshing (crashed: no goodbye) disappears from presence and stats within the TTL."""
    async def main() -> None:
        a = new_bus(redis_server.url, "A", prefix="ttl:", ttl=0.6)
        b = new_bus(redis_server.url, "B", prefix="ttl:", ttl=0.6)
        await a.start(Recorder(0))
        await b.start(Recorder(1))
        await wait_for(lambda: a.peer_count() == 1)
        assert [s["id"] for s in await a.gather_stats(1.0)] == [1]
        assert b._runner is not None
        b._runner.cancel()  # dies without a word
        with contextlib.suppress(BaseException):
            await b._runner
        t0 = time.monotonic()
        await wait_for(lambda: a.peer_count() == 0, 3)
        assert time.monotonic() - t0 < T(0.6 + 0.1 + 0.5)
        assert await a.gather_stats(1.0) == []
        await a.close()
        await b.close()

    run(main())


def test_redis_down_at_start_then_up() -> None:
    """No Redis at boot: start() returns promptly, degraded; publications are counted, not queued; when Redis
    comes, the bus connects by itself and traffic flows."""
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def main() -> None:
        a, b = new_bus(url, "A", prefix="late:"), new_bus(url, "B", prefix="late:")
        rb = Recorder(1)
        t0 = time.monotonic()
        await a.start(Recorder(0))
        await b.start(rb)
        assert time.monotonic() - t0 < T(4)
        assert not a.healthy() and not b.healthy()
        b.room_members("r", 1)  # joins while down are remembered and subscribed on connect
        a.publish(Publication("r", chat(0), now_ms()))
        assert a.metrics.bus_dropped == {"redis_down": 1}
        server = RedisServer(port).start()
        try:
            await wait_for(lambda: a.healthy() and b.healthy(), 5)
            a.publish(Publication("r", chat(1), now_ms()))
            await wait_for(lambda: len(rb.got) == 1)
            assert rb.got[0].payload == chat(1)
            await a.close()
            await b.close()
        finally:
            server.__exit__()

    run(main())


def test_redis_killed_and_restarted_mid_traffic() -> None:
    """Redis dies under traffic: the buses go unhealthy, count what they could not relay, never raise; Redis
    returns on the same port: they reconnect with backoff, resubscribe their rooms, traffic resumes."""
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)

    async def main() -> None:
        server = RedisServer().start()
        try:
            a = new_bus(server.url, "A", prefix="kill:")
            b = new_bus(server.url, "B", prefix="kill:")
            rb = Recorder(1)
            await a.start(Recorder(0))
            await b.start(rb)
            b.room_members("r", 1)
            await wait_for(lambda: a.peer_count() == 1 and b.peer_count() == 1)
            sent = 0
            outage_seen = False
            deadline = time.monotonic() + T(15)
            phase = "before"
            while time.monotonic() < deadline:
                a.publish(Publication("r", chat(sent), now_ms()))
                sent += 1
                await asyncio.sleep(0.002)
                if phase == "before" and len(rb.got) >= 50:
                    server.kill()
                    phase = "down"
                elif phase == "down" and not a.healthy() and not b.healthy():
                    outage_seen = True
                    await asyncio.sleep(0.3)  # some traffic while down
                    server.start()
                    phase = "restarted"
                elif phase == "restarted" and a.healthy() and b.healthy():
                    phase = "after"
                    mark = len(rb.got)
                elif phase == "after" and len(rb.got) >= mark + 50:
                    break
            assert phase == "after" and outage_seen, phase
            assert a.metrics.bus_dropped.get("redis_down", 0) > 0
            assert a.metrics.redis_reconnects >= 1 and b.metrics.redis_reconnects >= 1
            got = [int(p.payload.split(b":")[-1].rstrip(b"}")) for p in rb.got]
            assert got == sorted(got) and len(set(got)) == len(got)  # in order, nothing twice
            await wait_for(lambda: a.peer_count() == 1, 3)  # presence is back too
            await a.close()
            await b.close()
        finally:
            server.__exit__()

    run(main(), 40)
