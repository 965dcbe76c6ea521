"""The bus conformance suite: the delivery guarantees of protocol v1.1 (docs/protocol.md) that every Bus must
give, whoever sequences (the pipe bus's stream owners, Redis's scripts).

A factory is an async context manager ``make(n)`` yielding ``n`` started buses that form one group, each
with its :class:`Recorder` as handler (``bus.recorder``). Each ``check_*`` is an ``async def
check_x(make)``; an implementation's test module parametrizes over :data:`CHECKS` and runs each with its
factory.

What is checked: a submission reaches every bus exactly once (the submitter included) and its ``done``
gets its position; submissions of many buses to one stream give every bus one order, offsets 1..N in one
epoch, each submitter's order kept; streams are independent; ``$broadcast`` (room None) is a stream like a
room; deduplication; history with and without ``since``; exactly-once, in order, when a join's history
races with live traffic (stitched as the worker does, :class:`server.streams.stitch.Stitch`); a 2 MiB
payload; stats; leaving the group; ``close()`` settling every pending ``done``.

A bus may route rooms by interest (:meth:`Bus.room_members`): :func:`prepare` declares interest in every
room a check uses on every bus, as the hub does when a room gains its first local member, then asks each
bus for each stream's position (``history(stream, None)``), which on such a bus returns only once the room's
subscription is live. Nothing here sleeps to synchronise: every wait is on a condition, bounded by
``tests.helpers.T``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from server.bus import Bus, Publication
from server.bus.base import Outcome, Submission
from server.streams import BROADCAST, stamp
from server.streams.stitch import Stitch
from server.streams.table import Replay

from ...helpers import T

Factory = Callable[[int], AbstractAsyncContextManager[list[Bus]]]
Check = Callable[[Factory], Coroutine[Any, Any, None]]

HISTORY_SIZE = 256  # what the factories' buses keep per stream (the default of --history-size)
OTHER_EPOCH = "zzzzzzzz"  # a well-formed epoch no stream has (epochs are random: 36**8 of them)


# --- the handler ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Msg:
    """A delivered (or replayed) message: its position and what was submitted."""

    offset: int
    epoch: str
    src: int
    n: int
    payload: bytes  # stamped, as delivered


def decode(payload: bytes) -> Msg:
    pos = stamp.position(payload)
    assert pos is not None, f"an unstamped payload was delivered: {payload[:80]!r}"
    body = json.loads(payload)
    assert (body["offset"], body["epoch"]) == pos
    return Msg(pos[0], pos[1], body.get("src", -1), body.get("n", -1), payload)


class Recorder:
    """A bus handler that keeps everything delivered to it; ``taps`` see each publication as it arrives."""

    def __init__(self, name: int) -> None:
        self.name = name
        self.got: list[Publication] = []
        self.taps: list[Callable[[Publication], None]] = []
        self.controls: list[dict[str, Any]] = []

    def on_publication(self, pub: Publication) -> None:
        self.got.append(pub)
        for tap in list(self.taps):
            tap(pub)

    def stats_snapshot(self, query: Any = None) -> dict[str, Any]:
        return {"id": self.name, "clients": self.name * 10}

    def presence_part(self, room: str) -> dict[str, Any] | None:
        return None  # tracks nobody

    def on_control(self, command: dict[str, Any]) -> None:
        self.controls.append(command)

    def stream(self, stream: str) -> list[Msg]:
        """The messages of ``stream`` delivered here, in arrival order."""
        room = room_of(stream)
        return [decode(p.payload) for p in self.got if p.room == room]

    def count(self, stream: str) -> int:
        room = room_of(stream)
        return sum(1 for p in self.got if p.room == room)

    def has(self, stream: str, src: int, n: int) -> bool:
        return any(m.src == src and m.n == n for m in self.stream(stream))


def rec(bus: Bus) -> Recorder:
    return bus.recorder  # type: ignore[attr-defined, no-any-return]


# --- helpers ----------------------------------------------------------------------------------------------


async def wait_for(pred: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll ``pred`` until it holds (at most ``T(timeout)`` seconds)."""
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {T(timeout)}s")
        await asyncio.sleep(0.002)


