"""Completeness from offsets (protocol v1.1), for the ``recovery`` scenario. Pure: offsets in, verdicts out.

Every message of a stream carries ``epoch`` and ``offset`` (+1 per message, no gaps, the first of an
epoch is 1). A receiver that joined a stream at ``offset`` N of epoch E (the position its first ``joined``
answer named) is owed every later message exactly once, in order: offsets N+1 .. the last one published
in E, and every offset of any epoch that started after it joined. The harness never trusts what a
receiver *thinks* it missed; it compares what arrived with what the publisher was acknowledged.

- :class:`OffsetTrack`: what one receiver got of one epoch of one stream, kept as the highest offset
  seen and the holes below it (a few intervals, not a set of every offset), so a receiver's state stays
  small however long the run. :meth:`OffsetTrack.feed` classifies each arrival: in order, after a gap,
  late (it fills a hole: out of order), a duplicate, or stale (at or before the receiver's starting
  position: never owed).
- :class:`StreamCheck`: one receiver, one stream, every epoch it saw; counts epoch changes (a history
  loss: the scenario must cause none) and messages that arrived before its first ``joined``.
- :class:`AckLog`: what the publisher was acknowledged, per stream and epoch: the offsets owed to the
  receivers (its highest offset per epoch), and whether the server assigned them without gaps.
- :func:`completeness`: one receiver's streams against what was published: owed, delivered (each owed
  offset once), missing, duplicates, late, stale, beyond (offsets nobody was acknowledged), epoch changes.
- :func:`merge_counts`, :func:`delivered_pct`: add the receivers up; the delivered fraction in % (goal:
  100.00, with zero duplicates and nothing out of order).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["COUNTS", "DUPLICATE", "GAP", "LATE", "OK", "STALE", "AckLog", "OffsetTrack", "StreamCheck",
           "completeness", "delivered_pct", "failures", "merge_counts"]

OK: Final = 0  # the next offset
GAP: Final = 1  # beyond the next: the offsets in between are missing (so far)
LATE: Final = 2  # fills a hole: it arrived, but out of order
DUPLICATE: Final = 3  # had it already
STALE: Final = 4  # at or before the receiver's starting position: never owed to it

# the counters :func:`completeness` returns, in the order reports print them
COUNTS: Final = ("owed", "delivered", "missing", "duplicates", "late", "stale", "beyond", "epoch_changes",
                 "gaps", "pre_join")


class OffsetTrack:
    """What one receiver got of one epoch of one stream: every offset in ``(base, last]`` except the
    ``holes`` (sorted, disjoint, inclusive ``[lo, hi]`` ranges), plus the counts of duplicates, late
    (out-of-order) and stale arrivals."""

    __slots__ = ("base", "duplicates", "gaps", "holes", "last", "late", "stale")

    def __init__(self, base: int = 0) -> None:
        self.base = base  # owed: offsets after this one (the position of the receiver's first join)
        self.last = base
        self.holes: list[list[int]] = []
        self.gaps = 0  # times an offset arrived with some missing before it
        self.duplicates = 0
        self.late = 0
        self.stale = 0

    def feed(self, offset: int) -> int:
        """Note the arrival of ``offset``; returns what it was (:data:`OK`, :data:`GAP`, :data:`LATE`,
        :data:`DUPLICATE` or :data:`STALE`)."""
        last = self.last
        if offset == last + 1:
            self.last = offset
            return OK
        if offset > last:
            self.holes.append([last + 1, offset - 1])
            self.last = offset
            self.gaps += 1
            return GAP
        if offset <= self.base:
            self.stale += 1
            return STALE
        holes = self.holes
        if holes:
            i = bisect.bisect_right(holes, offset, key=lambda h: h[0]) - 1
            if i >= 0 and holes[i][0] <= offset <= holes[i][1]:
                lo, hi = holes[i]
                if lo == hi:
                    del holes[i]
                elif offset == lo:
                    holes[i][0] = lo + 1
                elif offset == hi:
                    holes[i][1] = hi - 1
                else:
                    holes[i:i + 1] = [[lo, offset - 1], [offset + 1, hi]]
                self.late += 1
                return LATE
        self.duplicates += 1
        return DUPLICATE

    def missing_below(self, end: int) -> int:
        """Offsets in ``(base, end]`` that never arrived."""
        n = max(0, end - self.last)
        for lo, hi in self.holes:
            if lo > end:
                break
            n += min(hi, end) - lo + 1
        return n

    def received_upto(self, end: int) -> int:
        """Distinct offsets in ``(base, end]`` that arrived."""
        top = min(self.last, end)
        if top <= self.base:
            return 0
        return top - self.base - sum(min(hi, top) - lo + 1 for lo, hi in self.holes if lo <= top)

    def beyond(self, end: int) -> int:
        """Distinct offsets after ``end`` that arrived (nobody was acknowledged them)."""
        if self.last <= end:
            return 0
        return self.last - end - sum(hi - max(lo, end + 1) + 1 for lo, hi in self.holes if hi > end)

    def caught_up(self, end: int) -> bool:
        return self.last >= end and not self.holes


class StreamCheck:
    """One receiver, one stream: an :class:`OffsetTrack` per epoch. :meth:`begin` sets the starting
    position (the first ``joined`` answer); a message of an epoch not seen before is an epoch change
    (the stream's history was lost) and is tracked from offset 1."""

    __slots__ = ("epoch", "epoch_changes", "first_epoch", "pre_join", "tracks")

    def __init__(self) -> None:
        self.tracks: dict[str, OffsetTrack] = {}
        self.epoch: str | None = None  # the epoch of the latest arrival
        self.first_epoch: str | None = None
        self.epoch_changes = 0
        self.pre_join = 0  # messages that arrived before the first joined (not owed, not counted)

    @property
    def started(self) -> bool:
        return self.first_epoch is not None

    def begin(self, epoch: str, offset: int) -> None:
        """The receiver's first ``joined``: it is owed what comes after ``offset`` of ``epoch``. A later
        ``joined`` changes nothing (its position is what the receiver already tracks)."""
        if self.first_epoch is None:
            self.first_epoch = self.epoch = epoch
            self.tracks[epoch] = OffsetTrack(offset)

    def feed(self, epoch: str, offset: int) -> int:
        if self.first_epoch is None:
            self.pre_join += 1
            return STALE
        track = self.tracks.get(epoch)
        if track is None:
            self.epoch_changes += 1
            track = self.tracks[epoch] = OffsetTrack(0)
        elif epoch != self.epoch:  # back to an epoch it had left: nothing of it is owed any more
            track.stale += 1
            return STALE
        self.epoch = epoch
        return track.feed(offset)

    def position(self) -> tuple[str, int] | None:
        """Where to resume (``since``): the latest epoch and its highest offset."""
        if self.epoch is None:
            return None
        return self.epoch, self.tracks[self.epoch].last

    def caught_up(self, ends: Mapping[str, int]) -> bool:
        """Has it every offset ``ends`` (epoch -> last offset published) says exists?"""
        for epoch, end in ends.items():
            track = self.tracks.get(epoch)
            if track is None:
                if end > 0:
                    return False
                continue
            if not track.caught_up(end):
                return False
        return True


class AckLog:
    """The acknowledgements a publisher got: per stream and epoch the lowest and highest offset, how
    many, and how many were ``duplicate`` (a resend recognised)."""

    __slots__ = ("streams",)

    def __init__(self) -> None:
        self.streams: dict[str, dict[str, list[int]]] = {}  # stream -> epoch -> [lo, hi, count, duplicates]

    def feed(self, stream: str, epoch: str, offset: int, duplicate: bool = False) -> None:
        e = self.streams.setdefault(stream, {})
        r = e.get(epoch)
        if r is None:
            e[epoch] = [offset, offset, 1, int(duplicate)]
            return
        r[0] = min(r[0], offset)
        r[1] = max(r[1], offset)
        r[2] += 1
        r[3] += int(duplicate)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {s: {e: list(r) for e, r in eps.items()} for s, eps in self.streams.items()}

    @staticmethod
    def merge(logs: Iterable[Mapping[str, Mapping[str, list[int]]]]) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for log in logs:
            for s, eps in log.items():
                for e, (lo, hi, n, dup) in eps.items():
                    r = out.setdefault(s, {}).get(e)
                    if r is None:
                        out[s][e] = [lo, hi, n, dup]
                    else:
                        out[s][e] = [min(r[0], lo), max(r[1], hi), r[2] + n, r[3] + dup]
        return out

    @staticmethod
    def ends(log: Mapping[str, Mapping[str, list[int]]]) -> dict[str, dict[str, int]]:
        """stream -> epoch -> the highest offset acknowledged: what every receiver is owed up to."""
        return {s: {e: r[1] for e, r in eps.items()} for s, eps in log.items()}

    @staticmethod
    def gaps(log: Mapping[str, Mapping[str, list[int]]]) -> int:
        """Offsets inside the acknowledged ranges that nobody was acknowledged (the server skipped one, or
        someone else published): 0 when the sole publisher's acks are contiguous."""
        return sum(max(0, (hi - lo + 1) - (count - dup)) for eps in log.values() for lo, hi, count, dup in eps.values())


def completeness(checks: Mapping[str, StreamCheck], ends: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """One receiver against what was published (``ends``: stream -> epoch -> highest offset acknowledged).

    Owed: for the epoch it started in, the offsets after its starting position; for any other epoch
    published to, every offset from 1 (such an epoch began after the receiver joined, since the scenario
    joins every receiver before it publishes). ``delivered`` counts owed offsets that arrived (once);
    ``missing`` the owed ones that did not; ``duplicates``, ``late`` (out of order), ``stale`` (before the
    starting position), ``beyond`` (offsets nobody was acknowledged, or epochs nobody published in) are
    failures too. A receiver with no position in a stream (never joined) is owed every offset of it."""
    out = dict.fromkeys(COUNTS, 0)
    for stream, by_epoch in ends.items():
        chk = checks.get(stream)
        for epoch, end in by_epoch.items():
            track = chk.tracks.get(epoch) if chk is not None else None
            if track is None:
                owed = end
                out["owed"] += owed
                out["missing"] += owed
                continue
            owed = max(0, end - track.base)
            got = track.received_upto(end)
            out["owed"] += owed
            out["delivered"] += got
            out["missing"] += owed - got
            out["beyond"] += track.beyond(end)
    for stream, chk in checks.items():
        by_epoch = ends.get(stream, {})
        for epoch, track in chk.tracks.items():
            out["duplicates"] += track.duplicates
            out["late"] += track.late
            out["stale"] += track.stale
            out["gaps"] += track.gaps
            if epoch not in by_epoch:
                out["beyond"] += track.last - track.base - sum(hi - lo + 1 for lo, hi in track.holes)
        out["epoch_changes"] += chk.epoch_changes
        out["pre_join"] += chk.pre_join
    return out


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def delivered_pct(counts: Mapping[str, int]) -> float | None:
    """Owed offsets delivered, in % with 6 decimals, rounded down (None when nothing was owed)."""
    owed = counts.get("owed", 0)
    if not owed:
        return None
    delivered = counts.get("delivered", 0)
    if delivered >= owed:
        return 100.0
    return math.floor(1e8 * delivered / owed) / 1e6  # rounded down: a loss never shows as 100


def failures(counts: Mapping[str, Any]) -> list[str]:
    """Why a receiver set missed the goal (every owed offset exactly once, in order, no history lost);
    empty when it met it. ``counts`` may carry ``recovered_false`` and ``errors`` too."""
    why = []
    for key, text in (("missing", "owed messages never delivered"), ("duplicates", "duplicates"),
                      ("late", "delivered out of order"), ("stale", "delivered from before the subscriber's position"),
                      ("beyond", "messages nobody was acknowledged"), ("epoch_changes", "epoch changes (history lost)"),
                      ("recovered_false", "joins answered recovered: false"),
                      ("errors", "error replies")):
        n = int(counts.get(key, 0) or 0)
        if n:
            why.append(f"{n:,} {text}")
    return why
