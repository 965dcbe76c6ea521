"""NodeBus: one cluster worker's bus, its pipe bus (the node's workers; each slot's owner decides where its
streams are sequenced) composed with its Redis bus (the cluster). Routing and sequencing run on real PipeBus
meshes against a fake Redis (:class:`World`, one sequencer for every node, with a fake Redis bus per
worker, brought down and back with ``on_health``); the composition (stats, close, congestion, health) on
fake buses on both sides.

What is checked: while the owner of a slot reaches Redis, submissions and joins of its streams go to Redis
(every worker takes their messages from its own subscription); while it does not, the owner sequences them
itself (fresh local epochs; Redis messages of the slot dropped on every worker of the node, counted);
when Redis is back, the streams sequenced locally get new epochs in Redis (once), and a later outage starts
new local epochs again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from server.bus import Bus, BusHandler, Publication
from server.bus.base import Done, Outcome, ReplayDone, Submission
from server.bus.nodebus import NodeBus
from server.bus.pipebus import PipeBus, make_mesh
from server.bus.pipestreams import LOCAL, REDIS
from server.metrics import Metrics
from server.stats import StatsQuery
from server.streams import BROADCAST, stamp
from server.streams.owner import owner_slot
from server.streams.table import Replay

from ...helpers import T
from .conformance import Outcomes, Recorder, arrived, history, rec, submit, wait_for

# --- a fake Redis -----------------------------------------------------------------------------------------


class World:
    """Redis as the fake Redis buses see it: every stream's one sequencer (epoch, offset, history), the
    subscribers it delivers to, and a log of what was asked of it, in order."""

    def __init__(self) -> None:
        self.streams: dict[str, tuple[str, int, list[bytes]]] = {}
        self.remotes: list[FakeRemote] = []
        self.log: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, reset_epochs() waits for it
        self.fail_resets = 0  # resets that fail (Redis unreachable again) before they work

    def stream(self, name: str) -> tuple[str, int, list[bytes]]:
        if name not in self.streams:
            self.streams[name] = (stamp.new_epoch(), 0, [])
        return self.streams[name]

    def sequence(self, sub: Submission) -> Outcome:
        epoch, offset, kept = self.stream(sub.stream)
        offset += 1
        stamped = stamp.stamp(sub.payload, offset, epoch)
        self.streams[sub.stream] = (epoch, offset, [*kept, stamped])
        self.log.append(f"submit {sub.stream}")
        for r in self.remotes:
            if r.up and r.handler is not None:
                r.handler.on_publication(Publication(sub.room, stamped, sub.ts_ms, "redis"))
        return Outcome(offset, epoch)

    def replay(self, name: str, since: tuple[int, str] | None) -> Replay | str:
        epoch, latest, kept = self.stream(name)
        self.log.append(f"history {name}")
        if since is None:
            return Replay(epoch, latest, [], None)
        if since[1] != epoch:
            return Replay(epoch, latest, list(kept), False)
        if since[0] > latest:
            return "bad_since"
        return Replay(epoch, latest, kept[since[0]:], True)

    async def reset(self, streams: list[str]) -> None:
        self.log.append(f"reset {','.join(streams)}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_resets:
            self.fail_resets -= 1
            raise ConnectionError("redis is gone again")
        for s in streams:
            self.streams[s] = (stamp.new_epoch(), 0, [])
        self.log.append("reset done")


class FakeRemote:
    """One worker's Redis bus, on the fake Redis: what NodeBus and PipeStreams use of a RedisBus."""

    def __init__(self, world: World, up: bool = True) -> None:
        self.world = world
        self.up = up
        self.handler: BusHandler | None = None
        self.on_health: Callable[[bool], None] | None = None
        self.resets: list[list[str]] = []
        self.members: list[tuple[str, int]] = []
        self.closed = 0
        world.remotes.append(self)

    async def start(self, handler: BusHandler) -> None:
        self.handler = handler

    def healthy(self) -> bool:
        return self.up

    def submit(self, sub: Submission, done: Done) -> None:
        done(self.world.sequence(sub) if self.up else Outcome(error="unavailable"))

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        done(self.world.replay(stream, since) if self.up else "unavailable")

    async def reset_epochs(self, streams: Iterable[str]) -> None:
        names = list(streams)
        self.resets.append(names)
        await self.world.reset(names)

    def go_down(self) -> None:
        self.up = False
        if self.on_health is not None:
            self.on_health(False)

    def come_back(self) -> None:
        self.up = True
        if self.on_health is not None:
            self.on_health(True)

    def room_members(self, room: str, count: int) -> None:
        self.members.append((room, count))

    def presence_changed(self, room: str) -> None:
        pass

    def control(self, command: dict[str, Any]) -> int:
        return 0

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        self.closed += 1

    def congested(self) -> bool:
        return False

    def on_drained(self, callback: Callable[[], None]) -> None:
        callback()

    def stats_complete(self) -> bool:
        return self.up

    def peer_count(self) -> int:
        return 0


