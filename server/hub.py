"""The hub: a worker's open connections, its room index, and fan-out.

Fan-out encodes each message once per codec and frames it once, then hands the same bytes to every
receiving connection. Writes are coalesced per event-loop tick: a connection that receives several
messages in one tick gets one write. Each connection's unsent output is bounded (``max_queue``) in every
state: an open one that overflows is closed with 1013 and what it could not take is counted; nothing but a
close frame is queued for one that is closing, and it is aborted if it cannot drain within the close
timeout (see :meth:`Hub.flush` and ``Conn.overflow``).

The hub holds open connections only: :meth:`add` when the WebSocket opens, :meth:`remove` when the
connection is lost (whatever ended it), and :meth:`subscribe` ignores a connection it does not hold.

Connections and room members are insertion-ordered dicts, not sets: a fan-out writes its receivers in
join order, close to the order their objects (ours, the transport's, the kernel's) were allocated. A
set's hash order scatters that walk across memory: several per cent more CPU per delivery at 10,000
receivers (``docs/bench.md``, "Fan-out order").

Why this module is long: the per-tick output is one state machine. Queued replies, batched fan-outs, the
deferred fan-out and the flush that writes them share one invariant (every receiver gets all it is owed,
in order, in one write per tick), and each path hands its receivers over to the others mid-tick; split
into modules, they would reach into each other's state.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Collection, Iterable
from itertools import compress, filterfalse
from operator import attrgetter
from typing import Final, Generic, Protocol, TypeVar

from .codecs import Codec
from .metrics import Metrics
from .ws.frames import build_frame

_gc_window = False  # see gc_window()
FAN_MIN: Final = 32  # receivers from which a fan-out is batched (Hub.deliver)
_closing = attrgetter("close_reason")


def gc_window(on: bool = True) -> None:
    """Keep the garbage collector off from a tick's first :meth:`Hub.push` to the end of its flush (a
    worker turns this on at boot, :mod:`server.tuning`).

    A broadcast queues one list per receiver until the flush; a collection in between (one every 700 new
    containers) walks them, promotes them, and their promotions soon trigger a full collection over every
    live connection: tens of milliseconds in the fan-out tail at 10,000 subscribers. Collected after the
    flush instead, the queues are gone (freed ones do not count towards a collection) and the collector's
    work stays proportional to what really survives."""
    global _gc_window
    _gc_window = on


class Sink(Protocol):
    """What the hub needs of a connection."""

    codec: Codec
    raw: bool  # True: pre-built frames can be written as they are (no per-connection extensions)
    out: list[bytes] | None
    close_reason: str | None  # why it is closing (a metric label, never empty); None while open
    msgs_out: int
    bytes_out: int

    def send_payload(self, payload: bytes) -> None: ...

    @property
    def transport(self) -> asyncio.WriteTransport | None: ...

    end_after_write: bool  # close the transport once what is queued is written

    def overflow(self, queued: int) -> None:
        """More than ``max_queue`` bytes are waiting: close (an open connection) or abort (a closing one)."""


S = TypeVar("S", bound=Sink)


class Hub(Generic[S]):
    """A worker's open connections and rooms; fans messages out and writes each connection once per tick."""

    __slots__ = ("batches", "before_flush", "conns", "dirty", "gc_paused", "last_batch", "loop", "max_queue",
                 "metrics", "nonraw", "on_members", "pending", "rooms", "scheduled")

    def __init__(self, metrics: Metrics, max_queue: int) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.conns: dict[S, None] = {}
        self.rooms: dict[str, dict[S, None]] = {}
        self.dirty: list[S] = []
        self.batches: list[tuple[_Batch, list[S]]] = []  # this tick's fan-out batches: (frames, members)
        self.last_batch: dict[Codec, _Batch] = {}  # per codec: this tick's last batch
        self.pending: tuple[list[S], bytes, str] | None = None  # this tick's deferred fan-out (see deliver)
        self.nonraw = 0  # open connections with extensions (no deferred fan-out while there are any)
        self.scheduled = False
        self.gc_paused = False  # this hub turned the collector off until its flush (gc_window)
        self.loop: asyncio.AbstractEventLoop | None = None
        # called with (room, local member count) on every join and leave: the bus's hook (Bus.room_members)
        self.on_members: Callable[[str, int], None] | None = None
        # called at the start of every flush: the bus's hook (Bus.send_now), so the other workers get
        # what this tick sequenced before this worker writes to its clients
        self.before_flush: Callable[[], None] | None = None

    # --- membership ---------------------------------------------------------------------------------

    def add(self, conn: S, rooms: Iterable[str]) -> None:
        if not conn.raw and conn not in self.conns:
            self.nonraw += 1
        self.conns[conn] = None
        for room in rooms:
            self.subscribe(conn, room)

    def remove(self, conn: S, rooms: Iterable[str]) -> None:
        if self.conns.pop(conn, False) is None and not conn.raw:
            self.nonraw -= 1
        for room in rooms:
            self.unsubscribe(conn, room)

    def subscribe(self, conn: S, room: str) -> None:
        if conn not in self.conns:
            return  # not open (or gone): never a member of anything
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = {conn: None}
        elif conn in members:
            return
        else:
            members[conn] = None
        if self.on_members is not None:
            self.on_members(room, len(members))

    def unsubscribe(self, conn: S, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None and conn in members:
            del members[conn]
            if not members:
                del self.rooms[room]
            if self.on_members is not None:
                self.on_members(room, len(members))

    # --- output -------------------------------------------------------------------------------------

    def push(self, conn: S, data: bytes) -> None:
        """Queue bytes for ``conn``; they are written at the end of this loop tick."""
        out = conn.out
        if out is None:
            conn.out = [data]
            self.dirty.append(conn)
            if not self.scheduled:
                self._schedule()
        elif type(out) is _Batch:  # it leaves its fan-out batch with a copy of the batch's frames
            out.size -= 1
            conn.out = [*out, data]
            self.dirty.append(conn)
        else:
            out.append(data)

    def _schedule(self) -> None:
        """Flush at the end of this tick (and keep the collector off until then, see gc_window)."""
        self.scheduled = True
        assert self.loop is not None
        self.loop.call_soon(self.flush)
        if _gc_window and gc.isenabled():
            gc.disable()
            self.gc_paused = True

    def flush(self) -> None:
        """Write everything queued this tick: one write per connection (inlined: it is the hot path).

        A connection's ``out`` holds all it is owed this tick: its own list, or the frame list of a fan-out
        batch it is still a member of (see :meth:`deliver`); the tick's deferred fan-out, if any, is owed
        before that."""
        self.scheduled = False
        if self.before_flush is not None:
            self.before_flush()
        dirty, self.dirty = self.dirty, []
        batches, self.batches = self.batches, []
        pending, self.pending = self.pending, None
        self.last_batch.clear()
        limit = self.max_queue
        try:
            if pending is not None:
                self._write_pending(*pending)
            for frames, members in batches:
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                for conn in members:
                    if conn.out is not frames:
                        continue  # left the batch (its own queue, or a later batch, has these frames), or lost
                    conn.out = None
                    t = conn.transport
                    if t is None:
                        continue
                    t.write(data)
                    if conn.end_after_write:
                        t.close()
                    queued = t.get_write_buffer_size()
                    if queued > limit:
                        conn.overflow(queued)
            for conn in dirty:
                out = conn.out
                conn.out = None
                t = conn.transport
                if not out or t is None:
                    continue
                if len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)
                if conn.end_after_write:
                    t.close()
                queued = t.get_write_buffer_size()
                if queued > limit:
                    conn.overflow(queued)
        finally:
            if self.gc_paused and not self.scheduled:
                self.gc_paused = False
                gc.enable()

    def deliver(self, room: str | None, payload: bytes, mtype: str) -> int:
        """Fan a JSON-encoded message out to this worker's receivers. Returns the number of deliveries.

        Each codec's payload and frame are built once, on the first receiver that needs them (a receiver
        with extensions gets its own frame); receivers that are closing are skipped and counted.

        To ``FAN_MIN`` receivers or more, the frame is not queued per receiver: the receivers with nothing
        queued yet this tick form a *batch* whose one frame list they share as their ``out``, and the flush
        writes it to each of them. A later fan-out in the same tick that reaches every member of a batch
        adds its frame to the batch; one that reaches some of them moves those to a new batch (a copy of
        the frames, and the new one); a receiver that gets anything else (a reply) leaves its batch with a
        copy of its frames. So every receiver still gets all it is owed, in order, in one write per tick,
        and a receiver costs a few attribute stores instead of a list of its own.

        The tick's first such fan-out, when nothing else is queued yet and no connection has extensions, is
        *deferred*: it keeps a copy of the receivers' list (those that are closing already are counted and
        left out, in C loops) and the flush walks it once, writing each receiver as it goes, where a batch
        walks them twice (joining, then writing). What is queued for one of them later in the tick follows
        the fan-out's frame in the same write; a second large fan-out in the tick first turns the deferred
        one into the batch it would have been (:meth:`_settle`), so coalescing is kept."""
        targets: Collection[S] | None = self.conns if room is None else self.rooms.get(room)
        if not targets:
            return 0
        if len(targets) >= FAN_MIN:
            if self.pending is None and not self.dirty and not self.batches and not self.nonraw:
                return self._defer(list(targets), payload, mtype)
            if self.pending is not None:
                self._settle()
            return self._deliver_batched(targets, payload, mtype)
        encoded: dict[Codec, tuple[bytes, bytes]] = {}  # codec -> (payload, frame)
        last: Codec | None = None
        body = frame = b""
        size = 0
        push = self.push
        n = 0
        nbytes = 0
        for conn in targets:
            if conn.close_reason is not None:
                self.metrics.inc(self.metrics.dropped, conn.close_reason)
                continue
            codec = conn.codec
            if codec is not last:
                cached = encoded.get(codec)
                if cached is None:
                    p = codec.from_json(payload)
                    cached = encoded[codec] = (p, build_frame(codec.opcode, p))
                body, frame = cached
                size = len(body)
                last = codec
            if conn.raw:
                push(conn, frame)
            else:
                conn.send_payload(body)
            conn.bytes_out += size
            conn.msgs_out += 1
            nbytes += size
            n += 1
        if n:
            self.metrics.count_out(mtype, n, nbytes)
        return n

    def _defer(self, receivers: list[S], payload: bytes, mtype: str) -> int:
        closing = list(compress(receivers, map(_closing, receivers)))
        if closing:
            for conn in closing:
                self.metrics.inc(self.metrics.dropped, conn.close_reason)
            receivers = list(filterfalse(set(closing).__contains__, receivers))
        self.pending = (receivers, payload, mtype)
        if not self.scheduled:
            self._schedule()
        return len(receivers)

    def _write_pending(self, receivers: list[S], payload: bytes, mtype: str) -> None:
        """The flush of a deferred fan-out: one pass, written as it goes (see :meth:`deliver`)."""
        built: dict[Codec, tuple[bytes, int]] = {}
        last: Codec | None = None
        frame = b""
        size = nbytes = 0
        limit = self.max_queue
        for conn in receivers:
            if conn.codec is not last:
                last = conn.codec
                fs = built.get(last)
                if fs is None:
                    body = last.from_json(payload)
                    fs = built[last] = (build_frame(last.opcode, body), len(body))
                frame, size = fs
            conn.bytes_out += size
            conn.msgs_out += 1
            nbytes += size
            out = conn.out
            if out is not None:  # queued for it after the fan-out: its own list, written below
                out.insert(0, frame)
                continue
            t = conn.transport
            if t is None:
                continue
            t.write(frame)
            if conn.end_after_write:
                t.close()
            queued = t.get_write_buffer_size()
            if queued > limit:
                conn.overflow(queued)
        self.metrics.count_out(mtype, len(receivers), nbytes)

    def _settle(self) -> None:
        """Make the deferred fan-out the batch it would have been, what was queued since following it."""
        assert self.pending is not None
        receivers, payload, mtype = self.pending
        self.pending = None
        since = [(conn, conn.out) for conn in self.dirty]  # own lists: there is no batch yet this tick
        for conn, _ in since:
            conn.out = None
        self.dirty = []
        self._deliver_batched(receivers, payload, mtype, skip_closing=False)
        for conn, out in since:
            for data in out or ():
                self.push(conn, data)

    def _deliver_batched(self, targets: Collection[S], payload: bytes, mtype: str, skip_closing: bool = True) -> int:
        by_codec: dict[Codec, _Delivery[S]] = {}
        last: Codec | None = None
        d: _Delivery[S] | None = None
        n = 0
        nbytes = 0
        # the current codec's delivery, in locals (this loop runs once per receiver)
        prev: _Batch | None = None
        frame = b""
        size = 0
        join: Callable[[S], None] = self.dirty.append
        again: Callable[[S], None] = self.dirty.append
        new: _Batch = _Batch()
        for conn in targets:
            if conn.close_reason is not None and skip_closing:
                self.metrics.inc(self.metrics.dropped, conn.close_reason)
                continue
            codec = conn.codec
            if codec is not last:
                d = by_codec.get(codec)
                if d is None:
                    d = by_codec[codec] = _Delivery(codec, payload, self.last_batch.get(codec))
                new, prev, frame, size = d.batch, d.prev, d.frame, d.size
                join, again = d.members.append, d.again.append
                last = codec
            if conn.raw:
                out = conn.out
                if out is None:
                    conn.out = new
                    join(conn)
                elif out is prev:
                    again(conn)  # a member of this codec's last batch: decided below, for all of them at once
                elif type(out) is _Batch:
                    assert d is not None
                    d.others.setdefault(id(out), (out, []))[1].append(conn)
                else:
                    out.append(frame)
            else:
                assert d is not None
                conn.send_payload(d.body)
            conn.bytes_out += size
            conn.msgs_out += 1
            nbytes += size
            n += 1
        for codec, d in by_codec.items():
            if d.again:
                assert d.prev is not None
                self._extend(codec, d.prev, d.again, d.frame)
            for batch, reached in d.others.values():
                self._extend(codec, batch, reached, d.frame)
            if d.members:
                d.batch.size = len(d.members)
                self.batches.append((d.batch, d.members))
                self.last_batch[codec] = d.batch
        if not self.scheduled and self.batches:
            self._schedule()
        if n:
            self.metrics.count_out(mtype, n, nbytes)
        return n

    def _extend(self, codec: Codec, batch: _Batch, reached: list[S], frame: bytes) -> None:
        """``frame`` for the ``reached`` members of ``batch``: all of them, or a new batch for those."""
        if len(reached) == batch.size:
            batch.append(frame)
            return
        split = _Batch(batch)
        split.append(frame)
        split.size = len(reached)
        batch.size -= len(reached)
        for conn in reached:
            conn.out = split
        self.batches.append((split, reached))
        self.last_batch[codec] = split


class _Batch(list[bytes]):
    """The frames of a fan-out batch: the ``out`` of each of its members. ``size``: members that still have it."""

    __slots__ = ("size",)

    def __init__(self, frames: Iterable[bytes] = ()) -> None:
        super().__init__(frames)
        self.size = 0


class _Delivery(Generic[S]):
    """One codec's part of a batched fan-out."""

    __slots__ = ("again", "batch", "body", "frame", "members", "others", "prev", "size")

    def __init__(self, codec: Codec, payload: bytes, prev: _Batch | None) -> None:
        self.body = codec.from_json(payload)
        self.frame = build_frame(codec.opcode, self.body)
        self.size = len(self.body)
        self.batch = _Batch((self.frame,))  # the receivers with nothing queued yet join this one
        self.members: list[S] = []
        self.prev = prev  # this tick's last batch of this codec, if any
        self.again: list[S] = []  # the members of ``prev`` this delivery reaches
        self.others: dict[int, tuple[_Batch, list[S]]] = {}  # members of older batches it reaches, per batch
