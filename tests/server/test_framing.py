"""RFC 6455 framing rules in the normal (chat) mode, seen from a raw socket.

The same rules Autobahn|Testsuite checks in echo mode (``make conformance``): control frames interleaved
with fragmented messages, the order of replies, the closing handshake, UTF-8 across fragments, and the
protocol errors that must close with 1002. Each client here is a raw socket, so the test decides exactly
which frames reach the server in one read (one ``sendall`` of a few hundred bytes on loopback) and sees
every frame the server sends, pongs and close frames included.

The ordering rule: every reply leaves in the order of the frames that caused it. A pong answers its ping
and a chat ``pong`` message answers its ``ping`` message; if the ping frame arrives before the last
fragment of a message, its pong leaves before that message's reply, whether the frames came in one read
or several, with or without permessage-deflate.

Regressions these guard against (the connection built on websockets' sans-I/O ``ServerProtocol``, before
fanwire read frames itself, failed the tests that put a ping or a close in one read with data frames):
websockets answered every ping and close of a read while parsing it, before fanwire answered the
messages of that read through its own write queue, so pongs left after the replies of the same read
without extensions and before them with permessage-deflate; with permessage-deflate a message read
together with a close got no reply; and a close between fragments was failed with 1002 (Autobahn 7.1.5).
"""

from __future__ import annotations

import json
import socket
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from ..helpers import HANDSHAKE, ServerProcess, T, mask_frame

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

Event = tuple[Any, ...]


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    with ServerProcess(workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def deflate() -> Iterator[ServerProcess]:
    with ServerProcess(workers=1, extra_args=["--compression"]) as s:
        yield s


@pytest.fixture(params=["plain", "deflate"])
def srv(request: pytest.FixtureRequest) -> ServerProcess:
    """The chat server without extensions (pre-built frames) and with permessage-deflate."""
    server: ServerProcess = request.getfixturevalue(request.param)
    return server


class Peer:
    """A raw WebSocket client: writes masked frames exactly as given, reads every server frame.

    With ``deflate`` it offers permessage-deflate, checks that the server accepted it, and inflates
    compressed messages. The welcome message is read on connect.
    """

    def __init__(self, port: int, deflate: bool = False, codec: str = "json") -> None:
        extra = ""
        if deflate:
            extra += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        if codec == "msgpack":
            extra += "Sec-WebSocket-Protocol: fanwire.msgpack\r\n"
        self.codec = codec
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T(5))
        self.sock.sendall(HANDSHAKE.format(path="/", extra=extra).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during handshake: {data!r}")
            data += chunk
        head, _, self.buf = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accepted = b"permessage-deflate" in head.lower()
        assert accepted == deflate, head
        self.inflater = zlib.decompressobj(-15) if deflate else None
        first = self.next_event()
        assert first[0] == "message" and first[1]["type"] == "welcome", first

    def close(self) -> None:
        self.sock.close()

    def send(self, *frames: bytes) -> None:
        """All these frames in one write: on loopback, the server reads them in one go."""
        self.sock.sendall(b"".join(frames))

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, rsv1, payload) of the next frame; server frames are never masked."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(pos + n)
        payload, self.buf = self.buf[pos : pos + n], self.buf[pos + n :]
        assert b0 & 0x80, "the server sent a fragmented frame"
        return b0 & 0x0F, bool(b0 & 0x40), payload

    def next_event(self) -> Event:
        """("message", dict) | ("pong", payload) | ("close", code or None, reason) | ("eof",)."""
        while True:
            try:
                op, rsv1, payload = self.read_frame()
            except (EOFError, ConnectionResetError):
                return ("eof",)
            if op in (TEXT, BINARY):
                if rsv1:
                    assert self.inflater is not None, "compressed frame without permessage-deflate"
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                msg = json.loads(payload) if op == TEXT else msgpack.unpackb(payload)
                return ("message", msg)
            assert not rsv1, f"RSV1 on a control frame (opcode {op})"
            if op == PONG:
                return ("pong", payload)
            if op == CLOSE:
                if len(payload) >= 2:
                    return ("close", struct.unpack("!H", payload[:2])[0], payload[2:].decode())
                return ("close", None, "")
            if op == PING:  # a heartbeat: not what the tests look at
                continue
            raise AssertionError(f"unexpected opcode {op}")

    def events(self, n: int, timeout: float = 5.0) -> list[Event]:
        """The next ``n`` events, simplified: chat replies become ("reply", id) or ("error", code)."""
        self.sock.settimeout(T(timeout))
        out = []
        for _ in range(n):
            ev = self.next_event()
            if ev[0] == "message":
                msg = ev[1]
                ev = ("error", msg.get("code")) if msg["type"] == "error" else ("reply", msg.get("id"))
            out.append(ev)
            if ev[0] == "eof":
                break
        return out

    def until_close(self, timeout: float = 5.0) -> tuple[list[Event], Event | None, bool]:
        """Events before the server's close frame, the close event (None if the connection just ended),
        and whether the server then closed the TCP connection."""
        self.sock.settimeout(T(timeout))
        before: list[Event] = []
        while True:
            ev = self.events(1, timeout)[0]
            if ev[0] == "eof":
                return before, None, True
            if ev[0] == "close":
                break
            before.append(ev)
        try:
            eof = self.next_event() == ("eof",)
        except TimeoutError:
            eof = False
        return before, ev, eof


