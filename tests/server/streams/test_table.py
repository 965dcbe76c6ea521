"""The sequencer's state (server/streams/table.py): offsets and epochs, history bounded in count, age and
bytes, replay with ``since``, the dedup window, export/load; unit cases and a stateful model (hypothesis).
The time is always injected. No sockets."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.errors import ProtocolViolation
from server.streams import stamp
from server.streams.table import Appended, BadSince, Replay, StreamTable

pytestmark = pytest.mark.timeout(60)


def payload(i: int, pad: int = 0) -> bytes:
    return orjson.dumps({"type": "chat", "room": "r", "text": f"m{i}" + "x" * pad})


def counter_epochs(prefix: str = "e") -> Callable[[], str]:
    """A deterministic new_epoch: e0, e1, e2..."""
    c = itertools.count()
    return lambda: f"{prefix}{next(c)}"


def offsets(replay: Replay) -> list[int]:
    out = []
    for p in replay.messages:
        pos = stamp.position(p)
        assert pos is not None and pos[1] == replay.epoch
        out.append(pos[0])
    return out


def ring_offsets(t: StreamTable, name: str) -> list[int]:
    return [o for o, _, _ in t.streams[name].ring]


def check_accounting(t: StreamTable) -> None:
    for s in t.streams.values():
        assert s.nbytes == sum(len(p) for _, _, p in s.ring)
    assert t.nbytes == sum(s.nbytes for s in t.streams.values())


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """What a hand-over carries: the export through msgpack (tuples become lists)."""
    out: dict[str, Any] = msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)
    return out


# ---------------------------------------------------------------------------------------------------
# offsets and epochs


def test_offsets_are_per_stream_plus_one_without_gaps() -> None:
    t = StreamTable(new_epoch=counter_epochs())
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for i, name in enumerate("aababbbaab"):
        a = t.append(name, payload(i), float(i))
        assert isinstance(a, Appended) and not a.duplicate
        assert a.payload == stamp.stamp(payload(i), a.offset, a.epoch)
        assert stamp.position(a.payload) == (a.offset, a.epoch)
        seen[name].append(a.offset)
    assert seen == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5]}
    assert t.position("a") == (5, "e0") and t.position("b") == (5, "e1")
    assert t.position("c") == (0, "e2")  # a stream starts at offset 0: its first message is 1
    check_accounting(t)


def test_epochs_differ_between_streams() -> None:
    t = StreamTable()
    epochs = [t.append(f"room-{i}", payload(i), 0.0).epoch for i in range(200)]
    assert len(set(epochs)) == 200 and all(stamp.valid_epoch(e) for e in epochs)


def test_a_forgotten_stream_starts_a_new_epoch() -> None:
    t = StreamTable(max_streams=2)
    old = [t.append("a", payload(i), 0.0) for i in range(3)][-1]
    t.append("b", payload(0), 0.0)
    t.append("c", payload(0), 0.0)  # a is the least recently used: forgotten whole
    assert list(t.names()) == ["b", "c"] and t.evicted_streams == 1
    check_accounting(t)
    new = t.append("a", payload(9), 1.0)  # b is forgotten now
    assert new.offset == 1 and new.epoch != old.epoch and list(t.names()) == ["c", "a"]
    r = t.replay("a", (old.offset, old.epoch), 1.0)  # recovering from the old epoch: not recovered
    assert r.recovered is False and r.epoch == new.epoch and offsets(r) == [1]
    check_accounting(t)


def test_max_streams_forgets_the_least_recently_used() -> None:
    t = StreamTable(max_streams=2, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0)
    t.append("b", payload(1), 0.0)
    t.replay("a", None, 0.0)  # a join uses a: b is now the least recently used
    t.append("c", payload(1), 0.0)
    assert list(t.names()) == ["a", "c"]
    t.position("a")  # so does asking for the position
    t.append("d", payload(1), 0.0)
    assert list(t.names()) == ["a", "d"] and t.evicted_streams == 2
    assert t.position("c") == (0, "e4")  # c again: a new epoch


# ---------------------------------------------------------------------------------------------------
# history bounds


def test_history_keeps_exactly_the_last_history_size() -> None:
    t = StreamTable(history_size=5, new_epoch=counter_epochs())
    for i in range(1, 13):
        t.append("a", payload(i), 0.0)
        assert ring_offsets(t, "a") == list(range(max(1, i - 4), i + 1))  # the oldest leave first
    r = t.replay("a", (7, "e0"), 0.0)
    assert (r.recovered, offsets(r), r.latest) == (True, [8, 9, 10, 11, 12], 12)
    r = t.replay("a", (6, "e0"), 0.0)  # 7 has left the history
    assert (r.recovered, offsets(r)) == (False, [8, 9, 10, 11, 12])
    check_accounting(t)


def test_history_ttl_by_the_injected_time() -> None:
    t = StreamTable(history_ttl=10.0, new_epoch=counter_epochs())
    for i, now in enumerate([0.0, 4.0, 8.0, 10.0], start=1):
        t.append("a", payload(i), now)
    assert ring_offsets(t, "a") == [1, 2, 3, 4]  # at 10 the first is exactly 10 s old: still kept
    r = t.replay("a", (0, "e0"), 16.0)  # at 16: the messages of 0 and 4 are too old
    assert (r.recovered, offsets(r)) == (False, [3, 4])
    r = t.replay("a", (2, "e0"), 16.0)
    assert (r.recovered, offsets(r)) == (True, [3, 4])
    t.append("b", payload(1), 16.0)
    t.prune(100.0)  # periodic upkeep ages every stream
    assert ring_offsets(t, "a") == [] and ring_offsets(t, "b") == [] and t.nbytes == 0
    r = t.replay("a", (4, "e0"), 100.0)  # nothing missed: still recovered, offsets kept
    assert (r.recovered, r.messages, r.latest) == (True, [], 4)
    assert t.append("a", payload(5), 100.0).offset == 5
    check_accounting(t)


def test_append_ages_its_own_stream() -> None:
    t = StreamTable(history_ttl=10.0)
    t.append("a", payload(1), 0.0)
    t.append("a", payload(2), 50.0)
    assert ring_offsets(t, "a") == [2]
    check_accounting(t)


def _sized(n: int) -> bytes:
    """A payload whose stamped size (offset < 10, epoch of 2 characters) is exactly n bytes."""
    base = len(stamp.stamp(payload(0), 1, "e0"))
    assert n >= base
    return payload(0, n - base)


def test_max_bytes_takes_the_least_recently_published_streams_oldest_first() -> None:
    t = StreamTable(max_bytes=600, new_epoch=counter_epochs())
    for name in "abc":
        for _ in range(2):
            assert len(t.append(name, _sized(100), 0.0).payload) == 100
    assert t.nbytes == 600 and t.evicted_messages == 0
    t.append("c", _sized(100), 0.0)  # 700: a's oldest leaves
    assert [ring_offsets(t, n) for n in "abc"] == [[2], [1, 2], [1, 2, 3]]
    t.append("b", _sized(250), 0.0)  # 950: a's last, then c's two oldest (c is now published before b)
    assert [ring_offsets(t, n) for n in "abc"] == [[], [1, 2, 3], [3]]
    assert t.nbytes == 550 <= t.max_bytes and t.evicted_messages == 4
    check_accounting(t)
    r = t.replay("a", (0, "e0"), 0.0)  # all of a left the history
    assert (r.recovered, r.messages, r.latest) == (False, [], 2)
    r = t.replay("a", (2, "e0"), 0.0)  # a client that had everything lost nothing
    assert (r.recovered, r.messages) == (True, [])


def test_max_bytes_takes_the_current_streams_older_messages_after_the_others() -> None:
    t = StreamTable(max_bytes=300, new_epoch=counter_epochs())
    t.append("a", _sized(100), 0.0)
    for _ in range(3):
        t.append("b", _sized(100), 0.0)
    assert ring_offsets(t, "a") == [] and ring_offsets(t, "b") == [1, 2, 3]
    t.append("b", _sized(250), 0.0)
    assert ring_offsets(t, "b") == [4] and t.nbytes == 250
    check_accounting(t)


def test_max_bytes_never_takes_the_only_message_of_the_stream_appended_to() -> None:
    t = StreamTable(max_bytes=50, new_epoch=counter_epochs())
    big = _sized(120)
    t.append("a", big, 0.0)
    assert ring_offsets(t, "a") == [1] and t.nbytes == 120  # above max_bytes by this one message only
    t.append("a", big, 0.0)
    assert ring_offsets(t, "a") == [2] and t.nbytes == 120
    t.append("b", big, 0.0)
    assert ring_offsets(t, "a") == [] and ring_offsets(t, "b") == [1] and t.nbytes == 120
    r = t.replay("b", (0, "e1"), 0.0)
    assert (r.recovered, offsets(r)) == (True, [1])
    check_accounting(t)


def test_max_bytes_order_is_by_publication_not_by_joins() -> None:
    t = StreamTable(max_bytes=300, new_epoch=counter_epochs())
    t.append("a", _sized(100), 0.0)
    t.append("b", _sized(100), 0.0)
    t.replay("a", None, 0.0)  # a join of a: a was still published before b
    t.append("c", _sized(100), 1.0)
    t.append("c", _sized(100), 1.0)  # 400: a's message (least recently published) must leave first
    assert ring_offsets(t, "a") == [] and ring_offsets(t, "b") == [1]


def test_history_size_zero_keeps_none_but_assigns_offsets() -> None:
    t = StreamTable(history_size=0, new_epoch=counter_epochs())
    for i in range(1, 6):
        a = t.append("a", payload(i), 0.0)
        assert a.offset == i and stamp.position(a.payload) == (i, "e0")
    assert t.nbytes == 0 and ring_offsets(t, "a") == []
    assert t.replay("a", (5, "e0"), 0.0) == Replay("e0", 5, [], True)
    assert t.replay("a", (4, "e0"), 0.0) == Replay("e0", 5, [], False)
    assert t.replay("a", None, 0.0) == Replay("e0", 5, [], None)


# ---------------------------------------------------------------------------------------------------
# replay


@pytest.fixture
def ten() -> StreamTable:
    """A stream "a" of epoch e0 with offsets 1..10, 6..10 still in history."""
    t = StreamTable(history_size=5, new_epoch=counter_epochs())
    for i in range(1, 11):
        t.append("a", payload(i), 0.0)
    return t


def test_replay_without_since(ten: StreamTable) -> None:
    assert ten.replay("a", None, 0.0) == Replay("e0", 10, [], None)
    assert ten.replay("new", None, 0.0) == Replay("e1", 0, [], None)  # a join makes the stream


def test_replay_since_latest_is_recovered_with_nothing(ten: StreamTable) -> None:
    assert ten.replay("a", (10, "e0"), 0.0) == Replay("e0", 10, [], True)


@pytest.mark.parametrize("since", [5, 6, 7, 9])
def test_replay_gap_inside_history(ten: StreamTable, since: int) -> None:
    r = ten.replay("a", (since, "e0"), 0.0)
    assert r.recovered is True and r.latest == 10
    assert offsets(r) == list(range(since + 1, 11))
    assert r.messages == [stamp.stamp(payload(o), o, "e0") for o in range(since + 1, 11)]


@pytest.mark.parametrize("since", [0, 1, 4])
def test_replay_since_older_than_history(ten: StreamTable, since: int) -> None:
    r = ten.replay("a", (since, "e0"), 0.0)
    assert r.recovered is False and offsets(r) == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("since", [(3, "zz"), (10, "e9"), (999, "old")])
def test_replay_since_another_epoch(ten: StreamTable, since: tuple[int, str]) -> None:
    r = ten.replay("a", since, 0.0)  # even an offset beyond latest: another epoch's offsets are unrelated
    assert r.recovered is False and r.epoch == "e0" and offsets(r) == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("since", [11, 12, 10**9])
def test_replay_since_ahead_is_bad_since(ten: StreamTable, since: int) -> None:
    with pytest.raises(BadSince) as err:
        ten.replay("a", (since, "e0"), 0.0)
    assert err.value.code == "bad_since" and isinstance(err.value, ProtocolViolation)


def test_bad_since_on_a_fresh_stream() -> None:
    t = StreamTable(new_epoch=counter_epochs())
    assert t.position("a") == (0, "e0")
    with pytest.raises(BadSince):
        t.replay("a", (1, "e0"), 0.0)
    assert t.replay("a", (0, "e0"), 0.0) == Replay("e0", 0, [], True)


# ---------------------------------------------------------------------------------------------------
# dedup


def test_a_resend_within_the_window_gets_the_first_ack() -> None:
    t = StreamTable(dedup_window=60.0, new_epoch=counter_epochs())
    first = t.append("a", payload(1), 0.0, "alice", 7)
    t.append("a", payload(2), 1.0)
    before = (t.position("a"), ring_offsets(t, "a"), t.nbytes)
    for now in (2.0, 30.0, 59.9):
        again = t.append("a", payload(1), now, "alice", 7)
        assert again == Appended(first.offset, first.epoch, b"", duplicate=True)
    assert (t.position("a"), ring_offsets(t, "a"), t.nbytes) == before  # nothing appended


def test_a_resend_after_the_window_is_published_again() -> None:
    t = StreamTable(dedup_window=60.0, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 7)
    t.prune(61.0)  # the periodic upkeep ran past the window
    again = t.append("a", payload(1), 61.0, "alice", 7)
    assert (again.offset, again.duplicate) == (2, False)
    t2 = StreamTable(dedup_window=60.0, new_epoch=counter_epochs())
    t2.append("a", payload(1), 0.0, "alice", 7)
    t2.append("b", payload(1), 61.0, "bob", 1)  # any acknowledged publication after the window
    assert t2.append("a", payload(1), 62.0, "alice", 7).duplicate is False


def test_a_resend_after_the_window_is_published_again_without_upkeep() -> None:
    t = StreamTable(dedup_window=60.0, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 7)
    again = t.append("a", payload(1), 61.0, "alice", 7)
    assert (again.offset, again.duplicate) == (2, False)


def test_dedup_key_is_stream_identity_and_id() -> None:
    t = StreamTable(new_epoch=counter_epochs())
    assert t.append("a", payload(1), 0.0, "alice", 7).offset == 1
    assert t.append("a", payload(1), 0.0, "bob", 7).duplicate is False  # another identity
    assert t.append("b", payload(1), 0.0, "alice", 7).duplicate is False  # another stream
    assert t.append("a", payload(1), 0.0, "alice", 8).duplicate is False  # another id
    assert t.append("a", payload(1), 0.0, "alice", "7").duplicate is False  # "7" is not 7
    assert t.append("a", payload(1), 0.0, "alice", 7) == Appended(1, "e0", b"", duplicate=True)
    assert t.append("a", payload(1), 0.0, "bob", 7) == Appended(2, "e0", b"", duplicate=True)
    assert t.append("b", payload(1), 0.0, "alice", 7) == Appended(1, "e1", b"", duplicate=True)
    assert t.position("a") == (4, "e0")


def test_no_dedup_without_identity_or_id() -> None:
    t = StreamTable()
    assert [t.append("a", payload(1), 0.0, None, 7).offset for _ in range(2)] == [1, 2]
    assert [t.append("a", payload(1), 0.0, "alice", None).offset for _ in range(2)] == [3, 4]
    assert t.dedup == {}


def test_max_dedup_forgets_the_oldest() -> None:
    t = StreamTable(max_dedup=3, new_epoch=counter_epochs())
    for i in range(1, 5):
        t.append("a", payload(i), float(i), "alice", i)  # ids 1..4 at offsets 1..4
    assert len(t.dedup) == 3
    assert t.append("a", payload(4), 5.0, "alice", 4) == Appended(4, "e0", b"", duplicate=True)
    assert t.append("a", payload(2), 5.0, "alice", 2) == Appended(2, "e0", b"", duplicate=True)
    assert t.append("a", payload(1), 5.0, "alice", 1).offset == 5  # id 1 was forgotten: published again


def test_a_forgotten_stream_forgets_its_dedup_entries() -> None:
    t = StreamTable(max_streams=2, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 1)
    t.append("b", payload(1), 0.0, "alice", 1)
    t.append("c", payload(1), 0.0)  # a is forgotten
    assert set(t.dedup) == {("b", "alice", 1)}
    a = t.append("a", payload(1), 1.0, "alice", 1)  # b forgotten
    assert (a.offset, a.epoch, a.duplicate) == (1, "e3", False)
    assert set(t.dedup) == {("a", "alice", 1)}


def test_a_key_reused_after_its_stream_was_forgotten_keeps_its_whole_window() -> None:
    t = StreamTable(dedup_window=60.0, max_streams=1, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 1)  # expires at 60
    t.append("b", payload(1), 1.0)  # a is forgotten
    first = t.append("a", payload(1), 2.0, "alice", 1)  # a new epoch: published; expires at 62
    t.prune(60.5)
    again = t.append("a", payload(1), 61.0, "alice", 1)  # within the window of the second publication
    assert again == Appended(first.offset, first.epoch, b"", duplicate=True)


def test_forgotten_entries_do_not_count_against_max_dedup() -> None:
    t = StreamTable(max_streams=2, max_dedup=2, new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 1)
    t.append("b", payload(1), 0.0, "alice", 2)
    t.append("a", payload(2), 0.0)
    t.append("c", payload(1), 0.0)  # b is forgotten with its entry
    t.append("a", payload(3), 0.0, "alice", 3)  # two entries remembered: (a, 1) and (a, 3)
    again = t.append("a", payload(1), 1.0, "alice", 1)
    assert again == Appended(1, "e0", b"", duplicate=True)


def test_clear_forgets_every_stream_and_the_dedup_window() -> None:
    t = StreamTable(new_epoch=counter_epochs())
    t.append("a", payload(1), 0.0, "alice", 1)
    t.append("b", payload(1), 0.0)
    t.clear()
    assert list(t.names()) == [] and t.nbytes == 0 and t.dedup == {} and t.evicted_streams == 2
    again = t.append("a", payload(1), 50.0, "alice", 1)  # a new epoch, and the resend is published
    assert (again.offset, again.epoch, again.duplicate) == (1, "e2", False)
    t.prune(70.0)  # past the old entry's expiry (60): nothing of it is left to expire the new one (110)
    assert t.append("a", payload(1), 71.0, "alice", 1) == Appended(1, "e2", b"", duplicate=True)
    check_accounting(t)


# ---------------------------------------------------------------------------------------------------
# export / load


def _source() -> StreamTable:
    t = StreamTable(history_size=4, dedup_window=60.0, new_epoch=counter_epochs("src"))
    for i in range(1, 7):
        t.append("a", payload(i), float(i), "alice", i)
    for i in range(1, 3):
        t.append("b", payload(i), float(i))
    t.append("$broadcast", payload(1), 3.0, "bob", "x")
    return t


def _must_not_make_epochs() -> str:
    raise AssertionError("a loaded stream must keep its epoch")


def test_export_load_round_trip() -> None:
    src = _source()
    state = roundtrip(src.export())
    dst = StreamTable(history_size=4, dedup_window=60.0, new_epoch=_must_not_make_epochs)
    dst.load(state, 10.0)
    names = list(src.names())
    assert list(dst.names()) == names
    for name in names:
        assert dst.position(name) == src.position(name)
        latest, epoch = src.position(name)
        for since in [None, (0, epoch), (max(0, latest - 2), epoch), (latest, epoch), (2, "other")]:
            assert dst.replay(name, since, 10.0) == src.replay(name, since, 10.0)
    assert dst.nbytes == src.nbytes
    check_accounting(dst)
    # the dedup window came along: a resend gets the first ack, a new message continues the offsets
    assert dst.append("a", payload(3), 11.0, "alice", 3) == Appended(3, "src0", b"", duplicate=True)
    assert dst.append("$broadcast", payload(1), 11.0, "bob", "x") == Appended(1, "src2", b"", duplicate=True)
    a = dst.append("a", payload(7), 11.0, "alice", 7)
    assert (a.offset, a.epoch, a.duplicate) == (7, "src0", False)
    assert dst.append("b", payload(3), 11.0).offset == 3
    # ... and still expires with the time
    dst.prune(70.0)
    assert dst.append("a", payload(1), 70.0, "alice", 1).duplicate is False


def test_export_selects_streams_and_their_dedup_entries() -> None:
    src = _source()
    state = roundtrip(src.export(lambda n: n != "a"))
    assert set(state["streams"]) == {"b", "$broadcast"}
    assert [key for _, key, _ in state["dedup"]] == [["$broadcast", "bob", "x"]]
    dst = StreamTable(new_epoch=counter_epochs("dst"))
    dst.load(state, 10.0)
    assert set(dst.names()) == {"b", "$broadcast"}
    assert dst.append("a", payload(1), 10.0, "alice", 1).epoch == "dst0"  # a was not handed over


def test_load_replaces_a_stream_of_the_same_name() -> None:
    src = _source()
    dst = StreamTable(history_size=4, new_epoch=counter_epochs("dst"))
    for i in range(3):
        dst.append("a", payload(i, 500), 0.0, "carol", i)
    dst.load(roundtrip(src.export()), 10.0)
    assert dst.position("a") == src.position("a") and dst.nbytes == src.nbytes
    assert dst.evicted_streams == 0
    assert ("a", "carol", 0) not in dst.dedup
    check_accounting(dst)


def test_load_ages_history_and_dedup_at_the_given_time() -> None:
    src = StreamTable(history_ttl=10.0, dedup_window=5.0, new_epoch=counter_epochs())
    src.append("a", payload(1), 0.0, "alice", 1)
    src.append("a", payload(2), 8.0)
    dst = StreamTable(history_ttl=10.0, dedup_window=5.0, new_epoch=_must_not_make_epochs)
    dst.load(roundtrip(src.export()), 15.0)
    assert ring_offsets(dst, "a") == [2] and dst.dedup == {}
    assert dst.append("a", payload(1), 15.0, "alice", 1).offset == 3


def test_load_keeps_a_lone_oversized_message_like_the_source() -> None:
    src = StreamTable(max_bytes=50, new_epoch=counter_epochs())
    src.append("a", payload(1), 0.0)
    src.append("b", payload(2, 100), 0.0)  # over max_bytes by itself: kept (the stream appended to)
    assert ring_offsets(src, "b") == [1]
    dst = StreamTable(max_bytes=50, new_epoch=_must_not_make_epochs)
    dst.load(roundtrip(src.export()), 0.0)
    assert dst.replay("b", (0, "e1"), 0.0) == src.replay("b", (0, "e1"), 0.0)


# ---------------------------------------------------------------------------------------------------
# stateful: StreamTable against a simple model


NAMES = ("a", "b", "c")


@dataclass
class MStream:
    epoch: str
    msgs: list[tuple[int, float, bytes]] = field(default_factory=list)  # every message of this epoch

    @property
    def latest(self) -> int:
        return len(self.msgs)


@dataclass(frozen=True)
class Config:
    history_size: int
    history_ttl: float
    max_bytes: int
    max_streams: int
    dedup_window: float

    @property
    def forgets(self) -> bool:
        return self.max_streams < len(NAMES)

    @property
    def max_dedup(self) -> int:
        # where streams are forgotten, a bound that is never reached (see the xfail tests above: stale
        # entries of forgotten streams count against it)
        return 10_000 if self.forgets else 3


configs = st.sampled_from([
    Config(history_size=8, history_ttl=4.0, max_bytes=10**9, max_streams=3, dedup_window=5.0),  # exact
    Config(history_size=8, history_ttl=1e6, max_bytes=600, max_streams=3, dedup_window=5.0),  # bytes
    Config(history_size=3, history_ttl=4.0, max_bytes=250, max_streams=2, dedup_window=2.0),  # every bound
    Config(history_size=1, history_ttl=1e6, max_bytes=10**9, max_streams=3, dedup_window=5.0),
    Config(history_size=0, history_ttl=1e6, max_bytes=10**9, max_streams=2, dedup_window=5.0),
])


class TableMachine(RuleBasedStateMachine):
    """Appends (with or without an (identity, id)), time passing with the periodic upkeep, replays with
    any since, positions and hand-overs, checked against a model of the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = Config(0, 1.0, 1, 1, 1.0)
        self.now = 0.0
        self.model: OrderedDict[str, MStream] = OrderedDict()  # least recently used first
        self.dedup: OrderedDict[tuple[str, str, int], tuple[int, str, float]] = OrderedDict()
        # keys whose stream was forgotten are never reused: that would hit the dedup_order bug (xfail above)
        self.burned: set[tuple[str, str, int]] = set()
        self.epochs_made = 0
        self.forgotten = 0
        self.all_epochs: list[str] = []
        self.table = StreamTable()
        self.epoch_source = counter_epochs()

    @initialize(cfg=configs, preload=st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 30)),
                                              max_size=20))
    def setup(self, cfg: Config, preload: list[tuple[str, int]]) -> None:
        self.cfg = cfg
        self.table = self._new_table()
        for name, pad in preload:  # some history to start with
            self._append(name, pad, None)

    def _new_table(self) -> StreamTable:
        c = self.cfg
        return StreamTable(c.history_size, c.history_ttl, c.max_bytes, c.dedup_window,
                           max_streams=c.max_streams, max_dedup=c.max_dedup, new_epoch=self.epoch_source)

    # --- the model ------------------------------------------------------------------------------------

    def touch(self, name: str) -> MStream:
        s = self.model.get(name)
        if s is not None:
            self.model.move_to_end(name)
            return s
        s = self.model[name] = MStream(f"e{self.epochs_made}")
        self.epochs_made += 1
        self.all_epochs.append(s.epoch)
        while len(self.model) > self.cfg.max_streams:
            gone, _ = self.model.popitem(last=False)
            self.forgotten += 1
            for key in [k for k in self.dedup if k[0] == gone]:
                del self.dedup[key]
                self.burned.add(key)
        return s

    def expected_ring(self, s: MStream) -> list[tuple[int, float, bytes]]:
        """The history with no max_bytes: the last history_size messages, none older than history_ttl."""
        if self.cfg.history_size == 0:
            return []
        return [m for m in s.msgs[-self.cfg.history_size:] if m[1] >= self.now - self.cfg.history_ttl]

    # --- rules ------------------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), pad=st.integers(min_value=0, max_value=30) | st.integers(0, 300),
          key=st.none() | st.tuples(st.sampled_from(["u", "v"]), st.integers(min_value=0, max_value=3)))
    def append(self, name: str, pad: int, key: tuple[str, int] | None) -> None:
        self._append(name, pad, key)

    def _append(self, name: str, pad: int, key: tuple[str, int] | None) -> None:
        dkey = None if key is None else (name, key[0], key[1])
        if dkey in self.burned:
            dkey = key = None
        data = payload(pad, pad)
        got = self.table.append(name, data, self.now, *(key or (None, None)))
        s = self.touch(name)
        if dkey is not None and dkey in self.dedup:
            offset, epoch, _ = self.dedup[dkey]
            assert epoch == s.epoch
            assert got == Appended(offset, epoch, b"", duplicate=True)
            event("append: duplicate")
            return
        stamped = stamp.stamp(data, s.latest + 1, s.epoch)
        assert got == Appended(s.latest + 1, s.epoch, stamped)  # +1, no gap, in this stream's epoch
        s.msgs.append((got.offset, self.now, stamped))
        if self.cfg.history_size:  # whatever else leaves, the message just appended is in the history
            assert self.table.streams[name].ring[-1] == (got.offset, self.now, stamped)
        if dkey is not None:
            self.dedup[dkey] = (got.offset, got.epoch, self.now + self.cfg.dedup_window)
            while len(self.dedup) > self.cfg.max_dedup:
                self.dedup.popitem(last=False)
        # never above max_bytes, except for this one message of this stream
        if self.table.evicted_messages:
            event("append: max_bytes evicted messages")
        if self.table.nbytes > self.cfg.max_bytes:
            event("append: one message over max_bytes")
            assert [ring_offsets(self.table, n) for n in self.table.names()] == \
                [[got.offset] if n == name else [] for n in self.table.names()]

    @rule(name=st.sampled_from(NAMES), pads=st.lists(st.integers(min_value=0, max_value=30), min_size=1,
                                                     max_size=6))
    def append_several(self, name: str, pads: list[int]) -> None:
        for pad in pads:
            self._append(name, pad, None)

    @rule(dt=st.sampled_from([0, 1, 2, 4]))
    def advance(self, dt: int) -> None:
        self.now += dt
        self.table.prune(self.now)  # the periodic upkeep (see the xfail test for a resend without it)
        for key in [k for k, v in self.dedup.items() if v[2] <= self.now]:
            del self.dedup[key]

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def replay(self, name: str, data: st.DataObject) -> None:
        known = self.model.get(name)
        latest = known.latest if known is not None else 0
        kind = data.draw(st.sampled_from(["none", "current", "current", "current", "old"]))
        since: tuple[int, str] | None = None
        if kind != "none":
            offset = max(0, latest - data.draw(st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 6, 9])))
            if kind == "current":
                epoch = known.epoch if known is not None else f"e{self.epochs_made}"  # a new stream's
            else:
                epoch = data.draw(st.sampled_from([*self.all_epochs, "zz"]))
            since = (offset, epoch)
        try:
            got = self.table.replay(name, since, self.now)
        except BadSince:
            s = self.touch(name)
            assert since is not None and since[1] == s.epoch and since[0] > s.latest
            event("replay: bad_since")
            return
        s = self.touch(name)
        assert (got.epoch, got.latest) == (s.epoch, s.latest)
        got_offsets = offsets(got)
        assert all(b == a + 1 for a, b in itertools.pairwise(got_offsets))  # in order, no duplicate, no gap
        assert all(p == s.msgs[o - 1][2] for p, o in zip(got.messages, got_offsets))
        if got_offsets:
            assert got_offsets[-1] == s.latest
        ring = ring_offsets(self.table, name)
        if since is None:
            assert got.recovered is None and got.messages == []
        elif since[1] != s.epoch:
            assert got.recovered is False and got_offsets == ring
            event("replay: another epoch")
        else:
            assert since[0] <= s.latest
            covered = since[0] == s.latest or (bool(ring) and ring[0] <= since[0] + 1)
            assert got.recovered is covered
            event(f"replay: recovered {covered}, {'some' if got_offsets else 'no'} messages")
            if covered:
                assert got_offsets == list(range(since[0] + 1, s.latest + 1))
            else:
                assert got_offsets == ring

    @rule(name=st.sampled_from(NAMES))
    def position(self, name: str) -> None:
        got = self.table.position(name)
        s = self.touch(name)
        assert got == (s.latest, s.epoch)

    @precondition(lambda self: self.table.nbytes <= self.cfg.max_bytes)  # see the xfail load test above
    @rule()
    def hand_over(self) -> None:
        state = roundtrip(self.table.export())
        before = {n: [(o, t, p) for o, t, p in self.table.streams[n].ring] for n in self.table.names()}
        self.table = self._new_table()
        self.table.load(state, self.now)
        self.forgotten = 0  # the new table's own count starts at 0
        after = {n: [(o, t, p) for o, t, p in self.table.streams[n].ring] for n in self.table.names()}
        assert after == before

    # --- invariants -------------------------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        t = self.table
        assert list(t.names()) == list(self.model)
        assert t.evicted_streams == self.forgotten
        for name, s in self.model.items():
            ts = t.streams[name]
            assert (ts.epoch, ts.offset) == (s.epoch, s.latest)
            ring = list(ts.ring)
            offs = [o for o, _, _ in ring]
            assert offs == list(range(s.latest - len(ring) + 1, s.latest + 1))  # a contiguous suffix
            expected = self.expected_ring(s)
            if self.cfg.max_bytes >= 10**9:
                assert ring == expected
            else:  # max_bytes may have taken the oldest messages as well
                assert ring == expected[len(expected) - len(ring):] and len(ring) <= len(expected)
        assert dict(t.dedup) == dict(self.dedup)  # (offset, epoch, expiry) per live key

    @invariant()
    def bytes_add_up(self) -> None:
        check_accounting(self.table)
        if self.table.nbytes > self.cfg.max_bytes:  # only one message left, in one stream
            assert sorted(len(s.ring) for s in self.table.streams.values() if s.ring) == [1]


TableMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_table_against_a_model = TableMachine.TestCase
