"""Offset tracking, stitching of replayed and live messages, dedup and loss reports (client/streams.py), without
sockets: unit cases and properties (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol import Position
from client.streams import RecoveryEvent, Streams, StreamTracker, Verdict

pytestmark = pytest.mark.timeout(60)

V = Verdict


def chat(offset: int, epoch: str = "e1", room: str = "games") -> dict[str, Any]:
    return {"type": "chat", "room": room, "text": f"m{offset}", "offset": offset, "epoch": epoch}


def joined(offset: int, epoch: str = "e1", room: str = "games", **extra: Any) -> dict[str, Any]:
    return {"type": "joined", "room": room, "rooms": [room], "offset": offset, "epoch": epoch, **extra}


# ---------------------------------------------------------------------------------------------------
# StreamTracker


def test_in_order_duplicates_gaps_and_late_messages() -> None:
    t = StreamTracker()
    assert t.position is None
    verdicts = [t.observe("e1", o).verdict for o in (5, 6, 6, 5, 9, 7, 7, 8, 10)]
    assert verdicts == [V.DELIVER, V.DELIVER, V.DUPLICATE, V.DUPLICATE, V.GAP, V.LATE, V.DUPLICATE, V.LATE,
                        V.DELIVER]
    assert t.position == Position("e1", 10) and t.holes == []


def test_a_gap_says_how_many_are_missing() -> None:
    t = StreamTracker()
    t.rebase("e1", 3)
    obs = t.observe("e1", 8)
    assert (obs.verdict, obs.missed) == (V.GAP, 4) and t.holes == [(4, 7)]
    assert t.observe("e1", 5).verdict is V.LATE and t.holes == [(4, 4), (6, 7)]


def test_a_new_epoch_retires_the_old_one_without_flip_flopping() -> None:
    t = StreamTracker()
    t.rebase("a", 10)
    obs = t.observe("b", 3)
    assert (obs.verdict, obs.missed) == (V.NEW_EPOCH, 2) and t.position == Position("b", 3)
    assert t.observe("a", 9).verdict is V.DUPLICATE  # a straggler of the old epoch, seen already
    assert t.observe("a", 11).verdict is V.LATE  # a straggler never seen: delivered, not lost
    assert t.observe("a", 11).verdict is V.DUPLICATE
    assert t.position == Position("b", 3)  # still in the new epoch
    assert t.observe("b", 1).verdict is V.LATE  # offsets of the new epoch before the first one seen
    assert t.observe("b", 4).verdict is V.DELIVER


def test_rebase_rewind_skip_and_bounds() -> None:
    t = StreamTracker(max_holes=2, max_retired=1)
    assert not t.rebase("e", 5)
    assert not t.rebase("e", 3) and t.offset == 5  # never backwards by rebase
    assert t.skip_to(8) == 3 and t.holes == [(6, 8)] and t.offset == 8
    t.observe("e", 10)
    t.observe("e", 12)  # a third hole: the oldest is forgotten
    assert t.holes == [(9, 9), (11, 11)]
    assert t.observe("e", 7).verdict is V.DUPLICATE  # in the forgotten hole: counted as seen
    t.rewind("e", 10)
    assert t.position == Position("e", 10) and t.holes == [(9, 9)]
    assert t.observe("e", 11).verdict is V.DELIVER  # offsets used again after a rewind are delivered
    assert t.rebase("f", 1) and t.rebase("g", 1)
    assert t.observe("e", 99).verdict is V.NEW_EPOCH  # only one retired epoch is remembered (g's predecessor f)
    t.reset()
    assert t.position is None and t.holes == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=120))
def test_every_distinct_offset_is_delivered_exactly_once(arrivals: list[int]) -> None:
    t = StreamTracker(max_holes=1000)
    t.rebase("e", 0)  # a join: the next message is offset 1
    delivered = [o for o in arrivals if t.observe("e", o).verdict.delivered]
    assert sorted(delivered) == sorted(set(arrivals))
    assert t.offset == max(arrivals, default=0)
    missing = set(range(1, t.offset + 1)) - set(arrivals)
    assert {o for lo, hi in t.holes for o in range(lo, hi + 1)} == missing


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=30))
def test_in_order_arrival_is_always_delivered_as_is(start: int, n: int) -> None:
    t = StreamTracker()
    t.rebase("e", start)
    assert all(t.observe("e", o).verdict is V.DELIVER for o in range(start + 1, start + n + 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(min_value=1, max_value=15)), max_size=80))
def test_across_epochs_nothing_is_delivered_twice(arrivals: list[tuple[str, int]]) -> None:
    t = StreamTracker(max_holes=1000, max_retired=10)
    delivered = []
    current: list[str] = []  # the epochs in the order they became current
    for m in arrivals:
        if t.observe(*m).verdict.delivered:
            delivered.append(m)
        if not current or current[-1] != t.epoch:
            assert t.epoch not in current  # an epoch left behind never becomes current again
            current.append(t.epoch or "")
    assert len(delivered) == len(set(delivered))


# ---------------------------------------------------------------------------------------------------
# Streams: joins, recoveries, events


def test_a_resumed_rejoin() -> None:
    s = Streams()
    assert s.joined(joined(3)) is None  # a first join: the baseline, no event
    assert s.message(chat(4)).deliver
    s.join_sent("games", s.since("games"))
    assert s.since("games") == Position("e1", 4)
    for o in (5, 6):
        d = s.message(chat(o))
        assert d.deliver and d.event is None
    assert not s.message(chat(6)).deliver
    event = s.joined(joined(6, recovered=True, replayed=2))
    assert event == RecoveryEvent("games", True, 2, "resumed", 0, Position("e1", 6))


def test_a_rejoin_after_the_history_was_trimmed() -> None:
    s = Streams()
    s.joined(joined(4))
    s.join_sent("games", Position("e1", 4))
    s.message(chat(8))
    s.message(chat(9))
    event = s.joined(joined(9, recovered=False, replayed=2))
    assert event is not None and (event.recovered, event.reason, event.replayed, event.missed) == (False, "gap", 2, 3)


def test_the_server_claims_recovered_but_the_offsets_disagree() -> None:
    s = Streams()
    s.joined(joined(4))
    s.join_sent("games", Position("e1", 4))
    s.message(chat(5))
    event = s.joined(joined(7, recovered=True, replayed=1))
    assert event is not None and (event.recovered, event.reason, event.missed) == (False, "gap", 2)
    assert s.since("games") == Position("e1", 7)
    assert s.message(chat(6)).verdict is V.LATE  # if they come after all, they are delivered


def test_recovered_false_without_detail() -> None:
    s = Streams()
    s.joined(joined(4))
    s.join_sent("games", Position("e1", 4))
    event = s.joined(joined(4, recovered=False, replayed=0))
    assert event is not None and (event.recovered, event.reason, event.missed) == (False, "not_recovered", None)


@pytest.mark.parametrize("replayed", [0, 2])
def test_a_rejoin_into_a_new_epoch(replayed: int) -> None:
    s = Streams()
    s.joined(joined(10))
    s.join_sent("games", Position("e1", 10))
    for o in range(1, replayed + 1):
        d = s.message(chat(o, "e2"))
        assert d.deliver and d.event is None  # reported once, by the joined
    event = s.joined(joined(replayed, "e2", recovered=False, replayed=replayed))
    assert event is not None and (event.recovered, event.reason, event.replayed, event.missed) == (
        False, "epoch_changed", replayed, None)
    assert s.since("games") == Position("e2", replayed)


def test_bad_since_then_a_join_without() -> None:
    s = Streams()
    s.joined(joined(10))
    s.join_sent("games", Position("e1", 10))
    s.join_refused("games")
    assert s.since("games") is None
    s.join_sent("games", None)
    event = s.joined(joined(3))
    assert event is not None and (event.recovered, event.reason) == (False, "bad_since")
    assert s.since("games") == Position("e1", 3)
    assert s.message(chat(4)).verdict is V.DELIVER  # offsets below our old 10: not duplicates


def test_a_stream_behind_our_position_is_rewound() -> None:
    s = Streams()
    s.joined(joined(10))
    s.join_sent("games", Position("e1", 10))
    event = s.joined(joined(6, recovered=True, replayed=0))
    assert event is not None and event.reason == "rewound" and s.since("games") == Position("e1", 6)
    assert s.message(chat(7)).verdict is V.DELIVER


def test_live_losses_are_events_and_fresh_joins_are_not() -> None:
    s = Streams()
    assert s.joined(joined(0)) is None
    assert s.message(chat(1)).event is None
    gap = s.message(chat(4)).event
    assert gap is not None and gap.live and (gap.reason, gap.missed) == ("gap", 2)
    new = s.message(chat(1, "e2")).event
    assert new is not None and new.live and new.reason == "epoch_changed" and new.missed is None
    changed = s.joined(joined(5, "e3"))  # a join of a stream we follow shows yet another epoch
    assert changed is not None and changed.reason == "epoch_changed"
    s.left("games")
    assert s.since("games") is None and s.joined(joined(9, "e4")) is None  # a new start


def test_join_failed_reports_only_a_lost_rejoin() -> None:
    s = Streams()
    assert s.join_failed("other") is None
    s.joined(joined(2))
    s.join_sent("games", Position("e1", 2))
    event = s.join_failed("games")
    assert event is not None and (event.recovered, event.reason) == (False, "rejoin_failed")
    assert s.positions == {}


def test_messages_without_offsets_or_streams_pass_untouched() -> None:
    s = Streams()
    v1 = {"type": "chat", "room": "games", "text": "v1"}
    assert s.message(v1).deliver and s.message(v1).verdict is None
    assert s.message({"type": "pong"}).deliver
    assert s.joined({"type": "joined", "room": "games", "rooms": ["games"]}) is None
    b = s.message({"type": "broadcast", "text": "x", "offset": 1, "epoch": "b"})
    assert b.verdict is V.DELIVER and "$broadcast" in s.positions
    assert s.message({"type": "publication", "room": "feed", "data": 1, "offset": 7, "epoch": "p"}).deliver
    assert s.positions["feed"] == Position("p", 7)


def test_a_position_given_by_the_application_is_the_start() -> None:
    s = Streams()
    s.join_sent("news", Position("e1", 4))
    assert not s.message(chat(4, room="news")).deliver  # at or before the saved position: had it
    assert s.message(chat(5, room="news")).deliver
    event = s.joined(joined(5, room="news", recovered=True, replayed=1))
    assert event is not None and event.recovered and event.replayed == 1


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=40),
    seen=st.integers(min_value=0, max_value=40),
    history=st.integers(min_value=0, max_value=40),
    live=st.integers(min_value=0, max_value=10),
    echo=st.lists(st.integers(min_value=1, max_value=50), max_size=8),
)
def test_stitching_replay_and_live(total: int, seen: int, history: int, live: int, echo: list[int]) -> None:
    """A stream had ``total`` messages when the client came back; it had delivered the first ``seen``;
    the server keeps the last ``history``; ``live`` more follow the join; ``echo`` are offsets the server
    (wrongly) sends again after the live ones. The application gets every message it can get once, in
    order (a message that was missing and shows up late comes late), and the event tells the truth."""
    seen = min(seen, total)
    s = Streams()
    s.joined(joined(0))
    delivered = [o for o in range(1, seen + 1) if s.message(chat(o)).deliver]
    s.join_sent("games", s.since("games"))
    kept_from = max(1, total - history + 1)
    replay = [o for o in range(max(seen + 1, kept_from), total + 1)]
    delivered += [o for o in replay if s.message(chat(o)).deliver]
    recovered = seen >= total or kept_from <= seen + 1
    event = s.joined(joined(total, recovered=recovered, replayed=len(replay)))
    assert event is not None
    delivered += [o for o in range(total + 1, total + live + 1) if s.message(chat(o)).deliver]
    delivered += [o for o in echo if o <= total + live and s.message(chat(o)).deliver]

    expected = list(range(1, seen + 1)) + replay + list(range(total + 1, total + live + 1))
    # an echo of a message never delivered (left out of the history) fills its hole, once; others are dropped
    late = list(dict.fromkeys(o for o in echo if o <= total + live and o not in expected))
    assert delivered == expected + late  # in order, then the late ones; no duplicates
    assert event.recovered == recovered and event.replayed == len(replay)
    if not recovered:
        assert event.reason == "gap" and event.missed == total - seen - len(replay)
