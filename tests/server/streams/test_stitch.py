"""Joining a stream whose history and live messages arrive on different paths (server/streams/stitch.py):
replay, then the live messages past it, each exactly once, in offset order. Unit cases and a property over
any history window, since and live arrival order (hypothesis). No sockets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.streams import stamp
from server.streams.stitch import Stitch

pytestmark = pytest.mark.timeout(60)

E = "e1"


def msg(offset: int, epoch: str = E) -> bytes:
    return stamp.stamp(orjson.dumps({"type": "chat", "room": "games", "text": f"m{offset}"}), offset, epoch)


def msgs(first: int, last: int, epoch: str = E) -> list[bytes]:
    return [msg(o, epoch) for o in range(first, last + 1)]


def offsets_of(payloads: list[bytes]) -> list[int]:
    out = []
    for p in payloads:
        pos = stamp.position(p)
        assert pos is not None
        out.append(pos[0])
    return out


def stitched(since: tuple[int, str] | None, live: list[bytes], epoch: str, latest: int, history: list[bytes],
             recovered: bool | None) -> tuple[list[bytes], int, bool | None]:
    s = Stitch(since)
    for p in live:
        s.add_live(p)
    return s.finish(epoch, latest, history, recovered)


# ---------------------------------------------------------------------------------------------------
# unit cases


def test_add_live_buffers_stamped_payloads_only() -> None:
    s = Stitch((3, E))
    s.add_live(msg(9))
    s.add_live(b'{"type":"chat","text":"unstamped"}')
    s.add_live(b"")
    s.add_live(msg(8, "other"))
    assert [(o, e) for o, e, _ in s.live] == [(9, E), (8, "other")]
    assert s.size == len(msg(9)) + len(msg(8, "other"))


def test_live_duplicating_the_history_and_arriving_before_it() -> None:
    out, last, recovered = stitched((3, E), [msg(8), msg(5), msg(7), msg(6)], E, 6, msgs(4, 6), True)
    assert out == msgs(4, 8) and last == 8 and recovered is True


def test_nothing_missed_nothing_live() -> None:
    assert stitched((6, E), [], E, 6, [], True) == ([], 6, True)
    assert stitched((6, E), [msg(6), msg(5)], E, 6, [], True) == ([], 6, True)


def test_only_live_after_a_full_recovery() -> None:
    assert stitched((6, E), [msg(7), msg(8)], E, 6, [], True) == (msgs(7, 8), 8, True)


def test_a_hole_between_history_and_live_is_not_recovered() -> None:
    out, last, recovered = stitched((3, E), [msg(8)], E, 6, msgs(4, 6), True)  # 7 never arrived
    assert out == [*msgs(4, 6), msg(8)] and last == 8 and recovered is False


def test_a_hole_among_the_live_messages_is_not_recovered() -> None:
    out, last, recovered = stitched((3, E), [msg(9), msg(7)], E, 6, msgs(4, 6), True)
    assert out == [*msgs(4, 7), msg(9)] and last == 9 and recovered is False


def test_without_since_only_what_follows_latest() -> None:
    out, last, recovered = stitched(None, [msg(5), msg(8), msg(7)], E, 6, msgs(1, 6), None)
    assert out == msgs(7, 8) and last == 8 and recovered is None
    assert stitched(None, [], E, 6, msgs(1, 6), None) == ([], 6, None)
    out, last, recovered = stitched(None, [msg(9)], E, 6, [], None)  # a hole: not a verdict without since
    assert out == [msg(9)] and last == 9 and recovered is None


def test_history_that_did_not_recover_is_replayed_whole() -> None:
    out, last, recovered = stitched((1, E), [msg(7), msg(5)], E, 6, msgs(4, 6), False)
    assert out == msgs(4, 7) and last == 7 and recovered is False
    assert stitched((1, E), [], E, 6, [], False) == ([], 6, False)  # all of it left the history


def test_since_of_another_epoch_replays_the_history() -> None:
    out, last, recovered = stitched((40, "old"), [msg(3), msg(4)], E, 3, msgs(1, 3), False)
    assert out == msgs(1, 4) and last == 4 and recovered is False


def test_a_live_message_of_another_epoch_means_not_recovered() -> None:
    out, last, recovered = stitched((3, E), [msg(7), msg(1, "e2"), msg(8, "e2")], E, 6, msgs(4, 6), True)
    assert out == msgs(4, 7) and last == 7 and recovered is False
    out, last, recovered = stitched(None, [msg(7), msg(1, "e2")], E, 6, [], None)
    assert out == [msg(7)] and recovered is None  # no since, no verdict


def test_history_entries_of_another_epoch_or_unstamped_are_skipped() -> None:
    history = [msg(4), msg(5, "e0"), b'{"type":"chat"}', msg(5), msg(6)]
    out, last, recovered = stitched((3, E), [], E, 6, history, True)
    assert out == msgs(4, 6) and last == 6 and recovered is True


def test_live_duplicates_are_sent_once() -> None:
    out, last, recovered = stitched((6, E), [msg(7), msg(7), msg(8), msg(7)], E, 6, [], True)
    assert out == msgs(7, 8) and last == 8 and recovered is True


# ---------------------------------------------------------------------------------------------------
# property: any history window, since and live arrival order


@dataclass
class Scenario:
    n: int  # messages of epoch E published by the time every live one arrived
    latest: int  # the stream's latest offset when the history was read
    first: int  # the first offset still in the history then (latest + 1: none kept)
    since: tuple[int, str] | None
    history: list[bytes]  # what the history read returned
    verdict: bool | None  # the history's own verdict for since
    live: list[bytes]  # live arrivals, in arrival order
    live_offsets: set[int]  # offsets of epoch E that arrived live
    foreign: int  # live messages of another epoch


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(min_value=0, max_value=25))
    latest = draw(st.integers(min_value=0, max_value=n))
    first = draw(st.integers(min_value=1, max_value=latest + 1))
    subscribed = draw(st.integers(min_value=0, max_value=latest))  # live: subscribed+1..n
    kind = draw(st.sampled_from(["none", "same", "other"]))
    since: tuple[int, str] | None
    if kind == "none":
        since, verdict = None, None
        history = msgs(first, latest) if draw(st.booleans()) else []  # ignored either way
    elif kind == "other":
        since, verdict = (draw(st.integers(min_value=0, max_value=50)), "old"), False
        history = msgs(first, latest)
    else:
        s = draw(st.integers(min_value=0, max_value=latest))
        since = (s, E)
        verdict = s + 1 >= first  # what StreamTable.replay / the Lua script answer
        history = msgs(s + 1, latest) if verdict else msgs(first, latest)
    arrived = draw(st.lists(st.booleans(), min_size=n - subscribed, max_size=n - subscribed))
    live_offsets = {o for o, ok in zip(range(subscribed + 1, n + 1), arrived) if ok}
    twice = draw(st.sets(st.sampled_from(sorted(live_offsets)), max_size=3)) if live_offsets else set()
    live = [msg(o) for o in sorted(live_offsets)] + [msg(o) for o in sorted(twice)]
    foreign = draw(st.lists(st.integers(min_value=1, max_value=30), max_size=2))
    live += [msg(o, "e2") for o in foreign]
    live += [b'{"type":"chat","text":"unstamped"}'] * draw(st.integers(min_value=0, max_value=1))
    live = draw(st.permutations(live))
    return Scenario(n, latest, first, since, history, verdict, live, live_offsets, len(foreign))


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_stitch_yields_each_offset_once_in_order(sc: Scenario) -> None:
    out, last, recovered = stitched(sc.since, sc.live, E, sc.latest, sc.history, sc.verdict)
    got = offsets_of(out)

    # each offset once, strictly increasing, all of the history's epoch, each payload the message itself
    assert all(a < b for a, b in itertools.pairwise(got)), got
    assert all(stamp.position(p) == (o, E) and p == msg(o) for p, o in zip(out, got))

    after = sorted(o for o in sc.live_offsets if o > sc.latest)  # live messages past the history
    contiguous = after == list(range(sc.latest + 1, sc.latest + 1 + len(after)))
    assert last == (after[-1] if after else sc.latest)
    if sc.since is None:
        assert got == after and recovered is None  # only what follows latest
        return
    if sc.verdict:
        assert got == list(range(sc.since[0] + 1, sc.latest + 1)) + after
        assert recovered is (contiguous and sc.foreign == 0)
    else:
        assert got == list(range(sc.first, sc.latest + 1)) + after
        assert recovered is False
    if recovered:
        assert got == list(range(sc.since[0] + 1, last + 1))  # exactly since+1..last, nothing missing
