"""RedisBus against a real redis-server of our own (each check in its own key prefix): the bus conformance suite,
and what is the Redis bus's own: routing by interest, a join's subscription confirmed before its replay,
bad / oversized / unstamped envelopes from a misbehaving node, presence TTL, Redis down at start, Redis
killed and restarted mid-traffic (new epochs: history lost is reported, never a silent gap), reset_epochs(),
and one worker's connection cut while Redis stays up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import uvloop

from server.bus import Bus
from server.bus import redisframe as rf
from server.bus.nodebus import NodeBus
from server.bus.pipebus import PipeBus, make_mesh
from server.bus.pipestreams import REDIS
from server.bus.redisbus import RedisBus
from server.metrics import Metrics
from server.streams import BROADCAST, stamp
from server.streams.owner import owner_slot
from server.streams.table import Replay

from ...helpers import NO_REDIS_REASON, RedisServer, T, free_port, redis_server_binary
from .conformance import (
    CHECKS,
    OTHER_EPOCH,
    Check,
    Factory,
    Outcomes,
    Recorder,
    arrived,
    assert_join_exact,
    assert_one_stream,
    history,
    rec,
    replay,
    start_join,
    submit,
    wait_for,
)

_prefixes = itertools.count()


def fresh_prefix(name: str = "t") -> str:
    return f"{name}{next(_prefixes)}:"


def new_bus(url: str, node: str, worker: int = 0, prefix: str = "t:", rid: int = 0, **kw: Any) -> RedisBus:
    """A Redis bus with quick timings, and its Recorder (named ``rid``) at ``bus.recorder``."""
    opts: dict[str, Any] = {"stats_interval": 0.1, "ttl": 1.0, "connect_timeout": 0.5, "command_timeout": 1.0,
                            "backoff_base": 0.05, "backoff_cap": 0.3}
    opts.update(kw)
    bus = RedisBus(url, node, worker, Metrics(), prefix=prefix, **opts)
    bus.recorder = Recorder(rid)  # type: ignore[attr-defined]
    return bus


def make_factory(url: str) -> Factory:
    @contextlib.asynccontextmanager
    async def redis_buses(n: int) -> AsyncIterator[list[Bus]]:
        prefix = fresh_prefix("conf")  # a namespace of its own: checks never see each other
        buses: list[Bus] = [new_bus(url, f"n{i}", prefix=prefix, rid=i) for i in range(n)]
        try:
            for b in buses:
                await b.start(rec(b))
            assert all(b.healthy() for b in buses)
            yield buses
        finally:
            for b in buses:
                await b.close()

    return redis_buses


_open: list[RedisBus] = []  # started by started(): run() closes them whatever happens


def run(coro: Coroutine[Any, Any, None], timeout: float = 30, loop: str = "uvloop") -> None:
    """Run a test's coroutine (bounded); the buses it started are closed at the end even if it fails, so
    that no task outlives it."""

    async def guarded() -> None:
        try:
            await asyncio.wait_for(coro, T(timeout))
        finally:
            while _open:
                await _open.pop().close()

    if loop == "uvloop":
        uvloop.run(guarded())
    else:
        asyncio.run(guarded())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_redisbus_conformance(redis_server: RedisServer, check: Check, loop: str) -> None:
    run(check(make_factory(redis_server.url)), loop=loop)


# --- helpers ------------------------------------------------------------------------------------------------


def numsub(server: RedisServer, channel: bytes) -> int:
    """Subscribers of ``channel``, as Redis counts them (PUBSUB NUMSUB)."""
    lines = server.command("PUBSUB", "NUMSUB", channel.decode()).split(b"\r\n")  # *2 $n channel :count
    return int(next(line for line in lines if line.startswith(b":"))[1:])


async def subscribed(server: RedisServer, prefix: str, room: str, n: int) -> None:
    """Wait until ``room``'s channel has ``n`` subscribers (what a room_members() call leads to)."""
    channel = rf.room_channel(prefix.encode(), room)
    await wait_for(lambda: numsub(server, channel) == n, 3, f"{n} subscribers of {room!r}")


async def started(*buses: RedisBus) -> None:
    for b in buses:
        _open.append(b)
        await b.start(rec(b))


async def closed(*buses: RedisBus) -> None:
    for b in buses:
        await b.close()


