"""The ``recovery`` scenario's load, inside one load process: raw protocol v1.1 subscribers that are cut
off (TCP abort: RST, no close frame) on a schedule and recover by themselves, and one publisher with
acknowledgements. :class:`bench.loadgen.Gen` hands its ``recovery_*`` commands to :class:`RecoveryLoad`.

Why raw and not the Python client library: a subscriber here costs one ``orjson.loads`` and a few integer
comparisons per message, so two load processes keep up with tens of thousands of deliveries per second
while the server under test does the work; a load process of :class:`client.AsyncClient` instances
(websockets' protocol, a task and an inbox per client) would be the bottleneck long before the server.
The subscribers do what the client library does on a reconnect, and nothing else:

- connect with ``/?autojoin=0`` (and ``&session=<token>`` from the first ``welcome`` on every reconnect),
  join every stream (the rooms and ``$broadcast``) with ``since`` = the epoch and highest offset they hold;
- check every ``chat`` / ``broadcast`` against their :class:`~bench.completeness.StreamCheck` (its type,
  our marker in ``text``, an integer ``offset`` and a string ``epoch``, else it is counted unexpected);
- count ``joined`` answers with ``recovered: false`` and every ``error`` (``bad_since``...): failures;
- time each recovery from the reconnect's TCP connect to the last ``joined`` (which comes after the
  replayed messages: the subscriber is then caught up), and the handshake part of it.

The publisher connects with ``autojoin=0`` (it receives nothing but its acks), publishes on an open-loop
schedule round-robin over the streams (``chat`` with ``room`` to a room, ``broadcast`` to ``$broadcast``),
every message with an ``id``, and logs every ``ack`` (:class:`~bench.completeness.AckLog`): the offsets
the receivers are owed come from there, never from the receivers themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import orjson

from .completeness import AckLog, StreamCheck, completeness, merge_counts
from .hist import Histogram
from .wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    handshake_request,
    masked_frame,
)

if TYPE_CHECKING:
    from .loadgen import Gen

__all__ = ["BROADCAST", "RecoveryLoad", "stream_names"]

BROADCAST = "$broadcast"
_now = time.monotonic_ns
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST, no FIN, no close frame

DOWN, CONNECTING, WELCOME, JOINING, LIVE = range(5)


def stream_names(rooms: int, tag: str, broadcast: bool = True) -> list[str]:
    """The streams every subscriber follows: ``rooms`` rooms named after this run, and ``$broadcast``."""
    return [f"rec-{tag}-{i}" for i in range(rooms)] + ([BROADCAST] if broadcast else [])


def _rst(transport: asyncio.BaseTransport) -> None:
    """Abort ``transport`` with a TCP reset (no close frame, no FIN)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()  # type: ignore[attr-defined]


class Link(asyncio.Protocol):
    """One TCP connection of a subscriber or the publisher: the handshake, then whole frames to its owner."""

    __slots__ = ("aborted", "accept", "hbuf", "owner", "reader", "request", "t_open", "transport")

    def __init__(self, owner: Sub | Publisher, request: bytes, accept: bytes) -> None:
        self.owner = owner
        self.request = request
        self.accept = accept
        self.transport: asyncio.Transport | None = None
        self.hbuf = b""
        self.reader: FrameReader | None = None
        self.t_open = 0
        self.aborted = False  # we cut it: its loss is the scenario's doing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.on_lost(self)

    def eof_received(self) -> bool | None:
        return None

    def abort(self, rst: bool = True) -> None:
        self.aborted = True
        t = self.transport
        if t is not None:
            if rst:
                _rst(t)
            else:
                t.abort()

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            buf = self.hbuf + data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.hbuf = buf
                if len(buf) > 65536:
                    self.owner.on_refused(self, "handshake response too long")
                return
            head, data = buf[:i], buf[i + 4:]
            self.hbuf = b""
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.owner.on_refused(self, head.partition(b"\r\n")[0].decode("latin-1")[:48])
                return
            self.t_open = _now()
            self.reader = FrameReader()
            if not data:
                return
        reader = self.reader
        frames = reader.feed(data)
        held = reader.buf
        for op, s, e in frames:
            if self.transport is None:
                break
            if op & 0x08:
                self._control(op, bytes(held[s:e]))
            else:
                self.owner.on_frame(self, op, bytes(held[s:e]))
        reader.consume()

    def _control(self, op: int, payload: bytes) -> None:
        t = self.transport
        if t is None:
            return
        mask = self.owner.load.mask
        if op == OP_PING:
            t.write(masked_frame(OP_PONG, payload, mask))
        elif op == OP_CLOSE:
            t.write(masked_frame(OP_CLOSE, payload[:2], mask))
            code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
            codes = self.owner.load.close_codes
            codes[code] = codes.get(code, 0) + 1


