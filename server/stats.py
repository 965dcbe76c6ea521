"""Stats: one worker's snapshot, and the ``stats`` reply built from every worker's. Pure: no I/O.

A snapshot carries counts and the Prometheus counters (bounded label sets), never the list of rooms: a
room name is shown only to whom may see it (the rooms a client is in; every room to an admin grant), and
only the rooms a query names are counted (:class:`StatsQuery`). So a snapshot stays small whatever the
rooms are called, and travels over the bus at a cost independent of the number of rooms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_LISTED_ROOMS: Final = 1000  # rooms an admin's stats list, the largest first
MAX_QUERY_ROOMS: Final = 4096  # rooms one gathering round may ask about
MAX_QUERY_CLIENTS: Final = 256  # clients one gathering round may close


@dataclass(slots=True)
class StatsQuery:
    """What a gathering round asks every worker besides its figures: these rooms' members, or
    (``all_rooms``) its largest rooms; the presence lists of ``presence`` rooms; and, for the HTTP API,
    to close the clients named in ``disconnect`` (each worker answers how many it closed)."""

    rooms: set[str] = field(default_factory=set)
    all_rooms: bool = False
    presence: set[str] = field(default_factory=set)
    disconnect: dict[str, tuple[int, str]] = field(default_factory=dict)  # client id -> (close code, reason)

    def add(self, rooms: Iterable[str], all_rooms: bool, presence: Iterable[str] = (),
            disconnect: Iterable[tuple[str, int, str]] = ()) -> None:
        self.all_rooms |= all_rooms
        for target, items in ((self.rooms, rooms), (self.presence, presence)):
            for r in items:
                if len(target) >= MAX_QUERY_ROOMS:
                    break
                target.add(r)
        for client_id, code, reason in disconnect:
            if len(self.disconnect) >= MAX_QUERY_CLIENTS:
                break
            self.disconnect[client_id] = (code, reason)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"rooms": sorted(self.rooms), "all": self.all_rooms}
        if self.presence:
            wire["presence"] = sorted(self.presence)
        if self.disconnect:
            wire["disconnect"] = [[c, code, reason] for c, (code, reason) in self.disconnect.items()]
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> StatsQuery:
        """A query from another worker (malformed parts are ignored)."""
        q = cls()
        if isinstance(data, dict):
            closing = data.get("disconnect")
            q.add(_strings(data.get("rooms")), bool(data.get("all")), _strings(data.get("presence")),
                  [(d[0], d[1], d[2]) for d in (closing if isinstance(closing, list) else [])
                   if isinstance(d, list) and len(d) == 3 and type(d[0]) is str and type(d[1]) is int
                   and 4000 <= d[1] <= 4999 and type(d[2]) is str and len(d[2]) <= 120])
        return q


def _strings(value: Any) -> list[str]:
    return [v for v in value if type(v) is str] if isinstance(value, list) else []


def room_counts(rooms: Mapping[str, Any], query: StatsQuery | None) -> dict[str, int]:
    """Members per room of this worker, for the rooms ``query`` asks about."""
    if query is None:
        return {}
    if query.all_rooms:
        public = ((r, m) for r, m in rooms.items() if not r.startswith("$"))  # not the server's own streams
        largest = sorted(public, key=lambda kv: -len(kv[1]))[:MAX_LISTED_ROOMS]
        return {r: len(m) for r, m in largest}
    out = {}
    for r in query.rooms:
        members = rooms.get(r)
        if members:
            out[r] = len(members)
    return out


def merge_rooms(snaps: Iterable[Mapping[str, Any]], visible: Iterable[str] | None) -> dict[str, int]:
    """Members per room over all snapshots, limited to ``visible`` (None: every room counted)."""
    total: dict[str, int] = {}
    for s in snaps:
        counts = s.get("room_counts")
        if isinstance(counts, dict):
            for r, n in counts.items():
                if type(r) is str and type(n) is int:
                    total[r] = total.get(r, 0) + n
    if visible is not None:
        allowed = set(visible)
        total = {r: n for r, n in total.items() if r in allowed}
    if len(total) > MAX_LISTED_ROOMS:
        total = dict(sorted(total.items(), key=lambda kv: -kv[1])[:MAX_LISTED_ROOMS])
    return total


def worker_entry(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": s.get("id"), "pid": s.get("pid"), "node": s.get("node"), "clients": s.get("clients"),
            "messages_in": s.get("messages_in"), "messages_out": s.get("messages_out"),
            "rooms": s.get("room_count", 0)}


def stats_reply(snaps: list[dict[str, Any]], rooms: dict[str, int], you: dict[str, Any],
                extra: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stats`` message: totals over ``snaps``, the visible ``rooms``, the client's own figures."""
    snaps = sorted(snaps, key=lambda s: (str(s.get("node", "")), _int(s.get("id"))))
    return {
        "type": "stats",
        "clients": sum(_int(s.get("clients")) for s in snaps),
        "workers": [worker_entry(s) for s in snaps],
        "rooms": rooms,
        "room_count": sum(_int(s.get("room_count")) for s in snaps),
        "uptime_s": max((_float(s.get("uptime_s")) for s in snaps), default=0.0),
        **extra,
        "you": you,
    }


def _int(v: Any) -> int:
    return v if type(v) is int else 0


def _float(v: Any) -> float:
    return float(v) if type(v) in (int, float) else 0.0