# --- routing by interest ------------------------------------------------------------------------------------


def test_rooms_are_routed_by_interest(redis_server: RedisServer) -> None:
    """A worker receives a room's messages only while the hub says the room has members there (broadcasts
    always); the offsets still count every message of the room."""

    async def main() -> None:
        p = fresh_prefix("int")
        a, b = new_bus(redis_server.url, "A", prefix=p), new_bus(redis_server.url, "B", prefix=p)
        await started(a, b)
        a.room_members("games", 1)
        await subscribed(redis_server, p, "games", 1)
        out = Outcomes()
        submit(a, out, "games", 0, 1)
        submit(a, out, BROADCAST, 0, 2)
        await out.wait([("games", 0, 1), (BROADCAST, 0, 2)])
        await wait_for(lambda: rec(b).count(BROADCAST) == 1 and rec(a).count("games") == 1)
        assert rec(b).count("games") == 0  # no member on B
        b.room_members("games", 1)
        await subscribed(redis_server, p, "games", 2)
        submit(a, out, "games", 0, 3)
        await wait_for(lambda: rec(b).count("games") == 1)
        got = rec(b).got[-1]
        assert got.origin == "A/0" and [(m.offset, m.n) for m in rec(b).stream("games")] == [(2, 3)]
        b.room_members("games", 0)
        await subscribed(redis_server, p, "games", 1)
        submit(a, out, "games", 0, 4)
        submit(a, out, BROADCAST, 0, 5)
        await out.wait([("games", 0, 4), (BROADCAST, 0, 5)])
        await wait_for(lambda: rec(b).count(BROADCAST) == 2 and rec(a).count("games") == 3)
        assert [m.n for m in rec(b).stream("games")] == [3]
        assert [m.offset for m in rec(a).stream("games")] == [1, 2, 3]
        await closed(a, b)

    run(main())


def test_always_rooms_are_subscribed_from_the_start(redis_server: RedisServer) -> None:
    """The default room is subscribed before any member arrives, and stays when the last one leaves."""

    async def main() -> None:
        p = fresh_prefix("alw")
        a = new_bus(redis_server.url, "A", prefix=p)
        b = new_bus(redis_server.url, "B", prefix=p, always=("lobby",))
        await started(a, b)
        out = Outcomes()
        submit(a, out, "lobby", 0, 1)
        await wait_for(lambda: rec(b).count("lobby") == 1)
        b.room_members("lobby", 1)
        b.room_members("lobby", 0)
        await asyncio.sleep(0.05)  # (nothing to wait for: the subscription must simply stay)
        assert numsub(redis_server, rf.room_channel(p.encode(), "lobby")) == 1
        submit(a, out, "lobby", 0, 2)
        await wait_for(lambda: rec(b).count("lobby") == 2)
        await closed(a, b)

    run(main())


def test_a_join_is_subscribed_before_its_replay(redis_server: RedisServer) -> None:
    """A worker with no member in a room joins it while another node keeps publishing: history() subscribes,
    waits for Redis to confirm, then replays, so the messages right after the replay's latest are not
    missed; the hub subscribes in done (room_members), and the channel stays. Stitched, every join gets
    each message after its position exactly once."""

    async def main() -> None:
        p = fresh_prefix("join")
        a, b = new_bus(redis_server.url, "A", prefix=p), new_bus(redis_server.url, "B", prefix=p)
        await started(a, b)
        a.room_members("j", 1)
        await subscribed(redis_server, p, "j", 1)
        out = Outcomes()
        keys = [submit(a, out, "j", 0, n) for n in range(5)]
        await out.wait(keys)
        epoch = out.ok(keys[0]).epoch
        joins = []
        n = 5
        for i in range(4):
            room = f"j{i}" if i else "j"
            if i:
                a.room_members(room, 1)
                await subscribed(redis_server, p, room, 1)
            since = (2, epoch) if i == 0 else None
            j = start_join(b, room, since, also=functools.partial(b.room_members, room, 1))
            joins.append((room, j))
            for _ in range(40):  # traffic while the join subscribes and replays, and after
                keys.append(submit(a, out, room, 0, n))
                n += 1
                await asyncio.sleep(0)
            await out.wait(keys, 5)
        await wait_for(lambda: all(j.result is not None for _, j in joins), 5, "every join answered")
        for room, j in joins:
            latest = max(out.got[k].offset for k in keys if k[0] == room)
            e = out.got[next(k for k in keys if k[0] == room)].epoch
            await arrived([b], room, 0, max(k[2] for k in keys if k[0] == room))
            assert_join_exact(j, latest, e)
            assert numsub(redis_server, rf.room_channel(p.encode(), room)) == 2  # the hub's interest keeps it
        await closed(a, b)

    run(main())


