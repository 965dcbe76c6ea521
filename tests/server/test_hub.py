"""The hub: membership and its hook, fan-out built once per codec, and output written once per connection per tick."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import codecs
from server import hub as hub_module
from server.codecs import Codec
from server.hub import Hub
from server.metrics import Metrics
from server.ws.frames import build_frame


class FakeTransport(asyncio.Transport):
    """Records what the hub does to it; ``buffered`` is what it reports as still unsent."""

    def __init__(self, buffered: int = 0) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.buffered = buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.calls.append(("writelines", list(list_of_data)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    @property
    def written(self) -> bytes:
        out = b""
        for kind, data in self.calls:
            if kind == "write":
                out += data
            elif kind == "writelines":
                out += b"".join(data)
        return out


class _Sink:
    """A connection as the hub sees it (the ``Sink`` protocol), recording what it is given."""

    def __init__(self, codec: Codec = codecs.JSON, raw: bool = True, transport: FakeTransport | None = None,
                 close_reason: str | None = None) -> None:
        self.codec = codec
        self.raw = raw
        self.out: list[bytes] | None = None
        self.close_reason = close_reason
        self.msgs_out = 0
        self.bytes_out = 0
        self.end_after_write = False
        self.transport: FakeTransport | None = FakeTransport() if transport is None else transport
        self.payloads: list[bytes] = []  # what send_payload got (a receiver with extensions)
        self.overflows: list[int] = []

    def send_payload(self, payload: bytes) -> None:
        self.payloads.append(payload)

    def overflow(self, queued: int) -> None:
        self.overflows.append(queued)

    @property
    def t(self) -> FakeTransport:
        assert self.transport is not None
        return self.transport


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def new_hub(loop: asyncio.AbstractEventLoop | None = None, max_queue: int = 1 << 20) -> Hub[_Sink]:
    hub: Hub[_Sink] = Hub(Metrics(), max_queue)
    hub.loop = loop
    return hub


def members(hub: Hub[_Sink]) -> dict[str, list[_Sink]]:
    """Every room's members, in the hub's order."""
    return {room: list(m) for room, m in hub.rooms.items()}


def tick(loop: asyncio.AbstractEventLoop) -> None:
    """One pass of the loop: whatever was scheduled with call_soon runs."""
    loop.run_until_complete(asyncio.sleep(0))


def counting(codec: Codec) -> tuple[Codec, list[bytes]]:
    """A copy of ``codec`` whose re-encoding records each call."""
    calls: list[bytes] = []

    def from_json(payload: bytes) -> bytes:
        calls.append(payload)
        return codec.from_json(payload)

    return dataclasses.replace(codec, from_json=from_json), calls


@pytest.fixture
def frames_built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """Every frame the hub builds, (opcode, payload)."""
    built: list[tuple[int, bytes]] = []

    def spy(opcode: int, payload: bytes) -> bytes:
        built.append((opcode, payload))
        return build_frame(opcode, payload)

    monkeypatch.setattr(hub_module, "build_frame", spy)
    return built


# --- membership --------------------------------------------------------------------------------------------


def test_hub_tells_the_bus_every_rooms_local_member_count() -> None:
    hub: Hub[Any] = Hub(Metrics(), 1 << 20)
    calls: list[tuple[str, int]] = []
    hub.on_members = lambda room, count: calls.append((room, count))
    a, b = _Sink(), _Sink()
    hub.add(a, ["lobby"])
    hub.add(b, ["lobby"])
    hub.subscribe(b, "games")
    hub.subscribe(b, "games")  # already a member: no news
    assert calls == [("lobby", 1), ("lobby", 2), ("games", 1)]
    hub.remove(a, ["lobby"])
    assert calls[-1] == ("lobby", 1)
    hub.unsubscribe(b, "games")
    hub.remove(b, ["lobby"])
    assert calls[4:] == [("games", 0), ("lobby", 0)]
    hub.subscribe(a, "ghost")  # a removed connection is never a member again
    assert "ghost" not in hub.rooms and calls[-1] == ("lobby", 0)


def test_add_and_remove_keep_the_room_index() -> None:
    hub = new_hub()
    a, b = _Sink(), _Sink()
    hub.add(a, ["lobby", "games"])
    hub.add(b, ["lobby"])
    assert list(hub.conns) == [a, b]
    assert members(hub) == {"lobby": [a, b], "games": [a]}
    hub.remove(a, ["lobby", "games"])
    assert list(hub.conns) == [b] and members(hub) == {"lobby": [b]}  # an empty room is gone
    hub.remove(b, ["lobby"])
    assert list(hub.conns) == [] and hub.rooms == {}


def test_a_connection_the_hub_does_not_hold_joins_nothing() -> None:
    hub = new_hub()
    calls: list[tuple[str, int]] = []
    hub.on_members = lambda room, count: calls.append((room, count))
    stranger = _Sink()
    hub.subscribe(stranger, "lobby")
    assert hub.rooms == {} and calls == []
    member = _Sink()
    hub.add(member, ["lobby"])
    hub.subscribe(stranger, "lobby")
    assert members(hub) == {"lobby": [member]} and calls == [("lobby", 1)]


def test_leaving_a_room_one_is_not_in_is_no_news() -> None:
    hub = new_hub()
    calls: list[tuple[str, int]] = []
    hub.on_members = lambda room, count: calls.append((room, count))
    a, b = _Sink(), _Sink()
    hub.add(a, ["lobby"])
    hub.add(b, [])
    hub.unsubscribe(b, "lobby")
    hub.unsubscribe(b, "nowhere")
    hub.remove(b, ["lobby", "nowhere"])
    assert calls == [("lobby", 1)] and members(hub) == {"lobby": [a]}


def test_membership_works_without_a_hook() -> None:
    hub = new_hub()
    a = _Sink()
    hub.add(a, ["r"])
    hub.unsubscribe(a, "r")
    assert hub.rooms == {} and list(hub.conns) == [a]


# --- deliver -------------------------------------------------------------------------------------------------

CHAT = b'{"type":"chat","room":"lobby","text":"hi"}'


def test_deliver_builds_one_payload_and_one_frame_per_codec(loop: asyncio.AbstractEventLoop,
                                                            frames_built: list[tuple[int, bytes]]) -> None:
    hub = new_hub(loop)
    json_codec, json_calls = counting(codecs.JSON)
    mp_codec, mp_calls = counting(codecs.MSGPACK)
    sinks = [_Sink(json_codec if i % 3 else mp_codec) for i in range(9)]  # interleaved codecs
    for s in sinks:
        hub.add(s, ["lobby"])
    assert hub.deliver("lobby", CHAT, "chat") == 9
    assert json_calls == [CHAT] and mp_calls == [CHAT]
    packed = msgpack.packb(orjson.loads(CHAT), use_bin_type=True)
    assert sorted(frames_built) == sorted([(codecs.OP_TEXT, CHAT), (codecs.OP_BINARY, packed)])
    json_frames = [s.out[0] for s in sinks if s.codec is json_codec and s.out]
    mp_frames = [s.out[0] for s in sinks if s.codec is mp_codec and s.out]
    assert len(json_frames) == 6 and len(mp_frames) == 3
    assert all(f is json_frames[0] for f in json_frames)  # the very same bytes object for every receiver
    assert all(f is mp_frames[0] for f in mp_frames)
    assert json_frames[0] == build_frame(codecs.OP_TEXT, CHAT)
    assert mp_frames[0] == build_frame(codecs.OP_BINARY, packed)


def test_deliver_counts_per_connection_and_per_type(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    j, m = _Sink(codecs.JSON), _Sink(codecs.MSGPACK)
    hub.add(j, ["lobby"])
    hub.add(m, ["lobby"])
    packed = msgpack.packb(orjson.loads(CHAT), use_bin_type=True)
    assert hub.deliver("lobby", CHAT, "chat") == 2
    assert hub.deliver("lobby", CHAT, "chat") == 2
    assert (j.msgs_out, j.bytes_out) == (2, 2 * len(CHAT))
    assert (m.msgs_out, m.bytes_out) == (2, 2 * len(packed))
    assert hub.metrics.messages_out == {"chat": 4}
    assert hub.metrics.bytes_out == {"chat": 2 * (len(CHAT) + len(packed))}


def test_receivers_with_extensions_get_the_payload_to_frame_themselves(
        loop: asyncio.AbstractEventLoop, frames_built: list[tuple[int, bytes]]) -> None:
    hub = new_hub(loop)
    codec, calls = counting(codecs.MSGPACK)
    plain, deflate1, deflate2 = _Sink(codec), _Sink(codec, raw=False), _Sink(codec, raw=False)
    for s in (plain, deflate1, deflate2):
        hub.add(s, [])
    assert hub.deliver(None, CHAT, "broadcast") == 3
    assert len(calls) == 1 and len(frames_built) == 1
    packed = msgpack.packb(orjson.loads(CHAT), use_bin_type=True)
    assert deflate1.payloads == [packed] and deflate2.payloads[0] is deflate1.payloads[0]
    assert deflate1.out is None and deflate2.out is None  # nothing pushed on their behalf
    assert plain.payloads == [] and plain.out == [build_frame(codecs.OP_BINARY, packed)]
    assert deflate1.msgs_out == 1 and deflate1.bytes_out == len(packed)


def test_closing_receivers_are_skipped_and_counted(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    ok = _Sink()
    slow = _Sink(close_reason="slow_consumer")
    leaving = _Sink(close_reason="closed")
    leaving2 = _Sink(close_reason="closed")
    for s in (ok, slow, leaving, leaving2):
        hub.add(s, ["lobby"])
    assert hub.deliver("lobby", CHAT, "chat") == 1
    assert hub.metrics.dropped == {"slow_consumer": 1, "closed": 2}
    assert ok.out == [build_frame(codecs.OP_TEXT, CHAT)]
    for s in (slow, leaving, leaving2):
        assert s.out is None and s.msgs_out == 0 and s.bytes_out == 0
    assert hub.metrics.messages_out == {"chat": 1}


def test_deliver_to_nobody_counts_nothing(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    assert hub.deliver(None, CHAT, "broadcast") == 0
    hub.add(_Sink(), ["lobby"])
    assert hub.deliver("elsewhere", CHAT, "chat") == 0
    gone = _Sink(close_reason="eof")
    hub.add(gone, ["quiet"])
    assert hub.deliver("quiet", CHAT, "chat") == 0
    assert hub.metrics.messages_out == {} and hub.metrics.bytes_out == {}
    assert hub.metrics.dropped == {"eof": 1}


def test_deliver_to_a_room_reaches_its_members_only(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    a, b, c = _Sink(), _Sink(), _Sink()
    hub.add(a, ["lobby"])
    hub.add(b, ["lobby", "games"])
    hub.add(c, ["games"])
    assert hub.deliver("games", CHAT, "chat") == 2
    assert a.out is None and b.out is not None and c.out is not None
    assert hub.deliver(None, CHAT, "broadcast") == 3
    assert a.out is not None and len(b.out) == 2


class _OrderedTransport(FakeTransport):
    """Notes its name in a list shared by all of them on every write: the order the hub wrote in."""

    def __init__(self, name: int, log: list[int]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.log.append(self.name)
        super().write(data)


@pytest.mark.parametrize("fan_min", [1, 1 << 30], ids=["batched", "queued"])
def test_a_fan_out_writes_its_receivers_in_the_order_they_joined(loop: asyncio.AbstractEventLoop, fan_min: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Members are written in join order (the order their sockets were accepted, for a room joined at the
    upgrade): the order that keeps a large fan-out's memory walk sequential. Joined here in an order unlike
    the sinks' creation (and addresses), then one left and came back: it is last now."""
    monkeypatch.setattr(hub_module, "FAN_MIN", fan_min)
    hub = new_hub(loop)
    log: list[int] = []
    sinks = [_Sink(transport=_OrderedTransport(i, log)) for i in range(50)]
    order = [*range(1, 50, 2), *range(48, -1, -2)]
    for i in order:
        hub.add(sinks[i], ["lobby"])
    hub.unsubscribe(sinks[order[3]], "lobby")
    hub.subscribe(sinks[order[3]], "lobby")
    hub.deliver("lobby", CHAT, "chat")
    tick(loop)
    assert log == [i for i in order if i != order[3]] + [order[3]]
    log.clear()
    hub.deliver(None, CHAT, "broadcast")
    tick(loop)
    assert log == order


