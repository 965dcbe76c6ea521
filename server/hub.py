"""The hub: a worker's open connections, its room index, and fan-out.

Fan-out encodes each message once per codec and frames it once, then hands the same bytes to every
receiving connection. Writes are coalesced per event-loop tick: a connection that receives several
messages in one tick gets one write. Each connection's unsent output is bounded (``max_queue``) in every
state: an open one that overflows is closed with 1013 and what it could not take is counted; nothing but a
close frame is queued for one that is closing, and it is aborted if it cannot drain within the close
timeout (see :meth:`Hub.flush` and ``Conn.overflow``).

The hub holds open connections only: :meth:`add` when the WebSocket opens, :meth:`remove` when the
connection is lost (whatever ended it), and :meth:`subscribe` ignores a connection it does not hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from .codecs import Codec
from .metrics import Metrics
from .ws.frames import build_frame


class Sink(Protocol):
    """What the hub needs of a connection."""

    codec: Codec
    raw: bool  # True: pre-built frames can be written as they are (no per-connection extensions)
    out: list[bytes] | None
    close_reason: str | None  # why it is closing (a metric label); None while open
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

    __slots__ = ("conns", "dirty", "loop", "max_queue", "metrics", "on_members", "rooms", "scheduled")

    def __init__(self, metrics: Metrics, max_queue: int) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.conns: set[S] = set()
        self.rooms: dict[str, set[S]] = {}
        self.dirty: list[S] = []
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # called with (room, local member count) on every join and leave: the bus's hook (Bus.room_members)
        self.on_members: Callable[[str, int], None] | None = None

    # --- membership ---------------------------------------------------------------------------------

    def add(self, conn: S, rooms: Iterable[str]) -> None:
        self.conns.add(conn)
        for room in rooms:
            self.subscribe(conn, room)

    def remove(self, conn: S, rooms: Iterable[str]) -> None:
        self.conns.discard(conn)
        for room in rooms:
            self.unsubscribe(conn, room)

    def subscribe(self, conn: S, room: str) -> None:
        if conn not in self.conns:
            return  # not open (or gone): never a member of anything
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = {conn}
        elif conn in members:
            return
        else:
            members.add(conn)
        if self.on_members is not None:
            self.on_members(room, len(members))

    def unsubscribe(self, conn: S, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None and conn in members:
            members.discard(conn)
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
                self.scheduled = True
                assert self.loop is not None
                self.loop.call_soon(self.flush)
        else:
            out.append(data)

    def flush(self) -> None:
        """Write everything queued this tick: one write per connection (inlined: it is the hot path)."""
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        limit = self.max_queue
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

    def deliver(self, room: str | None, payload: bytes, mtype: str) -> int:
        """Fan a JSON-encoded message out to this worker's receivers. Returns the number of deliveries.

        Each codec's payload and frame are built once, on the first receiver that needs them (a receiver
        with extensions gets its own frame); receivers that are closing are skipped and counted."""
        targets: Iterable[S] | None = self.conns if room is None else self.rooms.get(room)
        if not targets:
            return 0
        encoded: dict[Codec, tuple[bytes, bytes]] = {}  # codec -> (payload, frame)
        last: Codec | None = None
        body = frame = b""
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
                last = codec
            if conn.raw:
                push(conn, frame)
            else:
                conn.send_payload(body)
            size = len(body)
            conn.bytes_out += size
            conn.msgs_out += 1
            nbytes += size
            n += 1
        if n:
            self.metrics.count_out(mtype, n, nbytes)
        return n