# --- a misbehaving node -------------------------------------------------------------------------------------


def test_bad_oversized_and_unstamped_envelopes_are_dropped_and_counted(redis_server: RedisServer) -> None:
    """Garbage published on the channels (not by our script): dropped, counted by kind; the bus goes on."""

    async def main() -> None:
        import redis.asyncio as aredis

        p = fresh_prefix("bad")
        b = new_bus(redis_server.url, "B", prefix=p, max_payload=1000, max_envelope=100_000)
        await started(b)
        b.room_members("r", 1)
        await subscribed(redis_server, p, "r", 1)
        bch, rch = rf.broadcast_channel(p.encode()), rf.room_channel(p.encode(), "r")
        head_b, head_r = rf.header(b"evil", 0, None), rf.header(b"evil", 0, "r")
        good = stamp.stamp(b'{"type":"chat","ok":1}', 1, "abc")
        r = aredis.Redis.from_url(redis_server.url)
        try:
            await r.publish(bch, b"not an envelope")  # bad frame
            await r.publish(bch, head_b[:-3])  # truncated header: bad frame
            await r.publish(bch, head_b)  # no payload: bad frame
            await r.publish(bch, b"\xfa\x01" + head_b[2:] + good)  # the old format's magic: bad frame
            await r.publish(bch, head_b + stamp.stamp(b'{"type":"broadcast","x":"' + b"x" * 2000 + b'"}', 1,
                                                      "abc"))  # over max_payload
            await r.publish(bch, head_b + b"y" * 200_000)  # over max_envelope
            await r.publish(bch, head_b + b'{"type":"broadcast"}')  # not stamped
            await r.publish(rch, head_r + b"[1,2]")  # not stamped
            await r.publish(rch, head_r + b'{"offset":"1","epoch":"abc","type":"chat"}')  # not a position
            await r.publish(rch, head_r + good)
        finally:
            await r.aclose()
        await wait_for(lambda: rec(b).count("r") == 1)
        await wait_for(lambda: sum(b.metrics.bus_dropped.values()) == 9, 2, "every bad one counted")
        assert rec(b).got[0].payload == good and rec(b).got[0].room == "r" and rec(b).got[0].origin == "evil/0"
        assert b.metrics.bus_dropped == {"redis_bad_frame": 4, "redis_oversized": 2, "redis_bad_payload": 3}
        assert len(rec(b).got) == 1
        out = Outcomes()
        submit(b, out, "r", 0, 1)
        await wait_for(lambda: rec(b).count("r") == 2)
        assert b.healthy()
        await closed(b)

    run(main())


def test_oversized_submission_fails_and_is_counted(redis_server: RedisServer) -> None:
    async def main() -> None:
        p = fresh_prefix("big")
        a = new_bus(redis_server.url, "A", prefix=p, max_payload=1000)
        await started(a)
        out = Outcomes()
        submit(a, out, BROADCAST, 0, 0, pad=b"x" * 2000)
        await out.wait([(BROADCAST, 0, 0)])
        assert out.got[(BROADCAST, 0, 0)].error == "unavailable"
        assert a.metrics.bus_dropped == {"redis_oversized": 1}
        assert (await replay(a, BROADCAST, None)).latest == 0  # nothing was sequenced
        await closed(a)

    run(main())


# --- presence ---------------------------------------------------------------------------------------------------


def test_dead_node_leaves_presence_within_ttl(redis_server: RedisServer) -> None:
    """A node that stops refreshing (crashed: no goodbye) disappears from presence and stats within the TTL."""

    async def main() -> None:
        p = fresh_prefix("ttl")
        a = new_bus(redis_server.url, "A", prefix=p, ttl=0.6)
        b = new_bus(redis_server.url, "B", prefix=p, ttl=0.6, rid=1)
        await started(a, b)
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
        await closed(a, b)

    run(main())


