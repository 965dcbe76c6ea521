"""Wire protocol v1 and v1.1 from the client's side (see ``docs/protocol.md``). Pure: no sockets, no asyncio.

* Codecs: a short-name table, ``json`` (orjson, text frames) and ``msgpack`` (binary frames), each with
  its WebSocket subprotocol name.
* Message builders: one function per client-to-server message, validating what the protocol requires,
  so a bad call fails here with :exc:`ValueError` instead of as an ``error`` reply from the server.
* v1.1 (offsets, recovery, acknowledgements): :class:`Position` (an offset in an epoch of a stream),
  :func:`stream_of` / :func:`position_of` (which stream a received message belongs to, and where in it),
  :class:`Ack` / :func:`parse_ack`, :func:`server_version` and :func:`connect_url` (the handshake URL with
  ``autojoin=0`` and ``session=``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgpack
import orjson

__all__ = [
    "ACKED_TYPES",
    "BROADCAST_STREAM",
    "CODECS",
    "REPLY_TYPES",
    "STREAM_TYPES",
    "V1_1",
    "Ack",
    "Codec",
    "DecodeError",
    "Message",
    "MsgId",
    "Position",
    "broadcast",
    "chat",
    "check_msg_id",
    "check_session",
    "check_token",
    "codec_for_subprotocol",
    "connect_url",
    "custom",
    "get_codec",
    "join",
    "leave",
    "parse_ack",
    "ping",
    "position_of",
    "publish",
    "server_version",
    "stream_of",
]

Message = dict[str, Any]

#: A message ``id``: the protocol allows a string or an integer.
MsgId = int | str

#: Replies addressed to the sender; they echo the request's ``id`` (``ack``: protocol v1.1).
REPLY_TYPES: Final = frozenset({"pong", "stats", "joined", "left", "error", "ack", "presence_list", "result"})

#: Messages the server relays in a stream; in protocol v1.1 each carries ``offset`` and ``epoch``.
STREAM_TYPES: Final = frozenset({"chat", "broadcast", "publication"})

#: Client messages that the server acknowledges (v1.1) when they carry an ``id``.
ACKED_TYPES: Final = frozenset({"chat", "broadcast", "publish"})

#: The stream name of the broadcast channel (v1.1): joined, left and acknowledged like a room.
BROADCAST_STREAM: Final = "$broadcast"

#: Protocol version from which the server assigns offsets, keeps history and sends acks.
V1_1: Final = (1, 1)

_SESSION_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")

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


def join(room: str, since: Position | None = None, presence: bool = False) -> Message:
    """A ``join``; with ``since`` (v1.1), the server first replays what the stream got after it; with
    ``presence``, the client is listed in the room's presence and gets its ``presence`` events."""
    _check_room(room)
    msg: Message = {"type": "join", "room": room}
    if since is not None:
        msg["since"] = since.as_since()
    if presence:
        msg["presence"] = True
    return msg


def get_presence(room: str) -> Message:
    """Ask for ``room``'s presence list (answered with ``presence_list``)."""
    _check_room(room)
    return {"type": "get_presence", "room": room}


def publish(room: str, data: Any) -> Message:
    """A ``publish`` (v1.1): any JSON-representable ``data`` to ``room``, a member or not."""
    _check_room(room)
    return {"type": "publish", "room": room, "data": data}


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


