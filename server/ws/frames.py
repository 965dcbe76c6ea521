"""RFC 6455 frames: an incremental reader of client frames and builders of server frames. Pure, no I/O.

The reader turns the bytes a client sent into *events*, at most ``max_frames`` frames per call, so a
connection can bound the work one wake-up spends on one client (:meth:`Reader.read`):

=================  =====================================================================================
event              payload
=================  =====================================================================================
``TEXT``           a complete text message (fragments joined; UTF-8 is checked by the consumer; a
                   fragmented one is also checked here, fragment by fragment, so that a broken one fails
                   at the fragment that breaks it, RFC 6455 8.1)
``BINARY``         a complete binary message
``PING``           the ping's application data (the consumer answers with a pong, in order with its output)
``PONG``           the pong's application data
``CLOSE``          the close frame's payload, already validated (code and UTF-8 reason)
=================  =====================================================================================

Every rule the peer can break raises :class:`~server.errors.WsProtocolError` with the close code to send:
1002 for framing (unmasked frame, reserved bits or opcodes, bad control frames, continuation without a
start, a new message inside a fragmented one, a bad close payload), 1007 for a close reason that is not
UTF-8, 1009 for a message over ``max_size`` bytes or ``max_fragments`` frames. A partial message costs
memory close to its size (fragments are appended to one ``bytearray``), and an oversize frame is refused
from its header, before its payload is buffered.

After a ``CLOSE`` event the reader discards everything (RFC 6455 1.4).

A broken frame behind valid ones does not cost the valid ones: a read returns the events of the frames
before it (they would have been handled had they come in an earlier segment), sets ``more`` so the caller
comes back, and the next read raises the error. From the broken frame on, nothing is parsed.

:meth:`Reader.feed_read` is what a connection calls on every read: the frames complete in the bytes just
received are unmasked straight from them (a receive buffer shared by every connection), and only what is
left of a frame is copied into the reader; :meth:`Reader.feed` and :meth:`Reader.read` remain for bytes
received while reading is paused, and for tests.

Why this module is long: one parser (every rule of RFC 6455 section 5 a client can break, with the limits
checked from a frame's header) and its two entry points share their state; split, each half would need
the other's internals.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any, Final

from ..errors import WsProtocolError

try:  # websockets' C helper; its pure-Python twin is exact but slower
    from websockets.speedups import apply_mask as _mask_c
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask as _mask_c

# (payload, mask) -> unmasked bytes; both may be any buffer (slices of a memoryview: no copy)
_apply_mask: Callable[[Any, Any], bytes] = _mask_c

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

TEXT: Final = OP_TEXT
BINARY: Final = OP_BINARY
CLOSE: Final = OP_CLOSE
PING: Final = OP_PING
PONG: Final = OP_PONG

Event = tuple[int, bytes]

_DEFLATE_SLACK: Final = 1024  # deflate's worst case grows incompressible data by well under this

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_H8 = struct.Struct("!BB").pack
_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack

# close codes a peer may send (RFC 6455 7.4.1 and the IANA registry); 1005, 1006 and 1015 never on the wire
_VALID_CLOSE: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def valid_close_code(code: int) -> bool:
    return code in _VALID_CLOSE or 3000 <= code <= 4999


class Reader:
    """Client frames in, events out. ``inflate`` is websockets' permessage-deflate extension, when negotiated.

    Counters for the caller's limits: ``frames`` and ``wire_bytes`` (headers included) consumed so far.
    """

    __slots__ = ("buf", "closed", "error", "frag", "frag_compressed", "frag_count", "frag_op", "frag_utf8",
                 "frames", "inflate", "max_fragments", "max_size", "more", "wire_bytes")

    def __init__(self, max_size: int, max_fragments: int, inflate: Any = None) -> None:
        self.buf = bytearray()
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.inflate = inflate
        self.frag: bytearray | None = None
        self.frag_op = 0
        self.frag_count = 0
        self.frag_compressed = False
        self.frag_utf8: Any = None  # an incremental UTF-8 decoder while a fragmented text message is read
        self.frames = 0
        self.wire_bytes = 0
        self.more = False  # the last read() stopped at its frame budget with complete frames left
        self.closed = False
        self.error: WsProtocolError | None = None  # a broken frame behind the events last returned

    def feed(self, data: bytes) -> None:
        if not self.closed:
            self.buf += data

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def read(self, max_frames: int) -> list[Event]:
        """Events for the complete frames buffered, at most ``max_frames`` frames; raises WsProtocolError."""
        if self.error is not None:
            raise self.error
        events: list[Event] = []
        self.more = False
        buf = self.buf
        pos = 0
        try:
            pos = self._parse(buf, 0, len(buf), max_frames, events)
        except WsProtocolError as exc:
            return self._broken(exc, events)
        finally:
            if pos and buf:
                del buf[:pos]
        return events

    def _broken(self, exc: WsProtocolError, events: list[Event]) -> list[Event]:
        """A broken frame: raise now when it is the first thing read, else return the events before it and
        raise on the next read (``more`` brings the caller back)."""
        self.closed = True  # nothing more is buffered or parsed
        self.buf.clear()
        if not events:
            raise exc
        self.error = exc
        self.more = True
        return events

    def feed_read(self, data: bytes | bytearray | memoryview, max_frames: int, end: int = -1) -> list[Event]:
        """``feed(data[:end])`` then ``read(max_frames)``, without copying the frames that are complete in
        ``data``: they are unmasked from it directly, and only what is left (a partial frame, or frames
        over the budget) is copied into the reader. ``data`` may be reused by the caller afterwards (a
        shared receive buffer): no event refers to it. ``end`` < 0: all of ``data``."""
        if end < 0:
            end = len(data)
        if self.error is not None:
            raise self.error
        if self.closed:
            return []
        self.more = False
        events: list[Event] = []
        frames0 = self.frames
        pos = 0
        buf = self.buf
        view = memoryview(data)  # slices of it are copied once, into buf
        try:
            while buf and pos < end:
                # a frame started in an earlier read: complete it (its header first, then its payload)
                need = self._missing()
                if need < 0:
                    need = 0  # complete frames are waiting already (over an earlier budget): read them
                take = min(need, end - pos)
                buf += view[pos : pos + take]
                pos += take
                if take < need:
                    return events  # data used up, the frame is still partial
                events += self.read(max_frames - (self.frames - frames0))
                if self.more or self.closed:
                    break
            if not buf and pos < end and not self.closed and not self.more:
                pos = self._parse(data, pos, end, max_frames - (self.frames - frames0), events)
        except WsProtocolError as exc:
            pos = end  # nothing of data is kept
            return self._broken(exc, events)
        finally:
            if pos < end and not self.closed:
                buf += view[pos:end]
            view.release()
        return events

    def _missing(self) -> int:
        """Bytes still needed to complete the frame at the start of ``buf`` (its header, then its payload)."""
        buf = self.buf
        have = len(buf)
        if have < 2:
            return 2 - have
        length = buf[1] & 0x7F
        if length < 126:
            return 6 + length - have
        head = 8 if length == 126 else 14
        if have < head:
            return head - have
        length = (_U16 if head == 8 else _U64).unpack_from(buf, 2)[0]
        return int(head + length - have)

    def _parse(self, buf: Any, pos: int, end: int, max_frames: int, events: list[Event]) -> int:
        """Frames of ``buf[pos:end]`` into ``events``, at most ``max_frames``; returns where it stopped.

        A whole text or binary frame (FIN, no reserved bit) outside a fragmented message and within the
        size limit -- nearly every frame -- takes a short path; every other frame goes through ``_check``
        and ``_frame``."""
        n = 0
        wire = 0
        max_size = self.max_size
        view = memoryview(buf)
        append = events.append
        try:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                if not b1 & 0x80:
                    raise WsProtocolError(1002, "unmasked frame from a client")
                length = b1 & 0x7F
                if length < 126:
                    head = 6
                elif length == 126:
                    if end - pos < 4:
                        break
                    (length,) = _U16.unpack_from(buf, pos + 2)
                    head = 8
                else:
                    if end - pos < 10:
                        break
                    (length,) = _U64.unpack_from(buf, pos + 2)
                    head = 14  # a length with its top bit set is over any max_size: refused below (1009)
                whole = (b0 == 0x81 or b0 == 0x82) and length <= max_size and self.frag is None
                if not whole:
                    self._check(b0 & 0x0F, b0 & 0x80, b0 & 0x70, length)
                total = head + length
                if end - pos < total:
                    break
                if n >= max_frames:
                    self.more = True  # a complete frame waits: the caller comes back on a later wake-up
                    break
                if length:
                    start = pos + head
                    payload = _apply_mask(view[start : start + length], view[start - 4 : start])
                else:
                    payload = b""
                pos += total
                n += 1
                wire += total
                if whole:
                    append((b0 & 0x0F, payload))
                    continue
                event = self._frame(b0 & 0x0F, b0 & 0x80, b0 & 0x40, payload)
                if event is not None:
                    append(event)
                    if event[0] == CLOSE:
                        self.closed = True
                        pos = end
                        break
        finally:
            view.release()
            self.frames += n
            self.wire_bytes += wire
        return pos

    def _check(self, opcode: int, fin: int, rsv: int, length: int) -> None:
        """Refuse a frame from its header alone."""
        if opcode >= 8:
            if opcode > OP_PONG:
                raise WsProtocolError(1002, f"reserved opcode {opcode:#x}")
            if not fin:
                raise WsProtocolError(1002, "fragmented control frame")
            if length > 125:
                raise WsProtocolError(1002, "control frame longer than 125 bytes")
            if rsv:
                raise WsProtocolError(1002, "reserved bits set on a control frame")
            return
        if opcode == OP_CONT:
            if self.frag is None:
                raise WsProtocolError(1002, "continuation frame without a message to continue")
            if rsv:
                raise WsProtocolError(1002, "reserved bits set on a continuation frame")
            if self.frag_count >= self.max_fragments:
                raise WsProtocolError(1009, f"message in more than {self.max_fragments} fragments")
            if len(self.frag) + length > self.max_size + (_DEFLATE_SLACK if self.frag_compressed else 0):
                raise WsProtocolError(1009, f"message over {self.max_size} bytes")
            return
        if opcode > OP_BINARY:
            raise WsProtocolError(1002, f"reserved opcode {opcode:#x}")
        if self.frag is not None:
            raise WsProtocolError(1002, "new message inside a fragmented one")
        if rsv and (rsv != 0x40 or self.inflate is None):
            raise WsProtocolError(1002, "reserved bits set without an extension that defines them")
        if length > self.max_size + (_DEFLATE_SLACK if rsv else 0):
            # a compressed payload longer than the largest message it may inflate to, plus deflate's
            # worst-case overhead, cannot be a legitimate one: refused from its header like the others
            raise WsProtocolError(1009, f"message over {self.max_size} bytes")

    def _frame(self, opcode: int, fin: int, rsv1: int, payload: bytes) -> Event | None:
        if opcode in (OP_TEXT, OP_BINARY):
            if rsv1:
                payload = self._inflate(opcode, fin, rsv1, payload, self.max_size)
            if fin:
                return (opcode, payload)
            self.frag = bytearray(payload)
            self.frag_op = opcode
            self.frag_count = 1
            self.frag_compressed = bool(rsv1)
            if opcode == OP_TEXT:
                self.frag_utf8 = _utf8_decoder()
                _check_utf8(self.frag_utf8, payload, False)
            return None
        if opcode == OP_CONT:
            frag = self.frag
            assert frag is not None
            if self.frag_compressed:
                room = self.max_size - len(frag)
                payload = self._inflate(opcode, fin, 0, payload, max(room, 1))  # 0 would mean "no limit"
                if len(payload) > room:
                    raise WsProtocolError(1009, f"message over {self.max_size} bytes")
            if self.frag_utf8 is not None:
                _check_utf8(self.frag_utf8, payload, bool(fin))
            frag += payload
            self.frag_count += 1
            if not fin:
                return None
            self.frag = None
            self.frag_utf8 = None
            return (self.frag_op, bytes(frag))
        if opcode == OP_CLOSE:
            if self.frag is not None:
                pass  # a close may interrupt a fragmented message (RFC 6455 5.4): the partial one is dropped
            return (CLOSE, check_close(payload))
        return (opcode, payload)  # PING, PONG

    def _inflate(self, opcode: int, fin: int, rsv1: int, payload: bytes, room: int) -> bytes:
        from websockets.exceptions import PayloadTooBig, ProtocolError
        from websockets.frames import Frame, Opcode

        try:
            frame = self.inflate.decode(Frame(Opcode(opcode), payload, bool(fin), bool(rsv1)), max_size=room)
        except PayloadTooBig:
            raise WsProtocolError(1009, f"message over {self.max_size} bytes") from None
        except ProtocolError as exc:
            raise WsProtocolError(1002, str(exc)) from None
        data: bytes = bytes(frame.data)
        return data


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _check_utf8(decoder: Any, payload: bytes, final: bool) -> None:
    try:
        decoder.decode(payload, final)
    except UnicodeDecodeError:
        raise WsProtocolError(1007, "invalid UTF-8 in a text message") from None


def check_close(payload: bytes) -> bytes:
    """Validate a close frame's payload (RFC 6455 5.5.1, 7.4); returns it unchanged."""
    if not payload:
        return payload
    if len(payload) == 1:
        raise WsProtocolError(1002, "close frame with a one-byte payload")
    (code,) = _U16.unpack_from(payload)
    if not valid_close_code(code):
        raise WsProtocolError(1002, f"invalid close code {code}")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise WsProtocolError(1007, "close reason is not valid UTF-8") from None
    return payload