def ping_msg(mid: int, extra: str = "") -> bytes:
    """A chat-protocol ping (its reply is a ``pong`` message with the same id, to this client only)."""
    return f'{{"type":"ping","id":{mid}{extra}}}'.encode()


def fragments(payload: bytes, n: int, opcode: int = TEXT) -> list[bytes]:
    """``payload`` as ``n`` masked frames: a start frame and continuations, the last one final."""
    size = -(-len(payload) // n)
    parts = [payload[i * size : (i + 1) * size] for i in range(n)]
    return [mask_frame(opcode if i == 0 else CONT, p, fin=i == n - 1) for i, p in enumerate(parts)]


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    return mask_frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


@pytest.fixture
def connect(srv: ServerProcess) -> Iterator[Any]:
    """Connect raw peers to ``srv`` (deflate offered when ``srv`` is the compression server)."""
    peers: list[Peer] = []
    deflate_on = "--compression" in srv.extra_args

    def make(codec: str = "json") -> Peer:
        p = Peer(srv.port, deflate=deflate_on, codec=codec)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


# --- control frames interleaved with (fragmented) messages: the order of replies ------------------------

def test_ping_between_fragments_in_separate_reads(connect: Any) -> None:
    """The pong answers at once, the message's reply only when its last fragment arrives."""
    peer = connect()
    first, middle, last = fragments(ping_msg(1), 3)
    peer.send(first)
    peer.send(mask_frame(PING, b"p1"))
    assert peer.events(1) == [("pong", b"p1")]
    peer.send(middle)
    peer.send(mask_frame(PING, b"p2"))
    assert peer.events(1) == [("pong", b"p2")]
    peer.send(last)
    assert peer.events(1) == [("reply", 1)]


def test_ping_between_fragments_in_one_read(connect: Any) -> None:
    """Autobahn 5.6 in chat mode: the ping comes before the last fragment, so its pong comes first."""
    peer = connect()
    first, last = fragments(ping_msg(1), 2)
    peer.send(first, mask_frame(PING, b"ping payload"), last)
    assert peer.events(2) == [("pong", b"ping payload"), ("reply", 1)]


def test_ping_before_a_message_in_one_read(connect: Any) -> None:
    peer = connect()
    peer.send(mask_frame(PING, b"first"), mask_frame(TEXT, ping_msg(1)))
    assert peer.events(2) == [("pong", b"first"), ("reply", 1)]


def test_ping_after_a_message_in_one_read(connect: Any) -> None:
    """The mirror image (the pong must not overtake the reply)."""
    peer = connect()
    peer.send(mask_frame(TEXT, ping_msg(1)), mask_frame(PING, b"second"))
    assert peer.events(2) == [("reply", 1), ("pong", b"second")]


def test_pings_and_messages_interleaved_in_one_read(connect: Any) -> None:
    """Autobahn 5.19/5.20 generalised: every reply in the order of the frames that caused it."""
    peer = connect()
    a1, a2, a3 = fragments(ping_msg(2), 3)
    peer.send(mask_frame(TEXT, ping_msg(1)), mask_frame(PING, b"a"), a1, mask_frame(PING, b"b"), a2,
              mask_frame(PING, b"c"), a3, mask_frame(TEXT, ping_msg(3)), mask_frame(PING, b"d"))
    assert peer.events(7) == [("reply", 1), ("pong", b"a"), ("pong", b"b"), ("pong", b"c"), ("reply", 2),
                              ("reply", 3), ("pong", b"d")]


def test_unsolicited_pong_between_fragments_is_ignored(connect: Any) -> None:
    peer = connect()
    first, last = fragments(ping_msg(1), 2)
    peer.send(first, mask_frame(PONG, b"unsolicited"), last)
    assert peer.events(1) == [("reply", 1)]
    peer.send(mask_frame(PING, b"still here"))
    assert peer.events(1) == [("pong", b"still here")]


def test_binary_fragments_with_msgpack_and_a_ping(connect: Any) -> None:
    peer = connect("msgpack")
    first, last = fragments(msgpack.packb({"type": "ping", "id": 7}), 2, opcode=BINARY)
    peer.send(first)
    peer.send(mask_frame(PING, b"mp"))
    assert peer.events(1) == [("pong", b"mp")]
    peer.send(last)
    assert peer.events(1) == [("reply", 7)]


# --- the closing handshake ---------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"), [(1000, b"bye"), (1001, b""), (4000, b"app code"),
                                               (3999, "caf\u00e9".encode())])
