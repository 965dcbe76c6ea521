"""Client-side WebSocket bits the load generator needs, and nothing more. Pure, no I/O.

- :func:`handshake_request` / :func:`expected_accept`: the HTTP upgrade request and the answer to check.
- :func:`masked_frame`: one final, masked client frame (RFC 6455 requires clients to mask). Frames whose
  payload does not change are built once and written many times.
- :class:`Expect`: what a valid reply looks like (its opcode, its exact length when known, and tokens of
  ours that must appear near the start of its payload: the pong of *our* ping, the echo of *our* message).
- :class:`FrameCounter`: counts the messages in a stream of server frames from their headers, skipping
  payloads without copying or decoding them; with an :class:`Expect` it looks at the first bytes of each
  payload and counts only the replies that match, the others in :attr:`FrameCounter.bad` (an error
  frame is not a round trip); control frames (ping, close) are handed back.
- :class:`FrameReader`: the same, but returns each complete data frame's payload position in a buffer,
  for scenarios that read a timestamp out of the payload.

Server frames are never masked, and neither fanwire nor websockets fragments the messages the harness
provokes, so a message is one frame with FIN set; a fragment would be counted as an unexpected reply.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the C extension ships with websockets wheels
    from websockets.utils import apply_mask as _apply_mask

__all__ = [
    "GUID",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Expect",
    "FrameCounter",
    "FrameReader",
    "expected_accept",
    "frame_header",
    "handshake_request",
    "masked_frame",
    "new_key",
    "server_frame",
]

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack


def new_key() -> bytes:
    """A Sec-WebSocket-Key: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16))


def expected_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake_request(host: str, port: int, key: bytes, subprotocol: str | None = None,
                      path: str = "/") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final client frame carrying ``payload``, masked with the 4-byte ``mask``."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = _H16(b0, 0x80 | 126, n)
    else:
        head = _H64(b0, 0x80 | 127, n)
    return head + mask + _apply_mask(payload, mask)


def frame_header(data: bytes) -> tuple[int, int, int] | None:
    """``(byte 0, header length, payload length)`` of the unmasked frame at the start of ``data``; None
    while its header is not all there."""
    n = len(data)
    if n < 2:
        return None
    ln = data[1] & 0x7F
    if ln < 126:
        return data[0], 2, ln
    if ln == 126:
        return (data[0], 4, (data[2] << 8) | data[3]) if n >= 4 else None
    return (data[0], 10, int.from_bytes(data[2:10], "big")) if n >= 10 else None


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final unmasked frame, as a server sends it (for tests and the close echo)."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _H16(b0, 126, n) + payload
    return _H64(b0, 127, n) + payload


@dataclass(frozen=True, slots=True)
class Expect:
    """What a valid reply looks like: a final data frame (of ``opcode`` when given, of exactly ``length``
    payload bytes when given) whose first ``head`` payload bytes contain every one of ``tokens``.

    The tokens are ours: a random marker in the ping that the pong must echo, the type of the reply
    (``pong``), the marker at the start of an echoed message. Only the head is looked at, so checking a
    16 KiB reply costs what checking a 64 B one does.
    """

    tokens: tuple[bytes, ...]
    opcode: int | None = None
    length: int | None = None
    head: int = 128

    def matches(self, b0: int, length: int, data: bytes, start: int, end: int) -> bool:
        """Frame byte 0, payload length, and the payload head ``data[start:end]``."""
        op = b0 & 0x0F
        if not b0 & 0x80 or op == OP_CONT:
            return False  # fragmented: we never provoke one
        if self.opcode is not None and op != self.opcode:
            return False
        if self.length is not None and length != self.length:
            return False
        return all(data.find(t, start, end) >= 0 for t in self.tokens)