def _decode(op: int, payload: bytes) -> Any:
    try:
        return orjson.loads(payload) if op == OP_TEXT else msgpack.unpackb(payload)
    except Exception:
        return None


class Sub:
    """One subscriber: its position in every stream, across as many connections as it takes."""

    __slots__ = ("checks", "index", "link", "load", "pending", "recovering", "session", "state", "t_connect")

    def __init__(self, load: RecoveryLoad, index: int) -> None:
        self.load = load
        self.index = index
        self.checks = {s: StreamCheck() for s in load.streams}
        self.link: Link | None = None
        self.session: str | None = None
        self.state = DOWN
        self.pending: set[str] = set()
        self.recovering = False  # this connection is a reconnect (not the first one)
        self.t_connect = 0

    # --- connecting -----------------------------------------------------------------------------------

    def connect(self) -> None:
        load = self.load
        if not load.active or self.state != DOWN:
            return
        self.state = CONNECTING
        self.t_connect = _now()
        if self.recovering:
            load.reconnects += 1
        load.loop.create_task(self._connect())

    async def _connect(self) -> None:
        load = self.load
        path = "/?autojoin=0" + (f"&session={self.session}" if self.session else "")
        request = handshake_request(load.host, load.port, load.key, load.subprotocol, path)
        try:
            async with asyncio.timeout(load.timeout):
                await load.loop.create_connection(lambda: self._new_link(request), load.host, load.port)
            if self.state == CONNECTING:  # (the welcome may have been handled already)
                self.state = WELCOME
        except Exception as exc:
            self.link = None
            load.note_connect_error(exc)
            self.state = DOWN
            if load.active:
                load.loop.call_later(0.05, self.connect)

    def _new_link(self, request: bytes) -> Link:
        link = Link(self, request, self.load.accept)
        self.link = link
        return link

    def cut(self) -> bool:
        """Cut the connection (RST, no close frame) and reconnect after the scenario's down time."""
        link = self.link
        if link is None or link.transport is None or self.state in (DOWN, CONNECTING):
            return False
        load = self.load
        if self.state != LIVE:
            load.interrupted += 1  # cut again before it had recovered from the previous cut
        self.link = None
        self.state = DOWN
        link.abort()
        load.loop.call_later(load.down_s, self.connect)
        return True

    # --- what the connection says -----------------------------------------------------------------------

    def on_refused(self, link: Link, why: str) -> None:
        self.load.note_error(f"handshake: {why}")
        link.abort(rst=False)

    def on_lost(self, link: Link) -> None:
        if link is not self.link:  # an old connection (we cut it): already handled
            return
        self.link = None
        load = self.load
        if not link.aborted:
            load.server_drops += 1  # closed under us: a close frame, a reset, a refused handshake
        self.state = DOWN
        if load.active:
            load.loop.call_later(load.down_s, self.connect)

    def on_frame(self, link: Link, op: int, payload: bytes) -> None:
        load = self.load
        msg = _decode(op, payload)
        if type(msg) is not dict:
            load.unexpected += 1
            return
        kind = msg.get("type")
        if kind == "chat" or kind == "broadcast":
            text = msg.get("text")
            epoch = msg.get("epoch")
            offset = msg.get("offset")
            stream = BROADCAST if kind == "broadcast" else msg.get("room")
            chk = self.checks.get(stream)  # type: ignore[arg-type]
            if (chk is None or type(offset) is not int or type(epoch) is not str or type(text) is not str
                    or load.marker not in text):
                load.unexpected += 1
                return
            chk.feed(epoch, offset)
            load.received += 1
            now = _now()
            if load.w0 <= now < load.w1:
                load.win_rx += 1
            if self.state == JOINING and stream in self.pending:
                load.replay_rx += 1
        elif kind == "joined":
            self._joined(msg)
        elif kind == "welcome":
            self._welcome(link, msg)
        elif kind == "error":
            self._error(link, msg)
        else:
            load.unexpected += 1

    def _welcome(self, link: Link, msg: dict[str, Any]) -> None:
        load = self.load
        session = msg.get("session")
        if isinstance(session, str) and session:
            if self.session is not None and session != self.session:
                load.sessions_changed += 1
            self.session = session
        if self.recovering:
            load.handshake_us.record((link.t_open - self.t_connect) // 1000)
        self.state = JOINING
        self.pending = set(load.streams)
        t = link.transport
        if t is not None:
            t.write(b"".join(self._join_frame(i, s, since=True) for i, s in enumerate(load.streams)))

    def _join_frame(self, i: int, stream: str, since: bool) -> bytes:
        load = self.load
        msg: dict[str, Any] = {"type": "join", "room": stream, "id": i}
        pos = self.checks[stream].position() if since else None
        if pos is not None:
            msg["since"] = {"offset": pos[1], "epoch": pos[0]}
        return masked_frame(load.opcode, load.encode(msg), load.mask)

    def _joined(self, msg: dict[str, Any]) -> None:
        load = self.load
        stream = msg.get("room")
        epoch, offset = msg.get("epoch"), msg.get("offset")
        if stream not in self.pending or type(epoch) is not str or type(offset) is not int:
            load.unexpected += 1
            return
        assert isinstance(stream, str)
        self.pending.discard(stream)
        chk = self.checks[stream]
        if not chk.started:
            chk.begin(epoch, offset)
        if "recovered" in msg:
            load.rejoins += 1
            load.replayed += int(msg.get("replayed") or 0)
            if msg["recovered"] is not True:
                load.recovered_false += 1
            elif chk.position() != (epoch, offset):
                load.short_replays += 1  # joined said "recovered" before we had everything up to its offset
        if not self.pending:
            self.state = LIVE
            if self.recovering:
                load.recovered += 1
                load.recover_us.record((_now() - self.t_connect) // 1000)
            self.recovering = True

    def _error(self, link: Link, msg: dict[str, Any]) -> None:
        load = self.load
        load.note_error(str(msg.get("code")))
        rid = msg.get("id")
        streams = load.streams
        if type(rid) is int and 0 <= rid < len(streams) and streams[rid] in self.pending and link.transport:
            # the join was refused (bad_since...): join again without a position, as a client would
            link.transport.write(self._join_frame(rid, streams[rid], since=False))

    # --- the verdict ----------------------------------------------------------------------------------

    def caught_up(self, ends: dict[str, dict[str, int]]) -> bool:
        return self.state == LIVE and all(self.checks[s].caught_up(e) for s, e in ends.items() if s in self.checks)

    def example(self, ends: dict[str, dict[str, int]]) -> dict[str, Any]:
        """What went wrong for this subscriber, in short (for the result JSON)."""
        out: dict[str, Any] = {"subscriber": self.index, "state": ["down", "connecting", "welcome", "joining",
                                                                   "live"][self.state]}
        for s, chk in self.checks.items():
            out[s] = {e: {"base": t.base, "last": t.last, "holes": t.holes[:3], "duplicates": t.duplicates,
                          "late": t.late, "owed_up_to": ends.get(s, {}).get(e)} for e, t in chk.tracks.items()}
        return out


class Publisher:
    """The publisher: open-loop, round-robin over the streams, every message with an id and acknowledged."""

    __slots__ = ("acks", "errors", "failed", "lag", "link", "load", "outstanding", "ready", "scheduled", "sent",
                 "unexpected")

    def __init__(self, load: RecoveryLoad) -> None:
        self.load = load
        self.link: Link | None = None
        self.ready: asyncio.Future[None] = load.loop.create_future()
        self.acks = AckLog()
        self.outstanding: dict[int, str] = {}  # id -> stream
        self.sent = 0
        self.scheduled = 0
        self.failed = 0
        self.unexpected = 0
        self.errors: dict[str, int] = {}
        self.lag = Histogram()

    async def open(self) -> None:
        load = self.load
        request = handshake_request(load.host, load.port, load.key, load.subprotocol, "/?autojoin=0")

        def make() -> Link:
            self.link = Link(self, request, load.accept)
            return self.link

        async with asyncio.timeout(load.timeout):
            await load.loop.create_connection(make, load.host, load.port)
            await self.ready

    def on_refused(self, link: Link, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"publisher: handshake refused: {why}"))
        link.abort(rst=False)

    def on_lost(self, link: Link) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("publisher: closed during the handshake"))

    def on_frame(self, link: Link, op: int, payload: bytes) -> None:
        msg = _decode(op, payload)
        if type(msg) is not dict:
            self.unexpected += 1
            return
        kind = msg.get("type")
        if kind == "ack":
            rid = msg.get("id")
            stream = self.outstanding.pop(rid, None) if type(rid) is int else None
            epoch, offset = msg.get("epoch"), msg.get("offset")
            if stream is None or msg.get("room") != stream or type(epoch) is not str or type(offset) is not int:
                self.unexpected += 1
                return
            self.acks.feed(stream, epoch, offset, bool(msg.get("duplicate")))
        elif kind == "error":
            code = str(msg.get("code"))
            self.errors[code] = self.errors.get(code, 0) + 1
            rid = msg.get("id")
            if type(rid) is int and self.outstanding.pop(rid, None) is not None:
                self.failed += 1
        elif kind == "welcome":
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            self.unexpected += 1

    async def publish(self, t0: int, t1: int, rate: float) -> None:
        """``rate`` messages/s per stream from ``t0`` until ``t1`` (ns), round-robin over the streams;
        every message due is sent at once when the loop gets to it (timers are ~1 ms coarse), and how
        late that was is recorded."""
        load = self.load
        streams = load.streams
        nstreams = len(streams)
        interval = 1e9 / (rate * nstreams)
        count = self.scheduled = int((t1 - t0) / interval)
        opcode, encode, mask, marker = load.opcode, load.encode, load.mask, load.marker
        k = 0
        while k < count:
            link = self.link
            if link is None or link.transport is None:
                break
            now = _now()
            due = t0 + int(k * interval)
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            upto = min(count, int((now - t0) / interval) + 1)
            self.lag.record((now - due) // 1000)
            frames = []
            for j in range(k, upto):
                stream = streams[j % nstreams]
                msg: dict[str, Any] = ({"type": "broadcast", "text": f"{marker} {j}", "id": j} if stream == BROADCAST
                                       else {"type": "chat", "room": stream, "text": f"{marker} {j}", "id": j})
                self.outstanding[j] = stream
                frames.append(masked_frame(opcode, encode(msg), mask))
            link.transport.write(b"".join(frames))
            self.sent += upto - k
            k = upto
            await asyncio.sleep(0)

    async def wait_acks(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.outstanding and time.monotonic() < end and self.link is not None and self.link.transport:
            await asyncio.sleep(0.01)

    def report(self, scheduled: int) -> dict[str, Any]:
        acked = sum(r[2] for eps in self.acks.streams.values() for r in eps.values())
        return {"scheduled": scheduled, "sent": self.sent, "acked": acked, "failed": self.failed,
                "unacked": len(self.outstanding), "unexpected": self.unexpected, "errors": dict(self.errors),
                "acks": self.acks.to_dict(), "send_lag_us": self.lag.to_dict(),
                "closed": self.link is None or self.link.transport is None}


class RecoveryLoad:
    """This load process's share of the scenario: ``count`` subscribers (global indices ``first`` ..
    ``first + count - 1`` of ``total``), and the publisher when asked."""

    def __init__(self, gen: Gen, host: str, port: int, streams: Sequence[str], marker: str, first: int, total: int,
                 codec: str = "json", down_s: float = 0.2, timeout: float = 10.0) -> None:
        self.gen = gen
        self.loop = gen.loop
        self.mask = gen.mask
        self.key = gen.key
        self.accept = gen.accept
        self.host = host
        self.port = port
        self.streams = list(streams)
        self.marker = marker
        self.first = first
        self.total = total
        self.codec = codec
        self.subprotocol = "fanwire.msgpack" if codec == "msgpack" else "fanwire.json"
        self.opcode = OP_BINARY if codec == "msgpack" else OP_TEXT
        self.encode: Callable[[Any], bytes] = orjson.dumps if codec == "json" else msgpack.packb
        self.down_s = down_s
        self.timeout = timeout
        self.active = True
        self.subs: list[Sub] = []
        self.publisher: Publisher | None = None
        self.w0 = self.w1 = 0
        # what happened, all subscribers of this process together
        self.cuts = 0
        self.skipped_cuts = 0
        self.reconnects = 0
        self.recovered = 0
        self.interrupted = 0
        self.server_drops = 0
        self.sessions_changed = 0
        self.rejoins = 0
        self.replayed = 0
        self.replay_rx = 0
        self.recovered_false = 0
        self.short_replays = 0
        self.unexpected = 0
        self.received = 0
        self.win_rx = 0
        self.errors: dict[str, int] = {}
        self.connect_errors: dict[str, int] = {}
        self.close_codes: dict[str, int] = {}
        self.recover_us = Histogram()
        self.handshake_us = Histogram()

    def note_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def note_connect_error(self, exc: BaseException) -> None:
        kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None:
            kind += f" ({errno.errorcode.get(exc.errno, exc.errno)})"
        self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1

    # --- commands ---------------------------------------------------------------------------------------

    async def open(self, count: int, publisher: bool, max_pending: int = 128) -> dict[str, Any]:
        """Connect ``count`` subscribers, each joined to every stream; and the publisher when asked."""
        self.subs = [Sub(self, self.first + i) for i in range(count)]
        for i in range(0, count, max_pending):
            batch = self.subs[i:i + max_pending]
            for sub in batch:
                sub.connect()
            await self._until(lambda batch=batch: all(s.state in (LIVE, DOWN) for s in batch),  # type: ignore[misc]
                              self.timeout)
        live = sum(s.state == LIVE for s in self.subs)
        if publisher:
            self.publisher = Publisher(self)
            await self.publisher.open()
        out = self._counters()
        out.update({"subscribers": count, "live": live, "publisher": publisher})
        self._reset_counters()
        return out

    async def run(self, start_at: float, warmup: float, duration: float, cut_every: float, rate: float,
                  cut_until: float | None = None) -> dict[str, Any]:
        """Publish (when this process has the publisher) from ``start_at`` to the end of the window, and
        cut every subscriber once every ``cut_every`` seconds inside the window, subscriber ``g`` of
        ``total`` first at ``g / total`` of the period (the cuts are spread evenly, not all at once)."""
        t0 = int(start_at * 1e9)
        self.w0 = t0 + int(warmup * 1e9)
        self.w1 = self.w0 + int(duration * 1e9)
        stop_cuts = int(cut_until * 1e9) if cut_until is not None else self.w1
        pub = self.publisher
        task = self.loop.create_task(pub.publish(t0, self.w1, rate)) if pub is not None else None
        period = int(cut_every * 1e9)
        plan: list[tuple[int, Sub]] = []
        if period > 0:
            for sub in self.subs:
                t = self.w0 + period * sub.index // max(1, self.total)
                while t < stop_cuts:
                    plan.append((t, sub))
                    t += period
        plan.sort(key=lambda x: x[0])
        for t, sub in plan:
            now = _now()
            if t > now:
                await asyncio.sleep((t - now) / 1e9)
            if sub.cut():
                self.cuts += 1
            else:
                self.skipped_cuts += 1
        now = _now()
        if self.w1 > now:
            await asyncio.sleep((self.w1 - now) / 1e9)
        out: dict[str, Any] = {}
        if pub is not None and task is not None:
            await task
            await pub.wait_acks(10.0)
            out["publisher"] = pub.report(pub.scheduled)
        out["win_rx"] = self.win_rx
        return out

    async def settle(self, ends: dict[str, dict[str, int]], timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout`` s) until every subscriber is connected and holds every offset ``ends``
        says was published; then the verdict: every subscriber's streams against ``ends``."""
        t0 = time.monotonic()
        await self._until(lambda: all(s.caught_up(ends) for s in self.subs), timeout)
        waited = time.monotonic() - t0
        per_sub = [completeness(s.checks, ends) for s in self.subs]
        bad = [s.example(ends) for s, c in zip(self.subs, per_sub)
               if c["missing"] or c["duplicates"] or c["late"] or c["stale"] or c["beyond"] or c["epoch_changes"]]
        out = self._counters()
        out.update({"completeness": merge_counts(per_sub), "subscribers": len(self.subs),
                    "not_live": sum(s.state != LIVE for s in self.subs), "failing_subscribers": len(bad),
                    "examples": bad[:3], "settle_s": round(waited, 3)})
        return out

    def close(self) -> int:
        self.active = False
        n = 0
        for s in self.subs:
            if s.link is not None and s.link.transport is not None:
                n += 1
                s.link.abort(rst=False)
        if self.publisher is not None and self.publisher.link is not None:
            self.publisher.link.abort(rst=False)
        return n

    # --- helpers ----------------------------------------------------------------------------------------

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            await asyncio.sleep(0.01)

    def _counters(self) -> dict[str, Any]:
        return {"cuts": self.cuts, "skipped_cuts": self.skipped_cuts, "reconnects": self.reconnects,
                "recovered": self.recovered, "interrupted": self.interrupted, "server_drops": self.server_drops,
                "sessions_changed": self.sessions_changed, "rejoins": self.rejoins, "replayed": self.replayed,
                "replay_rx": self.replay_rx, "recovered_false": self.recovered_false,
                "short_replays": self.short_replays, "unexpected": self.unexpected, "received": self.received,
                "errors": dict(self.errors), "connect_errors": dict(self.connect_errors),
                "close_codes": dict(self.close_codes), "recover_us": self.recover_us.to_dict(),
                "handshake_us": self.handshake_us.to_dict()}

    def _reset_counters(self) -> None:
        """After the set-up: the run counts only what happens under the cuts."""
        self.cuts = self.skipped_cuts = self.reconnects = self.recovered = self.interrupted = 0
        self.server_drops = self.sessions_changed = self.rejoins = self.replayed = self.replay_rx = 0
        self.recovered_false = self.short_replays = self.unexpected = self.received = self.win_rx = 0
        self.errors = {}
        self.connect_errors = {}
        self.close_codes = {}
        self.recover_us = Histogram()
        self.handshake_us = Histogram()