def test_close_is_answered_with_its_code_then_tcp_closes(connect: Any, code: int, reason: bytes) -> None:
    """RFC 6455 5.5.1: the answer to a close frame is a close frame, typically with the same code."""
    peer = connect()
    peer.send(close_frame(code, reason))
    before, close, eof = peer.until_close()
    assert before == []
    assert close is not None and close[1] == code, close
    assert eof, "the server must close the TCP connection after the closing handshake"


def test_empty_close_is_answered_without_a_code(connect: Any) -> None:
    """An empty close frame carries no code (1005 is never sent): the answer carries none either."""
    peer = connect()
    peer.send(close_frame(None))
    before, close, eof = peer.until_close()
    assert (before, close, eof) == ([], ("close", None, ""), True)


def test_message_then_close_in_one_read(connect: Any) -> None:
    """The reply to a message read before the close frame leaves before the server's close frame."""
    peer = connect()
    peer.send(mask_frame(TEXT, ping_msg(1)), close_frame(1000))
    before, close, eof = peer.until_close()
    assert (before, close, eof) == ([("reply", 1)], ("close", 1000, ""), True)


def test_ping_then_close_in_one_read(connect: Any) -> None:
    peer = connect()
    peer.send(mask_frame(PING, b"last"), close_frame(1000))
    before, close, eof = peer.until_close()
    assert (before, close, eof) == ([("pong", b"last")], ("close", 1000, ""), True)


def test_frames_after_the_close_are_ignored(connect: Any) -> None:
    peer = connect()
    peer.send(close_frame(1000), mask_frame(TEXT, ping_msg(1)), mask_frame(PING, b"late"))
    before, close, eof = peer.until_close()
    assert (before, close, eof) == ([], ("close", 1000, ""), True)


def test_close_between_fragments_is_a_normal_close(connect: Any) -> None:
    """Autobahn 7.1.5: the unfinished message is dropped and the close is answered normally."""
    peer = connect()
    first, last = fragments(ping_msg(1), 2)
    peer.send(first, close_frame(1000), last)
    before, close, eof = peer.until_close()
    assert (before, close, eof) == ([], ("close", 1000, ""), True)