# --- outages ------------------------------------------------------------------------------------------------------


def test_redis_down_at_start_then_up() -> None:
    """No Redis at boot: start() returns promptly, degraded; submissions and history fail with 'unavailable'
    (counted, not queued); joins made meanwhile are remembered; when Redis comes, the bus connects by itself
    and traffic flows."""
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def main() -> None:
        a, b = new_bus(url, "A", prefix="late:"), new_bus(url, "B", prefix="late:")
        t0 = time.monotonic()
        await started(a, b)
        assert time.monotonic() - t0 < T(4)
        assert not a.healthy() and not b.healthy()
        b.room_members("r", 1)  # a join while down: subscribed on connect
        out = Outcomes()
        submit(a, out, "r", 0, 0)
        await out.wait([("r", 0, 0)])
        assert out.got[("r", 0, 0)].error == "unavailable"
        assert a.metrics.bus_dropped == {"redis_down": 1}
        assert await history(a, "r", None) == "unavailable"
        server = RedisServer(port).start()
        try:
            await wait_for(lambda: a.healthy() and b.healthy(), 5)
            submit(a, out, "r", 0, 1)
            await out.wait([("r", 0, 1)])
            assert out.ok(("r", 0, 1)).offset == 1
            await wait_for(lambda: rec(b).count("r") == 1)
            assert [m.n for m in rec(b).stream("r")] == [1]
            await closed(a, b)
        finally:
            server.__exit__()

    run(main())


def test_redis_killed_and_restarted_mid_traffic() -> None:
    """Redis dies under traffic: the buses go unhealthy, fail what they cannot sequence ('unavailable',
    counted), never raise; Redis returns (empty) on the same port: they reconnect and resubscribe, and
    every stream starts a NEW epoch: a since of the old one is not recovered (history lost is reported),
    each epoch's offsets as delivered run without a gap, and every acknowledged message was delivered."""
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)

    async def main() -> None:
        server = RedisServer().start()
        try:
            a, b = new_bus(server.url, "A", prefix="kill:"), new_bus(server.url, "B", prefix="kill:")
            await started(a, b)
            b.room_members("r", 1)
            await subscribed(server, "kill:", "r", 1)
            out = Outcomes()
            sent = 0
            phase = "before"
            deadline = time.monotonic() + T(15)
            mark = 0
            while time.monotonic() < deadline:
                submit(a, out, "r", 0, sent)
                sent += 1
                await asyncio.sleep(0.002)
                if phase == "before" and rec(b).count("r") >= 50:
                    server.kill()
                    phase = "down"
                elif phase == "down" and not a.healthy() and not b.healthy():
                    await wait_for(lambda: rec(b).count("r") > 0)
                    server.start()
                    phase = "restarted"
                elif phase == "restarted" and a.healthy() and b.healthy():
                    phase = "after"
                    mark = sent
                elif phase == "after" and rec(b).has("r", 0, mark + 30):
                    break
            assert phase == "after", phase
            await out.wait([("r", 0, i) for i in range(sent)], 5)
            assert a.metrics.bus_dropped.get("redis_down", 0) > 0
            assert a.metrics.redis_reconnects >= 1 and b.metrics.redis_reconnects >= 1
            ok = {k: o for k, o in out.got.items() if o.error is None}
            failed = [k for k, o in out.got.items() if o.error is not None]
            assert failed and all(out.got[k].error == "unavailable" for k in failed)
            epochs = list(dict.fromkeys(o.epoch for o in ok.values()))
            assert len(epochs) == 2, epochs  # one before, one after the restart
            old, new = epochs
            last_old = max(o.offset for o in ok.values() if o.epoch == old)
            r = await replay(a, "r", (last_old, old))
            assert r.epoch == new and r.recovered is False  # the old history is gone: said, not hidden
            assert [o.offset for k, o in sorted(ok.items(), key=lambda kv: kv[0][2]) if o.epoch == new] == \
                list(range(1, sum(1 for o in ok.values() if o.epoch == new) + 1))
            await wait_for(lambda: rec(b).has("r", 0, sent - 1), 3)
            msgs = rec(b).stream("r")
            before = [m for m in msgs if m.epoch == old]
            assert_one_stream(before, old)
            delivered_new = {(m.src, m.n) for m in msgs if m.epoch == new}
            assert [m.epoch for m in msgs] == sorted((m.epoch for m in msgs), key=[old, new].index)
            # what was acknowledged after B was back is delivered to B
            assert {("r", 0, n) for n in range(mark, sent)} <= {("r", *k) for k in delivered_new} | set(failed)
            await wait_for(lambda: a.peer_count() == 1, 3)  # presence is back too
            await closed(a, b)
        finally:
            server.__exit__()

    run(main(), 40)


