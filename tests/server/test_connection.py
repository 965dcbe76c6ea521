"""Conn, the asyncio.Protocol of one client, driven by hand: a fake owner (with a real Hub for its output) and a
fake transport, on a real event loop stepped one iteration at a time."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from server import codecs
from server.connection import CLOSED, CLOSING, HEAD, HTTP, OPEN, Conn, Limits
from server.errors import HttpError
from server.http.request import MAX_HEAD, HttpRequest
from server.hub import Hub
from server.metrics import Metrics
from server.protocol import ALLOW_ALL, Policy
from server.ws import handshake

from ..helpers import mask_frame

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class FakeTransport(asyncio.Transport):
    """Records writes and what the connection asks of it."""

    def __init__(self, buffered: int = 0) -> None:
        super().__init__()
        self.data = bytearray()
        self.taken = 0
        self.events: list[str] = []  # pause, resume, close, abort, in order
        self.buffered = buffered
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for d in list_of_data:
            self.data += d

    def take(self) -> bytes:
        """What was written since the last take."""
        out = bytes(self.data[self.taken :])
        self.taken = len(self.data)
        return out

    def pause_reading(self) -> None:
        self.reading = False
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.events.append("resume")

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def is_closing(self) -> bool:
        return "close" in self.events or "abort" in self.events

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


Decide = Callable[[Conn, HttpRequest, bytes], None]


def accept_websocket(conn: Conn, request: HttpRequest, body: bytes) -> None:
    accepted = handshake.accept(request, None)  # websockets' own handshake: the real 101
    conn.upgrade(accepted.response, accepted.subprotocol, accepted.extensions)


def respond_ok(conn: Conn, request: HttpRequest, body: bytes) -> None:
    conn.respond(200, b"ok\n")


def defer(conn: Conn, request: HttpRequest, body: bytes) -> None:
    """An answer that comes later (as /metrics does after gathering the workers' counters)."""


class Owner:
    """A ConnOwner: records every upcall in ``log``; output goes through a real Hub."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits | None = None, max_queue: int = 1 << 20,
                 decide: Decide = accept_websocket) -> None:
        self.loop = loop
        self.limits = Limits() if limits is None else limits
        self.metrics = Metrics()
        self.policy: Policy = ALLOW_ALL
        self.hub: Hub[Conn] = Hub(self.metrics, max_queue)
        self.hub.loop = loop
        self.decide = decide
        self.reply: Callable[[Conn, bytes, bool], None] | None = None
        self.log: list[tuple[str, Any]] = []
        self.closed: list[Conn] = []

    def push(self, conn: Conn, data: bytes) -> None:
        self.hub.push(conn, data)

    def on_connected(self, conn: Conn) -> None:
        self.log.append(("connected", conn.peer_ip))

    def on_request(self, conn: Conn, request: HttpRequest, body: bytes) -> None:
        self.log.append(("request", (request.method, request.target, body)))
        self.decide(conn, request, body)

    def before_body(self, conn: Conn, request: HttpRequest) -> HttpError | None:
        self.log.append(("before_body", (request.method, request.target, b"")))
        if request.target == "/refused":
            return HttpError(401, "no", "unauthorized", json=True)
        return None

    def on_message(self, conn: Conn, payload: bytes, text: bool) -> None:
        self.log.append(("message", (payload, text)))
        if self.reply is not None:
            self.reply(conn, payload, text)

    def on_over_rate(self, conn: Conn, verdict: int, payload: bytes | None) -> None:
        self.log.append(("over_rate", (verdict, payload)))

    def on_closed(self, conn: Conn) -> None:
        self.closed.append(conn)
        self.log.append(("closed", conn.close_reason))

    @property
    def messages(self) -> list[bytes]:
        return [v[0] for k, v in self.log if k == "message"]

    @property
    def requests(self) -> list[tuple[str, str, bytes]]:
        return [v for k, v in self.log if k == "request"]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def step(loop: asyncio.AbstractEventLoop) -> None:
    """Exactly one loop iteration: the callbacks ready now run (not those they schedule)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def run_until(loop: asyncio.AbstractEventLoop, cond: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        loop.run_until_complete(asyncio.sleep(0.002))


def connect(owner: Owner) -> tuple[Conn, FakeTransport]:
    conn = Conn(owner)
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t


def open_conn(owner: Owner) -> tuple[Conn, FakeTransport]:
    """A connection past its handshake, the 101 written and taken."""
    conn, t = connect(owner)
    conn.data_received(UPGRADE)
    step(owner.loop)
    assert t.take().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.state == OPEN
    return conn, t


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse the unmasked FIN frames a server writes."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and not b0 & 0x70 and not b1 & 0x80
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        out.append((b0 & 0x0F, data[pos : pos + n]))
        pos += n
    return out


def close_frame(code: int, reason: bytes = b"") -> tuple[int, bytes]:
    return (CLOSE, struct.pack("!H", code) + reason)


def texts(n: int) -> bytes:
    return b"".join(mask_frame(TEXT, b"m%d" % i) for i in range(n))


def echo(conn: Conn, payload: bytes, text: bool) -> None:
    conn.send_message(b"echo:" + payload, text)


# --- connection_made --------------------------------------------------------------------------------------


def test_connection_made_tells_the_owner_and_arms_the_handshake_timer(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(handshake_timeout=7.0))
    before = loop.time()
    conn, _ = connect(owner)
    assert owner.log == [("connected", "127.0.0.1")]
    assert conn.state == HEAD and conn.peer_ip == "127.0.0.1"
    assert conn.timer is not None and before + 7.0 <= conn.timer.when() <= loop.time() + 7.0


# --- the request head ---------------------------------------------------------------------------------------


def test_the_head_is_parsed_once_and_only_when_complete(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = connect(owner)
    cut = UPGRADE.index(b"\r\n\r\n") + 2  # the blank line split across two reads
    for part in (UPGRADE[:10], UPGRADE[10:cut]):
        conn.data_received(part)
        assert owner.requests == [] and conn.state == HEAD
    conn.data_received(UPGRADE[cut:])
    assert owner.requests == [("GET", "/chat", b"")]
    assert conn.state == OPEN
    step(loop)
    assert t.take().startswith(b"HTTP/1.1 101 ")


def test_nothing_after_the_head_is_parsed_before_the_owner_decides(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[tuple[int, Any]] = []

    def decide(conn: Conn, request: HttpRequest, body: bytes) -> None:
        seen.append((conn.state, conn.reader))  # no reader yet: the frames are only bytes
        accept_websocket(conn, request, body)

    owner = Owner(loop, decide=decide)
    conn, _ = connect(owner)
    conn.data_received(UPGRADE + mask_frame(TEXT, b"one") + mask_frame(BINARY, b"two"))
    assert seen == [(HTTP, None)]
    assert owner.log[1:] == [("request", ("GET", "/chat", b"")), ("message", (b"one", True)),
                             ("message", (b"two", False))]


def test_frames_pipelined_behind_an_upgrade_are_processed_in_order(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    owner.reply = echo
    conn, t = connect(owner)
    conn.data_received(UPGRADE + mask_frame(TEXT, b"a") + mask_frame(PING, b"p") + mask_frame(TEXT, b"b"))
    step(loop)
    head, _, rest = t.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames(rest) == [(TEXT, b"echo:a"), (PONG, b"p"), (TEXT, b"echo:b")]


@pytest.mark.parametrize(("after", "reason"), [
    (mask_frame(TEXT, b'{"type":"chat"}'), "junk"),
    (b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", "pipelined"),
])
def test_bytes_after_an_answered_request_are_discarded_and_counted_once(
        loop: asyncio.AbstractEventLoop, after: bytes, reason: str) -> None:
    owner = Owner(loop, decide=respond_ok)
    conn, t = connect(owner)
    conn.data_received(HEALTHZ + after)
    conn.data_received(after)  # more of the same: still one count for the connection
    assert owner.requests == [("GET", "/healthz", b"")]
    assert owner.messages == []
    assert owner.metrics.http_discarded == {reason: 1}
    assert conn.close_reason == "http_discarded" and conn.state == HTTP and conn.reader is None
    step(loop)
    out = t.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok\n")
    assert t.events == ["close"]  # closed once the answer is written


def test_blank_lines_after_a_request_are_not_counted_as_discarded(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, decide=respond_ok)
    conn, _ = connect(owner)
    conn.data_received(HEALTHZ + b"\r\n")
    assert owner.metrics.http_discarded == {} and conn.close_reason == "http"


def test_a_later_answer_still_discards_what_came_meanwhile(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, decide=defer)
    conn, t = connect(owner)
    conn.data_received(HEALTHZ + mask_frame(TEXT, b"x"))
    conn.data_received(mask_frame(TEXT, b"y"))
    assert owner.messages == [] and owner.metrics.http_discarded == {"junk": 1}
    step(loop)
    assert t.take() == b""  # nothing to say yet
    conn.respond(200, b"later")
    step(loop)
    assert t.take().endswith(b"\r\n\r\nlater") and t.events == ["close"]


def test_a_request_body_is_read_then_the_owner_decides(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(max_body=100), decide=respond_ok)
    conn, _ = connect(owner)
    conn.data_received(b"POST /api HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    assert owner.requests == []
    conn.data_received(b"456")
    assert owner.requests == []
    conn.data_received(b"789GET / HTTP/1.1\r\n\r\n")
    assert owner.requests == [("POST", "/api", b"0123456789")]
    assert owner.metrics.http_discarded == {"pipelined": 1}


def test_a_head_refused_before_its_body_never_has_its_body_read(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(max_body=1 << 20), decide=respond_ok)
    conn, t = connect(owner)
    conn.data_received(b"POST /refused HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    assert owner.requests == [] and conn.state == HTTP and conn.request is None
    step(loop)
    out = t.take()
    assert out.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and out.endswith(b'{"error":{"code":"unauthorized","detail":"no"}}')
    conn.data_received(b"y" * 100_000)  # the rest of the body: discarded, never buffered
    assert owner.requests == [] and conn.head is None


def test_a_head_over_16_kib_is_431(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = connect(owner)
    start = b"GET / HTTP/1.1\r\nX-Pad: "
    conn.data_received(start + b"p" * (MAX_HEAD - len(start)))
    assert conn.state == HEAD  # 16 KiB exactly, no blank line yet: still waiting
    conn.data_received(b"p")
    assert owner.requests == [] and conn.state == HTTP
    assert owner.metrics.refused == {"too_large": 1} and owner.metrics.handshakes_failed == {431: 1}
    conn.data_received(b"more\r\n\r\n")  # never parsed
    assert owner.requests == []
    step(loop)
    assert t.take().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert t.events == ["close"]


def test_a_malformed_head_is_refused_with_its_status(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = connect(owner)
    conn.data_received(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n" + mask_frame(TEXT, b"x"))
    step(loop)
    out = t.take()
    assert out.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert out.endswith(b"\r\n\r\nonly HTTP/1.1 is supported\n")
    assert owner.requests == [] and owner.metrics.handshakes_failed == {505: 1}
    assert t.events == ["close"] and conn.close_reason == "http"


def test_the_handshake_timer_answers_408(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(handshake_timeout=0.02, close_timeout=5.0))
    conn, t = connect(owner)
    conn.data_received(b"GET / HTTP/1.1\r\nHo")  # a slowloris
    run_until(loop, lambda: "close" in t.events)
    assert t.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert owner.metrics.refused == {"handshake_timeout": 1}
    assert owner.metrics.handshakes_failed == {408: 1}
    assert conn.close_reason == "handshake_timeout" and owner.requests == []
    assert t.events == ["close"]


def test_an_unanswered_request_is_aborted_when_the_handshake_timer_fires(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(handshake_timeout=0.02), decide=defer)
    conn, t = connect(owner)
    conn.data_received(HEALTHZ)
    run_until(loop, lambda: bool(t.events))
    assert t.events == ["abort"] and t.take() == b"" and conn.state == CLOSED


def test_an_upgrade_cancels_the_handshake_timer(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(handshake_timeout=0.02))
    conn, t = connect(owner)
    timer = conn.timer
    assert timer is not None
    conn.data_received(UPGRADE)
    assert timer.cancelled() and conn.timer is None
    loop.run_until_complete(asyncio.sleep(0.05))  # past the handshake deadline: nothing happens
    assert t.events == [] and conn.state == OPEN


def test_eof_in_the_middle_of_a_head_is_counted(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, _ = connect(owner)
    conn.data_received(b"GET / HT")
    assert not conn.eof_received()
    assert owner.metrics.refused == {"incomplete_request": 1}


# --- frames: messages and the budget -------------------------------------------------------------------------


def test_messages_reach_the_owner_with_their_kind_and_are_counted(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, _ = open_conn(owner)
    conn.data_received(mask_frame(TEXT, "héllo".encode()) + mask_frame(BINARY, b"\x00\x01")
                       + mask_frame(TEXT, b"fr", fin=False) + mask_frame(CONT, b"ag"))
    assert [v for k, v in owner.log if k == "message"] == [("héllo".encode(), True), (b"\x00\x01", False),
                                                            (b"frag", True)]
    assert conn.msgs_in == 3 and conn.bytes_in == 6 + 2 + 4


def test_the_frame_budget_yields_the_loop_and_pauses_reading(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(frame_budget=4))
    conn, t = open_conn(owner)
    conn.data_received(texts(10))
    assert owner.messages == [b"m0", b"m1", b"m2", b"m3"]
    assert t.events == ["pause"] and conn.paused
    step(loop)
    assert owner.messages == [b"m%d" % i for i in range(8)]
    assert t.events == ["pause"]
    step(loop)
    assert owner.messages == [b"m%d" % i for i in range(10)]
    assert t.events == ["pause", "resume"] and not conn.paused
    step(loop)
    assert len(owner.messages) == 10 and t.events == ["pause", "resume"]


def test_within_the_budget_reading_is_never_paused(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(frame_budget=4))
    conn, t = open_conn(owner)
    conn.data_received(texts(4))
    conn.data_received(texts(3) + mask_frame(TEXT, b"partial")[:5])
    assert len(owner.messages) == 7 and t.events == []


def test_hold_stashes_what_follows_until_release(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)

    def hold_on_m2(conn: Conn, payload: bytes, text: bool) -> None:
        if payload == b"m2":
            conn.hold()
        conn.send_message(b"re:" + payload, True)

    owner.reply = hold_on_m2
    conn, t = open_conn(owner)
    conn.data_received(texts(4) + mask_frame(PING, b"p") + mask_frame(TEXT, b"m4") + mask_frame(TEXT, b"m5"))
    assert owner.messages == [b"m0", b"m1", b"m2"]
    assert t.events == ["pause"] and conn.held
    step(loop)
    step(loop)
    assert owner.messages == [b"m0", b"m1", b"m2"]  # held: nothing more, however long
    step(loop)
    assert frames(t.take()) == [(TEXT, b"re:m0"), (TEXT, b"re:m1"), (TEXT, b"re:m2")]  # no pong yet
    conn.release()
    assert owner.messages == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert t.events == ["pause", "resume"] and not conn.held
    step(loop)
    assert frames(t.take()) == [(TEXT, b"re:m3"), (PONG, b"p"), (TEXT, b"re:m4"), (TEXT, b"re:m5")]


def test_hold_with_the_budget_spent_resumes_the_budget_on_release(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(frame_budget=3))
    owner.reply = lambda conn, payload, text: conn.hold() if payload == b"m1" else None
    conn, t = open_conn(owner)
    conn.data_received(texts(7))
    assert owner.messages == [b"m0", b"m1"]
    step(loop)
    assert owner.messages == [b"m0", b"m1"]  # no budget callback runs while held
    conn.release()
    assert owner.messages == [b"m0", b"m1", b"m2"]  # the stash, then the rest on later iterations
    run_until(loop, lambda: len(owner.messages) == 7)
    assert owner.messages == [b"m%d" % i for i in range(7)]
    assert t.events == ["pause", "resume"]


def test_release_without_hold_does_nothing(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = open_conn(owner)
    conn.release()
    assert t.events == [] and owner.messages == []


def test_pongs_leave_in_order_with_the_replies(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    owner.reply = echo
    conn, t = open_conn(owner)
    conn.data_received(mask_frame(PING, b"1") + mask_frame(TEXT, b"a", fin=False) + mask_frame(PING, b"2")
                       + mask_frame(CONT, b"b") + mask_frame(PING, b""))
    assert t.take() == b""  # nothing before the end of the tick
    step(loop)
    assert frames(t.take()) == [(PONG, b"1"), (PONG, b"2"), (TEXT, b"echo:ab"), (PONG, b"")]


def test_a_pong_ends_the_wait_for_it(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = open_conn(owner)
    conn.ping_at = 123.0
    conn.data_received(mask_frame(PONG, b"fanwire"))
    assert conn.ping_at == 0.0 and owner.messages == []
    step(loop)
    assert t.take() == b""


# --- closing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "echoed", "code"), [
    (struct.pack("!H", 1000) + b"bye", struct.pack("!H", 1000), 1000),
    (struct.pack("!H", 4321), struct.pack("!H", 4321), 4321),
    (b"", b"", 1005),
])
def test_the_peers_close_is_echoed_then_the_transport_closed(loop: asyncio.AbstractEventLoop, payload: bytes,
                                                             echoed: bytes, code: int) -> None:
    owner = Owner(loop)
    owner.reply = echo
    conn, t = open_conn(owner)
    conn.data_received(mask_frame(TEXT, b"last") + mask_frame(CLOSE, payload) + mask_frame(TEXT, b"after"))
    assert owner.messages == [b"last"]
    assert conn.state == CLOSED and conn.close_reason == "closed" and conn.close_code() == code
    assert t.events == []
    step(loop)
    assert frames(t.take()) == [(TEXT, b"echo:last"), (CLOSE, echoed)]
    assert t.events == ["close"]


def test_a_server_close_then_the_peers_close(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(close_timeout=5.0))
    owner.reply = echo
    conn, t = open_conn(owner)
    conn.close(1001, "going away", "shutdown")
    assert conn.state == CLOSING and conn.close_reason == "shutdown" and conn.close_code() == 1001
    assert conn.timer is not None and conn.timer.when() >= loop.time() + 4.9  # the abort, if it never answers
    step(loop)
    assert frames(t.take()) == [close_frame(1001, b"going away")]
    assert t.events == []
    conn.data_received(mask_frame(TEXT, b"ignored") + mask_frame(PING, b"unanswered"))
    assert owner.messages == []
    conn.data_received(mask_frame(CLOSE, struct.pack("!H", 1001)))
    assert conn.state == CLOSED and conn.close_code() == 1001
    step(loop)
    assert t.take() == b"" and t.events == ["close"]  # no second close frame, no pong


def test_close_is_sent_once(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = open_conn(owner)
    conn.close(1000, "", "a")
    conn.close(1011, "again", "b")
    step(loop)
    assert frames(t.take()) == [close_frame(1000)]
    assert conn.close_reason == "a" and conn.close_code() == 1000


def test_close_during_the_handshake_aborts(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = connect(owner)
    conn.close(1001, "stopping", "shutdown")
    assert t.events == ["abort"] and conn.state == CLOSED and conn.close_reason == "shutdown"


def test_a_closing_connection_that_never_answers_is_aborted(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(close_timeout=0.02))
    conn, t = open_conn(owner)
    conn.close(1000, "", "done")
    run_until(loop, lambda: "abort" in t.events)
    assert t.events == ["abort"] and conn.state == CLOSED


def test_eof_while_open_stops_serving_and_arms_the_abort(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(close_timeout=0.02))
    conn, t = open_conn(owner)
    assert not conn.eof_received()  # falsy: the transport closes itself once its output drains
    assert conn.state == CLOSED and conn.close_reason == "eof"
    assert conn.timer is not None
    conn.data_received(mask_frame(TEXT, b"after eof"))
    assert owner.messages == []
    run_until(loop, lambda: "abort" in t.events)
    assert t.events == ["abort"]


@pytest.mark.parametrize(("wire", "code"), [
    (mask_frame(TEXT, b"x", masked=False), 1002),
    (mask_frame(CONT, b"x"), 1002),
    (mask_frame(PING, b"x" * 126), 1002),
    (mask_frame(0x3, b""), 1002),
    (mask_frame(CLOSE, struct.pack("!H", 1005)), 1002),
    (mask_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    (mask_frame(BINARY, b"", length_override=1001)[:8], 1009),
    (mask_frame(TEXT, b"a" * 600, fin=False) + mask_frame(CONT, b"b" * 401), 1009),
    (b"".join(mask_frame(TEXT if i == 0 else CONT, b"f", fin=False) for i in range(9)), 1009),
])
def test_protocol_errors_send_a_close_with_their_code(loop: asyncio.AbstractEventLoop, wire: bytes,
                                                      code: int) -> None:
    owner = Owner(loop, Limits(max_message_size=1000, max_fragments=8))
    conn, t = open_conn(owner)
    conn.data_received(wire + mask_frame(TEXT, b"never read"))
    assert conn.state == CLOSED and conn.close_reason == "failed" and conn.close_code() == code
    conn.data_received(mask_frame(TEXT, b"nor this"))
    assert owner.messages == []
    step(loop)
    out = frames(t.take())
    assert len(out) == 1 and out[0][0] == CLOSE and struct.unpack("!H", out[0][1][:2]) == (code,)
    assert t.events == ["close"]


# --- overflow -------------------------------------------------------------------------------------------------


def test_an_open_connection_that_overflows_is_closed_with_1013(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, max_queue=1000)
    conn, t = open_conn(owner)
    owner.hub.add(conn, ["lobby"])
    t.buffered = 5000  # the peer stopped reading
    assert owner.hub.deliver("lobby", b'{"type":"chat"}', "chat") == 1
    step(loop)  # the flush writes the chat and finds 5000 bytes unsent
    assert conn.state == CLOSING and conn.close_reason == "slow_consumer" and conn.close_code() == 1013
    assert owner.metrics.slow_consumers == 1 and owner.metrics.dropped == {"slow_consumer": 1}
    assert owner.hub.deliver("lobby", b'{"type":"chat"}', "chat") == 0  # skipped from now on
    assert owner.metrics.dropped == {"slow_consumer": 2}
    step(loop)
    out = frames(t.take())
    assert out[0] == (TEXT, b'{"type":"chat"}')
    assert out[1][0] == CLOSE and out[1][1].startswith(struct.pack("!H", 1013) + b"slow consumer: 5000 bytes")
    assert len(out) == 2 and "abort" not in t.events  # closing: given close_timeout to drain


def test_overflow_while_closing_leaves_it_to_the_close_timeout(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(close_timeout=0.02))
    conn, t = open_conn(owner)
    conn.close(1000, "", "done")
    conn.overflow(10_000)
    assert t.events == [] and owner.metrics.slow_consumers == 0
    run_until(loop, lambda: "abort" in t.events)


@pytest.mark.parametrize("how", ["peer_close", "eof", "http"])
def test_overflow_once_closed_aborts(loop: asyncio.AbstractEventLoop, how: str) -> None:
    owner = Owner(loop, decide=respond_ok if how == "http" else accept_websocket)
    conn, t = connect(owner)
    if how == "http":
        conn.data_received(HEALTHZ)
        assert conn.state == HTTP
    else:
        conn.data_received(UPGRADE)
        if how == "eof":
            conn.eof_received()
        else:
            conn.data_received(mask_frame(CLOSE, b""))
        assert conn.state == CLOSED
    conn.overflow(1 << 30)
    assert t.events == ["abort"] and conn.state == CLOSED
    assert owner.metrics.slow_consumers == 0


# --- connection_lost ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["head", "http", "open", "closing", "closed"])
def test_connection_lost_tells_the_owner_exactly_once(loop: asyncio.AbstractEventLoop, state: str) -> None:
    owner = Owner(loop, decide=defer if state == "http" else accept_websocket)
    conn, t = connect(owner)
    if state != "head":
        conn.data_received(HEALTHZ if state == "http" else UPGRADE)
    if state == "closing":
        conn.close(1000, "", "bye")
    elif state == "closed":
        conn.data_received(mask_frame(CLOSE, struct.pack("!H", 1000)))
    timer = conn.timer
    assert (timer is None) == (state == "open")  # open: no handshake timer, no abort timer
    conn.connection_lost(None)
    assert owner.closed == [conn]
    assert conn.timer is None and (timer is None or timer.cancelled())
    assert conn.state == CLOSED and conn.transport is None and conn.out is None
    expected = {"head": "lost", "http": "lost", "open": "lost", "closing": "bye", "closed": "closed"}[state]
    assert conn.close_reason == expected
    # nothing that comes later reaches the owner, or a transport
    conn.data_received(mask_frame(TEXT, b"ghost"))
    conn.close(1000, "", "late")
    conn.overflow(1 << 30)
    conn.release()
    step(loop)
    assert owner.messages == [] and owner.closed == [conn] and "abort" not in t.events


def test_a_lost_connection_with_queued_output_writes_nothing(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    owner.reply = echo
    conn, t = open_conn(owner)
    conn.data_received(mask_frame(TEXT, b"x"))
    conn.connection_lost(ConnectionResetError())
    step(loop)
    assert t.take() == b"" and owner.closed == [conn] and conn.close_code() == 1006


def test_an_upgrade_picks_the_codec_of_the_subprotocol(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, _ = connect(owner)
    conn.data_received(UPGRADE[:-2] + b"Sec-WebSocket-Protocol: fanwire.msgpack\r\n\r\n")
    assert conn.codec is codecs.MSGPACK and conn.raw and conn.state == OPEN


def test_a_close_in_the_stash_is_answered_on_release(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    owner.reply = lambda conn, payload, text: conn.hold()
    conn, t = open_conn(owner)
    conn.data_received(mask_frame(TEXT, b"m0") + mask_frame(PING, b"p") + mask_frame(CLOSE, struct.pack("!H", 1000))
                       + mask_frame(TEXT, b"after"))
    assert conn.state == OPEN and owner.messages == [b"m0"]
    conn.release()
    assert conn.state == CLOSED and owner.messages == [b"m0"]
    step(loop)
    assert frames(t.take()) == [(PONG, b"p"), close_frame(1000)]
    assert t.events == ["pause", "resume", "close"]


def test_respond_and_upgrade_only_apply_before_the_websocket_opens(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = open_conn(owner)
    conn.respond(200, b"too late")
    conn.upgrade(b"HTTP/1.1 101 again\r\n\r\n", None, [])
    step(loop)
    assert t.take() == b"" and conn.state == OPEN and t.events == []


# --- reading into the shared receive buffer (asyncio.BufferedProtocol) -------------------------------------------


def receive(conn: Conn, data: bytes) -> None:
    """What the transport does: read into the buffer the connection hands out, then say how much came."""
    buf = conn.get_buffer(-1)
    assert len(buf) >= len(data)
    buf[: len(data)] = data
    conn.buffer_updated(len(data))


def test_the_receive_buffer_is_shared_and_reused_safely(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    owner.reply = echo
    a, ta = open_conn(owner)
    b, tb = open_conn(owner)
    assert a.get_buffer(-1).obj is b.get_buffer(-1).obj  # one buffer for every connection: none when idle
    big = mask_frame(BINARY, b"B" * 5000)
    receive(a, mask_frame(TEXT, b"one") + big[:100])  # a partial frame: kept by a's reader, not the buffer
    receive(b, mask_frame(TEXT, b"two"))  # b's read overwrites the shared buffer
    receive(a, big[100:])
    assert owner.messages == [b"one", b"two", b"B" * 5000]
    step(loop)
    assert frames(ta.take()) == [(TEXT, b"echo:one"), (BINARY, b"echo:" + b"B" * 5000)]
    assert frames(tb.take()) == [(TEXT, b"echo:two")]


def test_a_handshake_read_into_the_shared_buffer_opens_the_connection(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, _ = connect(owner)
    receive(conn, UPGRADE + mask_frame(TEXT, b"first"))
    assert conn.state == OPEN and owner.messages == [b"first"]


def test_the_budget_holds_for_reads_into_the_shared_buffer(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop, Limits(frame_budget=4))
    conn, t = open_conn(owner)
    receive(conn, texts(10))
    assert owner.messages == [b"m0", b"m1", b"m2", b"m3"] and t.events == ["pause"]
    receive(conn, mask_frame(TEXT, b"late"))  # arrives while paused (a TLS layer may still deliver): queued
    run_until(loop, lambda: len(owner.messages) == 11)
    assert owner.messages == [b"m%d" % i for i in range(10)] + [b"late"]
    assert t.events == ["pause", "resume"]


def test_a_large_message_goes_out_as_its_header_and_itself(loop: asyncio.AbstractEventLoop) -> None:
    owner = Owner(loop)
    conn, t = open_conn(owner)
    payload = b"p" * 70_000
    conn.send_message(payload, False)
    assert conn.out is not None and conn.out[-1] is payload  # not copied into a joined frame
    step(loop)
    assert frames(t.take()) == [(BINARY, payload)]