def check_msg_id(value: object) -> MsgId:
    """``value`` if it can be a message ``id`` (a string or an integer, not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a message id is a string or an integer, not {type(value).__name__}")
    if isinstance(value, str) and not value:
        raise ValueError("a message id must not be empty")
    return value


# ---------------------------------------------------------------------------------------------------
# Protocol v1.1: streams, offsets, epochs, acknowledgements, sessions


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """Where a client stands in a stream: the last ``offset`` it has of epoch ``epoch``."""

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, str) or not self.epoch:
            raise ValueError(f"an epoch is a non-empty string, not {self.epoch!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"an offset is an integer >= 0, not {self.offset!r}")

    def as_since(self) -> dict[str, Any]:
        """The ``since`` field of a ``join`` that asks for everything after this position."""
        return {"offset": self.offset, "epoch": self.epoch}

    @classmethod
    def of(cls, value: Position | Mapping[str, Any]) -> Position:
        """A Position from itself or from a ``{"offset": n, "epoch": e}`` mapping (ValueError otherwise)."""
        if isinstance(value, Position):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"a position is a Position or a mapping with offset and epoch, not {value!r}")
        return cls(value.get("epoch"), value.get("offset"))  # type: ignore[arg-type]


def stream_of(msg: Mapping[str, Any]) -> str | None:
    """The stream a received ``chat`` / ``publication`` (its room) or ``broadcast`` belongs to; ``None``
    for any other message."""
    kind = msg.get("type")
    if kind == "broadcast":
        return BROADCAST_STREAM
    if kind in ("chat", "publication"):
        room = msg.get("room")
        return room if isinstance(room, str) and room else None
    return None


def position_of(msg: Mapping[str, Any]) -> Position | None:
    """The ``offset`` / ``epoch`` a message carries (a ``chat``, ``joined``, ``ack``...), or ``None`` when it
    carries none or malformed ones (a v1 server)."""
    offset, epoch = msg.get("offset"), msg.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return None
    if not isinstance(epoch, str) or not epoch:
        return None
    return Position(epoch, offset)


@dataclass(frozen=True, slots=True)
class Ack:
    """The server's acknowledgement of a ``chat``, ``broadcast`` or ``publish`` sent with an ``id``: the
    message has ``offset`` in epoch ``epoch`` of stream ``room`` (``$broadcast`` for a broadcast) and is in
    its history. ``duplicate``: the server had already published that ``id`` (a re-send) and published
    nothing this time."""

    id: MsgId
    room: str
    offset: int
    epoch: str
    duplicate: bool = False

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)


def parse_ack(msg: Mapping[str, Any]) -> Ack | None:
    """The :class:`Ack` in an ``ack`` message, or ``None`` when it is not a well-formed one."""
    if msg.get("type") != "ack":
        return None
    rid, room, pos = msg.get("id"), msg.get("room"), position_of(msg)
    if isinstance(rid, bool) or not isinstance(rid, (int, str)) or not isinstance(room, str) or pos is None:
        return None
    return Ack(rid, room, pos.offset, pos.epoch, msg.get("duplicate") is True)


def server_version(welcome: Mapping[str, Any] | None) -> tuple[int, int]:
    """The protocol version a ``welcome`` announces: ``"version": "1.1"`` (v1.1 on), else ``protocol``
    (``1`` -> ``(1, 0)``). ``(0, 0)`` without a welcome."""
    if welcome is None:
        return (0, 0)
    version = welcome.get("version")
    if isinstance(version, str):
        major, _, minor = version.partition(".")
        if major.isdigit() and (minor.isdigit() or not minor):
            return (int(major), int(minor or 0))
    major_only = welcome.get("protocol")
    if isinstance(major_only, int) and not isinstance(major_only, bool):
        return (major_only, 0)
    return (1, 0)


def check_session(session: object) -> str:
    """``session`` if the server would accept it (16 to 64 of ``A-Z a-z 0-9 _ -``), else ValueError."""
    if not isinstance(session, str) or not _SESSION_RE.fullmatch(session):
        raise ValueError("a session is 16 to 64 characters of A-Z a-z 0-9 _ -")
    return session


def connect_url(url: str, *, autojoin: bool = True, session: str | None = None) -> str:
    """The handshake URL: ``url`` with ``autojoin=0`` (unless ``autojoin``) and ``session=<session>``
    set in its query, other query parameters kept (any earlier ``autojoin`` or ``session`` replaced)."""
    if autojoin and session is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("autojoin", "session")]
    if not autojoin:
        query.append(("autojoin", "0"))
    if session is not None:
        query.append(("session", check_session(session)))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), parts.fragment))
