"""Presence bookkeeping without sockets: the per-worker table, its bounds, and merging workers' answers."""

from __future__ import annotations

from dataclasses import dataclass

from server import presence as pres


@dataclass(eq=False)
class M:
    client_id: str
    user: str | None = None


def test_track_untrack_and_count() -> None:
    t: pres.PresenceTable[M] = pres.PresenceTable(3)
    a, b = M("0-1", "alice"), M("0-2")
    assert t.track("r", a) and t.track("r", a)  # twice: still one entry
    assert t.track("r", b) and t.count("r") == 2 and t.tracked("r", a)
    assert t.untrack("r", a) and not t.untrack("r", a) and not t.tracked("r", a)
    assert t.untrack("r", b) and "r" not in t.rooms  # an empty room leaves no entry behind
    assert t.count("r") == 0 and not t.untrack("nope", a)


def test_a_full_room_refuses_more_members_and_zero_turns_presence_off() -> None:
    t: pres.PresenceTable[M] = pres.PresenceTable(2)
    ms = [M(f"0-{i}") for i in range(3)]
    assert t.track("r", ms[0]) and t.track("r", ms[1])
    assert not t.track("r", ms[2]) and t.count("r") == 2
    assert t.track("other", ms[2])  # the bound is per room
    t.untrack("r", ms[0])
    assert t.track("r", ms[2])  # room again
    off: pres.PresenceTable[M] = pres.PresenceTable(0)
    assert not off.track("r", ms[0]) and off.rooms == {}


def test_listing_is_bounded_but_the_count_is_complete() -> None:
    t: pres.PresenceTable[M] = pres.PresenceTable(5000)
    for i in range(pres.MAX_LISTED + 10):
        t.track("big", M(f"0-{i}", f"u{i}"))
    part = t.listing(["big", "empty"], "n1")
    assert set(part) == {"big"}
    assert part["big"]["count"] == pres.MAX_LISTED + 10
    assert len(part["big"]["members"]) == pres.MAX_LISTED
    assert part["big"]["members"][0] == ["0-0", "u0", "n1"]  # in order of arrival


def test_merge_sums_counts_sorts_members_and_skips_malformed_parts() -> None:
    snaps = [
        {"presence": {"r": {"count": 2, "members": [["0-2", "bob", "a"], ["0-1", "alice", "a"]]}}},
        {"presence": {"r": {"count": 1, "members": [["1-1", None, "b"]]}, "other": {"count": 9, "members": []}}},
        {"presence": {"r": {"count": "x", "members": [["bad"], [1, 2, 3], ["1-9", 5, "b"]]}}},
        {"presence": "junk"},
        {},
    ]
    got = pres.merge(snaps, "r")
    assert got["count"] == 3 and not got["truncated"]
    assert [m["client_id"] for m in got["members"]] == ["1-1", "0-1", "0-2"]  # user (none first), client id
    assert got["members"][1] == {"client_id": "0-1", "user": "alice", "node": "a"}
    assert pres.merge(snaps, "nowhere") == {"count": 0, "members": [], "truncated": False}


def test_merge_caps_the_list_and_says_truncated() -> None:
    many = [[f"0-{i}", None, "a"] for i in range(pres.MAX_LISTED)]
    snaps = [{"presence": {"r": {"count": pres.MAX_LISTED, "members": many}}},
             {"presence": {"r": {"count": 5, "members": [[f"1-{i}", None, "b"] for i in range(5)]}}}]
    got = pres.merge(snaps, "r")
    assert got["count"] == pres.MAX_LISTED + 5 and len(got["members"]) == pres.MAX_LISTED and got["truncated"]


def test_event_message_and_stream_name() -> None:
    assert pres.stream_of("r") == "$presence:r"
    assert pres.event_msg("r", "leave", "0-1", "al", "n") == {
        "type": "presence", "room": "r", "event": "leave", "client_id": "0-1", "user": "al", "node": "n"}