@contextlib.asynccontextmanager
async def cluster_node(world: World, workers: int = 2, up: bool = True) -> AsyncIterator[list[NodeBus]]:
    """The workers of one node of a cluster: a pipe mesh, and a fake Redis bus each."""
    mesh = make_mesh(workers)
    buses: list[NodeBus] = []
    try:
        for ep in range(workers):
            remote = FakeRemote(world, up)
            local = PipeBus(ep, ep, mesh[ep], Metrics(), boot_ts_ms=0, workers=workers,
                            remote=remote)
            bus = NodeBus(local, remote)  # type: ignore[arg-type]
            bus.recorder = Recorder(ep)  # type: ignore[attr-defined]
            buses.append(bus)
        for b in buses:
            await b.start(rec(b))
        await wait_for(lambda: all(b.local.peer_count() == workers - 1 for b in buses), 3, "workers see each other")
        yield buses
    finally:
        for b in buses:
            await b.close()
        for socks in mesh.values():
            for s in socks.values():
                s.close()


def remote_of(bus: NodeBus) -> FakeRemote:
    assert isinstance(bus.remote, FakeRemote)
    return bus.remote


def stream_of(slot: int, workers: int, prefix: str = "s") -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner_slot(f"{prefix}{i}", workers) == slot)


def run(coro: Any, timeout: float = 15) -> None:
    asyncio.run(asyncio.wait_for(coro, T(timeout)))


async def switched(owner: NodeBus, mode: int, others: Iterable[NodeBus] = ()) -> None:
    """Wait until the owner sequences its slot in ``mode`` and the other workers know it."""
    s = owner.local.streams
    await wait_for(lambda: s.mode == mode and not s.switching
                   and all(o.local.streams.modes.get(s.slot) == mode for o in others), 3, f"mode {mode}")


# --- routing and sequencing ------------------------------------------------------------------------------------


def test_start_hands_redis_messages_to_the_pipe_streams_layer() -> None:
    """The Redis bus is started with a handler whose publications go through the owner's mode check, and
    whose stats come from the worker."""

    async def main() -> None:
        world = World()
        async with cluster_node(world, 1) as (bus,):
            remote = remote_of(bus)
            assert remote.handler is not None and remote.handler is not rec(bus)
            assert remote.handler.stats_snapshot() == rec(bus).stats_snapshot()
            assert bus.local.streams.handler is rec(bus)

    run(main())


def test_while_redis_is_healthy_submissions_and_joins_go_to_redis() -> None:
    """Every worker submits through its slot's owner, which has Redis sequence; every worker takes the
    messages from its own Redis subscription, once; joins are answered by Redis."""

    async def main() -> None:
        world = World()
        async with cluster_node(world) as buses:
            streams = [stream_of(0, 2), stream_of(1, 2), BROADCAST]
            out = Outcomes()
            keys = [submit(b, out, s, i, n) for n in range(3) for s in streams for i, b in enumerate(buses)]
            await out.wait(keys)
            for s in streams:
                epoch = world.streams[s][0]
                assert sorted(out.ok(k).offset for k in keys if k[0] == s) == list(range(1, 7))
                assert {out.got[k].epoch for k in keys if k[0] == s} == {epoch}
                for b in buses:
                    assert [m.offset for m in rec(b).stream(s)] == list(range(1, 7))
                    r = await history(b, s, (2, epoch))
                    assert isinstance(r, Replay) and (r.epoch, r.latest, r.recovered) == (epoch, 6, True)
            for b in buses:
                assert len(b.local.streams.table.streams) == 0  # nothing sequenced locally
            assert world.log.count(f"history {streams[0]}") == 2

    run(main())


