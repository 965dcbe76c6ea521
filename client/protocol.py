"""Wire protocol v1 from the client's side (see ``docs/protocol.md``). Pure: no sockets, no asyncio.

* Codecs: a short-name table, ``json`` (orjson, text frames) and ``msgpack`` (binary frames), each with
  its WebSocket subprotocol name.
* Message builders: one function per client-to-server message, validating what the protocol requires,
  so a bad call fails here with :exc:`ValueError` instead of as an ``error`` reply from the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import orjson

__all__ = [
    "CODECS",
    "REPLY_TYPES",
    "Codec",
    "DecodeError",
    "Message",
    "broadcast",
    "chat",
    "check_token",
    "codec_for_subprotocol",
    "custom",
    "get_codec",
    "join",
    "leave",
    "ping",
]

Message = dict[str, Any]

#: Replies addressed to the sender; they echo the request's ``id``.
REPLY_TYPES: Final = frozenset({"pong", "stats", "joined", "left", "error"})

MAX_ROOM_LEN: Final = 128
MAX_USER_LEN: Final = 64
MAX_TOKEN_LEN: Final = 8192


class DecodeError(ValueError):
    """A frame from the server is not a valid message for the connection's codec."""


@dataclass(frozen=True, slots=True)
class Codec:
    """How messages travel on one connection."""

    name: str
    subprotocol: str
    text: bool  # send text frames (JSON) or binary frames (msgpack)
    encode: Callable[[Message], bytes]
    _loads: Callable[[bytes | str], Any]

    def decode(self, data: bytes | str) -> Message:
        """Decode one frame into a message (a map with a string ``type``), or raise :exc:`DecodeError`."""
        try:
            obj = self._loads(data)
        except Exception as exc:  # orjson.JSONDecodeError, msgpack's several exception types
            raise DecodeError(f"undecodable {self.name} frame: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise DecodeError(f"not a message (a map with a string 'type'): {obj!r:.80}")
        return obj


def _json_encode(msg: Message) -> bytes:
    return orjson.dumps(msg)


def _json_loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def _msgpack_encode(msg: Message) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]


def _msgpack_loads(data: bytes | str) -> Any:
    if isinstance(data, str):  # a text frame on a msgpack connection: decode its bytes anyway
        data = data.encode()
    return msgpack.unpackb(data, raw=False)


CODECS: Final[dict[str, Codec]] = {
    "json": Codec("json", "fanwire.json", True, _json_encode, _json_loads),
    "msgpack": Codec("msgpack", "fanwire.msgpack", False, _msgpack_encode, _msgpack_loads),
}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (``json`` or ``msgpack``); :exc:`ValueError` for anything else."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}") from None


def codec_for_subprotocol(subprotocol: str | None) -> Codec:
    """The codec the server chose; no subprotocol in the answer means JSON (protocol.md)."""
    for codec in CODECS.values():
        if codec.subprotocol == subprotocol:
            return codec
    return CODECS["json"]


# ---------------------------------------------------------------------------------------------------
# Message builders


def _check_str(name: str, value: object, max_len: int | None = None, *, min_len: int = 0) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if len(value) < min_len:
        raise ValueError(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters (got {len(value)})")


def _check_room(room: object) -> None:
    _check_str("room", room, MAX_ROOM_LEN, min_len=1)


def _check_user(user: object) -> None:
    _check_str("user", user, MAX_USER_LEN, min_len=1)


def chat(text: str, user: str | None = None, room: str | None = None) -> Message:
    """A ``chat`` to ``room`` (default: the connection's current room on the server)."""
    _check_str("text", text)
    msg: Message = {"type": "chat", "text": text}
    if user is not None:
        _check_user(user)
        msg["user"] = user
    if room is not None:
        _check_room(room)
        msg["room"] = room
    return msg


def broadcast(text: str | None = None, *, data: Any = None, user: str | None = None) -> Message:
    """A ``broadcast`` carrying ``text`` or, when ``text`` is ``None``, ``data``."""
    msg: Message = {"type": "broadcast"}
    if text is not None:
        _check_str("text", text)
        msg["text"] = text
    elif data is not None:
        msg["data"] = data
    else:
        raise ValueError("broadcast needs text or data")
    if user is not None:
        _check_user(user)
        msg["user"] = user
    return msg


def ping(ts: Any = None) -> Message:
    """A ``ping``; the ``pong`` echoes ``ts`` when given."""
    msg: Message = {"type": "ping"}
    if ts is not None:
        msg["ts"] = ts
    return msg


def join(room: str) -> Message:
    _check_room(room)
    return {"type": "join", "room": room}


def leave(room: str) -> Message:
    _check_room(room)
    return {"type": "leave", "room": room}


def custom(action: str, data: Any = None) -> Message:
    """A ``custom`` message; the server answers ``get_stats`` with ``stats``."""
    _check_str("action", action, min_len=1)
    msg: Message = {"type": "custom", "action": action}
    if data is not None:
        msg["data"] = data
    return msg


def check_token(token: object) -> str:
    """``token`` if it fits an ``Authorization: Bearer`` header (printable, no whitespace), else ValueError."""
    if not isinstance(token, str):
        raise ValueError(f"a token must be a string, not {type(token).__name__}")
    if not 0 < len(token) <= MAX_TOKEN_LEN or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"a token must be 1 to {MAX_TOKEN_LEN} printable characters without spaces")
    return token