def room_of(stream: str) -> str | None:
    return None if stream == BROADCAST else stream


def body(stream: str, src: int, n: int, pad: bytes = b"") -> bytes:
    """What the worker submits: a JSON object (a chat in a room, a broadcast on ``$broadcast``)."""
    if stream == BROADCAST:
        return b'{"type":"broadcast","src":%d,"n":%d,"text":"%s"}' % (src, n, pad)
    return b'{"type":"chat","room":"%s","src":%d,"n":%d,"text":"%s"}' % (stream.encode(), src, n, pad)


def now_ms() -> int:
    return int(time.time() * 1000)


class Outcomes:
    """The ``done`` callbacks of submissions, by key; each must be called exactly once."""

    def __init__(self) -> None:
        self.got: dict[Any, Outcome] = {}
        self.twice: list[Any] = []
        self.order: list[Any] = []

    def done(self, key: Any) -> Callable[[Outcome], None]:
        def cb(outcome: Outcome) -> None:
            if key in self.got:
                self.twice.append(key)
            self.got[key] = outcome
            self.order.append(key)

        return cb

    async def wait(self, keys: Iterable[Any], timeout: float = 5.0) -> None:
        want = list(keys)
        await wait_for(lambda: all(k in self.got for k in want), timeout,
                       f"outcomes of {len(want)} submissions ({sum(k not in self.got for k in want)} missing)")
        assert not self.twice, f"done called twice for {self.twice[:5]}"

    def ok(self, key: Any) -> Outcome:
        o = self.got[key]
        assert o.error is None and o.offset >= 1 and stamp.valid_epoch(o.epoch), (key, o)
        return o


def submit(bus: Bus, outcomes: Outcomes, stream: str, src: int, n: int, *, identity: str | None = None,
           msg_id: Any = None, key: Any = None, pad: bytes = b"") -> Any:
    """Submit message (src, n) to ``stream``; its outcome lands in ``outcomes`` under ``key`` (default
    ``(stream, src, n)``), which is returned."""
    k = (stream, src, n) if key is None else key
    bus.submit(Submission(stream, room_of(stream), body(stream, src, n, pad), now_ms(), identity, msg_id),
               outcomes.done(k))
    return k