def test_during_an_outage_the_owner_sequences_locally_and_drops_redis_messages() -> None:
    """The owner of a slot loses Redis: it sequences the slot's streams itself (fresh epochs, offsets from 1,
    each submission counted as not reaching the other nodes), answers joins from its own history, and every
    worker of the node drops what Redis still brings of the slot (counted): one source per stream."""

    async def main() -> None:
        world = World()
        async with cluster_node(world) as buses:
            w0, w1 = buses
            s = stream_of(0, 2)
            out = Outcomes()
            k = submit(w1, out, s, 1, 0)
            await out.wait([k])
            redis_epoch = out.ok(k).epoch
            remote_of(w0).go_down()
            await switched(w0, LOCAL, [w1])
            keys = [submit(b, out, s, i, 1) for i, b in enumerate(buses)]
            await out.wait(keys)
            local_epoch = out.ok(keys[0]).epoch
            assert local_epoch != redis_epoch and {out.got[k].epoch for k in keys} == {local_epoch}
            assert sorted(out.got[k].offset for k in keys) == [1, 2]
            assert w0.local.metrics.bus_dropped.get("redis_down") == 2
            assert w0.local.streams.local_streams == {s}
            for b in buses:
                await arrived([b], s, 1, 1)
                assert [(m.offset, m.epoch) for m in rec(b).stream(s)][1:] == [(1, local_epoch), (2, local_epoch)]
                r = await history(b, s, (1, local_epoch))
                assert isinstance(r, Replay) and (r.epoch, r.latest, r.recovered) == (local_epoch, 2, True)
                r = await history(b, s, (1, redis_epoch))
                assert isinstance(r, Replay) and r.recovered is False
            # another node still publishes to the stream through Redis: w1 (whose link is up) drops it
            other_node = FakeRemote(world)
            other_node.submit(Submission(s, s, b'{"type":"chat","src":7,"n":0}', 1), lambda o: None)
            for b in buses:
                assert rec(b).count(s) == 3
            assert w1.local.metrics.dropped.get("redis_while_local") == 1
            # the other slot's streams are not affected: still in Redis
            t = stream_of(1, 2)
            k = submit(w0, out, t, 0, 9)
            await out.wait([k])
            assert out.ok(k).epoch == world.streams[t][0]

    run(main())


def test_streams_sequenced_locally_get_new_epochs_when_redis_is_back() -> None:
    """Redis comes back: every worker acknowledges the switch, the streams sequenced locally (and only
    they, once) get new epochs in Redis, then the slot is sequenced in Redis again; a client recovering
    from a position of before or during the outage learns it is not recovered."""

    async def main() -> None:
        world = World()
        async with cluster_node(world) as buses:
            w0, w1 = buses
            s, quiet = stream_of(0, 2, "a"), stream_of(0, 2, "q")
            out = Outcomes()
            before = submit(w1, out, s, 1, 0)
            q = submit(w1, out, quiet, 1, 0)
            await out.wait([before, q])
            old = (out.got[before].offset, out.got[before].epoch)
            remote_of(w0).go_down()
            await switched(w0, LOCAL, [w1])
            during = submit(w1, out, s, 1, 1)
            await out.wait([during])
            remote_of(w0).come_back()
            await switched(w0, REDIS, [w1])
            assert remote_of(w0).resets == [[s]] and remote_of(w1).resets == []
            assert w0.local.streams.local_streams == set()
            after = submit(w1, out, s, 1, 2)
            await out.wait([after])
            assert (out.got[after].offset, out.got[after].epoch) == (1, world.streams[s][0])
            assert out.got[after].epoch not in (old[1], out.got[during].epoch)
            for pos in (old, (out.got[during].offset, out.got[during].epoch)):
                r = await history(w1, s, pos)
                assert isinstance(r, Replay) and r.recovered is False, pos
            qa = submit(w0, out, quiet, 0, 1)  # not published to during the outage: its epoch is kept
            await out.wait([qa])
            assert (out.got[qa].offset, out.got[qa].epoch) == (2, out.got[q].epoch)

    run(main())


