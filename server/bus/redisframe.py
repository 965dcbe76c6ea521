"""Framing and naming for the Redis bus. Pure: bytes and names in, bytes and names out; no I/O.

An *envelope* is the body of one Redis ``PUBLISH``: one sequenced message (its payload stamped with its
offset and epoch by the sequencing script, see :mod:`.redisscripts`), and who submitted it::

    magic b"\\xfa\\x02" | u16 node length | node | u16 worker | u16 room length (0xFFFF = broadcast) | room
    | payload

The script publishes ``header + stamped payload``: the header is built here, once per (node, worker,
room), and passed to the script as an argument.

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

MAGIC: Final = b"\xfa\x02"
MARKER: Final = b"\xfa\x03"  # + a token: published by a join's REPLAY (see redisscripts); not a message
CONTROL: Final = b"\xfa\x04"  # + msgpack: a command for every worker of the other nodes (Bus.control)
MAX_CONTROL: Final = 64 << 10  # bytes of one command
NO_ROOM: Final = 0xFFFF
MAX_NAME: Final = 0xFFFE  # bytes, for node ids and room names

_U16 = struct.Struct("!H")


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


def parse_envelope(env: bytes) -> tuple[bytes, int, str | None, bytes]:
    """(node, worker, room, payload); raises BusFrameError."""
    node, worker, room, pos = parse_header(env)
    if pos >= len(env):
        raise BusFrameError("envelope without a payload")
    return node, worker, room, env[pos:]


# --- names -----------------------------------------------------------------------------------------------

def broadcast_channel(prefix: bytes) -> bytes:
    return prefix + b"all"


def control_channel(prefix: bytes) -> bytes:
    return prefix + b"control"


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


def stream_keys(prefix: bytes, stream: str) -> tuple[bytes, bytes]:
    """The stream's meta hash (epoch ``e``, last offset ``o``) and its history (a Redis stream, one entry
    per message, id ``<offset>-0``, fields ``t`` (ms) and ``p`` (stamped payload))."""
    base = prefix + b"s:" + stream.encode()
    return base + b":m", base + b":h"


def dedup_key(prefix: bytes, stream: str, identity: str, msg_id: object) -> bytes:
    """Where an acknowledged publication is remembered for the dedup window."""
    kind = "i" if type(msg_id) is int else "s"
    return prefix + b"d:" + f"{len(stream)}:{stream}:{len(identity)}:{identity}:{kind}:{msg_id}".encode()


def rooms_key(prefix: bytes, m: bytes) -> bytes:
    """The hash of one worker's members per room (``room -> count``), with the worker's TTL."""
    return prefix + b"rooms:" + m


def presence_key(prefix: bytes, m: bytes) -> bytes:
    """The hash of one worker's presence lists (``room -> msgpack {"count", "members"}``), with its TTL."""
    return prefix + b"presence:" + m


def members_key(prefix: bytes) -> bytes:
    return prefix + b"nodes"