async def history(bus: Bus, stream: str, since: tuple[int, str] | None, timeout: float = 3.0) -> Replay | str:
    """``bus.history`` as a coroutine; ``done`` must be called exactly once."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Replay | str] = loop.create_future()
    calls: list[Replay | str] = []

    def done(result: Replay | str) -> None:
        calls.append(result)
        if not fut.done():
            fut.set_result(result)

    bus.history(stream, since, done)
    result = await asyncio.wait_for(fut, T(timeout))
    await asyncio.sleep(0)
    assert len(calls) == 1, f"history's done called {len(calls)} times"
    return result


async def replay(bus: Bus, stream: str, since: tuple[int, str] | None, timeout: float = 3.0) -> Replay:
    r = await history(bus, stream, since, timeout)
    assert isinstance(r, Replay), f"history({stream!r}, {since}) failed: {r!r}"
    return r


def offsets(payloads: Iterable[bytes]) -> list[int]:
    return [decode(p).offset for p in payloads]


async def prepare(buses: list[Bus], streams: Iterable[str]) -> None:
    """Every bus declares interest in every room of ``streams``, the buses see each other, and each bus's
    subscription to each stream is live (a position request returns once it is)."""
    names = list(streams)
    for b in buses:
        for s in names:
            if s != BROADCAST:
                b.room_members(s, 1)
    await wait_for(lambda: all(b.peer_count() >= len(buses) - 1 for b in buses), 5, "peers see each other")
    for s in names:  # one stream at a time: a few joins at once, as a worker sees them
        await asyncio.gather(*(replay(b, s, None) for b in buses))


async def delivered(buses: list[Bus], stream: str, count: int, timeout: float = 5.0) -> None:
    await wait_for(lambda: all(rec(b).count(stream) >= count for b in buses), timeout,
                   f"{count} messages of {stream!r} on every bus")


async def arrived(buses: list[Bus], stream: str, src: int, n: int, timeout: float = 5.0) -> None:
    """Wait until message (src, n) of ``stream`` has reached every bus of ``buses``."""
    await wait_for(lambda: all(rec(b).has(stream, src, n) for b in buses), timeout, f"({src}, {n}) of {stream!r}")


async def sentinel(buses: list[Bus], stream: str, outcomes: Outcomes, src: int = 999, n: int = 0) -> None:
    """A last message to ``stream``; once every bus has it, everything sequenced before it has arrived
    (one order per stream), so counts taken then are final."""
    submit(buses[0], outcomes, stream, src, n)
    await outcomes.wait([(stream, src, n)])
    await arrived(buses, stream, src, n)


def assert_one_stream(msgs: list[Msg], epoch: str | None = None, first: int = 1) -> str:
    """Offsets ``first``.. contiguous, one epoch; returns the epoch."""
    assert msgs, "no messages"
    epochs = {m.epoch for m in msgs}
    assert len(epochs) == 1, f"several epochs in one stream: {epochs}"
    got = [m.offset for m in msgs]
    assert got == list(range(first, first + len(msgs))), f"offsets not contiguous from {first}: {got[:50]}"
    e = msgs[0].epoch
    if epoch is not None:
        assert e == epoch
    return e


def assert_matches_outcomes(msgs: list[Msg], outcomes: Outcomes, stream: str) -> None:
    """Every delivered message sits at the position its submitter was told."""
    for m in msgs:
        o = outcomes.got.get((stream, m.src, m.n))
        if o is not None:
            assert (o.offset, o.epoch, o.duplicate) == (m.offset, m.epoch, False), (m, o)


# --- checks -------------------------------------------------------------------------------------------------


async def check_submission_reaches_every_bus_once(make: Factory) -> None:
    """Each bus submits one chat and one broadcast: every bus (the submitter included) gets each exactly once,
    stamped with the position its submitter's ``done`` was given."""
    streams = ("room1", BROADCAST)
    async with make(3) as buses:
        await prepare(buses, streams)
        out = Outcomes()
        keys = [submit(b, out, s, i, 0) for i, b in enumerate(buses) for s in streams]
        await out.wait(keys)
        for s in streams:
            positions = sorted((out.ok((s, i, 0)).offset, out.ok((s, i, 0)).epoch) for i in range(3))
            assert [p[0] for p in positions] == [1, 2, 3] and len({p[1] for p in positions}) == 1, positions
            assert not any(out.got[(s, i, 0)].duplicate for i in range(3))
            await sentinel(buses, s, out)
        for b in buses:
            for s in streams:
                msgs = rec(b).stream(s)
                assert sorted((m.src, m.n) for m in msgs) == [(0, 0), (1, 0), (2, 0), (999, 0)], (b, s, msgs)
                assert_one_stream(msgs)
                assert_matches_outcomes(msgs, out, s)
                for m in msgs:  # the payload is the submitted one, its position spliced in front
                    assert m.payload == stamp.stamp(body(s, m.src, m.n), m.offset, m.epoch)
            assert {p.room for p in rec(b).got} == {"room1", None}


async def check_one_order_per_stream(make: Factory) -> None:
    """Three buses submit to one stream, interleaved: every bus gets one identical sequence, offsets 1..N in one
    epoch, each submitter's messages in the order it submitted them, each at the offset it was told."""
    per_bus = 200
    async with make(3) as buses:
        await prepare(buses, ("seq",))
        out = Outcomes()
        keys = []
        for n in range(per_bus):
            for i, b in enumerate(buses):
                keys.append(submit(b, out, "seq", i, n))
            if n % 8 == 0:
                await asyncio.sleep(0)  # let the I/O run now and then: batches of varied sizes
        await out.wait(keys, 10)
        await delivered(buses, "seq", len(keys), 10)
        seqs = [rec(b).stream("seq") for b in buses]
        for msgs in seqs:
            assert len(msgs) == len(keys)
            assert_one_stream(msgs)
            for i in range(3):
                assert [m.n for m in msgs if m.src == i] == list(range(per_bus)), f"submitter {i}'s order"
            assert_matches_outcomes(msgs, out, "seq")
        assert [(m.src, m.n) for m in seqs[0]] == [(m.src, m.n) for m in seqs[1]] == [(m.src, m.n) for m in seqs[2]]
        assert sorted(out.got[k].offset for k in keys) == list(range(1, len(keys) + 1))


