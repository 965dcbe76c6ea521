"""The hub: a worker's open connections, its room index, and fan-out.

Fan-out encodes each message once per codec and frames it once, then hands the same bytes to every
receiving connection. Writes are coalesced per event-loop tick: a connection that receives several
messages in one tick gets one write. Each connection's unsent output is bounded (``max_queue``); one that
overflows is closed with 1013 and what it could not take is counted (see :meth:`Hub.flush`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from . import codecs
from .metrics import Metrics
from .wsframe import build_frame


class Sink(Protocol):
    """What the hub needs of a connection."""

    codec: str
    raw: bool  # True: pre-built frames can be written as they are (no per-connection extensions)
    out: list[bytes] | None
    closing: str | None  # why it is closing; None while open
    msgs_out: int
    bytes_out: int

    def send_payload(self, payload: bytes) -> None: ...

    @property
    def transport(self) -> asyncio.WriteTransport | None: ...

    eof: bool  # close the transport after the next write

    def overflow(self, queued: int) -> None: ...


S = TypeVar("S", bound=Sink)


class Hub(Generic[S]):
    __slots__ = ("conns", "dirty", "loop", "max_queue", "metrics", "on_room", "rooms", "scheduled")

    def __init__(self, metrics: Metrics, max_queue: int) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.conns: set[S] = set()
        self.rooms: dict[str, set[S]] = {}
        self.dirty: list[S] = []
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # called with (room, True) when a room gains its first member here, (room, False) when it loses
        # its last: the bus's interest hook (see Bus.interest); None when the bus does not route by room
        self.on_room: Callable[[str, bool], None] | None = None

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
        members = self.rooms.get(room)
        if members is None:
            self.rooms[room] = {conn}
            if self.on_room is not None:
                self.on_room(room, True)
        else:
            members.add(conn)

    def unsubscribe(self, conn: S, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.rooms[room]
                if self.on_room is not None:
                    self.on_room(room, False)

    def room_counts(self) -> dict[str, int]:
        return {room: len(members) for room, members in self.rooms.items()}

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
            if conn.eof:
                t.close()
            elif conn.closing is None:
                queued = t.get_write_buffer_size()
                if queued > limit:
                    conn.overflow(queued)

    def deliver(self, room: str | None, payload: bytes, mtype: str) -> int:
        """Fan a JSON-encoded message out to this worker's receivers. Returns the number of deliveries."""
        targets: Iterable[S] | None = self.conns if room is None else self.rooms.get(room)
        if not targets:
            return 0
        jframe: bytes | None = None
        mframe: bytes | None = None
        mpayload: bytes | None = None
        push = self.push
        n = 0
        nbytes = 0
        jsize = len(payload)
        for conn in targets:
            if conn.closing is not None:
                self.metrics.inc(self.metrics.dropped, conn.closing)
                continue
            if conn.codec == codecs.JSON:
                if conn.raw:
                    if jframe is None:
                        jframe = build_frame(codecs.OP_TEXT, payload)
                    push(conn, jframe)
                else:
                    conn.send_payload(payload)
                conn.bytes_out += jsize
                nbytes += jsize
            else:
                if mpayload is None:
                    mpayload = codecs.json_to_msgpack(payload)
                if conn.raw:
                    if mframe is None:
                        mframe = build_frame(codecs.OP_BINARY, mpayload)
                    push(conn, mframe)
                else:
                    conn.send_payload(mpayload)
                conn.bytes_out += len(mpayload)
                nbytes += len(mpayload)
            conn.msgs_out += 1
            n += 1
        if n:
            self.metrics.count_out(mtype, n, nbytes)
        return n
