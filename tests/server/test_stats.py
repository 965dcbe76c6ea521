"""Stats: the query a gathering round carries, each worker's room counts, and the reply built from them all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from server.stats import (
    MAX_LISTED_ROOMS,
    MAX_QUERY_ROOMS,
    StatsQuery,
    merge_rooms,
    room_counts,
    stats_reply,
    worker_entry,
)

# --- StatsQuery ------------------------------------------------------------------------------------------------


def test_a_new_query_asks_for_nothing() -> None:
    q = StatsQuery()
    assert q.rooms == set() and q.all_rooms is False
    assert q.to_wire() == {"rooms": [], "all": False}


def test_add_accumulates_rooms_and_all_rooms_sticks() -> None:
    q = StatsQuery()
    q.add(["lobby", "games"], False)
    q.add(["games", "chess"], True)
    q.add([], False)  # a later plain query does not undo an admin's
    assert q.rooms == {"lobby", "games", "chess"} and q.all_rooms is True


def test_add_stops_at_max_query_rooms() -> None:
    q = StatsQuery()
    q.add((f"r{i}" for i in range(MAX_QUERY_ROOMS - 10)), False)
    q.add((f"s{i}" for i in range(100)), False)
    assert len(q.rooms) == MAX_QUERY_ROOMS
    assert {f"s{i}" for i in range(10)} <= q.rooms and "s10" not in q.rooms
    q.add(["late"], True)
    assert "late" not in q.rooms and q.all_rooms is True  # the flag still counts


def test_add_consumes_no_more_of_an_endless_iterable_than_it_keeps() -> None:
    def endless() -> Iterator[str]:
        i = 0
        while True:
            yield f"room{i}"
            i += 1

    q = StatsQuery()
    q.add(endless(), False)
    assert len(q.rooms) == MAX_QUERY_ROOMS


def test_to_wire_is_sorted_and_round_trips_through_msgpack() -> None:
    q = StatsQuery()
    q.add(["zeta", "alpha", "mu"], True)
    wire = q.to_wire()
    assert wire == {"rooms": ["alpha", "mu", "zeta"], "all": True}
    back = StatsQuery.from_wire(msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False))
    assert back == q


@pytest.mark.parametrize("data", [None, 1, "rooms", b"x", [], ["lobby"], {}, {"rooms": None},
                                  {"rooms": "lobby"}, {"rooms": {"lobby": 1}}, {"all": False}])
def test_from_wire_of_something_malformed_is_an_empty_query(data: Any) -> None:
    assert StatsQuery.from_wire(data) == StatsQuery()


def test_from_wire_keeps_only_string_rooms() -> None:
    q = StatsQuery.from_wire({"rooms": ["lobby", 1, None, b"bin", ["nested"], "games", True], "all": 0})
    assert q.rooms == {"lobby", "games"} and q.all_rooms is False


def test_from_wire_caps_the_rooms() -> None:
    q = StatsQuery.from_wire({"rooms": [f"r{i}" for i in range(MAX_QUERY_ROOMS * 2)], "all": True})
    assert len(q.rooms) == MAX_QUERY_ROOMS and q.all_rooms is True


def test_from_wire_keeps_all_rooms_when_the_room_list_is_malformed() -> None:
    assert StatsQuery.from_wire({"all": True}).all_rooms is True
    assert StatsQuery.from_wire({"rooms": None, "all": True}).all_rooms is True


# --- room_counts ---------------------------------------------------------------------------------------------

ROOMS: dict[str, set[int]] = {"lobby": {1, 2, 3}, "games": {4}, "chess": {5, 6}, "empty": set()}


def test_room_counts_without_a_query_is_empty() -> None:
    assert room_counts(ROOMS, None) == {}


def test_room_counts_of_the_rooms_asked_that_have_members() -> None:
    q = StatsQuery()
    q.add(["lobby", "chess", "nowhere", "empty"], False)
    assert room_counts(ROOMS, q) == {"lobby": 3, "chess": 2}


def test_room_counts_of_all_rooms_lists_the_largest_first_up_to_the_cap() -> None:
    q = StatsQuery()
    q.add([], True)
    assert list(room_counts({"a": {1}, "b": {1, 2, 3}, "c": {1, 2}}, q).items()) == [("b", 3), ("c", 2),
                                                                                      ("a", 1)]
    many = {f"r{i}": set(range(i % 7 + 1)) for i in range(MAX_LISTED_ROOMS + 500)}
    counts = room_counts(many, q)
    assert len(counts) == MAX_LISTED_ROOMS
    assert min(counts.values()) >= max(len(m) for r, m in many.items() if r not in counts)


# --- merge_rooms ---------------------------------------------------------------------------------------------


def test_merge_rooms_sums_every_workers_counts() -> None:
    snaps = [{"room_counts": {"lobby": 2, "games": 1}}, {"room_counts": {"lobby": 3}}, {}]
    assert merge_rooms(snaps, None) == {"lobby": 5, "games": 1}


def test_merge_rooms_shows_only_the_visible_rooms() -> None:
    snaps = [{"room_counts": {"lobby": 2, "secret": 9}}, {"room_counts": {"lobby": 1, "games": 4}}]
    assert merge_rooms(snaps, ["lobby", "games", "absent"]) == {"lobby": 3, "games": 4}
    assert merge_rooms(snaps, iter(["secret"])) == {"secret": 9}
    assert merge_rooms(snaps, []) == {}


def test_merge_rooms_ignores_malformed_counts() -> None:
    snaps: list[dict[str, Any]] = [
        {"room_counts": {"lobby": 1, 7: 3, "bad": "3", "float": 2.0, "flag": True, "none": None}},
        {"room_counts": [("lobby", 5)]},
        {"room_counts": None},
        {"room_counts": {"lobby": 2}},
    ]
    assert merge_rooms(snaps, None) == {"lobby": 3}


def test_merge_rooms_keeps_the_largest_rooms_up_to_the_cap() -> None:
    n = MAX_LISTED_ROOMS + 200
    snaps = [{"room_counts": {f"r{i}": i for i in range(n)}}, {"room_counts": {"r0": 10_000}}]
    merged = merge_rooms(snaps, None)
    assert len(merged) == MAX_LISTED_ROOMS
    assert merged["r0"] == 10_000 and merged[f"r{n - 1}"] == n - 1
    assert "r1" not in merged and f"r{n - MAX_LISTED_ROOMS}" not in merged
    assert f"r{n - MAX_LISTED_ROOMS + 1}" in merged


def test_merge_rooms_caps_after_filtering_by_visibility() -> None:
    snaps = [{"room_counts": {f"r{i}": 1000 + i for i in range(2 * MAX_LISTED_ROOMS)}}]
    visible = [f"r{i}" for i in range(0, 2 * MAX_LISTED_ROOMS, 2)]  # half of them, the smaller half included
    merged = merge_rooms(snaps, visible)
    assert set(merged) == set(visible) and len(merged) == MAX_LISTED_ROOMS


# --- stats_reply --------------------------------------------------------------------------------------------


def snap(id: Any, node: Any = "n1", clients: Any = 0, room_count: Any = 0, uptime_s: Any = 0.0,
         **more: Any) -> dict[str, Any]:
    return {"id": id, "pid": 100 + (id if type(id) is int else 0), "node": node, "clients": clients,
            "messages_in": 5, "messages_out": 6, "room_count": room_count, "uptime_s": uptime_s, **more}


def test_stats_reply_totals_over_every_worker() -> None:
    snaps = [snap(1, clients=3, room_count=2, uptime_s=10.5), snap(0, clients=4, room_count=1, uptime_s=12),
             snap(0, node="n0", clients=1, room_count=5, uptime_s=3.0)]
    reply = stats_reply(snaps, {"lobby": 8}, {"client_id": "0-1"}, {"bus": "pipe", "partial": False})
    assert reply["type"] == "stats"
    assert reply["clients"] == 8 and reply["room_count"] == 8 and reply["uptime_s"] == 12.0
    assert reply["rooms"] == {"lobby": 8} and reply["you"] == {"client_id": "0-1"}
    assert reply["bus"] == "pipe" and reply["partial"] is False
    assert [(w["node"], w["id"]) for w in reply["workers"]] == [("n0", 0), ("n1", 0), ("n1", 1)]
    assert reply["workers"][1] == {"id": 0, "pid": 100, "node": "n1", "clients": 4, "messages_in": 5,
                                   "messages_out": 6, "rooms": 1}


def test_stats_reply_of_no_worker() -> None:
    reply = stats_reply([], {}, {}, {})
    assert reply == {"type": "stats", "clients": 0, "workers": [], "rooms": {}, "room_count": 0, "uptime_s": 0.0,
                     "you": {}}


def test_stats_reply_counts_malformed_figures_as_zero() -> None:
    snaps = [snap(0, clients="3", room_count=None, uptime_s="long"), snap("x", clients=2.5, room_count=True),
             snap(None, node=None, clients=4, room_count=1, uptime_s=True)]
    reply = stats_reply(snaps, {}, {}, {})
    assert reply["clients"] == 4 and reply["room_count"] == 1 and reply["uptime_s"] == 0.0
    assert len(reply["workers"]) == 3


def test_the_client_always_gets_its_own_figures() -> None:
    reply = stats_reply([snap(0)], {}, {"msgs_in": 1}, {"you": "spoofed"})
    assert reply["you"] == {"msgs_in": 1}


def test_worker_entry_defaults_rooms_to_zero() -> None:
    assert worker_entry({"id": 3}) == {"id": 3, "pid": None, "node": None, "clients": None, "messages_in": None,
                                       "messages_out": None, "rooms": 0}