async def check_streams_are_independent(make: Factory) -> None:
    """Streams (rooms and ``$broadcast``) count their own offsets: interleaved submissions to three streams
    give each offsets 1..N of its own."""
    streams = ("ia", "ib", BROADCAST)
    async with make(2) as buses:
        await prepare(buses, streams)
        out = Outcomes()
        counts = dict.fromkeys(streams, 0)
        keys = []
        for n in range(120):
            s = streams[0] if n % 2 else streams[1 + (n // 2) % 2]  # uneven: half to "ia"
            src = n % 2 if s != BROADCAST else 1 - n % 2
            keys.append(submit(buses[src], out, s, src, n))
            counts[s] += 1
        await out.wait(keys)
        for s in streams:
            await delivered(buses, s, counts[s])
        for s in streams:
            first = [(m.src, m.n) for m in rec(buses[0]).stream(s)]
            for b in buses:
                msgs = rec(b).stream(s)
                assert len(msgs) == counts[s]
                assert_one_stream(msgs)
                assert_matches_outcomes(msgs, out, s)
                assert [(m.src, m.n) for m in msgs] == first
                for src in (0, 1):
                    ns = [m.n for m in msgs if m.src == src]
                    assert ns == sorted(ns)
            assert (await replay(buses[0], s, None)).latest == counts[s]


async def check_dedup(make: Factory) -> None:
    """The same (identity, id) to the same stream within the window is published once; resends, from any bus
    and even while the first is in flight, get the first position with ``duplicate``; another identity, id
    (``"1"`` is not ``1``) or stream is another message."""
    async with make(3) as buses:
        await prepare(buses, ("dd", "dd2"))
        out = Outcomes()
        submit(buses[0], out, "dd", 0, 0, identity="alice", msg_id=1)
        submit(buses[0], out, "dd", 0, 1, identity="alice", msg_id=1)  # in flight together with the first
        await out.wait([("dd", 0, 0), ("dd", 0, 1)])
        first = out.ok(("dd", 0, 0))
        assert not first.duplicate
        again = out.got[("dd", 0, 1)]
        assert (again.offset, again.epoch, again.duplicate, again.error) == (first.offset, first.epoch, True, None)
        submit(buses[1], out, "dd", 1, 2, identity="alice", msg_id=1)  # resent through another worker
        submit(buses[2], out, "dd", 2, 3, identity="bob", msg_id=1)
        submit(buses[1], out, "dd", 1, 4, identity="alice", msg_id="1")
        submit(buses[2], out, "dd", 2, 5, identity="alice", msg_id=2)
        submit(buses[0], out, "dd2", 0, 6, identity="alice", msg_id=1)
        submit(buses[0], out, "dd", 0, 7)  # no identity: never a duplicate
        submit(buses[2], out, "dd", 2, 8)
        await out.wait([("dd", 1, 2), ("dd", 2, 3), ("dd", 1, 4), ("dd", 2, 5), ("dd2", 0, 6), ("dd", 0, 7),
                        ("dd", 2, 8)])
        dup = out.got[("dd", 1, 2)]
        assert (dup.offset, dup.epoch, dup.duplicate, dup.error) == (first.offset, first.epoch, True, None)
        for k in (("dd", 2, 3), ("dd", 1, 4), ("dd", 2, 5), ("dd", 0, 7), ("dd", 2, 8)):
            assert not out.ok(k).duplicate and out.got[k].epoch == first.epoch
        assert out.ok(("dd2", 0, 6)).offset == 1 and not out.got[("dd2", 0, 6)].duplicate
        submit(buses[2], out, "dd", 2, 9, identity="alice", msg_id=2)  # resend of a later one
        await out.wait([("dd", 2, 9)])
        assert out.got[("dd", 2, 9)].duplicate and out.got[("dd", 2, 9)].offset == out.got[("dd", 2, 5)].offset
        await sentinel(buses, "dd", out)
        for b in buses:
            msgs = rec(b).stream("dd")
            assert sorted(m.n for m in msgs if m.src != 999) == [0, 3, 4, 5, 7, 8], msgs
            assert_one_stream(msgs)
            assert_matches_outcomes([m for m in msgs if m.src != 999], out, "dd")


async def check_history(make: Factory) -> None:
    """Position and replay, asked from every bus: ``since`` None gives the position only; ``since`` within
    the history replays exactly offset+1..latest (recovered); another epoch is not recovered (what is kept is
    replayed); a ``since`` ahead of the latest offset is ``bad_since``; a new stream is at offset 0."""
    async with make(3) as buses:
        streams = ("h", BROADCAST)
        await prepare(buses, (*streams, "h-empty"))
        out = Outcomes()
        for s in streams:
            keys = [submit(buses[n % 3], out, s, n % 3, n) for n in range(10)]
            await out.wait(keys)
        for s in streams:
            await delivered(buses, s, 10)
        epoch = {s: out.ok((s, 0, 0)).epoch for s in streams}
        kept = {s: [m.payload for m in rec(buses[0]).stream(s)] for s in streams}
        for b in buses:
            for s in streams:
                e = epoch[s]
                assert (await replay(b, s, None)) == Replay(e, 10, [], None)
                for k in (0, 1, 3, 9, 10):
                    r = await replay(b, s, (k, e))
                    assert (r.epoch, r.latest, r.recovered) == (e, 10, True), (s, k, r)
                    assert r.messages == kept[s][k:], (s, k, offsets(r.messages))
                r = await replay(b, s, (5, OTHER_EPOCH))
                assert (r.epoch, r.latest, r.recovered) == (e, 10, False)
                assert r.messages == kept[s]  # what it still has
                assert await history(b, s, (11, e)) == "bad_since"
                assert await history(b, s, (10**9, e)) == "bad_since"
            r = await replay(b, "h-empty", None)
            assert (r.latest, r.messages, r.recovered) == (0, [], None) and stamp.valid_epoch(r.epoch)
            r0 = await replay(b, "h-empty", (0, r.epoch))
            assert (r0.epoch, r0.latest, r0.messages, r0.recovered) == (r.epoch, 0, [], True)
            assert await history(b, "h-empty", (1, r.epoch)) == "bad_since"


async def check_history_keeps_the_last_messages(make: Factory) -> None:
    """A stream keeps exactly its last HISTORY_SIZE messages: a ``since`` whose next message has left is not
    recovered (and gets what is kept); one right before the oldest kept still is."""
    total = HISTORY_SIZE + 44
    async with make(2) as buses:
        await prepare(buses, ("hk",))
        out = Outcomes()
        keys = [submit(buses[n % 2], out, "hk", n % 2, n) for n in range(total)]
        await out.wait(keys, 10)
        e = out.ok(keys[0]).epoch
        await delivered(buses, "hk", total)
        kept = list(range(total - HISTORY_SIZE + 1, total + 1))
        for b in buses:
            r = await replay(b, "hk", (0, e))
            assert (r.latest, r.recovered, offsets(r.messages)) == (total, False, kept)
            r = await replay(b, "hk", (total - HISTORY_SIZE, e))
            assert (r.recovered, offsets(r.messages)) == (True, kept)
            r = await replay(b, "hk", (total - HISTORY_SIZE - 1, e))
            assert (r.recovered, offsets(r.messages)) == (False, kept)
            r = await replay(b, "hk", (total - 1, e))
            assert (r.recovered, offsets(r.messages)) == (True, [total])


@dataclass
class Join:
    """A join as the worker makes it: live messages of the stream are stitched with the history until
    ``done``; after it, they go straight to the client (and must all come after the history's latest)."""

    stream: str
    since: tuple[int, str] | None
    stitch: Stitch = field(init=False)
    result: Replay | str | None = None
    sent: list[bytes] = field(default_factory=list)  # what the client got, in order
    live_after: list[int] = field(default_factory=list)  # offsets of live messages after done
    recovered: bool | None = None

    def __post_init__(self) -> None:
        self.stitch = Stitch(self.since)

    def on_live(self, pub: Publication) -> None:
        if pub.room != room_of(self.stream):
            return
        if self.result is None:
            self.stitch.add_live(pub.payload)
        else:
            self.live_after.append(decode(pub.payload).offset)
            self.sent.append(pub.payload)

    def on_done(self, result: Replay | str) -> None:
        assert self.result is None, "done called twice"
        self.result = result
        if isinstance(result, Replay):
            msgs, _, self.recovered = self.stitch.finish(result.epoch, result.latest, result.messages,
                                                         result.recovered)
            self.sent.extend(msgs)


def start_join(bus: Bus, stream: str, since: tuple[int, str] | None, also: Callable[[], None] | None = None) -> Join:
    j = Join(stream, since)
    rec(bus).taps.append(j.on_live)

    def done(result: Replay | str) -> None:
        j.on_done(result)
        if also is not None:
            also()

    bus.history(stream, since, done)
    return j


def assert_join_exact(j: Join, latest_now: int, epoch: str) -> None:
    """The client of ``j`` got every message after its position exactly once, in order, up to ``latest_now``."""
    r = j.result
    assert isinstance(r, Replay), f"join of {j.stream!r} since {j.since}: {r!r}"
    assert r.epoch == epoch
    late = [o for o in j.live_after if o <= r.latest]
    assert not late, (f"live messages reached the bus after history()'s done with offsets <= its latest "
                      f"{r.latest}: {late[:10]}")
    start = r.latest + 1 if j.since is None else j.since[0] + 1
    got = offsets(j.sent)
    assert got == list(range(start, latest_now + 1)), (
        f"join since {j.since} (latest {r.latest}): expected {start}..{latest_now}, got "
        f"{got[:20]}{'...' if len(got) > 20 else ''} ({len(got)} messages)")
    assert {decode(p).epoch for p in j.sent} <= {epoch}
    if j.since is not None:
        assert j.recovered is True


async def check_history_races_live_traffic(make: Factory) -> None:
    """Joins (with and without ``since``) on every bus while every bus keeps submitting to the stream: after
    ``done``, live messages come after the history's latest, and history + live, stitched, give the client
    every message after its position exactly once, in order."""
    rounds = 50
    async with make(3) as buses:
        await prepare(buses, ("race",))
        out = Outcomes()
        keys = [submit(buses[n % 3], out, "race", n % 3, n) for n in range(20)]
        await out.wait(keys)
        e = out.ok(keys[0]).epoch
        await delivered(buses, "race", 20)
        joins: list[Join] = []
        n = 20
        for tick in range(rounds):
            for i, b in enumerate(buses):
                keys.append(submit(b, out, "race", i, n))
                n += 1
            if tick % 5 == 0:
                for i, b in enumerate(buses):
                    seen = rec(b).stream("race")
                    since = None if (tick // 5 + i) % 2 else (max(0, seen[-1].offset - 4), e)
                    joins.append(start_join(b, "race", since))
            await asyncio.sleep(0)
        await out.wait(keys, 10)
        total = len(keys)
        assert sorted(out.got[k].offset for k in keys) == list(range(1, total + 1))
        await delivered(buses, "race", total)
        await wait_for(lambda: all(j.result is not None for j in joins), 5, "every join answered")
        for b in buses:
            rec(b).taps.clear()
            assert_one_stream(rec(b).stream("race"), e)
        for j in joins:
            assert_join_exact(j, total, e)


async def check_large_payload(make: Factory) -> None:
    """A 2 MiB message reaches every bus whole, and is in the history."""
    pad = b"abcdefghijklmnopqrstuvwxyz012345" * 65536  # 2 MiB
    async with make(2) as buses:
        await prepare(buses, (BROADCAST, "big"))
        out = Outcomes()
        submit(buses[1], out, BROADCAST, 1, 0, pad=pad)
        submit(buses[0], out, "big", 0, 0, pad=pad)
        await out.wait([(BROADCAST, 1, 0), ("big", 0, 0)], 10)
        for s, src in ((BROADCAST, 1), ("big", 0)):
            o = out.ok((s, src, 0))
            want = stamp.stamp(body(s, src, 0, pad), o.offset, o.epoch)
            await delivered(buses, s, 1, 10)
            for b in buses:
                assert [m.payload for m in rec(b).stream(s)] == [want]
            r = await replay(buses[1 - src], s, (0, o.epoch), 10)
            assert r.messages == [want] and r.recovered is True


async def check_gather_stats(make: Factory) -> None:
    async with make(3) as buses:
        await prepare(buses, ())
        snaps = await buses[0].gather_stats(T(2.0))
        assert sorted(s["id"] for s in snaps) == [rec(buses[1]).name, rec(buses[2]).name]
        snaps = await buses[2].gather_stats(T(2.0))
        assert sorted(s["id"] for s in snaps) == [rec(buses[0]).name, rec(buses[1]).name]


async def check_close_leaves_group(make: Factory) -> None:
    """A closed bus leaves the group: the others stop counting it and asking it for stats; it gets nothing
    more; the others' traffic goes on. A submission whose sequencer was the closed bus (the pipe bus: a
    stream of its slot, until a replacement comes) may fail, but only with ``unavailable``, and is then
    published nowhere."""
    streams = ("c0", "c1", "c2", "c3", "c4", "c5", BROADCAST)
    async with make(3) as buses:
        await prepare(buses, streams)
        gone = buses[2]
        await gone.close()
        before = len(rec(gone).got)
        await wait_for(lambda: buses[0].peer_count() == 1 and buses[1].peer_count() == 1, 5, "peers leave")
        snaps = await buses[0].gather_stats(T(1.0))
        assert [s["id"] for s in snaps] == [rec(buses[1]).name]
        out = Outcomes()
        keys = [submit(buses[0], out, s, 0, 0) for s in streams]

        def settled() -> bool:
            for b in buses[:2]:
                b.prune(time.monotonic() + 60)  # upkeep as if a minute had passed: held submissions give up
            return all(k in out.got for k in keys)

        await wait_for(settled, 5, "every submission settled")
        assert not out.twice
        ok = [k for k in keys if out.got[k].error is None]
        assert ok, "nothing could be published after a bus left"
        for k in keys:
            if out.got[k].error is not None:
                assert out.got[k].error == "unavailable", out.got[k]
        for k in ok:
            await arrived(buses[:2], k[0], 0, 0)
        for k in keys:
            if k not in ok:
                for b in buses[:2]:
                    assert not rec(b).has(k[0], 0, 0), f"{k} failed, yet was published"
        assert len(rec(gone).got) == before


async def check_close_settles_submissions(make: Factory) -> None:
    """A bus closed right after submitting calls every ``done`` (the contract: once, with the outcome -
    ``unavailable`` when it can no longer know)."""
    streams = ("z0", "z1", "z2", "z3", BROADCAST)
    async with make(3) as buses:
        await prepare(buses, streams)
        out = Outcomes()
        keys = [submit(buses[1], out, s, 1, n) for n in range(3) for s in streams]
        await buses[1].close()
        await wait_for(lambda: all(k in out.got for k in keys), 1.5,
                       f"done of every submission ({sum(k not in out.got for k in keys)} of {len(keys)} never called)")
        assert not out.twice
        for k in keys:
            assert out.got[k].error in (None, "unavailable"), out.got[k]


CHECKS: list[Check] = [
    check_submission_reaches_every_bus_once,
    check_one_order_per_stream,
    check_streams_are_independent,
    check_dedup,
    check_history,
    check_history_keeps_the_last_messages,
    check_history_races_live_traffic,
    check_large_payload,
    check_gather_stats,
    check_close_leaves_group,
    check_close_settles_submissions,
]