def test_a_failed_reset_keeps_the_slot_local_and_is_tried_again() -> None:
    """Redis is back but the streams sequenced locally cannot get their new epochs there: the owner goes on
    sequencing them itself (switching would let a recovery from a pre-outage position succeed silently), and
    tries again a little later."""

    async def main() -> None:
        world = World()
        async with cluster_node(world, 1) as (bus,):
            s = bus.local.streams
            out = Outcomes()
            remote_of(bus).go_down()
            await switched(bus, LOCAL)
            first = submit(bus, out, "r", 0, 0)
            await out.wait([first])
            world.fail_resets = 1
            remote_of(bus).come_back()
            await wait_for(lambda: remote_of(bus).resets == [["r"]] and not s.switching, 3, "the failed reset")
            assert s.mode == LOCAL and s.local_streams == {"r"}
            again = submit(bus, out, "r", 0, 1)
            await out.wait([again])
            assert (out.got[again].offset, out.got[again].epoch) == (2, out.got[first].epoch)  # still here
            await switched(bus, REDIS)
            assert remote_of(bus).resets == [["r"], ["r"]] and s.local_streams == set()
            after = submit(bus, out, "r", 0, 2)
            await out.wait([after])
            assert (out.got[after].offset, out.got[after].epoch) == (1, world.streams["r"][0])

    run(main())


def test_no_reset_when_nothing_was_sequenced_locally() -> None:
    async def main() -> None:
        world = World()
        async with cluster_node(world, 1) as (bus,):
            remote_of(bus).go_down()
            await switched(bus, LOCAL)
            r = await history(bus, "a", None)  # a position asked locally is no publication
            assert isinstance(r, Replay)
            remote_of(bus).come_back()
            await switched(bus, REDIS)
            assert remote_of(bus).resets == [] and not any(e.startswith("reset") for e in world.log)

    run(main())


def test_a_second_outage_starts_new_local_epochs() -> None:
    """Local epochs do not outlive their outage: in the next one, a position taken in the first is not
    recovered (Redis sequenced messages in between)."""

    async def main() -> None:
        world = World()
        async with cluster_node(world, 1) as (bus,):
            out = Outcomes()
            remote_of(bus).go_down()
            await switched(bus, LOCAL)
            first = submit(bus, out, "r", 0, 0)
            await out.wait([first])
            position = (out.got[first].offset, out.got[first].epoch)
            remote_of(bus).come_back()
            await switched(bus, REDIS)
            between = submit(bus, out, "r", 0, 1)
            await out.wait([between])
            assert out.got[between].epoch == world.streams["r"][0]
            remote_of(bus).go_down()
            await switched(bus, LOCAL)
            again = submit(bus, out, "r", 0, 2)
            await out.wait([again])
            assert out.got[again].epoch not in (position[1], out.got[between].epoch)
            r = await history(bus, "r", position)
            assert isinstance(r, Replay) and r.recovered is False

    run(main())


def test_at_boot_without_redis_the_owner_waits_for_it_a_little() -> None:
    """A cluster worker that starts before Redis is reachable holds its slot's traffic (rather than give its
    streams local epochs that Redis would then have to reset), and sends it to Redis once it is there."""

    async def main() -> None:
        world = World()
        async with cluster_node(world, 1, up=False) as (bus,):
            assert bus.local.streams.switching
            out = Outcomes()
            k = submit(bus, out, "r", 0, 0)
            for _ in range(10):
                await asyncio.sleep(0)
            assert k not in out.got
            remote_of(bus).come_back()
            await out.wait([k])
            assert (out.ok(k).offset, out.got[k].epoch) == (1, world.streams["r"][0])
            assert remote_of(bus).resets == []

    run(main())