def test_reset_epochs(redis_server: RedisServer) -> None:
    """reset_epochs() (after local sequencing during an outage): a new epoch, offset 0, history gone; a since
    of the old epoch is not recovered; offsets start again at 1; dedup entries of the old epoch are gone."""

    async def main() -> None:
        p = fresh_prefix("reset")
        a = new_bus(redis_server.url, "A", prefix=p)
        await started(a)
        a.room_members("r", 1)
        out = Outcomes()
        keys = [submit(a, out, s, 0, n, identity="u", msg_id=n) for n in range(3) for s in ("r", "q")]
        await out.wait(keys)
        old = out.ok(("r", 0, 0)).epoch
        q_epoch = out.ok(("q", 0, 0)).epoch
        await a.reset_epochs(["r"])
        r = await replay(a, "r", None)
        assert r.epoch != old and r.latest == 0
        r = await replay(a, "r", (3, old))
        assert (r.recovered, r.messages, r.latest) == (False, [], 0)
        assert await history(a, "r", (1, r.epoch)) == "bad_since"
        k = submit(a, out, "r", 0, 10, identity="u", msg_id=0)  # a resend of an old-epoch id: a new message
        await out.wait([k])
        assert (out.got[k].offset, out.got[k].epoch, out.got[k].duplicate) == (1, r.epoch, False)
        q = await replay(a, "q", (0, q_epoch))  # another stream: untouched
        assert (q.epoch, q.latest, q.recovered) == (q_epoch, 3, True)
        await closed(a)

    run(main())


def kill_connections(server: RedisServer, name: str) -> int:
    """CLIENT KILL every connection whose client name is ``name``; returns how many."""
    listing = server.command("CLIENT", "LIST").decode(errors="replace")
    ids = [line.split("id=")[1].split()[0] for line in listing.splitlines()
           if f" name={name} " in f" {line} "]
    for cid in ids:
        server.command("CLIENT", "KILL", "ID", cid)
    return len(ids)


def test_a_worker_reconnecting_to_redis_delivers_no_hole(redis_server: RedisServer) -> None:
    """Redis stays up; B's connections are cut (a network blip) while A keeps publishing: once B is back,
    what it delivers of the stream has no hole in an epoch."""

    async def main() -> None:
        p = fresh_prefix("blip")
        a, b = new_bus(redis_server.url, "A", prefix=p), new_bus(redis_server.url, "B", prefix=p)
        await started(a, b)
        b.room_members("r", 1)
        await subscribed(redis_server, p, "r", 1)
        out = Outcomes()
        n = 0
        while rec(b).count("r") < 10:
            submit(a, out, "r", 0, n)
            n += 1
            await asyncio.sleep(0.002)
        assert kill_connections(redis_server, "fanwire:B:0") >= 2
        await wait_for(lambda: not b.healthy(), 2, "B notices")
        while not b.healthy() or rec(b).count("r") < 10 + 20:
            submit(a, out, "r", 0, n)
            n += 1
            await asyncio.sleep(0.002)
        await out.wait([("r", 0, i) for i in range(n)], 5)
        await wait_for(lambda: rec(b).has("r", 0, n - 1), 3)
        msgs = rec(b).stream("r")
        assert {m.epoch for m in msgs} == {out.got[("r", 0, 0)].epoch}  # Redis never lost anything
        assert [m.offset for m in msgs] == list(range(1, len(msgs) + 1)), "a hole in B's stream"
        await closed(a, b)

    run(main(), 20)


