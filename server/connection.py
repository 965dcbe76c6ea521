"""One client connection: an ``asyncio.Protocol`` that reads an HTTP head, then WebSocket frames.

The states, and what the connection does with the bytes it receives in each (nothing is ever parsed
ahead of a decision: the head is read alone, frames only once the WebSocket is open)::

    HEAD ──(request head complete)──► owner.on_request()
      │                                  ├── upgrade(): 101 written ─────────► OPEN
      │                                  └── respond(): HTTP answer written ──► HTTP (input discarded)
      └── malformed / too large / timeout: 4xx written ───────────────────────► HTTP
    OPEN ──(close frame received: echoed)──────────────────────────────────────► CLOSED
      ├───(close(): close frame sent)───► CLOSING ──(the peer's close frame)───► CLOSED
      └───(protocol error, EOF, abort)──────────────────────────────────────────► CLOSED
    any state ──(connection_lost)──► gone: owner.on_closed(), always, whatever came before

Input is budgeted: one wake-up handles at most ``limits.frame_budget`` frames of one client; the rest
waits in the reader with reading paused, and is handled on a later loop iteration, so a burst from one
client delays the others by one budget at most. Output (the handshake answer, replies, pongs, close
frames, fan-out) goes through one queue (the hub's :meth:`~server.hub.Hub.push`, written once per loop
tick), so a reply to a ping leaves in the order of the frames that caused it. Once a connection is
closing, nothing but its close frame is queued for it, and a transport that cannot drain is aborted
after ``limits.close_timeout`` seconds.

Why this module is long: it is one state machine (the states above) and the transport adapter around it;
split, the transitions would be spread over files that each need the others.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import codecs
from .errors import HttpError, WsProtocolError
from .http import response as http_response
from .http.request import MAX_HEAD, HttpRequest, find_head_end, parse_head
from .metrics import Metrics
from .protocol import Policy, Session
from .security.ratelimit import RateLimiter
from .ws import frames as wsf

if TYPE_CHECKING:
    from .security.auth import Grant

HEAD: Final = 0
HTTP: Final = 1
OPEN: Final = 2
CLOSING: Final = 3
CLOSED: Final = 4

_monotonic = time.monotonic
_PONG_HEADER: Final = bytes((0x80 | wsf.OP_PONG,))
_TEXT: Final = wsf.TEXT
_OP_TEXT: Final = wsf.OP_TEXT
_OP_BINARY: Final = wsf.OP_BINARY
_build_frame = wsf.build_frame
_NO_EXTENSIONS: Final[list[Any]] = []  # shared by every connection without one (never mutated): 72 B each saved
_CONTROL: Final = 8  # event kinds below are messages (TEXT, BINARY), the others control frames

# One receive buffer for every connection of the process (the loop runs one callback at a time): the
# transport reads into it (``get_buffer``), and ``buffer_updated`` handles the frames that are complete in
# it in place; only a partial frame is copied into the connection's own reader. An idle connection holds
# no receive buffer at all.
RECV_BUFFER_SIZE: Final = 256 * 1024
_RX = bytearray(RECV_BUFFER_SIZE)
_RXV = memoryview(_RX)
# a message at least this long is written as its header and itself (no copy to join them)
SPLIT_WRITE: Final = 2048


@dataclass(frozen=True, slots=True)
class Limits:
    """What bounds one connection (from the Config)."""

    max_message_size: int = 1 << 20
    max_fragments: int = 4096
    frame_budget: int = 256  # frames handled per wake-up before the connection yields
    close_timeout: float = 2.0
    handshake_timeout: float = 10.0
    max_body: int = 0  # request body bytes accepted on plain HTTP requests (the API)


class ConnOwner(Protocol):
    """What a connection needs of its worker: events go up, output goes out through ``push``."""

    loop: asyncio.AbstractEventLoop
    limits: Limits
    metrics: Metrics
    policy: Policy

    def push(self, conn: Conn, data: bytes) -> None: ...

    def on_connected(self, conn: Conn) -> None: ...

    def on_request(self, conn: Conn, request: HttpRequest, body: bytes) -> None: ...

    def before_body(self, conn: Conn, request: HttpRequest) -> HttpError | None: ...

    def on_message(self, conn: Conn, payload: bytes, text: bool) -> None: ...

    def on_over_rate(self, conn: Conn, verdict: int, payload: bytes | None) -> None: ...

    def on_closed(self, conn: Conn) -> None: ...


class Conn(Session, asyncio.BufferedProtocol):
    """A client connection. It is also the message protocol's :class:`Session` and the hub's ``Sink``."""

    __slots__ = ("body_left", "bytes_in", "bytes_out", "close_code_sent", "close_reason", "end_after_write",
                 "extensions", "grant", "head", "held", "last_rx", "msgs_in", "msgs_out", "opened_at", "out",
                 "owner", "paused", "peer_ip", "ping_at", "policy", "raw", "reader", "request", "rl", "stash",
                 "state", "timer", "transport")

    def __init__(self, owner: ConnOwner) -> None:
        Session.__init__(self, "", codecs.JSON)
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.state = HEAD
        self.head: bytearray | None = bytearray()
        self.request: HttpRequest | None = None  # kept only while a plain request's body is read
        self.body_left = 0
        self.reader: wsf.Reader | None = None
        self.out: list[bytes] | None = None  # the hub's write queue for this tick
        self.raw = True  # no extension: pre-built frames go out as they are
        self.extensions: list[Any] = _NO_EXTENSIONS
        self.close_reason: str | None = None  # why it is closing (a metric label); None while open
        self.close_code_sent = 1006  # the close code sent or echoed (1006: none, the TCP connection dropped)
        self.end_after_write = False  # close the transport after the next write
        self.paused = False  # reading paused: a budget was used up, or the connection is held
        self.held = False  # held by back-pressure (the bus is congested): see hold()
        self.stash: list[wsf.Event] | None = None  # events read but not handled when it was held
        self.timer: asyncio.TimerHandle | None = None
        self.last_rx = 0.0
        self.ping_at = 0.0
        self.msgs_in = 0
        self.msgs_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened_at = 0.0
        self.peer_ip = ""
        self.grant: Grant | None = None  # what the client's token allows (auth on)
        self.policy: Policy = owner.policy
        self.rl: RateLimiter | None = None  # rate limits on

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_rx = _monotonic()
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        owner = self.owner
        self.timer = owner.loop.call_later(owner.limits.handshake_timeout, self._handshake_expired)
        owner.on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RXV

    def buffer_updated(self, nbytes: int) -> None:
        self._received(_RX, nbytes)

    def data_received(self, data: bytes) -> None:
        """The same as a read into the shared buffer (kept for callers that hold bytes)."""
        self._received(data, len(data))

    def _received(self, data: bytes | bytearray, n: int) -> None:
        """``data[:n]`` arrived (``data`` may be the shared buffer: nothing may keep a reference to it)."""
        self.last_rx = _monotonic()
        state = self.state
        if state in (OPEN, CLOSING):
            if self.paused or self.stash is not None:
                reader = self.reader
                assert reader is not None
                reader.feed(bytes(data[:n]))
            else:
                self._pump(data, n)
        elif state == HEAD:
            self._read_head(bytes(data[:n]))
        elif state == HTTP:
            self._read_body_or_discard(bytes(data[:n]))
        # CLOSED: whatever still arrives is discarded

    def eof_received(self) -> bool | None:
        """The peer will send nothing more. If it did not close the WebSocket properly, stop serving it;
        the transport closes once our output drains, or is aborted after the close timeout."""
        if self.state == OPEN:
            self.close_reason = self.close_reason or "eof"
            self.state = CLOSED
        elif self.state == HEAD and self.head:
            self.owner.metrics.inc(self.owner.metrics.refused, "incomplete_request")
        self.arm_abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.close_reason = self.close_reason or "lost"
        self.state = CLOSED
        self.out = None
        self.reader = None
        self.head = None
        self.owner.on_closed(self)
        self.transport = None

    # --- the HTTP head --------------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> None:
        head = self.head
        assert head is not None
        head += data
        end = find_head_end(head)
        if end < 0:
            if len(head) > MAX_HEAD:
                self.http_error(HttpError(431, "request head too large", "too_large"))
            return
        rest = bytes(head[end:])
        self.head = None
        try:
            request = parse_head(bytes(head[:end]), self.owner.limits.max_body)
        except HttpError as exc:
            self.http_error(exc)
            return
        self.state = HTTP  # until upgrade() says otherwise: nothing after the head is parsed before that
        if request.content_length:
            refusal = self.owner.before_body(self, request)  # e.g. bad credentials: the body is never read
            if refusal is not None:
                self.http_error(refusal)
                return
            self.request = request
            self.body_left = request.content_length
            self.head = bytearray()
            self._read_body_or_discard(rest)
            return
        self.owner.on_request(self, request, b"")
        if self.state == OPEN and rest:
            self.data_received(rest)
        elif rest:
            self._discard(rest)

    def _read_body_or_discard(self, data: bytes) -> None:
        if self.request is None:
            self._discard(data)
            return
        body = self.head
        assert body is not None
        take = data[: self.body_left]
        body += take
        self.body_left -= len(take)
        if self.body_left:
            return
        request, self.request, self.head = self.request, None, None
        self.owner.on_request(self, request, bytes(body))
        if len(data) > len(take):
            self._discard(data[len(take):])

    def _discard(self, data: bytes) -> None:
        """Bytes after an HTTP request: never parsed, never executed; counted once per connection."""
        if self.close_reason != "http_discarded" and data.strip(b"\r\n"):
            m = self.owner.metrics
            reason = "pipelined" if data[:1].isalpha() else "junk"
            m.inc(m.http_discarded, reason)
            if self.close_reason in (None, "http"):
                self.close_reason = "http_discarded"

    def respond(self, status: int, body: bytes = b"", content_type: str = http_response.TEXT,
                headers: tuple[tuple[str, str], ...] = (), head_only: bool = False) -> None:
        """Answer a plain HTTP request and close (an answer may come later, e.g. after gathering stats)."""
        if self.transport is None or self.state not in (HEAD, HTTP):
            return
        self.state = HTTP
        self.close_reason = self.close_reason or "http"
        self.owner.push(self, http_response.response(status, body, content_type, headers, head_only))
        self._end()

    def http_error(self, exc: HttpError) -> None:
        """Refuse the request with its status and a one-line reason; counted by reason and status."""
        m = self.owner.metrics
        m.inc(m.refused, exc.reason)
        m.inc(m.handshakes_failed, exc.status)
        if self.transport is None or self.state not in (HEAD, HTTP):
            return
        self.state = HTTP
        self.head = None
        self.close_reason = self.close_reason or "http"
        self.owner.push(self, http_response.error(exc.status, exc.detail, exc.headers,
                                                  exc.reason if exc.json else None))
        self._end()

    def upgrade(self, response: bytes, subprotocol: str | None, extensions: list[Any]) -> None:
        """The handshake succeeded: write the 101 and start reading frames."""
        if self.transport is None or self.state != HTTP:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.push(self, response)
        limits = self.owner.limits
        inflate = extensions[0] if extensions else None
        self.reader = wsf.Reader(limits.max_message_size, limits.max_fragments, inflate)
        self.extensions = extensions or _NO_EXTENSIONS
        self.raw = not extensions
        self.codec = codecs.codec_for_subprotocol(subprotocol)
        self.state = OPEN
        self.opened_at = _monotonic()

    def _handshake_expired(self) -> None:
        """Slowloris: no complete request in time. 408 if the head never completed, then close."""
        self.timer = None
        if self.transport is None or self.state not in (HEAD, HTTP):
            return
        if self.state == HEAD:
            m = self.owner.metrics
            m.inc(m.refused, "handshake_timeout")
            m.inc(m.handshakes_failed, 408)
            self.state = HTTP
            self.head = None
            self.close_reason = "handshake_timeout"
            self.owner.push(self, http_response.error(408, "handshake timeout"))
            self._end()
        else:
            self.abort()  # answered already (or a body never came) and the client keeps the socket open

    # --- frames ---------------------------------------------------------------------------------------

    def _pump(self, data: bytes | bytearray | None = None, n: int = 0) -> None:
        """Handle what the reader holds (and ``data[:n]``, just received), within this wake-up's budget;
        yield the loop if more is left."""
        reader = self.reader
        if reader is None or self.transport is None:
            return
        owner = self.owner
        if self.stash is not None:
            events, self.stash = self.stash, None
        else:
            before = reader.wire_bytes
            try:
                if data is None:
                    events = reader.read(owner.limits.frame_budget)
                else:
                    events = reader.feed_read(data, owner.limits.frame_budget, n)
            except WsProtocolError as exc:
                self.fail(exc.code, exc.reason)
                return
            if self.rl is not None:
                payload_bytes = 0
                for ev in events:
                    payload_bytes += len(ev[1])
                overhead = reader.wire_bytes - before - payload_bytes
                if overhead > 0:
                    self.rl.debit(overhead)  # frame headers and fragments cost bytes too
        rl = self.rl
        for i, (kind, payload) in enumerate(events):
            if self.state != OPEN:
                if kind == wsf.CLOSE and self.state == CLOSING:
                    self._peer_closed(payload)
                continue
            if kind < _CONTROL:  # TEXT or BINARY
                self.msgs_in += 1
                self.bytes_in += len(payload)
                if rl is not None:
                    verdict = rl.take(len(payload), _monotonic())
                    if verdict:
                        owner.on_over_rate(self, verdict, payload)
                        continue
                owner.on_message(self, payload, kind == _TEXT)
                if self.held:
                    self.stash = events[i + 1 :] or None
                    break
            elif kind == wsf.PING:
                if rl is not None:
                    verdict = rl.take(len(payload) + 6, _monotonic())
                    if verdict:
                        owner.on_over_rate(self, verdict, None)
                        continue
                owner.push(self, wsf.build_frame(wsf.OP_PONG, payload))
            elif kind == wsf.PONG:
                self.ping_at = 0.0
            else:  # CLOSE
                self._peer_closed(payload)
        if self.transport is None:
            return
        if self.held or (reader.more and self.state in (OPEN, CLOSING)):
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
            if not self.held:
                owner.loop.call_soon(self._resume)
        elif self.paused:
            self.paused = False
            self.transport.resume_reading()

    def _resume(self) -> None:
        if self.paused and not self.held and self.transport is not None:
            self._pump()

    def hold(self) -> None:
        """Back-pressure: stop handling this client's input after the current message, until release()."""
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            if self.transport is not None and self.state in (OPEN, CLOSING):
                self._pump()

    def _peer_closed(self, payload: bytes) -> None:
        """The peer's close frame: echo it if we had not sent ours, then close the TCP connection."""
        if self.state == OPEN:
            self.close_reason = self.close_reason or "closed"
            self.owner.push(self, wsf.build_frame(wsf.OP_CLOSE, payload[:2]))
            self.close_code_sent = wsf.close_code_of(payload)
        self.state = CLOSED
        self._end()

    # --- output and closing -------------------------------------------------------------------------------

    def send_payload(self, payload: bytes) -> None:
        """One message to this connection only, through its extensions (permessage-deflate)."""
        self.owner.push(self, wsf.encode_frame(self.codec.opcode, payload, self.extensions))

    def send_message(self, payload: bytes, text: bool) -> None:
        """One encoded message to this connection only (a reply, an echo)."""
        op = _OP_TEXT if text else _OP_BINARY
        if self.raw:
            if len(payload) < SPLIT_WRITE:
                self.owner.push(self, _build_frame(op, payload))
            else:  # header and payload go out in one writev, without joining them
                push = self.owner.push
                push(self, wsf.frame_header(op, len(payload)))
                push(self, payload)
        else:
            self.owner.push(self, wsf.encode_frame(op, payload, self.extensions))

    def send_ping(self) -> None:
        self.owner.push(self, wsf.build_frame(wsf.OP_PING, b"fanwire"))

    def close(self, code: int, reason: str, label: str) -> None:
        """Start the closing handshake (an open connection), or drop one still in its handshake."""
        if self.transport is None:
            return
        if self.state == OPEN:
            self.close_reason = label
            self.state = CLOSING
            self.close_code_sent = code
            self.owner.push(self, wsf.build_close(code, reason))
            self.arm_abort()
        elif self.state in (HEAD, HTTP):
            self.close_reason = self.close_reason or label
            self.abort()

    def fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol (or the server failed it): close frame, then close the TCP connection."""
        if self.state == OPEN or self.state == CLOSING:
            if self.state == OPEN:
                self.owner.push(self, wsf.build_close(code, reason))
                self.close_code_sent = code
            self.close_reason = "failed"
            self.state = CLOSED
            self._end()

    def overflow(self, queued: int) -> None:
        """More than ``max_queue`` bytes unsent. An open connection is closed with 1013 (a slow consumer,
        counted); one already closing that still cannot drain is aborted."""
        if self.state == OPEN:
            m = self.owner.metrics
            m.slow_consumers += 1
            m.inc(m.dropped, "slow_consumer")
            self.close(1013, f"slow consumer: {queued} bytes unsent", "slow_consumer")
        elif self.state == CLOSED or self.state == HTTP:
            self.abort()

    def _end(self) -> None:
        """Close the TCP connection once the queued output is written; abort it if that takes too long."""
        self.end_after_write = True
        if self.out is None:
            self.owner.push(self, b"")
        self.arm_abort()

    def arm_abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.timer = self.owner.loop.call_later(self.owner.limits.close_timeout, self.abort)

    def abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.state = CLOSED
            self.transport.abort()

    def close_code(self) -> int:
        return self.close_code_sent