def test_joins_during_the_switch_back_wait_for_the_reset() -> None:
    async def main() -> None:
        world = World()
        async with cluster_node(world) as buses:
            w0, w1 = buses
            s = stream_of(0, 2)
            out = Outcomes()
            pre = submit(w1, out, s, 1, 0)
            await out.wait([pre])
            position = (out.got[pre].offset, out.got[pre].epoch)  # a client of w1 leaves here
            remote_of(w0).go_down()
            await switched(w0, LOCAL, [w1])
            k = submit(w1, out, s, 1, 1)  # published during the outage: the client misses it
            await out.wait([k])
            world.gate = asyncio.Event()
            remote_of(w0).come_back()
            await wait_for(lambda: f"reset {s}" in world.log, 3, "the reset started")
            r_task = asyncio.ensure_future(history(w1, s, position))  # the client comes back now
            for _ in range(10):
                await asyncio.sleep(0)
            world.gate.set()
            r = await r_task
            assert isinstance(r, Replay)
            assert r.recovered is not True, f"recovered from {position} across an outage it missed: {world.log}"

    run(main())


def test_cross_node_messages_dropped_during_an_outage_leave_no_silent_hole() -> None:
    async def main() -> None:
        world = World()
        async with cluster_node(world) as buses:
            w0, w1 = buses
            s = stream_of(0, 2)
            for b in buses:
                b.room_members(s, 1)  # the room has members on both workers (the hub says so on a first join)
            other_node = FakeRemote(world)

            def publish(n: int) -> None:
                other_node.submit(Submission(s, s, b'{"type":"chat","src":7,"n":%d}' % n, 1), lambda o: None)

            publish(0)
            remote_of(w0).go_down()
            await switched(w0, LOCAL, [w1])
            publish(1)  # w0 cannot get it; w1 drops it (its owner is on its own)
            remote_of(w0).come_back()
            await switched(w0, REDIS, [w1])
            publish(2)
            for b in buses:
                msgs = rec(b).stream(s)
                by_epoch: dict[str, list[int]] = {}
                for m in msgs:
                    by_epoch.setdefault(m.epoch, []).append(m.offset)
                for epoch, offs in by_epoch.items():
                    assert offs == list(range(offs[0], offs[0] + len(offs))), (
                        f"worker {b.local.endpoint}: a hole in epoch {epoch}: {offs}")

    run(main())


# --- the composition, on fakes -----------------------------------------------------------------------------------


class FakeBus(Bus):
    """Records what the NodeBus asks of it; its answers are set by the test."""

    def __init__(self, snaps: list[dict[str, Any]] | None = None) -> None:
        self.snaps = snaps or []
        self.submitted: list[Submission] = []
        self.asked: list[tuple[str, tuple[int, str] | None]] = []
        self.members: list[tuple[str, int]] = []
        self.queries: list[tuple[float, StatsQuery | None]] = []
        self.pruned: list[float] = []
        self.handed_over = 0
        self.closed = 0
        self.close_error: Exception | None = None
        self.is_congested = False
        self.is_healthy = True
        self.complete = True
        self.peers = 0
        self.waiting: list[Callable[[], None]] = []

    async def start(self, handler: BusHandler) -> None:
        pass

    def submit(self, sub: Submission, done: Done) -> None:
        self.submitted.append(sub)
        done(Outcome(len(self.submitted), "fake"))

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        self.asked.append((stream, since))
        done(Replay("fake", 0, [], None))

    async def hand_over(self) -> None:
        self.handed_over += 1

    def prune(self, now: float) -> None:
        self.pruned.append(now)

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


def node(local_snaps: list[dict[str, Any]] | None = None,
         remote_snaps: list[dict[str, Any]] | None = None) -> tuple[NodeBus, FakeBus, FakeBus]:
    local, remote = FakeBus(local_snaps), FakeBus(remote_snaps)
    return NodeBus(local, remote), local, remote  # type: ignore[arg-type]


def test_submit_history_prune_and_hand_over_go_to_the_pipe_bus() -> None:
    """The node bus itself routes nothing: the pipe bus's slot owners decide where to sequence."""
    bus, local, remote = node()
    got: list[Outcome] = []
    bus.submit(Submission("r", "r", b'{"type":"chat"}', 1), got.append)
    bus.history("r", (1, "e"), lambda r: None)
    now = time.monotonic()
    bus.prune(now)
    asyncio.run(bus.hand_over())
    assert [s.stream for s in local.submitted] == ["r"] and remote.submitted == []
    assert local.asked == [("r", (1, "e"))] and remote.asked == []
    assert local.pruned == [now] and remote.pruned == []
    assert local.handed_over == 1 and remote.handed_over == 0
    assert got == [Outcome(1, "fake")]


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

