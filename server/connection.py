"""One client connection: websockets' sans-I/O ``ServerProtocol`` driven from a uvloop ``asyncio.Protocol``.

A thin adapter: bytes from the socket go into the protocol state machine, events come out and are handed
to the worker (handshake, messages) or handled here (fragments, pongs, close); bytes to send are queued in
the hub, which writes them once per loop tick. No task per connection, no await per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidMessage, RequestLineTooLong, SecurityError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import codecs
from .protocol import Policy, Publish, QueryStats, Reply, Session, Subscribe, Unsubscribe, handle_payload
from .wsframe import build_frame

if TYPE_CHECKING:
    from .auth import Grant
    from .ratelimit import RateLimiter
    from .worker import Worker

OP_TEXT = Opcode.TEXT
OP_BINARY = Opcode.BINARY
OP_CONT = Opcode.CONT
OP_PONG = Opcode.PONG
OP_CLOSE = Opcode.CLOSE
OPEN = State.OPEN
CONNECTING = State.CONNECTING

_monotonic = time.monotonic
_time = time.time

ws_logger = logging.getLogger("fanwire.ws")

BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Length: 25\r\n\r\nmalformed HTTP request.\r\n")


class Conn(Session, asyncio.Protocol):
    __slots__ = ("app", "bytes_in", "bytes_out", "closing", "eof", "frag", "frag_text", "grant", "is_open",
                 "last_rx", "msgs_in", "msgs_out", "opened_at", "out", "peer_ip", "ping_at", "policy", "proto",
                 "raw", "rl", "timer", "transport")

    def __init__(self, app: Worker) -> None:
        Session.__init__(self, "", codecs.JSON)
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.proto = app.new_protocol()
        self.out: list[bytes] | None = None
        self.raw = True
        self.closing: str | None = None
        self.eof = False
        self.is_open = False
        self.frag: list[bytes] | None = None
        self.frag_text = False
        self.last_rx = 0.0
        self.ping_at = 0.0
        self.msgs_in = 0
        self.msgs_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened_at = 0.0
        self.peer_ip = ""
        self.timer: asyncio.TimerHandle | None = None
        self.grant: Grant | None = None  # what the client's token allows (auth on)
        self.policy: Policy = app.policy
        self.rl: RateLimiter | None = None  # rate limits on

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_rx = _monotonic()
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.app.on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = _monotonic()
        proto = self.proto
        proto.receive_data(data)
        events = proto.events_received()
        if events:
            try:
                self.handle_events(events)
            except Exception:  # a bug must cost one connection, never the worker
                ws_logger.exception("internal error on connection %s", self.client_id or "(handshake)")
                self.app.metrics.inc(self.app.metrics.errors, "internal_error")
                self.fail(1011, "internal server error")
        self.drain()
        if proto.parser_exc is not None and self.closing is None:
            self.closing = "protocol_error"
            self.arm_abort()

    def handle_events(self, events: list[Any]) -> None:
        for ev in events:
            if type(ev) is Frame:
                op = ev.opcode
                if op is OP_TEXT or op is OP_BINARY:
                    if ev.fin:
                        self.on_message(ev.data, op is OP_TEXT)  # type: ignore[arg-type]  # bytes at run time
                    else:
                        self.frag = [ev.data]  # type: ignore[list-item]
                        self.frag_text = op is OP_TEXT
                elif op is OP_CONT:
                    if self.frag is not None:
                        self.frag.append(ev.data)  # type: ignore[arg-type]
                        if ev.fin:
                            whole = b"".join(self.frag)
                            self.frag = None
                            self.on_message(whole, self.frag_text)
                elif op is OP_PONG:
                    self.ping_at = 0.0
                elif op is OP_CLOSE and self.closing is None:
                    self.closing = "closed"
            elif type(ev) is Request:
                self.app.on_request(self, ev)

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self.drain()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.closing = self.closing or "lost"
        self.out = None
        self.app.on_disconnect(self)
        self.transport = None

    # --- output -------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Move the protocol's pending output (handshake, pongs, close frames, EOF) to the write queue."""
        writes = self.proto.data_to_send()
        if writes:
            push = self.app.hub.push
            for data in writes:
                if data:
                    push(self, data)
                else:
                    if not self.is_open and isinstance(self.proto.handshake_exc, InvalidMessage):
                        push(self, BAD_REQUEST)  # websockets just closes; tell the client why
                        self.app.metrics.inc(self.app.metrics.handshakes_failed, 400)  # type: ignore[arg-type]
                        self.app.metrics.inc(self.app.metrics.refused, "bad_request")
                    elif not self.is_open and isinstance(self.proto.handshake_exc, SecurityError):
                        m = self.app.metrics  # websockets answered 414 or 431 itself
                        too_long = isinstance(self.proto.handshake_exc, RequestLineTooLong)
                        m.inc(m.handshakes_failed, 414 if too_long else 431)  # type: ignore[arg-type]
                        m.inc(m.refused, "too_large")
                    self.eof = True
                    if self.out is None:
                        push(self, b"")

    def send_frame(self, frame: bytes) -> None:
        self.app.hub.push(self, frame)

    def send_payload(self, payload: bytes) -> None:
        """Send one encoded message through the protocol (used when extensions are negotiated)."""
        if self.codec == codecs.JSON:
            self.proto.send_text(payload)
        else:
            self.proto.send_binary(payload)
        self.drain()

    def reply(self, msg: dict[str, Any]) -> None:
        """Send one message to this client, encoded with its codec."""
        if self.closing is not None or not self.is_open:
            return
        try:
            payload = codecs.encode(self.codec, msg)
        except Exception:
            msg = {"type": "error", "code": "bad_message", "detail": "reply not representable in JSON"}
            payload = codecs.encode(self.codec, msg)
        if self.raw:
            self.app.hub.push(self, build_frame(codecs.opcode_for(self.codec), payload))
        else:
            self.send_payload(payload)
        self.msgs_out += 1
        self.bytes_out += len(payload)
        m = self.app.metrics
        mtype = msg["type"]
        m.count_out(mtype, 1, len(payload))
        if mtype == "error":
            m.inc(m.errors, msg["code"])

    # --- input --------------------------------------------------------------------------------------

    def on_message(self, data: bytes, text: bool) -> None:
        app = self.app
        self.msgs_in += 1
        self.bytes_in += len(data)
        if self.rl is not None:
            verdict = self.rl.take(len(data), _monotonic())
            if verdict:
                app.over_rate(self, verdict, data)
                return
        if app.echo:
            app.echo_message(self, data, text)
            return
        if text and self.codec != codecs.JSON and not _valid_utf8(data):
            self.fail(1007, "invalid UTF-8 in a text frame")
            return
        mtype, actions = handle_payload(self, data, int(_time() * 1000), app.max_rooms, self.policy)
        app.metrics.count_in(mtype, len(data))
        for action in actions:
            kind = type(action)
            if kind is Reply:
                msg = action.msg  # type: ignore[attr-defined]
                if text and msg["type"] == "error" and msg["code"] == "bad_encoding" and not _valid_utf8(data):
                    self.fail(1007, "invalid UTF-8 in a text frame")
                    return
                self.reply(msg)
            elif kind is Publish:
                app.publish(self, action)  # type: ignore[arg-type]
            elif kind is Subscribe:
                app.hub.subscribe(self, action.room)  # type: ignore[attr-defined]
            elif kind is Unsubscribe:
                app.hub.unsubscribe(self, action.room)  # type: ignore[attr-defined]
            elif kind is QueryStats:
                app.query_stats(self, action)  # type: ignore[arg-type]

    # --- closing ------------------------------------------------------------------------------------

    def close(self, code: int, reason: str, label: str) -> None:
        """Start the closing handshake (or drop a connection still in its opening handshake)."""
        if self.transport is None:
            return
        if self.proto.state is OPEN:
            self.closing = label
            self.proto.send_close(code, reason)
            self.drain()
            self.arm_abort()
        elif self.proto.state is CONNECTING:
            self.closing = label
            self.transport.close()

    def fail(self, code: int, reason: str) -> None:
        if self.proto.state is OPEN or self.proto.state is CONNECTING:
            self.closing = "failed"
            self.proto.fail(code, reason)
            self.drain()
            self.arm_abort()

    def overflow(self, queued: int) -> None:
        """Slow consumer: too much unsent output. Close with 1013 and count it."""
        m = self.app.metrics
        m.slow_consumers += 1
        m.inc(m.dropped, "slow_consumer")
        self.close(1013, f"slow consumer: {queued} bytes unsent", "slow_consumer")

    def arm_abort(self) -> None:
        if self.timer is None and self.transport is not None:
            self.timer = self.app.loop.call_later(self.app.cfg.close_timeout, self.abort)

    def abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def close_code(self) -> int:
        proto: ServerProtocol = self.proto
        if proto.close_sent is not None:
            return proto.close_sent.code
        if proto.close_rcvd is not None:
            return proto.close_rcvd.code
        return 1006


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
