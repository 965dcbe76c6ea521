"""The recovery scenario's verdict from offsets (bench.completeness), without sockets: in-order arrivals,
gaps, late (out-of-order) arrivals, duplicates, stale ones, epoch changes, streams never joined, the
publisher's acknowledgements; and a property test against a plain set-based reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.completeness import (
    DUPLICATE,
    GAP,
    LATE,
    OK,
    STALE,
    AckLog,
    OffsetTrack,
    StreamCheck,
    completeness,
    delivered_pct,
    failures,
    merge_counts,
)
from bench.report import fmt_value


def test_in_order_arrivals_are_complete() -> None:
    t = OffsetTrack(base=10)
    assert [t.feed(o) for o in range(11, 16)] == [OK] * 5
    assert t.last == 15 and t.holes == [] and t.caught_up(15) and not t.caught_up(16)
    assert t.received_upto(15) == 5 and t.missing_below(15) == 0 and t.beyond(15) == 0
    assert t.missing_below(17) == 2 and t.received_upto(13) == 3 and t.beyond(13) == 2


def test_a_gap_is_missing_until_it_arrives_late() -> None:
    t = OffsetTrack()
    assert t.feed(1) == OK
    assert t.feed(5) == GAP  # 2, 3, 4 missing
    assert t.holes == [[2, 4]] and t.missing_below(5) == 3 and t.received_upto(5) == 2 and not t.caught_up(5)
    assert t.feed(3) == LATE  # splits the hole
    assert t.holes == [[2, 2], [4, 4]]
    assert t.feed(2) == LATE and t.feed(4) == LATE
    assert t.holes == [] and t.late == 3 and t.gaps == 1 and t.caught_up(5)
    assert t.received_upto(5) == 5 and t.missing_below(5) == 0


def test_duplicates_and_stale_arrivals() -> None:
    t = OffsetTrack(base=3)
    assert t.feed(4) == OK and t.feed(4) == DUPLICATE
    assert t.feed(3) == STALE and t.feed(1) == STALE  # at or before the starting position: never owed
    assert t.feed(6) == GAP and t.feed(6) == DUPLICATE
    assert t.feed(5) == LATE and t.feed(5) == DUPLICATE
    assert (t.duplicates, t.stale, t.late) == (3, 2, 1)
    assert t.received_upto(6) == 3


def test_holes_at_both_ends_of_a_range() -> None:
    t = OffsetTrack()
    t.feed(10)
    assert t.holes == [[1, 9]]
    assert t.feed(1) == LATE and t.feed(9) == LATE
    assert t.holes == [[2, 8]]
    t.feed(20)
    assert t.holes == [[2, 8], [11, 19]]
    assert t.missing_below(15) == 7 + 5 and t.received_upto(15) == 3
    assert t.beyond(15) == 1  # only 20 arrived above 15


def test_stream_check_counts_epoch_changes_and_arrivals_before_the_first_join() -> None:
    c = StreamCheck()
    assert c.position() is None and not c.started
    assert c.feed("a", 1) == STALE and c.pre_join == 1  # nothing is owed before the first joined
    c.begin("a", 4)
    c.begin("b", 99)  # a later joined changes nothing
    assert c.feed("a", 5) == OK and c.position() == ("a", 5)
    assert c.feed("b", 1) == OK and c.epoch_changes == 1 and c.position() == ("b", 1)
    assert c.feed("a", 6) == STALE  # back to the epoch it left
    assert c.caught_up({"a": 5, "b": 1}) and not c.caught_up({"a": 6, "b": 1}) and not c.caught_up({"c": 1})
    assert c.caught_up({"c": 0})


def _receiver(arrivals: dict[str, list[tuple[str, int]]], start: dict[str, tuple[str, int]]) -> dict[str, StreamCheck]:
    checks = {}
    for stream, (epoch, offset) in start.items():
        c = StreamCheck()
        c.begin(epoch, offset)
        for e, o in arrivals.get(stream, []):
            c.feed(e, o)
        checks[stream] = c
    return checks


def test_completeness_of_a_perfect_receiver() -> None:
    checks = _receiver({"r": [("e", o) for o in range(3, 11)], "$broadcast": [("b", o) for o in range(1, 6)]},
                       {"r": ("e", 2), "$broadcast": ("b", 0)})
    out = completeness(checks, {"r": {"e": 10}, "$broadcast": {"b": 5}})
    assert out["owed"] == 8 + 5 and out["delivered"] == out["owed"]
    assert failures(out) == [] and delivered_pct(out) == 100.0


def test_completeness_counts_every_kind_of_failure() -> None:
    checks = _receiver({"r": [("e", 1), ("e", 2), ("e", 2), ("e", 5), ("e", 4), ("e", 9)]}, {"r": ("e", 0)})
    out = completeness(checks, {"r": {"e": 8}, "never": {"x": 3}})
    # r: owed 1..8, got 1 2 4 5 (3, 6, 7, 8 missing), 2 twice, 4 after 5, 9 beyond what was acknowledged;
    # "never": a stream it never joined: all 3 owed and missing
    assert out["owed"] == 8 + 3 and out["delivered"] == 4 and out["missing"] == 4 + 3
    assert out["duplicates"] == 1 and out["late"] == 1 and out["beyond"] == 1 and out["gaps"] == 2
    why = failures({**out, "recovered_false": 2})
    assert any("never delivered" in w for w in why) and any("duplicates" in w for w in why)
    assert any("out of order" in w for w in why) and any("recovered: false" in w for w in why)
    assert delivered_pct(out) == 36.363636  # 4 of 11, rounded down


def test_a_new_epoch_is_owed_from_its_first_offset() -> None:
    checks = _receiver({"r": [("e", 1), ("e", 2), ("f", 2), ("f", 3)]}, {"r": ("e", 0)})
    out = completeness(checks, {"r": {"e": 2, "f": 3}})
    assert out["owed"] == 2 + 3 and out["delivered"] == 4 and out["missing"] == 1  # f:1 never came
    assert out["epoch_changes"] == 1 and "epoch changes" in " ".join(failures(out))
    # an epoch nobody published in: everything received in it is beyond
    assert completeness(checks, {"r": {"e": 2}})["beyond"] == 2


def test_merge_and_percentages() -> None:
    a = {"owed": 10, "delivered": 10}
    b = {"owed": 10, "delivered": 9, "missing": 1}
    m = merge_counts([a, b])
    assert m == {"owed": 20, "delivered": 19, "missing": 1}
    assert delivered_pct(m) == 95.0 and delivered_pct({"owed": 0}) is None
    # one loss in ten million is not 100 %
    assert delivered_pct({"owed": 10_000_000, "delivered": 9_999_999}) == 99.99999


def test_ack_log_ranges_gaps_and_merge() -> None:
    log = AckLog()
    for o in (1, 2, 3, 5):
        log.feed("r", "e", o)
    log.feed("r", "e", 5, duplicate=True)  # a resend recognised: same offset, acknowledged again
    log.feed("$broadcast", "b", 7)
    d = log.to_dict()
    assert d == {"r": {"e": [1, 5, 5, 1]}, "$broadcast": {"b": [7, 7, 1, 0]}}
    assert AckLog.ends(d) == {"r": {"e": 5}, "$broadcast": {"b": 7}}
    assert AckLog.gaps(d) == 1  # offset 4 was never acknowledged to anyone
    other = {"r": {"e": [4, 4, 1, 0]}}
    merged = AckLog.merge([d, other])
    assert merged["r"]["e"] == [1, 5, 6, 1] and AckLog.gaps(merged) == 0


def test_a_loss_never_prints_as_100_percent() -> None:
    assert fmt_value(100.0, "%") == "100.00"
    assert fmt_value(99.99971, "%") == "99.9997"
    assert fmt_value(99.5, "%") == "99.5000"
    assert fmt_value(42.0, "%") == "42.0"


def test_cpu_seconds_keep_their_decimals() -> None:
    assert fmt_value(1.604, "CPU s") == "1.60"  # not rounded to "2" like a count
    assert fmt_value(0.193, "CPU s") == "0.19"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=40),
       st.lists(st.integers(min_value=-3, max_value=50), max_size=120))
def test_offset_track_agrees_with_a_set_based_reference(base: int, n: int, raw: list[int]) -> None:
    end = base + n
    arrivals = [base + x for x in raw]
    t = OffsetTrack(base)
    codes = [t.feed(o) for o in arrivals]
    seen: set[int] = set()
    top = base
    expect_codes = []
    for o in arrivals:
        if o <= base:
            expect_codes.append(STALE)
        elif o in seen:
            expect_codes.append(DUPLICATE)
        elif o == top + 1:
            expect_codes.append(OK)
        elif o > top:
            expect_codes.append(GAP)
        else:
            expect_codes.append(LATE)
        if o > base:
            seen.add(o)
            top = max(top, o)
    assert codes == expect_codes
    owed = set(range(base + 1, end + 1))
    assert t.received_upto(end) == len(seen & owed)
    assert t.missing_below(end) == len(owed - seen)
    assert t.beyond(end) == len({o for o in seen if o > end})
    assert t.caught_up(end) == (owed <= seen and not (set(range(base + 1, top + 1)) - seen))