class FrameCounter:
    """Counts complete data messages in a stream of server frames.

    :meth:`feed` returns the number of data messages completed by this chunk: every data frame with FIN,
    or, with an :class:`Expect`, every frame that matches it (the others are counted in :attr:`bad`).
    Payloads are skipped by arithmetic (no copy) past the head an :class:`Expect` looks at, so a 16 KiB
    message costs the same as a 64 B one. Control frames are kept whole and collected in :attr:`control`
    as ``(opcode, payload)``.
    """

    __slots__ = ("bad", "control", "expect", "partial", "skip")

    def __init__(self, expect: Expect | None = None) -> None:
        self.skip = 0  # payload bytes of the current frame still to come
        self.partial = b""  # an incomplete header (or control frame, or head) carried to the next chunk
        self.control: list[tuple[int, bytes]] = []
        self.expect = expect
        self.bad = 0  # data frames that did not match ``expect``

    def feed(self, data: bytes) -> int:
        n = len(data)
        pos = self.skip
        if pos >= n:
            self.skip = pos - n
            return 0
        if self.partial:
            data = self.partial + data
            n = len(data)
            self.partial = b""
        msgs = 0
        while pos < n:
            if n - pos < 2:
                self.partial = data[pos:]
                self.skip = 0
                return msgs
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F
            if ln < 126:
                hl = 2
            elif ln == 126:
                if n - pos < 4:
                    self.partial = data[pos:]
                    self.skip = 0
                    return msgs
                ln = (data[pos + 2] << 8) | data[pos + 3]
                hl = 4
            else:
                if n - pos < 10:
                    self.partial = data[pos:]
                    self.skip = 0
                    return msgs
                ln = int.from_bytes(data[pos + 2:pos + 10], "big")
                hl = 10
            if b0 & 0x08:  # control frame: keep it whole
                end = pos + hl + ln
                if end > n:
                    self.partial = data[pos:]
                    self.skip = 0
                    return msgs
                self.control.append((b0 & 0x0F, data[pos + hl:end]))
                pos = end
                continue
            exp = self.expect
            if exp is None:
                if b0 & 0x80:
                    msgs += 1
            else:
                start = pos + hl
                end = start + (ln if ln < exp.head else exp.head)
                if end > n:  # the head is not all here yet: carry it (a few dozen bytes)
                    self.partial = data[pos:]
                    self.skip = 0
                    return msgs
                if exp.matches(b0, ln, data, start, end):
                    msgs += 1
                else:
                    self.bad += 1
            pos += hl + ln
        self.skip = pos - n
        return msgs

    def one_small_frame(self, data: bytes) -> bool:
        """True when ``data`` is exactly one small final data frame that counts as a message (the common
        case of a fan-out receiver): a shortcut the caller may take instead of :meth:`feed`."""
        if self.skip or self.partial or len(data) < 2 or data[1] >= 126 or len(data) != data[1] + 2:
            return False
        b0 = data[0]
        if b0 & 0x88 != 0x80:
            return False
        exp = self.expect
        return exp is None or exp.matches(b0, len(data) - 2, data, 2, min(len(data), 2 + exp.head))


class FrameReader:
    """Splits a stream of server frames into complete frames held in :attr:`buf`.

    :meth:`feed` appends a chunk and returns ``[(opcode, start, end), ...]`` for each complete frame: the
    payload is ``buf[start:end]``. The caller reads what it needs, then calls :meth:`consume` to drop
    the frames it was given. Fragment continuation frames are reported with opcode 0.
    """

    __slots__ = ("buf", "pos", "skip")

    def __init__(self, skip: int = 0, partial: bytes = b"") -> None:
        self.buf = bytearray(partial)
        self.pos = 0
        self.skip = skip  # bytes to drop first: the rest of a frame a FrameCounter had started

    def feed(self, data: bytes) -> list[tuple[int, int, int]]:
        if self.skip:
            if self.skip >= len(data):
                self.skip -= len(data)
                return []
            data = data[self.skip:]
            self.skip = 0
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[tuple[int, int, int]] = []
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            if ln < 126:
                hl = 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            end = pos + hl + ln
            if end > n:
                break
            out.append((b0 & 0x0F, pos + hl, end))
            pos = end
        self.pos = pos
        return out

    def consume(self) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