@pytest.mark.parametrize(("payload", "code"), [
    (b"\x03", 1002),                                  # one byte: no room for a code
    (struct.pack("!H", 999), 1002),                   # below the range
    (struct.pack("!H", 1005), 1002),                  # reserved: never on the wire
    (struct.pack("!H", 1015), 1002),
    (struct.pack("!H", 2000), 1002),                  # reserved for future RFCs
    (struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd", 1007),  # reason cut inside a character
])
def test_invalid_close_frames(connect: Any, payload: bytes, code: int) -> None:
    peer = connect()
    peer.send(mask_frame(CLOSE, payload))
    before, close, eof = peer.until_close()
    assert before == [] and close is not None and close[1] == code and eof


# --- UTF-8 across fragments ------------------------------------------------------------------------------

def test_character_split_across_fragments_is_valid(connect: Any) -> None:
    peer = connect()
    payload = ping_msg(1, ',"ts":"\u20ac and \U0001f600"')
    cut = payload.index("\U0001f600".encode()) + 2  # inside the 4-byte character
    cut_euro = payload.index("\u20ac".encode()) + 1
    peer.send(mask_frame(TEXT, payload[:cut_euro], fin=False), mask_frame(CONT, payload[cut_euro:cut], fin=False),
              mask_frame(CONT, payload[cut:]))
    assert peer.events(1) == [("reply", 1)]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("split_reads", [False, True])
def test_invalid_utf8_across_fragments_closes_1007(connect: Any, codec: str, split_reads: bool) -> None:
    """Each fragment alone could start or end a valid text; together they are not UTF-8."""
    peer = connect(codec)
    frames = [mask_frame(TEXT, b'{"type":"ping","id":1,"ts":"\xe2\x82', fin=False),  # a cut euro sign...
              mask_frame(PING, b"between"),
              mask_frame(CONT, b'\x28"}')]                                             # ...not continued
    if split_reads:
        peer.send(frames[0])
        peer.send(frames[1])
        assert peer.events(1) == [("pong", b"between")]
        peer.send(frames[2])
    else:
        peer.send(*frames)
    before, close, eof = peer.until_close()
    assert [e for e in before if e[0] != "pong"] == [], "no reply to an invalid message"
    assert close is not None and close[1] == 1007 and eof


def test_invalid_utf8_in_a_middle_fragment_closes_1007(connect: Any) -> None:
    peer = connect()
    peer.send(mask_frame(TEXT, b'{"type":"ping",', fin=False), mask_frame(CONT, b'"ts":"\xff', fin=False),
              mask_frame(CONT, b'"}'))
    before, close, eof = peer.until_close()
    assert before == [] and close is not None and close[1] == 1007 and eof


# --- protocol errors: 1002, and nothing else after the bad frame -------------------------------------------

@pytest.mark.parametrize(("frames", "why"), [
    ([mask_frame(CONT, b'{"type":"ping"}')], "continuation without a start"),
    ([mask_frame(CONT, b"x", fin=False), mask_frame(CONT, b"y")], "continuations without a start"),
    ([mask_frame(TEXT, b"{", fin=False), mask_frame(TEXT, b"}")], "new message inside a fragmented one"),
    ([mask_frame(PING, b"p" * 126)], "ping over 125 bytes"),
    ([mask_frame(PONG, b"p" * 126)], "pong over 125 bytes"),
    ([mask_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124)], "close over 125 bytes"),
    ([mask_frame(PING, b"p", fin=False), mask_frame(CONT, b"q")], "fragmented ping"),
    ([mask_frame(TEXT, b"{", fin=False), mask_frame(PING, b"p", fin=False)], "fragmented ping inside a message"),
    ([mask_frame(CLOSE, struct.pack("!H", 1000), fin=False)], "fragmented close"),
    ([mask_frame(TEXT, ping_msg(1), masked=False)], "unmasked client frame"),
])
def test_protocol_errors_close_1002(connect: Any, frames: list[bytes], why: str) -> None:
    peer = connect()
    peer.send(*frames)
    before, close, eof = peer.until_close()
    assert before == [], f"{why}: nothing but the close frame: {before}"
    assert close is not None and close[1] == 1002, f"{why}: {close}"
    assert eof, why


def test_protocol_error_ends_the_replies(connect: Any) -> None:
    """The frames before a bad frame in the same read are handled, in order (as they would be had they come
    alone: Autobahn 3.2, 4.1.3, 5.15); nothing after it is; then the 1002 close."""
    peer = connect()
    peer.send(mask_frame(TEXT, ping_msg(1)), mask_frame(PING, b"before"), mask_frame(CONT, b"stray"),
              mask_frame(TEXT, ping_msg(2)), mask_frame(PING, b"too late"))
    before, close, eof = peer.until_close()
    assert before == [("reply", 1), ("pong", b"before")]
    assert close is not None and close[1] == 1002 and eof
