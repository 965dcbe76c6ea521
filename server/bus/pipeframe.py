"""Framing for the pipe bus. Pure: records to packets and back, no I/O.

A *record* is one bus message::

    u8 kind | u16 source endpoint | u64 ts_ms | body

Records are batched: a *batch* is a sequence of ``u32 length | record``. A batch is cut into *packets* of
at most ``max_packet`` bytes, each ``u8 flags | chunk`` with flags FIRST and LAST, and each packet is one
SOCK_SEQPACKET message, so a packet arrives whole or not at all: a writer killed mid-batch leaves at most an
incomplete sequence, which the :class:`Reassembler` discards (and counts) when the next FIRST arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

import msgpack

from ..errors import BusFrameError

# record kinds
HELLO: Final = 1  # body: u16 worker | u32 pid | u8 flags (OWNER: it sequences its slot's streams)
BYE: Final = 2
HEARTBEAT: Final = 3
PUBLISH: Final = 4  # body: u16 room length (0xFFFF = broadcast) | room | payload (not sequenced)
STATS_REQ: Final = 5  # body: u32 request id | msgpack query
STATS_REP: Final = 6  # body: u32 request id | msgpack snapshot
HELLO_ACK: Final = 7  # body: as HELLO; the answer of a live worker to a newcomer's HELLO
# sequenced streams (see server/bus/pipestreams.py); "meta" bodies are u32 ticket | u32 n | msgpack(n) | rest
SEQ: Final = 8  # owner -> all: u16 origin endpoint | u32 ticket | publish body (stamped payload)
SUBMIT: Final = 9  # -> owner: meta [stream, room, ts_ms, identity, msg_id] | payload
OUTCOME: Final = 10  # owner -> origin: meta [offset, epoch, duplicate, error]
HIST_REQ: Final = 11  # -> owner: meta [stream, since offset, since epoch]
HIST_REP: Final = 12  # owner -> asker: meta [error, epoch, latest, recovered, [payloads]]
MOVING: Final = 13  # old owner -> all: meta [slot]: hold what goes to the slot, answer MOVING_ACK
MOVING_ACK: Final = 14  # -> old owner: meta [slot]: nothing more of ours for the slot is on its way to you
HANDOFF: Final = 15  # old owner -> successor: meta [slot, state]
MOVED: Final = 16  # old owner -> all: meta [slot, new endpoint]
STATE: Final = 17  # owner -> all: meta [slot, mode]: where its streams are sequenced (cluster: Redis or here)
STATE_ACK: Final = 18  # -> owner: meta [slot, mode]: seen (nothing of the previous mode follows from us)
KINDS: Final = frozenset(range(1, 19))
OWNER: Final = 1  # HELLO flag

FIRST: Final = 1
LAST: Final = 2
NO_ROOM: Final = 0xFFFF

_HEAD = struct.Struct("!BHQ")
_LEN = struct.Struct("!I")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HELLO = struct.Struct("!HI")
_HELLO2 = struct.Struct("!HIB")
_SEQ = struct.Struct("!HI")
NO_ORIGIN: Final = 0xFFFF
HEAD_SIZE: Final = _HEAD.size


def record(kind: int, src: int, ts_ms: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(kind, src, ts_ms) + body


def publish_body(room: str | None, payload: bytes) -> bytes:
    if room is None:
        return _U16.pack(NO_ROOM) + payload
    r = room.encode()
    if len(r) >= NO_ROOM:
        raise BusFrameError("room name too long for the bus")
    return _U16.pack(len(r)) + r + payload


def parse_publish(body: bytes) -> tuple[str | None, bytes]:
    if len(body) < 2:
        raise BusFrameError("short publish record")
    (n,) = _U16.unpack_from(body)
    if n == NO_ROOM:
        return None, body[2:]
    if len(body) < 2 + n:
        raise BusFrameError("publish record shorter than its room")
    try:
        room = body[2 : 2 + n].decode()
    except UnicodeDecodeError:
        raise BusFrameError("room is not UTF-8") from None
    return room, body[2 + n :]


def hello_body(worker: int, pid: int, flags: int = 0) -> bytes:
    return _HELLO2.pack(worker, pid, flags)


def parse_hello(body: bytes) -> tuple[int, int, int]:
    """(worker, pid, flags)"""
    if len(body) == _HELLO.size:
        worker, pid = _HELLO.unpack(body)
        return worker, pid, 0
    if len(body) != _HELLO2.size:
        raise BusFrameError("bad hello record")
    worker, pid, flags = _HELLO2.unpack(body)
    return worker, pid, flags


def seq_body(origin: int, ticket: int, room: str | None, payload: bytes) -> bytes:
    return _SEQ.pack(origin, ticket) + publish_body(room, payload)


def parse_seq(body: bytes) -> tuple[int, int, str | None, bytes]:
    """(origin endpoint, ticket, room, payload)"""
    if len(body) < _SEQ.size:
        raise BusFrameError("short seq record")
    origin, ticket = _SEQ.unpack_from(body)
    room, payload = parse_publish(body[_SEQ.size :])
    return origin, ticket, room, payload


def meta_body(ticket: int, meta: object, rest: bytes = b"") -> bytes:
    packed: bytes = msgpack.packb(meta, use_bin_type=True)
    return _U32.pack(ticket) + _U32.pack(len(packed)) + packed + rest


def parse_meta(body: bytes) -> tuple[int, Any, bytes]:
    """(ticket, meta, rest); raises BusFrameError."""
    if len(body) < 8:
        raise BusFrameError("short record")
    ticket = _U32.unpack_from(body)[0]
    n = _U32.unpack_from(body, 4)[0]
    if len(body) < 8 + n:
        raise BusFrameError("record shorter than its meta")
    try:
        meta = msgpack.unpackb(body[8 : 8 + n], raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BusFrameError(f"bad meta: {exc}") from None
    return ticket, meta, body[8 + n :]


def u32_body(value: int, rest: bytes = b"") -> bytes:
    return _U32.pack(value) + rest


def parse_u32(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise BusFrameError("short record")
    return _U32.unpack_from(body)[0], body[4:]


def parse_record(rec: bytes) -> tuple[int, int, int, bytes]:
    """(kind, source endpoint, ts_ms, body)"""
    if len(rec) < HEAD_SIZE:
        raise BusFrameError("record shorter than its header")
    kind, src, ts = _HEAD.unpack_from(rec)
    if kind not in KINDS:
        raise BusFrameError(f"unknown record kind {kind}")
    return kind, src, ts, rec[HEAD_SIZE:]


def packets(records: list[bytes], max_packet: int) -> Iterator[bytes]:
    """Batch records and cut the batch into flagged packets of at most ``max_packet`` bytes."""
    batch = b"".join(_LEN.pack(len(r)) + r for r in records)
    room = max_packet - 1
    if len(batch) <= room:
        yield bytes((FIRST | LAST,)) + batch
        return
    view = memoryview(batch)
    for start in range(0, len(batch), room):
        flags = (FIRST if start == 0 else 0) | (LAST if start + room >= len(batch) else 0)
        yield bytes((flags,)) + view[start : start + room]


def split_batch(batch: bytes) -> list[bytes]:
    """A batch back into its records; raises BusFrameError if the lengths do not add up."""
    out = []
    pos, end = 0, len(batch)
    while pos < end:
        if end - pos < 4:
            raise BusFrameError("truncated record length")
        (n,) = _LEN.unpack_from(batch, pos)
        pos += 4
        if n > end - pos:
            raise BusFrameError("record longer than its batch")
        out.append(batch[pos : pos + n])
        pos += n
    return out


class Reassembler:
    """Turns packets back into batches. Discards incomplete sequences and oversize batches."""

    __slots__ = ("discarded", "max_batch", "parts", "size")

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.parts: list[bytes] | None = None
        self.size = 0
        self.discarded = 0

    def feed(self, packet: bytes) -> bytes | None:
        """Returns a complete batch, or None while more packets are needed (or the packet was dropped)."""
        if not packet:
            return None
        flags = packet[0]
        if flags & FIRST:
            if self.parts is not None:
                self.discarded += 1  # the previous sequence never finished: its writer died
            if flags & LAST:
                self.parts = None
                return packet[1:]
            self.parts = [packet[1:]]
            self.size = len(packet) - 1
            return None
        if self.parts is None:
            self.discarded += 1  # a continuation without its start
            return None
        self.parts.append(packet[1:])
        self.size += len(packet) - 1
        if self.size > self.max_batch:
            self.parts = None
            self.discarded += 1
            return None
        if flags & LAST:
            batch = b"".join(self.parts)
            self.parts = None
            return batch
        return None
