"""Signed tokens (JWT, HS256): who a client is and what it may do. Pure: no I/O.

A token is checked once, at the WebSocket handshake; a missing, malformed, badly signed or expired one is
refused with HTTP 401 before any WebSocket exists. Claims:

=============  ==========================================================================================
``sub``        the user name (1 to 64 characters), shown as ``user`` on everything the client sends
``exp``        expiry, Unix seconds (required); an open connection is closed with 1008 when it passes
``iat``        issued at, Unix seconds (informational)
``rooms``      the rooms the user may join and publish (``chat``) to; ``"*"`` allows every room
``broadcast``  ``true`` if the user may send ``broadcast`` messages (default ``false``)
``admin``      ``true`` for an operator: ``get_stats`` lists every room, and the ``$stats`` stream may be
               joined (default ``false``)
=============  ==========================================================================================

The token travels in ``Authorization: Bearer <token>`` or, for browsers (which cannot set headers on a
WebSocket), in the ``token`` query parameter: ``wss://host/?token=<token>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import jwt

from ..errors import AuthError
from ..protocol import MAX_ROOM_LEN, MAX_USER_LEN, STATS_ROOM, SYSTEM_PREFIX, Policy, Session
from ..streams import BROADCAST

ALGORITHM: Final = "HS256"
MAX_TOKEN_LEN: Final = 4096
ANY_ROOM: Final = "*"
LEEWAY_S: Final = 0.0


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    user: str
    rooms: frozenset[str]
    broadcast: bool
    expires: float  # Unix seconds
    admin: bool = False  # operator: every room's stats, the $stats dashboard stream

    @property
    def any_room(self) -> bool:
        return ANY_ROOM in self.rooms

    def may_use(self, room: str) -> bool:
        return ANY_ROOM in self.rooms or room in self.rooms


class GrantPolicy(Policy):
    """The protocol's permission hook, answered from one connection's token."""

    __slots__ = ("grant",)

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def may_join(self, session: Session, room: str) -> bool:
        if room.startswith(SYSTEM_PREFIX):  # everyone gets broadcasts; the dashboard stream is for admins
            return room == BROADCAST or (room == STATS_ROOM and self.grant.admin)
        return self.grant.may_use(room)

    def may_publish(self, session: Session, room: str) -> bool:
        return self.grant.may_use(room)

    def may_broadcast(self, session: Session) -> bool:
        return self.grant.broadcast

    def is_admin(self, session: Session) -> bool:
        return self.grant.admin


def issue(secret: str, user: str, rooms: Iterable[str], ttl: float, broadcast: bool = False,
          now: float | None = None, admin: bool = False) -> str:
    """A signed token for ``user``, valid ``ttl`` seconds from ``now``."""
    if not 0 < len(user) <= MAX_USER_LEN:
        raise ValueError(f"user must be 1 to {MAX_USER_LEN} characters")
    room_list = list(dict.fromkeys(rooms))
    for room in room_list:
        if not 0 < len(room) <= MAX_ROOM_LEN:
            raise ValueError(f"room names must be 1 to {MAX_ROOM_LEN} characters: {room!r}")
    if ttl <= 0:
        raise ValueError("ttl must be > 0 seconds")
    t = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(t), "exp": int(t + ttl), "rooms": room_list,
                              "broadcast": bool(broadcast)}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, now: float | None = None) -> Grant:
    """Check signature, expiry and claim types. Raises AuthError with reason auth_invalid/auth_expired."""
    if not token or len(token) > MAX_TOKEN_LEN:
        raise AuthError("malformed token", "auth_invalid")
    # 'iat' is informational (an issuer's clock ahead of ours must not refuse fresh tokens); a caller that
    # passes its own clock (tests) gets the expiry checked below instead of against the real time
    options: Any = {"require": ["exp", "sub"], "verify_iat": False, "verify_exp": now is None,
                    "verify_nbf": now is None}
    try:
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], options=options,
                                            leeway=LEEWAY_S)
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired", "auth_expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}", "auth_invalid") from None
    user = claims.get("sub")
    exp: Any = claims.get("exp")
    rooms = claims.get("rooms", [])
    broadcast = claims.get("broadcast", False)
    admin = claims.get("admin", False)
    if type(user) is not str or not 0 < len(user) <= MAX_USER_LEN:
        raise AuthError(f"invalid token: 'sub' must be a string of 1 to {MAX_USER_LEN} characters")
    if type(exp) not in (int, float):
        raise AuthError("invalid token: 'exp' must be a number")
    if now is not None and exp <= now:
        raise AuthError("token expired", "auth_expired")
    if type(rooms) is not list or not all(type(r) is str for r in rooms):
        raise AuthError("invalid token: 'rooms' must be a list of strings")
    if type(broadcast) is not bool:
        raise AuthError("invalid token: 'broadcast' must be true or false")
    if type(admin) is not bool:
        raise AuthError("invalid token: 'admin' must be true or false")
    return Grant(user, frozenset(rooms), broadcast, float(exp), admin)


def token_from(authorization: str | None, path: str) -> str | None:
    """The token of a handshake: ``Authorization: Bearer`` first, else the ``token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    _, sep, query = path.partition("?")
    if sep:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "token":
                return value
    return None
