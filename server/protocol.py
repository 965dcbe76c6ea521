"""The fanwire message protocol v1: parse, validate, route. Pure: bytes in, actions out.

No asyncio, no sockets. The worker feeds every incoming WebSocket message to :func:`handle_payload`
together with the connection's :class:`Session`, and carries out the returned actions:

- :class:`Reply`: send this message to the sender only.
- :class:`Publish`: fan this message out to a room (``room`` set) or to everyone (``room is None``),
  on every worker and node.
- :class:`Subscribe` / :class:`Unsubscribe`: the session's room membership changed (the session's own
  ``rooms`` list is already updated); mirror it in the hub's room index.
- :class:`QueryStats`: gather stats from every worker, then reply.

See docs/protocol.md for the wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import codecs
from .errors import BadMessage, ProtocolViolation, RoomError, UnknownAction, UnknownType

PROTOCOL_VERSION: Final = 1
DEFAULT_ROOM: Final = "lobby"
MAX_ROOM_LEN: Final = 128
MAX_USER_LEN: Final = 64


class Session:
    """Per-connection protocol state. The worker's connection class extends it."""

    __slots__ = ("client_id", "codec", "rooms", "user", "user_fixed")

    def __init__(self, client_id: str, codec: codecs.Codec = codecs.JSON, user: str | None = None) -> None:
        self.client_id = client_id
        self.codec = codec
        self.user = user
        self.user_fixed = user is not None  # True when the name comes from an auth token
        self.rooms: list[str] = [DEFAULT_ROOM]

    @property
    def current_room(self) -> str | None:
        return self.rooms[-1] if self.rooms else None


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``msg`` to the sender only."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    """Fan ``msg`` out to ``room`` (None: everyone) on every worker and node. ``payload`` is ``msg`` encoded
    as JSON (the bus's canonical form), already checked to be encodable."""

    room: str | None
    msg: dict[str, Any]
    payload: bytes


@dataclass(frozen=True, slots=True)
class Subscribe:
    """The session joined ``room`` (its ``rooms`` list is updated already): mirror it in the hub."""

    room: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The session left ``room``: mirror it in the hub."""

    room: str


@dataclass(frozen=True, slots=True)
class QueryStats:
    """Gather stats from every worker, then reply (with ``id`` and ``data`` echoed)."""

    id: Any
    data: Any


Action = Reply | Publish | Subscribe | Unsubscribe | QueryStats


class Policy:
    """What a session may do; the default allows everything. Authentication plugs in here."""

    __slots__ = ()

    def may_join(self, session: Session, room: str) -> bool:
        return True

    def may_publish(self, session: Session, room: str) -> bool:
        return True

    def may_broadcast(self, session: Session) -> bool:
        return True


ALLOW_ALL: Final = Policy()


def error_msg(code: str, detail: str, id: Any = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if id is not None:
        msg["id"] = id
    return msg


def welcome_msg(session: Session, worker: int, node: str, now_ms: int, heartbeat_s: float,
                max_message_size: int) -> dict[str, Any]:
    return {
        "type": "welcome",
        "client_id": session.client_id,
        "worker": worker,
        "node": node,
        "codec": session.codec.name,
        "rooms": list(session.rooms),
        "server_ts": now_ms,
        "protocol": PROTOCOL_VERSION,
        "heartbeat_s": heartbeat_s,
        "max_message_size": max_message_size,
    }


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


def _take_user(session: Session, msg: dict[str, Any]) -> None:
    user = msg.get("user")
    if user is None or session.user_fixed:
        return
    if type(user) is not str or not 0 < len(user) <= MAX_USER_LEN:
        raise BadMessage(f"'user' must be a string of 1 to {MAX_USER_LEN} characters")
    session.user = user


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
    _take_user(session, msg)
    if not policy.may_publish(session, room):
        raise ProtocolViolation(f"not allowed to publish to room {room!r}", "forbidden")
    out = {"type": "chat", "from": session.client_id, "user": session.user, "room": room, "text": text,
           "ts": now_ms}
    return [Publish(room, out, codecs.encode_json(out))]


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
    return [Publish(None, out, codecs.encode_json(out))]


def _join(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    if not policy.may_join(session, room):
        raise ProtocolViolation(f"not allowed to join room {room!r}", "forbidden")
    actions: list[Action] = []
    rooms = session.rooms
    if room in rooms:
        rooms.remove(room)  # already a member: only becomes current again
    else:
        if len(rooms) >= max_rooms:
            raise RoomError(f"at most {max_rooms} rooms per connection", "too_many_rooms")
        actions.append(Subscribe(room))
    rooms.append(room)
    actions.append(Reply(_with_id({"type": "joined", "room": room, "rooms": list(rooms)}, msg)))
    return actions


def _leave(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int, policy: Policy) -> list[Action]:
    room = _room(msg)
    assert room is not None
    if room not in session.rooms:
        raise RoomError(f"not in room {room!r}", "not_in_room")
    session.rooms.remove(room)
    reply = _with_id({"type": "left", "room": room, "rooms": list(session.rooms)}, msg)
    return [Unsubscribe(room), Reply(reply)]


def _custom(session: Session, msg: dict[str, Any], now_ms: int, max_rooms: int,
            policy: Policy) -> list[Action]:
    action = _str_field(msg, "action")
    if action == "get_stats":
        data = msg.get("data")
        return [QueryStats(msg.get("id"), None if data is None else _carried(data, "data"))]
    assert action is not None
    raise UnknownAction(f"unknown action {action[:64]!r}; known: get_stats")


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


HANDLERS: Final[dict[str, Handler]] = {
    "ping": _ping,
    "chat": _chat,
    "broadcast": _broadcast,
    "join": _join,
    "leave": _leave,
    "custom": _custom,
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
    if mid is not None and type(mid) not in (str, int):
        raise BadMessage("'id' must be a string or an integer")
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
        if type(mid) not in (str, int):
            mid = None
        return message_type(msg), [Reply(error_msg(exc.code, exc.detail, mid))]