def test_in_a_cluster_a_worker_reconnecting_to_redis_delivers_no_hole(redis_server: RedisServer) -> None:
    """The same blip on a cluster node (NodeBus: the pipe streams layer mends what its Redis bus brings):
    worker 1's connections are cut while worker 0, the owner of the stream's slot, keeps its own; another
    node keeps publishing. Worker 1's first messages after the resubscription arrive before its session is
    up: the hole is mended all the same."""

    async def main() -> None:
        p = fresh_prefix("nblip")
        a = new_bus(redis_server.url, "A", prefix=p)
        await started(a)
        mesh = make_mesh(2)
        node: list[NodeBus] = []
        try:
            for ep in range(2):
                remote = new_bus(redis_server.url, "B", worker=ep, prefix=p, rid=ep, mend=False)
                local = PipeBus(ep, ep, mesh[ep], remote.metrics, boot_ts_ms=0, workers=2, remote=remote)
                bus = NodeBus(local, remote)
                bus.recorder = Recorder(ep)  # type: ignore[attr-defined]
                node.append(bus)
                await bus.start(rec(bus))
            w0, w1 = node
            stream = next(f"n{i}" for i in range(100) if owner_slot(f"n{i}", 2) == 0)
            for b in node:
                b.room_members(stream, 1)
            await subscribed(redis_server, p, stream, 2)
            await wait_for(lambda: w1.local.streams.mode_of(0) == REDIS and w0.local.peer_count() == 1)
            out = Outcomes()
            n = 0
            while rec(w1).count(stream) < 10:
                submit(a, out, stream, 0, n)
                n += 1
                await asyncio.sleep(0.002)
            assert kill_connections(redis_server, "fanwire:B:1") >= 2
            await wait_for(lambda: not w1.remote.healthy(), 2, "worker 1 notices")
            while not w1.remote.healthy() or rec(w1).count(stream) < 10 + 20:
                submit(a, out, stream, 0, n)
                n += 1
                await asyncio.sleep(0.002)
            await out.wait([(stream, 0, i) for i in range(n)], 5)
            await arrived(node, stream, 0, n - 1, 3)
            for b in node:
                msgs = rec(b).stream(stream)
                assert [m.offset for m in msgs] == list(range(1, n + 1)), f"a hole on worker {b.local.endpoint}"
        finally:
            for b in node:
                await b.close()
            await closed(a)
            for socks in mesh.values():
                for sock in socks.values():
                    sock.close()

    run(main(), 20)


def test_history_unavailable_while_down_and_after_close(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = new_bus(redis_server.url, "A", prefix=fresh_prefix("cl"))
        await started(a)
        r = await history(a, "x", None)
        assert isinstance(r, Replay) and r.latest == 0
        r = await history(a, "x", (0, OTHER_EPOCH))
        assert isinstance(r, Replay) and (r.recovered, r.latest, r.messages) == (False, 0, [])
        await closed(a)
        assert await history(a, "x", None) == "unavailable"
        out = Outcomes()
        submit(a, out, "x", 0, 0)
        await out.wait([("x", 0, 0)])
        assert out.got[("x", 0, 0)].error == "unavailable"

    run(main())


JOINS_BURST = 40  # clients re-joining at once, as after a network blip (more than the 8 pooled connections)

def test_a_burst_of_joins_is_answered(redis_server: RedisServer) -> None:
    async def main() -> None:
        p = fresh_prefix("burst")
        b = new_bus(redis_server.url, "B", prefix=p)
        await started(b)
        b.room_members("r", 1)
        await subscribed(redis_server, p, "r", 1)
        res = await asyncio.gather(*(history(b, "r", None) for _ in range(JOINS_BURST)))
        assert sum(r == "unavailable" for r in res) == 0
        await closed(b)

    run(main())


def test_a_burst_of_joins_does_not_take_the_bus_down(redis_server: RedisServer) -> None:
    async def main() -> None:
        p = fresh_prefix("burst")
        b = new_bus(redis_server.url, "B", prefix=p)
        await started(b)
        b.room_members("r", 1)
        await subscribed(redis_server, p, "r", 1)
        joins = [asyncio.ensure_future(history(b, "r", None)) for _ in range(JOINS_BURST)]
        await asyncio.sleep(0)  # the joins took their connections
        out = Outcomes()
        keys = [submit(b, out, "r", 0, n) for n in range(5)]
        await asyncio.gather(*joins, return_exceptions=True)
        await out.wait(keys)
        assert [out.got[k].error for k in keys] == [None] * 5
        assert b.healthy() and b.metrics.redis_reconnects == 0
        await closed(b)

    run(main())
