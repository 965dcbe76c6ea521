"""Framing and naming for the Redis bus. Pure: bytes and names in, bytes and names out; no I/O.

An *envelope* is the body of one Redis ``PUBLISH``: the publications one worker made to one channel during
one event-loop tick, in order::

    magic b"\\xfa\\x01" | u16 node length | node | u16 worker | u16 room length (0xFFFF = broadcast) | room
    then, per publication:  u64 ts_ms | u32 payload length | payload

Channels: ``<prefix>all`` carries broadcasts (every node subscribes to it), ``<prefix>room:<room>`` carries
the chats of one room (a worker subscribes while the room has local members). Presence: the sorted set
``<prefix>nodes`` holds one member ``<worker>.<pid>:<node>`` per live worker process, scored by the time (ms)
it expires; ``<prefix>stats:<member>`` holds that worker's msgpack stats snapshot with the same TTL. (The pid
keeps a retiring worker's goodbye, during a rolling restart, from erasing its replacement's entry.)
"""

from __future__ import annotations

import struct
from typing import Final

from ..errors import BusFrameError

MAGIC: Final = b"\xfa\x01"
NO_ROOM: Final = 0xFFFF
MAX_NAME: Final = 0xFFFE  # bytes, for node ids and room names

_U16 = struct.Struct("!H")
_REC = struct.Struct("!QI")
REC_HEAD: Final = _REC.size


def header(node: bytes, worker: int, room: str | None) -> bytes:
    """The envelope header for publications of ``worker`` of ``node`` to ``room`` (None: broadcast)."""
    if len(node) > MAX_NAME:
        raise BusFrameError("node id too long for the bus")
    if room is None:
        r = b""
        rlen = NO_ROOM
    else:
        r = room.encode()
        rlen = len(r)
        if rlen > MAX_NAME:
            raise BusFrameError("room name too long for the bus")
    return MAGIC + _U16.pack(len(node)) + node + _U16.pack(worker & 0xFFFF) + _U16.pack(rlen) + r


def record(ts_ms: int, payload: bytes) -> bytes:
    return _REC.pack(ts_ms & 0xFFFFFFFFFFFFFFFF, len(payload)) + payload


def parse_header(env: bytes) -> tuple[bytes, int, str | None, int]:
    """(node, worker, room, offset of the first record); raises BusFrameError."""
    if env[:2] != MAGIC:
        raise BusFrameError("not a fanwire envelope")
    end = len(env)
    pos = 2
    if end < pos + 2:
        raise BusFrameError("short envelope")
    (nlen,) = _U16.unpack_from(env, pos)
    pos += 2
    if end < pos + nlen + 4:
        raise BusFrameError("short envelope")
    node = env[pos : pos + nlen]
    pos += nlen
    (worker,) = _U16.unpack_from(env, pos)
    (rlen,) = _U16.unpack_from(env, pos + 2)
    pos += 4
    room: str | None = None
    if rlen != NO_ROOM:
        if end < pos + rlen:
            raise BusFrameError("envelope shorter than its room")
        try:
            room = env[pos : pos + rlen].decode()
        except UnicodeDecodeError:
            raise BusFrameError("room is not UTF-8") from None
        pos += rlen
    return node, worker, room, pos


def records(env: bytes, pos: int, max_payload: int) -> tuple[list[tuple[int, bytes]], int]:
    """The envelope's (ts_ms, payload) records from ``pos``, and how many were skipped as oversized.

    Raises BusFrameError when the lengths do not add up (the whole envelope is then dropped).
    """
    out: list[tuple[int, bytes]] = []
    skipped = 0
    end = len(env)
    if pos >= end:
        raise BusFrameError("envelope without records")
    while pos < end:
        if end - pos < REC_HEAD:
            raise BusFrameError("truncated record header")
        ts, n = _REC.unpack_from(env, pos)
        pos += REC_HEAD
        if n > end - pos:
            raise BusFrameError("record longer than its envelope")
        if n > max_payload:
            skipped += 1
        else:
            out.append((ts, env[pos : pos + n]))
        pos += n
    return out, skipped


# --- names -----------------------------------------------------------------------------------------------

def broadcast_channel(prefix: bytes) -> bytes:
    return prefix + b"all"


def room_channel(prefix: bytes, room: str) -> bytes:
    return prefix + b"room:" + room.encode()


def member(node: str, worker: int, pid: int) -> bytes:
    return f"{worker}.{pid}:{node}".encode()


def member_node(m: bytes) -> bytes:
    """The node part of a presence member (b"" if malformed)."""
    _, sep, node = m.partition(b":")
    return node if sep else b""


def stats_key(prefix: bytes, m: bytes) -> bytes:
    return prefix + b"stats:" + m


def rooms_key(prefix: bytes, m: bytes) -> bytes:
    """The hash of one worker's members per room (``room -> count``), with the worker's TTL."""
    return prefix + b"rooms:" + m


def members_key(prefix: bytes) -> bytes:
    return prefix + b"nodes"
