"""The fanwire message protocol (v1.1): parse, validate, route. Pure: bytes in, actions out.

No asyncio, no sockets. The worker feeds every incoming WebSocket message to :func:`handle_payload`
together with the connection's :class:`Session`, and carries out the returned actions:

- :class:`Reply`: send this message to the sender only.
- :class:`Publish`: sequence this message in its stream (a room, or ``$broadcast``) and deliver it to the
  stream's receivers on every worker and node; acknowledge it when it carries an ``id``.
- :class:`Join`: the session joined a room (its ``rooms`` list is updated already) or ``$broadcast``:
  fetch the stream's position (and, with ``since``, what was missed), then subscribe and answer ``joined``
  (built by :func:`joined_msg`).
- :class:`Unsubscribe`: the session left a room: mirror it in the hub's room index.
- :class:`QueryStats`: gather stats from every worker, then reply.
- :class:`QueryPresence`: gather a room's presence list from every worker (and node), then reply.
- :class:`Custom`: an application's action (or ``unknown_action`` when the application has none).

See docs/protocol.md for the wire format.

Why this module is long: every client message type is parsed and validated here, in one place, so that one
table of checks (lengths, types, the v1.1 ``since``/``id`` rules) guards every path into the server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import codecs
from .errors import BadMessage, ProtocolViolation, RoomError, UnknownAction, UnknownType
from .streams import BROADCAST
from .streams.stamp import valid_epoch

PROTOCOL_VERSION: Final = 1
VERSION: Final = "1.1"
DEFAULT_ROOM: Final = "lobby"
MAX_ROOM_LEN: Final = 128
MAX_USER_LEN: Final = 64
MAX_ID_LEN: Final = 256
MAX_ACTION_LEN: Final = 64
SYSTEM_PREFIX: Final = "$"  # rooms of the server's own: $broadcast, $stats
STATS_ROOM: Final = "$stats"
PRESENCE_PREFIX: Final = "$presence:"  # a room's presence events (server.presence)
_SESSION = re.compile(r"[A-Za-z0-9_-]{16,64}")


class Session:
    """Per-connection protocol state. The worker's connection class extends it.

    ``rooms`` lists the rooms joined (the last one is the current room); ``broadcasts`` says whether the
    session receives the ``$broadcast`` stream; ``session_token`` is the identity a reconnecting client
    presents so that its resends are recognised (``identity`` adds the token's user when auth is on).
    """

    __slots__ = ("broadcasts", "client_id", "codec", "rooms", "session_token", "system", "user", "user_fixed")

    def __init__(self, client_id: str, codec: codecs.Codec = codecs.JSON, user: str | None = None) -> None:
        self.client_id = client_id
        self.codec = codec
        self.user = user
        self.user_fixed = user is not None  # True when the name comes from an auth token
        self.rooms: list[str] = [DEFAULT_ROOM]
        self.broadcasts = True
        self.system: set[str] | None = None  # the server's other streams joined ($stats), rarely any
        self.session_token = ""

    @property
    def current_room(self) -> str | None:
        return self.rooms[-1] if self.rooms else None

    def streams(self) -> list[str]:
        """Every stream the session receives: its rooms, $broadcast, and the server's streams it joined."""
        out = list(self.rooms)
        if self.broadcasts:
            out.append(BROADCAST)
        if self.system:
            out.extend(self.system)
        return out

    @property
    def identity(self) -> str:
        """Who publishes, for deduplication: the session, bound to the token's user when auth is on."""
        return f"{self.user if self.user_fixed else ''}/{self.session_token}"


# --- actions -----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``msg`` to the sender only."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    """Sequence ``msg`` in ``stream`` and deliver it to ``room`` (None: everyone) on every worker and node.
    ``payload`` is ``msg`` encoded as JSON (already checked to be encodable); ``id`` is the client's request
    id (acknowledged, and deduplicated within the window), or None."""

    stream: str
    room: str | None
    msg: dict[str, Any]
    payload: bytes
    id: Any = None


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``stream`` (a room, or ``$broadcast``): fetch its position and, with ``since``, what was missed;
    then subscribe and answer :func:`joined_msg`. ``already``: the session was in it (only answer)."""

    stream: str
    since: tuple[int, str] | None
    id: Any = None
    already: bool = False
    presence: bool = False  # track the session in the room (see server.presence)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The session left ``room`` (or ``$broadcast``): mirror it in the hub."""

    room: str


@dataclass(frozen=True, slots=True)
class Custom:
    """A ``custom`` action the protocol does not know itself: the application's (see server.App), or none
    (then ``unknown_action``)."""

    action: str
    data: Any
    id: Any = None


@dataclass(frozen=True, slots=True)
class QueryPresence:
    """Gather ``room``'s presence list from every worker, then reply ``presence_list``."""

    room: str
    id: Any


@dataclass(frozen=True, slots=True)
class QueryStats:
    """Gather stats from every worker, then reply (with ``id`` and ``data`` echoed)."""

    id: Any
    data: Any


Action = Reply | Publish | Join | Unsubscribe | QueryStats | QueryPresence | Custom


class Policy:
    """What a session may do; the default allows everything but the server's own rooms. Authentication
    plugs in here."""

    __slots__ = ()

    def may_join(self, session: Session, room: str) -> bool:
        return not room.startswith(SYSTEM_PREFIX) or room in (BROADCAST, STATS_ROOM)

    def may_publish(self, session: Session, room: str) -> bool:
        return True

    def may_broadcast(self, session: Session) -> bool:
        return True

    def is_admin(self, session: Session) -> bool:
        return False


ALLOW_ALL: Final = Policy()


def error_msg(code: str, detail: str, id: Any = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if id is not None:
        msg["id"] = id
    return msg


def new_session_token() -> str:
    """An unguessable session token (22 characters of A-Z a-z 0-9 _ -)."""
    return secrets.token_urlsafe(16)


def valid_session_token(token: str) -> bool:
    return _SESSION.fullmatch(token) is not None


def welcome_msg(session: Session, worker: int, node: str, now_ms: int, heartbeat_s: float,
                max_message_size: int, autojoin: list[str] | None = None) -> dict[str, Any]:
    msg = {
        "type": "welcome",
        "client_id": session.client_id,
        "worker": worker,
        "node": node,
        "codec": session.codec.name,
        "rooms": list(session.rooms),
        "server_ts": now_ms,
        "protocol": PROTOCOL_VERSION,
        "version": VERSION,
        "session": session.session_token,
        "heartbeat_s": heartbeat_s,
        "max_message_size": max_message_size,
    }
    if autojoin is not None:
        msg["autojoin"] = autojoin
    return msg


def joined_msg(session: Session, join: Join, epoch: str, latest: int, recovered: bool | None,
               replayed: int, presence: object = None) -> dict[str, Any]:
    """The answer to a join, once the stream's position (and replay) is known; ``presence`` says whether
    the session is tracked when the join asked for it."""
    msg: dict[str, Any] = {"type": "joined", "room": join.stream, "rooms": list(session.rooms),
                           "offset": latest, "epoch": epoch}
    if join.since is not None and not join.already:
        msg["recovered"] = bool(recovered)
        msg["replayed"] = replayed
    if join.presence:
        msg["presence"] = bool(presence)  # None (or False): the room's presence list was full
    if join.id is not None:
        msg["id"] = join.id
    return msg


def ack_msg(stream: str, offset: int, epoch: str, duplicate: bool, id: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "ack", "id": id, "room": stream, "offset": offset, "epoch": epoch}
    if duplicate:
        msg["duplicate"] = True
    return msg


# --- field checks ---------------------------------------------------------------------------------

def _str_field(msg: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = msg.get(name)
    if value is None:
        if required:
            raise BadMessage(f"missing field {name!r}")
        return None
    if type(value) is not str:
        raise BadMessage(f"{name!r} must be a string")
    return value


def _room(msg: dict[str, Any], required: bool = True) -> str | None:
    room = msg.get("room")
    if room is None:
        if required:
            raise RoomError("missing field 'room'")
        return None
    if type(room) is not str or not 0 < len(room) <= MAX_ROOM_LEN:
        raise RoomError(f"'room' must be a string of 1 to {MAX_ROOM_LEN} characters")
    return room


def _publishable(room: str) -> str:
    if room.startswith(SYSTEM_PREFIX):
        raise RoomError(f"rooms starting with {SYSTEM_PREFIX!r} are the server's own: cannot publish to {room!r}")
    return room


def _take_user(session: Session, msg: dict[str, Any]) -> None:
    user = msg.get("user")
    if user is None or session.user_fixed:
        return
    if type(user) is not str or not 0 < len(user) <= MAX_USER_LEN:
        raise BadMessage(f"'user' must be a string of 1 to {MAX_USER_LEN} characters")
    session.user = user


def _since(msg: dict[str, Any]) -> tuple[int, str] | None:
    since = msg.get("since")
    if since is None:
        return None
    if type(since) is not dict:
        raise ProtocolViolation("'since' must be a map {offset, epoch}", "bad_since")
    offset, epoch = since.get("offset"), since.get("epoch")
    if type(offset) is not int or offset < 0 or offset >= 1 << 63 or not valid_epoch(epoch):
        raise ProtocolViolation("'since' needs an integer 'offset' >= 0 and the 'epoch' string of a joined "
                                "answer or a message", "bad_since")
    return offset, epoch  # type: ignore[return-value]  # epoch checked by valid_epoch


_PLAIN: Final = (int, float, str, bool)


def _carried(value: Any, name: str) -> Any:
    """A client value the server carries opaquely (``ts``, ``data``): it must be representable in JSON, since
    JSON clients may receive it (msgpack ``bin``, extension types and timestamps are refused)."""
    if type(value) not in _PLAIN:
        codecs.encode_json(value)  # raises BadMessage
    return value


def _with_id(reply: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    if "id" in msg:
        reply["id"] = msg["id"]
    return reply


# --- handlers: one per message type ----------------------------------------------------------------

Handler = Callable[[Session, dict[str, Any], int, int, Policy], list[Action]]


def _ping(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    reply: dict[str, Any] = {"type": "pong", "server_ts": now_ms}
    if "ts" in msg:
        reply["ts"] = _carried(msg["ts"], "ts")
    if "id" in msg:
        reply["id"] = msg["id"]
    return [Reply(reply)]


def _chat(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    text = _str_field(msg, "text")
    room = _room(msg, required=False)
    if room is None:
        room = session.current_room
        if room is None:
            raise ProtocolViolation("not in any room: join one or name 'room'", "no_room")
    _publishable(room)
    _take_user(session, msg)
    if not policy.may_publish(session, room):
        raise ProtocolViolation(f"not allowed to publish to room {room!r}", "forbidden")
    out = {"type": "chat", "from": session.client_id, "user": session.user, "room": room, "text": text,
           "ts": now_ms}
    return [Publish(room, room, out, codecs.encode_json(out), msg.get("id"))]


def _publish(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int,
             policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    _publishable(room)
    if "data" not in msg:
        raise BadMessage("missing field 'data'")
    if not policy.may_publish(session, room):
        raise ProtocolViolation(f"not allowed to publish to room {room!r}", "forbidden")
    out = {"type": "publication", "room": room, "data": msg["data"], "from": session.client_id,
           "user": session.user, "ts": now_ms}
    return [Publish(room, room, out, codecs.encode_json(out), msg.get("id"))]


def _broadcast(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int,
               policy: Policy) -> list[Action]:
    out: dict[str, Any] = {"type": "broadcast", "from": session.client_id}
    if "text" in msg:
        out["text"] = _str_field(msg, "text")
    elif "data" in msg:
        out["data"] = msg["data"]
    else:
        raise BadMessage("broadcast needs 'text' or 'data'")
    _take_user(session, msg)
    if not policy.may_broadcast(session):
        raise ProtocolViolation("not allowed to broadcast", "forbidden")
    out["user"] = session.user
    out["ts"] = now_ms
    return [Publish(BROADCAST, None, out, codecs.encode_json(out), msg.get("id"))]


def _join(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    since = _since(msg)
    if not policy.may_join(session, room):
        raise ProtocolViolation(f"not allowed to join room {room!r}", "forbidden")
    mid = msg.get("id")
    presence = msg.get("presence", False)
    if type(presence) is not bool:
        raise BadMessage("'presence' must be true or false")
    if presence and room.startswith(SYSTEM_PREFIX):
        raise RoomError(f"presence is for rooms, not for {room!r}")
    if room == BROADCAST:
        already = session.broadcasts
        session.broadcasts = True
        return [Join(room, since, mid, already)]
    if room.startswith(SYSTEM_PREFIX):  # a server stream: never a room of the session's list
        system = session.system if session.system is not None else set()
        already = room in system
        system.add(room)
        session.system = system
        return [Join(room, since, mid, already)]
    rooms = session.rooms
    if room in rooms:
        rooms.remove(room)  # already a member: only becomes current again
        rooms.append(room)
        return [Join(room, since, mid, already=True, presence=presence)]
    if len(rooms) >= max_rooms:
        raise RoomError(f"at most {max_rooms} rooms per connection", "too_many_rooms")
    rooms.append(room)
    return [Join(room, since, mid, presence=presence)]


def _leave(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    if room == BROADCAST:
        if not session.broadcasts:
            raise RoomError(f"not in room {room!r}", "not_in_room")
        session.broadcasts = False
    elif room.startswith(SYSTEM_PREFIX):
        if not session.system or room not in session.system or room.startswith(PRESENCE_PREFIX):
            raise RoomError(f"not in room {room!r}", "not_in_room")  # presence ends by leaving its room
        session.system.discard(room)
    else:
        if room not in session.rooms:
            raise RoomError(f"not in room {room!r}", "not_in_room")
        session.rooms.remove(room)
    reply = _with_id({"type": "left", "room": room, "rooms": list(session.rooms)}, msg)
    return [Unsubscribe(room), Reply(reply)]


def _get_presence(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int,
                  policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    if room not in session.rooms and not policy.is_admin(session):
        raise RoomError(f"not in room {room!r}: only members (and admins) see its presence", "not_in_room")
    return [QueryPresence(room, msg.get("id"))]


def _custom(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int,
            policy: Policy) -> list[Action]:
    action = _str_field(msg, "action")
    data = msg.get("data")
    if data is not None:
        _carried(data, "data")
    if action == "get_stats":
        return [QueryStats(msg.get("id"), data)]
    assert action is not None
    if not 0 < len(action) <= MAX_ACTION_LEN:
        raise UnknownAction(f"unknown action {action[:64]!r}")
    return [Custom(action, data, msg.get("id"))]


HANDLERS: Final[dict[str, Handler]] = {
    "ping": _ping,
    "chat": _chat,
    "broadcast": _broadcast,
    "publish": _publish,
    "join": _join,
    "leave": _leave,
    "custom": _custom,
    "get_presence": _get_presence,
}
MESSAGE_TYPES: Final = tuple(HANDLERS)


def handle(session: Session, msg: Any, now_ms: int, max_rooms: int = 64,
           policy: Policy = ALLOW_ALL) -> list[Action]:
    """Route one decoded message. Raises ProtocolViolation for anything refused."""
    if type(msg) is not dict:
        raise BadMessage("a message must be a map with a 'type'")
    mtype = msg.get("type")
    if type(mtype) is not str:
        raise BadMessage("missing or non-string field 'type'")
    handler = HANDLERS.get(mtype)
    if handler is None:
        raise UnknownType(f"unknown message type {mtype[:64]!r}; known: {', '.join(MESSAGE_TYPES)}")
    mid = msg.get("id")
    if mid is not None and (type(mid) not in (str, int) or (type(mid) is str and len(mid) > MAX_ID_LEN)):
        raise BadMessage(f"'id' must be an integer or a string of at most {MAX_ID_LEN} characters")
    return handler(session, msg, now_ms, max_rooms, policy)


def message_type(msg: Any) -> str:
    """The metrics label for a decoded message: its type if known, else 'invalid'."""
    if type(msg) is dict:
        t = msg.get("type")
        if type(t) is str and t in HANDLERS:
            return t
    return "invalid"


def handle_payload(session: Session, payload: bytes, now_ms: int, max_rooms: int = 64,
                   policy: Policy = ALLOW_ALL) -> tuple[str, list[Action]]:
    """Decode with the session's codec and route. Never raises: refusals become error replies.

    Returns the message's type label (for metrics) and the actions.
    """
    msg: Any = None
    try:
        msg = session.codec.decode(payload)
        actions = handle(session, msg, now_ms, max_rooms, policy)
        return msg["type"], actions  # handle() accepted it: a map whose type is known
    except ProtocolViolation as exc:
        mid = msg.get("id") if type(msg) is dict else None
        if type(mid) not in (str, int) or (type(mid) is str and len(mid) > MAX_ID_LEN):
            mid = None
        return message_type(msg), [Reply(error_msg(exc.code, exc.detail, mid))]
