"""Client-side WebSocket bits the load generator needs, and nothing more. Pure, no I/O.

- :func:`handshake_request` / :func:`expected_accept`: the HTTP upgrade request and the answer to check.
- :func:`masked_frame`: one final, masked client frame (RFC 6455 requires clients to mask). Frames whose
  payload does not change are built once and written many times.
- :class:`FrameCounter`: counts the messages in a stream of server frames from their headers alone,
  skipping payloads without copying or decoding them; control frames (ping, close) are handed back.
- :class:`FrameReader`: the same, but returns each complete data frame's payload position in a buffer,
  for scenarios that read a timestamp out of the payload.

Server frames are never masked, and neither fanwire nor websockets fragments the messages the harness
provokes, so a message is one frame with FIN set.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
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
    "FrameCounter",
    "FrameReader",
    "expected_accept",
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


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final unmasked frame, as a server sends it (for tests and the close echo)."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _H16(b0, 126, n) + payload
    return _H64(b0, 127, n) + payload


class FrameCounter:
    """Counts complete data messages in a stream of server frames, from the headers alone.

    :meth:`feed` returns the number of data frames with FIN whose header was seen in this chunk.
    Payloads are skipped by arithmetic (no copy), so a 16 KiB message costs the same as a 64 B one.
    Control frames are kept whole and collected in :attr:`control` as ``(opcode, payload)``.
    """

    __slots__ = ("control", "partial", "skip")

    def __init__(self) -> None:
        self.skip = 0  # payload bytes of the current frame still to come
        self.partial = b""  # an incomplete header (or control frame) carried to the next chunk
        self.control: list[tuple[int, bytes]] = []

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
            if b0 & 0x80:
                msgs += 1
            pos += hl + ln
        self.skip = pos - n
        return msgs


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