# --- push and flush --------------------------------------------------------------------------------------------


def test_one_write_per_connection_per_tick(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    a, b = _Sink(), _Sink()
    hub.push(a, b"1")
    hub.push(b, b"x")
    hub.push(a, b"2")
    hub.push(a, b"3")
    assert a.t.calls == [] and hub.scheduled  # nothing written before the tick ends
    tick(loop)
    assert a.t.calls == [("writelines", [b"1", b"2", b"3"])]
    assert b.t.calls == [("write", b"x")]  # a single buffer: write, not writelines
    assert a.out is None and b.out is None and hub.dirty == [] and not hub.scheduled


def test_a_flush_calls_before_flush_first_then_writes(loop: asyncio.AbstractEventLoop) -> None:
    """The worker hooks the bus's ``send_now`` here: what this tick sequenced leaves for the other workers
    before this worker writes a fan-out's frames to its own clients."""
    hub = new_hub(loop)
    sinks = [_Sink() for _ in range(40)]  # a batched fan-out, and a reply
    hub.add(sinks[0], ())
    for s in sinks:
        hub.add(s, ["room"])
    seen: list[int] = []  # frames written when the hook ran
    hub.before_flush = lambda: seen.append(sum(len(s.t.calls) for s in sinks))
    hub.deliver("room", b'{"type":"chat","text":"hi"}', "chat")
    hub.push(sinks[0], b"reply")
    assert seen == []  # not before the tick ends
    tick(loop)
    assert seen == [0]  # once, before any write
    assert all(s.t.calls for s in sinks)
    hub.flush()  # a flush with nothing queued still calls it (the bus may have queued alone)
    assert seen == [0, 40]


def test_flush_is_scheduled_once_per_tick(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = new_hub(loop)
    scheduled: list[Callable[[], None]] = []
    real_call_soon = loop.call_soon

    def call_soon(callback: Callable[..., Any], *args: Any, **kw: Any) -> asyncio.Handle:
        if callback == hub.flush:  # (the loop's own task steps go through call_soon too)
            scheduled.append(callback)
        return real_call_soon(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon", call_soon)
    sinks = [_Sink() for _ in range(5)]
    for i in range(20):
        hub.push(sinks[i % 5], b"%d" % i)
    assert scheduled == [hub.flush]
    tick(loop)
    assert [s.t.written for s in sinks] == [b"051015", b"161116", b"271217", b"381318", b"491419"]
    hub.push(sinks[0], b"next")  # a new tick, a new flush
    assert scheduled == [hub.flush, hub.flush]
    tick(loop)
    assert sinks[0].t.calls[-1] == ("write", b"next")


def test_end_after_write_closes_after_the_write(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    s = _Sink()
    hub.push(s, b"close frame")
    s.end_after_write = True
    hub.push(s, b"")
    tick(loop)
    assert s.t.calls == [("writelines", [b"close frame", b""]), ("close", None)]


def test_a_connection_without_a_transport_loses_its_output_quietly(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    gone, alive = _Sink(), _Sink()
    hub.push(gone, b"lost")
    hub.push(alive, b"kept")
    gone.transport = None  # connection_lost came in between
    tick(loop)
    assert gone.out is None and gone.overflows == []
    assert alive.t.calls == [("write", b"kept")]


@pytest.mark.parametrize("close_reason", [None, "closed", "slow_consumer", "http"])
@pytest.mark.parametrize("end_after_write", [False, True])
def test_overflow_is_called_whenever_the_buffer_exceeds_max_queue(
        loop: asyncio.AbstractEventLoop, close_reason: str | None, end_after_write: bool) -> None:
    hub = new_hub(loop, max_queue=1000)
    over = _Sink(transport=FakeTransport(buffered=1001), close_reason=close_reason)
    at = _Sink(transport=FakeTransport(buffered=1000), close_reason=close_reason)
    for s in (over, at):
        s.end_after_write = end_after_write
        hub.push(s, b"data")
    tick(loop)
    assert over.overflows == [1001]  # whatever the connection's state
    assert at.overflows == []  # at the limit is not over it
    assert over.t.calls[0] == ("write", b"data")
    assert [c for c, _ in over.t.calls] == (["write", "close"] if end_after_write else ["write"])


def test_overflow_is_checked_after_every_flush_of_that_connection(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop, max_queue=100)
    s = _Sink()
    hub.push(s, b"a")
    tick(loop)
    assert s.overflows == []
    s.t.buffered = 250
    hub.push(s, b"b")
    tick(loop)
    s.t.buffered = 300
    hub.push(s, b"c")
    tick(loop)
    assert s.overflows == [250, 300]


# --- the collector is off while a tick's output is queued (gc_window) ------------------------------------------


@pytest.fixture
def gc_window() -> Iterator[None]:
    hub_module.gc_window(True)
    try:
        yield
    finally:
        hub_module.gc_window(False)
        gc.enable()


def test_the_collector_is_off_from_the_first_push_to_the_flush(loop: asyncio.AbstractEventLoop,
                                                                gc_window: None) -> None:
    hub = new_hub(loop)
    sinks = [_Sink() for _ in range(3)]
    for s in sinks:
        hub.add(s, ["lobby"])
    assert gc.isenabled()
    assert hub.deliver(None, CHAT, "broadcast") == 3
    assert not gc.isenabled()  # the receivers' queues are never walked, never promoted
    tick(loop)
    assert gc.isenabled() and all(s.t.calls for s in sinks)


def test_the_collector_stays_off_while_a_flush_queues_more(loop: asyncio.AbstractEventLoop, gc_window: None) -> None:
    hub = new_hub(loop, max_queue=10)
    slow = _Sink(transport=FakeTransport(buffered=100))
    slow.overflow = lambda queued: hub.push(slow, b"close frame")  # type: ignore[method-assign]  # as Conn.close
    hub.add(slow, ["lobby"])
    hub.push(slow, b"x")
    hub.flush()
    assert hub.scheduled and not gc.isenabled()  # the close frame waits for the next flush: still off
    slow.t.buffered = 0
    tick(loop)
    assert not hub.scheduled and gc.isenabled()


def test_without_the_window_the_collector_is_left_alone(loop: asyncio.AbstractEventLoop) -> None:
    hub = new_hub(loop)
    s = _Sink()
    hub.add(s, ["lobby"])
    hub.push(s, b"x")
    assert gc.isenabled() and not hub.gc_paused
    tick(loop)
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off(loop: asyncio.AbstractEventLoop, gc_window: None) -> None:
    hub = new_hub(loop)
    s = _Sink()
    hub.add(s, ["lobby"])
    gc.disable()
    hub.push(s, b"x")
    tick(loop)
    assert not gc.isenabled() and not hub.gc_paused


# --- batched fan-out (FAN_MIN receivers or more): the same bytes, in the same order, one write per tick ---------


def scenario(loop: asyncio.AbstractEventLoop, fan_min: int, monkeypatch: pytest.MonkeyPatch) -> list[_Sink]:
    """Two ticks of mixed traffic to 60 receivers (both codecs, extensions, a closing one, replies queued
    before and after fan-outs, several fan-outs per tick to everyone and to a room); the sinks after them."""
    monkeypatch.setattr(hub_module, "FAN_MIN", fan_min)
    hub = new_hub(loop)
    sinks = [_Sink(codecs.MSGPACK if i % 4 == 0 else codecs.JSON, raw=i % 11 != 5) for i in range(60)]
    for i, s in enumerate(sinks):
        hub.add(s, ["lobby"] if i % 2 else ["lobby", "games"])
    sinks[7].close_reason = "closed"
    hub.push(sinks[3], b"reply-before")
    assert hub.deliver(None, b'{"type":"broadcast","text":"1"}', "broadcast") == 59
    assert hub.deliver(None, b'{"type":"broadcast","text":"2"}', "broadcast") == 59
    hub.push(sinks[10], b"reply-after")
    assert hub.deliver("games", b'{"type":"chat","text":"3"}', "chat") == 30
    assert hub.deliver(None, b'{"type":"broadcast","text":"4"}', "broadcast") == 59
    sinks[20].end_after_write = True  # as Conn._end does when its out is already set: closed after its write
    tick(loop)
    assert hub.deliver(None, b'{"type":"broadcast","text":"5"}', "broadcast") == 59
    assert hub.deliver(None, b'{"type":"broadcast","text":"6"}', "broadcast") == 59
    sinks[30].transport = None  # lost before the flush
    tick(loop)
    return sinks


def test_a_batched_fan_out_writes_what_per_receiver_queues_write(loop: asyncio.AbstractEventLoop,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    batched = scenario(loop, 1, monkeypatch)
    queued = scenario(loop, 1 << 30, monkeypatch)
    for b, q in zip(batched, queued, strict=True):
        assert b.payloads == q.payloads
        assert (b.msgs_out, b.bytes_out) == (q.msgs_out, q.bytes_out)
        if b.transport is None:
            continue
        assert q.transport is not None
        assert b.t.written == q.t.written
        assert [c for c in b.t.calls if c[0] == "close"] == [c for c in q.t.calls if c[0] == "close"]
        assert b.out is None
    assert batched[20].t.calls[-1] == ("close", None)
    for b, q in zip(batched, queued, strict=True):  # one write per connection per tick, either way
        if b.transport is not None and q.transport is not None:
            assert len(b.t.calls) == len(q.t.calls)


def test_a_batched_receiver_that_overflows_is_told(loop: asyncio.AbstractEventLoop,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "FAN_MIN", 1)
    hub = new_hub(loop, max_queue=10)
    ok, slow = _Sink(), _Sink(transport=FakeTransport(buffered=100))
    for s in (ok, slow):
        hub.add(s, ["lobby"])
    hub.deliver(None, CHAT, "broadcast")
    tick(loop)
    assert slow.overflows == [100] and ok.overflows == []


def test_a_reply_after_a_batched_fan_out_follows_it(loop: asyncio.AbstractEventLoop,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "FAN_MIN", 1)
    hub = new_hub(loop)
    a, b = _Sink(), _Sink()
    for s in (a, b):
        hub.add(s, ["lobby"])
    hub.deliver(None, CHAT, "broadcast")
    hub.push(a, b"reply")
    tick(loop)
    frame = build_frame(codecs.OP_TEXT, CHAT)
    assert a.t.written == frame + b"reply" and b.t.written == frame


ops = st.lists(st.one_of(
    st.tuples(st.just("deliver"), st.sampled_from([None, "lobby", "games"])),
    st.tuples(st.just("push"), st.integers(0, 39)),
    st.tuples(st.just("closing"), st.integers(0, 39)),
    st.tuples(st.just("end"), st.integers(0, 39)),
    st.tuples(st.just("tick"), st.none())), max_size=30)


def replay(loop: asyncio.AbstractEventLoop, fan_min: int, script: list[tuple[str, Any]],
           extensions: bool = True) -> list[_Sink]:
    """``extensions``: some receivers have them (then no fan-out is deferred); else every tick's first large
    fan-out is (see Hub.deliver)."""
    hub_module.FAN_MIN = fan_min  # type: ignore[misc]  # restored by the caller
    hub = new_hub(loop)
    sinks = [_Sink(codecs.MSGPACK if i % 5 == 0 else codecs.JSON, raw=not extensions or i % 13 != 6)
             for i in range(40)]
    for i, s in enumerate(sinks):
        hub.add(s, ["lobby", "games"] if i % 3 == 0 else ["lobby"])
    for k, (op, arg) in enumerate(script):
        if op == "deliver":
            hub.deliver(arg, b'{"type":"chat","text":"%d"}' % k, "chat")
        elif op == "push":
            hub.push(sinks[arg], b"own%d;" % k)
        elif op == "closing":
            sinks[arg].close_reason = "closed"
        elif op == "end":
            sinks[arg].end_after_write = True
        else:
            tick(loop)
    tick(loop)
    return sinks


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans())
def test_any_mix_of_fan_outs_and_replies_writes_the_same_either_way(script: list[tuple[str, Any]],
                                                                    extensions: bool) -> None:
    loop = asyncio.new_event_loop()
    saved = hub_module.FAN_MIN
    try:
        batched = replay(loop, 1, script, extensions)
        queued = replay(loop, 1 << 30, script, extensions)
    finally:
        hub_module.FAN_MIN = saved  # type: ignore[misc]
        loop.close()
    for b, q in zip(batched, queued, strict=True):
        assert b.t.written == q.t.written
        assert len(b.t.calls) == len(q.t.calls)  # one write per tick (and the same closes)
        assert (b.msgs_out, b.bytes_out, b.payloads) == (q.msgs_out, q.bytes_out, q.payloads)
        assert b.out is None


def test_fan_outs_to_the_same_receivers_in_one_tick_share_one_batch(loop: asyncio.AbstractEventLoop,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "FAN_MIN", 1)
    hub = new_hub(loop)
    sinks = [_Sink() for _ in range(5)]
    for s in sinks:
        hub.add(s, ["lobby"])
    hub.deliver(None, CHAT, "broadcast")
    hub.push(sinks[0], b"reply")  # sinks[0] leaves the batch with a copy of its frames
    hub.deliver(None, CHAT, "broadcast")  # reaches every member still in it: the batch grows
    hub.deliver("lobby", CHAT, "chat")
    assert len(hub.batches) == 1 and len(hub.batches[0][0]) == 3 and hub.batches[0][0].size == 4
    frame = build_frame(codecs.OP_TEXT, CHAT)
    assert sinks[0].out == [frame, b"reply", frame, frame]
    tick(loop)
    assert all(s.t.calls == [("write", frame * 3)] for s in sinks[1:])


# --- the deferred fan-out: a tick's first large fan-out, written in one pass by the flush -------------------


def deferring(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch, n: int = 4,
              **kw: Any) -> tuple[Hub[_Sink], list[_Sink]]:
    monkeypatch.setattr(hub_module, "FAN_MIN", 2)
    hub = new_hub(loop, **kw)
    sinks = [_Sink(codecs.MSGPACK if i == 1 else codecs.JSON) for i in range(n)]
    for s in sinks:
        hub.add(s, ["lobby"])
    return hub, sinks


def test_a_ticks_first_large_fan_out_waits_for_the_flush_and_is_written_in_one_pass(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sinks = deferring(loop, monkeypatch)
    sinks[2].transport = None  # lost before the flush
    assert hub.deliver(None, CHAT, "broadcast") == 4
    assert hub.pending is not None and hub.batches == [] and hub.dirty == []
    assert all(s.out is None for s in sinks) and hub.metrics.messages_out == {}  # nothing per receiver yet
    late = _Sink()
    hub.add(late, ["lobby"])  # joined after the fan-out: not one of its receivers
    tick(loop)
    packed = msgpack.packb(orjson.loads(CHAT), use_bin_type=True)
    assert sinks[0].t.calls == sinks[3].t.calls == [("write", build_frame(codecs.OP_TEXT, CHAT))]
    assert sinks[1].t.calls == [("write", build_frame(codecs.OP_BINARY, packed))]
    assert late.t.calls == [] and hub.pending is None
    assert [(s.msgs_out, s.bytes_out) for s in sinks] == [(1, len(CHAT)), (1, len(packed)), (1, len(CHAT)),
                                                          (1, len(CHAT))]
    assert hub.metrics.messages_out == {"broadcast": 4}
    assert hub.metrics.bytes_out == {"broadcast": 3 * len(CHAT) + len(packed)}


def test_what_is_queued_after_a_deferred_fan_out_follows_it_in_the_same_write(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sinks = deferring(loop, monkeypatch)
    hub.deliver(None, CHAT, "broadcast")
    hub.push(sinks[0], b"reply")
    hub.push(sinks[0], b"more")
    tick(loop)
    frame = build_frame(codecs.OP_TEXT, CHAT)
    assert sinks[0].t.calls == [("writelines", [frame, b"reply", b"more"])]
    assert sinks[3].t.calls == [("write", frame)]


def test_receivers_already_closing_are_left_out_of_a_deferred_fan_out_and_counted(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sinks = deferring(loop, monkeypatch)
    sinks[0].close_reason = "slow_consumer"
    sinks[3].close_reason = "closed"
    assert hub.deliver(None, CHAT, "broadcast") == 2
    assert hub.metrics.dropped == {"slow_consumer": 1, "closed": 1}
    sinks[2].close_reason = "closed"  # closing after the fan-out: it is still owed the message
    tick(loop)
    assert sinks[0].t.calls == sinks[3].t.calls == []
    assert sinks[2].t.calls == [("write", build_frame(codecs.OP_TEXT, CHAT))] and sinks[2].msgs_out == 1
    assert hub.metrics.messages_out == {"broadcast": 2}


def test_a_second_large_fan_out_in_the_tick_makes_the_deferred_one_a_batch(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sinks = deferring(loop, monkeypatch)
    hub.deliver(None, CHAT, "broadcast")
    hub.push(sinks[0], b"reply")
    hub.deliver("lobby", CHAT, "chat")
    assert hub.pending is None and len(hub.batches) == 2  # one per codec, each with both frames
    frame = build_frame(codecs.OP_TEXT, CHAT)
    assert sinks[0].out == [frame, b"reply", frame]
    tick(loop)
    assert sinks[0].t.calls == [("writelines", [frame, b"reply", frame])]
    assert sinks[3].t.calls == [("write", frame + frame)]  # coalesced: one write for both
    assert hub.metrics.messages_out == {"broadcast": 4, "chat": 4}


def test_no_fan_out_is_deferred_while_a_connection_has_extensions(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, _ = deferring(loop, monkeypatch)
    deflate = _Sink(raw=False)
    hub.add(deflate, [])
    hub.add(deflate, [])  # counted once
    hub.deliver(None, CHAT, "broadcast")
    assert hub.pending is None and hub.batches
    tick(loop)
    hub.remove(deflate, [])
    hub.remove(deflate, [])
    hub.deliver(None, CHAT, "broadcast")
    assert hub.pending is not None and hub.nonraw == 0


def test_a_receiver_that_overflows_in_a_deferred_fan_out_is_told(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sinks = deferring(loop, monkeypatch, max_queue=10)
    sinks[1].t.buffered = 100
    hub.deliver(None, CHAT, "broadcast")
    tick(loop)
    assert sinks[1].overflows == [100] and sinks[0].overflows == []
