"""Presence: who is in a room, as one worker knows it. Pure: no I/O.

A client that joins with ``presence: true`` is *tracked* in that room: it is listed by ``get_presence``
(and ``GET /api/rooms/{room}/presence``), its arrival and departure are announced to the room's other
tracked members as ``presence`` events, and it receives those events itself. Clients that do not ask cost
nothing: a lobby of 100,000 spectators sends no event.

There is no replicated presence state. A list is gathered on demand from every worker (and node) in the
same round as stats, each answering for its own tracked members, so a worker or node that dies simply stops
answering: its members vanish from the list at once, with no expiry to wait for (they are not announced as
leaving: their connections did not close here, a client learns of it by listing again).

Bounds: at most ``max_members`` tracked members per room per worker (a join beyond it succeeds without
presence, and its ``joined`` answer says ``presence: false``); a list carries at most ``MAX_LISTED``
members (the count is always complete); an event costs one delivery per tracked member of the room, so the
cost of a room's events is bounded by ``max_members`` per worker, whatever the number of its members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

from .protocol import PRESENCE_PREFIX

MAX_LISTED: Final = 1000  # members in one presence list (the count is always complete)
PREFIX: Final = PRESENCE_PREFIX  # the stream of a room's presence events: $presence:<room>


class Member(Protocol):
    client_id: str
    user: str | None


M = TypeVar("M", bound=Member)


def stream_of(room: str) -> str:
    return PREFIX + room


class PresenceTable(Generic[M]):
    """The tracked members of each room on this worker, in order of arrival."""

    __slots__ = ("max_members", "rooms")

    def __init__(self, max_members: int) -> None:
        self.max_members = max_members
        self.rooms: dict[str, dict[M, None]] = {}

    def track(self, room: str, member: M) -> bool:
        """Track ``member`` in ``room``; False when the room is full here (or presence is off)."""
        members = self.rooms.get(room)
        if members is None:
            if self.max_members <= 0:
                return False
            members = self.rooms[room] = {}
        elif member in members:
            return True
        if len(members) >= self.max_members:
            return False
        members[member] = None
        return True

    def untrack(self, room: str, member: M) -> bool:
        """Stop tracking; True when ``member`` was tracked in ``room``."""
        members = self.rooms.get(room)
        if members is None or member not in members:
            return False
        del members[member]
        if not members:
            del self.rooms[room]
        return True

    def tracked(self, room: str, member: M) -> bool:
        members = self.rooms.get(room)
        return members is not None and member in members

    def count(self, room: str) -> int:
        members = self.rooms.get(room)
        return len(members) if members else 0

    def listing(self, rooms: Iterable[str], node: str) -> dict[str, dict[str, Any]]:
        """This worker's part of a presence list for each of ``rooms`` (for the gathering round)."""
        out: dict[str, dict[str, Any]] = {}
        for room in rooms:
            members = self.rooms.get(room)
            if not members:
                continue
            listed = [[m.client_id, m.user, node] for m in _first(members, MAX_LISTED)]
            out[room] = {"count": len(members), "members": listed}
        return out


def _first(members: dict[M, None], n: int) -> list[M]:
    out: list[M] = []
    for m in members:
        if len(out) >= n:
            break
        out.append(m)
    return out


def merge(snaps: Iterable[Mapping[str, Any]], room: str) -> dict[str, Any]:
    """One room's presence over every worker's answer: ``{"count", "members", "truncated"}``.

    Malformed parts (from a peer) are skipped; the members are sorted by user, then client id."""
    count = 0
    members: list[dict[str, Any]] = []
    for s in snaps:
        part = s.get("presence")
        if not isinstance(part, dict):
            continue
        entry = part.get(room)
        if not isinstance(entry, dict):
            continue
        n = entry.get("count")
        if type(n) is int and n > 0:
            count += n
        listed = entry.get("members")
        if not isinstance(listed, list):
            continue
        for m in listed:
            if len(members) >= MAX_LISTED:
                break
            if (isinstance(m, list) and len(m) == 3 and type(m[0]) is str and (m[1] is None or type(m[1]) is str)
                    and type(m[2]) is str):
                members.append({"client_id": m[0], "user": m[1], "node": m[2]})
    members.sort(key=lambda m: (m["user"] or "", m["client_id"], m["node"]))
    return {"count": count, "members": members, "truncated": count > len(members)}


def event_msg(room: str, event: str, client_id: str, user: str | None, node: str) -> dict[str, Any]:
    """A ``presence`` event: ``event`` is ``join`` or ``leave``."""
    return {"type": "presence", "room": room, "event": event, "client_id": client_id, "user": user, "node": node}