def close_code_of(payload: bytes) -> int:
    """The code of a validated close payload (1005 when it carries none)."""
    return _U16.unpack_from(payload)[0] if payload else 1005


# --- server frames: unmasked, so one frame can go to many receivers ------------------------------------------

def build_frame(opcode: int, payload: bytes) -> bytes:
    """One final (FIN) unmasked frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return _H8(0x80 | opcode, n) + payload
    if n < 65536:
        return _H16(0x80 | opcode, 126, n) + payload
    return _H64(0x80 | opcode, 127, n) + payload


def frame_header(opcode: int, n: int) -> bytes:
    """The header of a final unmasked frame of ``n`` payload bytes (write it, then the payload)."""
    b0 = 0x80 | opcode
    if n < 126:
        return _H8(b0, n)
    if n < 65536:
        return _H16(b0, 126, n)
    return _H64(b0, 127, n)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code and a reason cut to fit 125 bytes on a character boundary."""
    data = reason.encode()[:123]
    return _U16.pack(code) + data.decode(errors="ignore").encode()


def build_close(code: int, reason: str = "") -> bytes:
    return build_frame(OP_CLOSE, close_payload(code, reason))


def encode_frame(opcode: int, payload: bytes, extensions: Any) -> bytes:
    """A frame through negotiated extensions (permessage-deflate): per connection, never shared."""
    from websockets.frames import Frame, Opcode

    return bytes(Frame(Opcode(opcode), payload).serialize(mask=False, extensions=extensions))
