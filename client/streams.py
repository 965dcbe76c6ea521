"""Where the client stands in every stream, and what to do with each message that arrives (protocol v1.1).
Pure: no sockets, no asyncio, no clock.

Every room, and the broadcast channel (``$broadcast``), is a *stream*: the server numbers its messages
with ``offset`` (+1 per message, no gaps) within an ``epoch`` (a name that changes whenever the stream's
history was lost). :class:`StreamTracker` follows one stream and classifies each message:

* :attr:`Verdict.DELIVER`: the next one (or the first one seen);
* :attr:`Verdict.DUPLICATE`: already delivered (offset at or below the position, in the same epoch): drop;
* :attr:`Verdict.GAP`: delivered, but the offset jumped: the messages in between are missing (``missed``);
* :attr:`Verdict.NEW_EPOCH`: delivered, and the stream's history was lost: what came before is unknown;
* :attr:`Verdict.LATE`: delivered out of order, but never seen before: it fills a hole left by an earlier
  gap, or comes from an epoch already left behind with an offset above what was seen of it.

So a message is delivered at most once, a message that arrives late is not lost, and a position never
goes backwards. Holes (at most ``max_holes`` ranges) and retired epochs (at most ``max_retired``) are
bounded; what falls off is then treated as seen.

:class:`Streams` tracks every stream of a client and turns the verdicts into :class:`RecoveryEvent`\\ s, the
application-visible answer to "did I miss anything?":

* a re-join with ``since`` (after a reconnect) is settled by its ``joined`` answer: replayed messages
  counted, gaps and epoch changes seen on the way, the server's ``recovered`` flag and a check that the
  position reached the stream's ``offset`` give one event: ``recovered=True`` or a loss, with its reason;
* a live message that jumps or comes with a new epoch is a loss at once (``gap``, ``epoch_changed``);
* ``bad_since`` (the server refused the position) forgets the stream; the re-join without ``since``
  reports the loss.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .protocol import Position, position_of, stream_of

__all__ = ["Decision", "Observation", "RecoveryEvent", "StreamTracker", "Streams", "Verdict"]

#: Why a :class:`RecoveryEvent` was raised.
RESUMED: Final = "resumed"  # a re-join with since replayed everything that was missed
EPOCH_CHANGED: Final = "epoch_changed"  # the stream's history was lost (server, worker or Redis restart...)
GAP: Final = "gap"  # offsets are missing (history trimmed, or a jump in live messages)
NOT_RECOVERED: Final = "not_recovered"  # the server said recovered: false, with no more detail
BAD_SINCE: Final = "bad_since"  # the server refused the position; joined again without it
REWOUND: Final = "rewound"  # the stream is behind the client's position in the same epoch
REJOIN_FAILED: Final = "rejoin_failed"  # the re-join was refused (forbidden, too_many_rooms...)


class Verdict(enum.Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"
    NEW_EPOCH = "new_epoch"
    LATE = "late"

    @property
    def delivered(self) -> bool:
        return self is not Verdict.DUPLICATE


@dataclass(frozen=True, slots=True)
class Observation:
    verdict: Verdict
    missed: int = 0  # GAP / NEW_EPOCH: offsets known to be missing before this one


class StreamTracker:
    """The position in one stream, the holes left by gaps, and the epochs left behind."""

    __slots__ = ("_retired", "epoch", "holes", "max_holes", "max_retired", "offset")

    def __init__(self, max_holes: int = 64, max_retired: int = 8) -> None:
        self.max_holes = max_holes
        self.max_retired = max_retired
        self.epoch: str | None = None
        self.offset = 0  # the highest offset seen (or announced by a joined) in ``epoch``
        self.holes: list[tuple[int, int]] = []  # sorted, disjoint, inclusive ranges of missing offsets
        self._retired: OrderedDict[str, int] = OrderedDict()  # epoch -> highest offset seen in it

    @property
    def position(self) -> Position | None:
        return Position(self.epoch, self.offset) if self.epoch is not None else None

    def reset(self) -> None:
        """Forget everything (the server refused the position, or the stream was left)."""
        self.epoch, self.offset, self.holes = None, 0, []
        self._retired.clear()

    def observe(self, epoch: str, offset: int) -> Observation:
        """Classify a message of this stream carrying ``epoch`` / ``offset``, and move the position."""
        if self.epoch is None:
            self.epoch, self.offset = epoch, offset
            return Observation(Verdict.DELIVER)
        if epoch == self.epoch:
            if offset == self.offset + 1:
                self.offset = offset
                return Observation(Verdict.DELIVER)
            if offset > self.offset:
                missed = offset - self.offset - 1
                self._add_hole(self.offset + 1, offset - 1)
                self.offset = offset
                return Observation(Verdict.GAP, missed)
            return Observation(Verdict.LATE if self._fill_hole(offset) else Verdict.DUPLICATE)
        if epoch in self._retired:
            if offset > self._retired[epoch]:
                self._retired[epoch] = offset
                return Observation(Verdict.LATE)
            return Observation(Verdict.DUPLICATE)
        self._switch(epoch, offset)
        if offset > 1:
            self._add_hole(1, offset - 1)
        return Observation(Verdict.NEW_EPOCH, max(0, offset - 1))

    def rebase(self, epoch: str, offset: int) -> bool:
        """Take a position announced by the server (a ``joined``): the next message will be ``offset + 1``.
        Returns True when that is a new epoch for a stream that had one (its history was lost)."""
        if self.epoch is None:
            self.epoch, self.offset = epoch, offset
            return False
        if epoch == self.epoch:
            self.offset = max(self.offset, offset)
            return False
        self._switch(epoch, offset)
        return True

    def rewind(self, epoch: str, offset: int) -> None:
        """Trust the server's position although it is behind ours (same epoch): offsets above it will be
        used again for new messages, so they must not be dropped as duplicates."""
        self.epoch, self.offset = epoch, offset
        self.holes = [(lo, min(hi, offset)) for lo, hi in self.holes if lo <= offset]

    def skip_to(self, offset: int) -> int:
        """The stream is at ``offset`` (same epoch) and the messages after ours up to it never came: open
        a hole for them, move there, and return how many they are."""
        missed = max(0, offset - self.offset)
        self._add_hole(self.offset + 1, offset)
        self.offset = max(self.offset, offset)
        return missed

    def _switch(self, epoch: str, offset: int) -> None:
        if self.epoch is not None:
            self._retired[self.epoch] = self.offset
            self._retired.move_to_end(self.epoch)
            while len(self._retired) > self.max_retired:
                self._retired.popitem(last=False)
        self.epoch, self.offset, self.holes = epoch, offset, []

    def _add_hole(self, lo: int, hi: int) -> None:
        if lo > hi:
            return
        self.holes.append((lo, hi))  # gaps only open above the position: the list stays sorted
        if len(self.holes) > self.max_holes:
            del self.holes[0]  # the oldest hole is forgotten: a message in it now counts as seen

    def _fill_hole(self, offset: int) -> bool:
        for i, (lo, hi) in enumerate(self.holes):
            if lo <= offset <= hi:
                parts = [(a, b) for a, b in ((lo, offset - 1), (offset + 1, hi)) if a <= b]
                self.holes[i:i + 1] = parts
                return True
            if offset < lo:
                break
        return False


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """What the client knows about the completeness of a stream, at a re-join or when a loss shows.

    ``room`` is the stream (``$broadcast`` for broadcasts). ``recovered`` is True when every message
    missed while disconnected was delivered (the re-join with ``since`` replayed it all); False means
    some messages may be missing. ``replayed`` is how many missed messages were delivered by the re-join
    (duplicates not counted). ``missed`` is how many are known to be missing, ``None`` when unknown (the
    epoch changed: the history is gone). ``reason`` is one of ``resumed``, ``epoch_changed``, ``gap``,
    ``not_recovered``, ``bad_since``, ``rewound``, ``rejoin_failed``. ``position`` is where the client
    now stands in the stream.
    """

    room: str
    recovered: bool
    replayed: int = 0
    reason: str = RESUMED
    missed: int | None = 0
    position: Position | None = None
    live: bool = False  # seen on a live message, not at a re-join


@dataclass(frozen=True, slots=True)
class Decision:
    deliver: bool
    verdict: Verdict | None = None  # None: not a tracked message (no stream, or no offset/epoch)
    event: RecoveryEvent | None = None  # a loss seen on this message (reported before delivering it)


@dataclass(slots=True)
class _Join:
    """A join in progress: with ``since`` (a recovery), or after ``bad_since``."""

    since: Position | None
    replayed: int = 0
    missed: int = 0
    epoch_changed: bool = False
    bad_since: bool = False


@dataclass(slots=True)
class Streams:
    """Every stream of one client: trackers, joins in progress, and the events they produce."""

    max_holes: int = 64
    max_retired: int = 8
    _trackers: dict[str, StreamTracker] = field(default_factory=dict)
    _joins: dict[str, _Join] = field(default_factory=dict)

    def _tracker(self, room: str) -> StreamTracker:
        tracker = self._trackers.get(room)
        if tracker is None:
            tracker = self._trackers[room] = StreamTracker(self.max_holes, self.max_retired)
        return tracker

    @property
    def positions(self) -> dict[str, Position]:
        """The position in every stream that has one. (``list()`` first: the blocking client reads this
        from another thread than the one updating it.)"""
        return {room: pos for room, t in list(self._trackers.items()) if (pos := t.position) is not None}

    def since(self, room: str) -> Position | None:
        """What to ask for when joining ``room`` again: the position, or ``None`` when there is none."""
        tracker = self._trackers.get(room)
        return tracker.position if tracker is not None else None

    def clear(self) -> None:
        self._trackers.clear()
        self._joins.clear()

    def message(self, msg: Mapping[str, Any]) -> Decision:
        """Decide about a received message: deliver it or drop it (a duplicate); a loss it reveals on a
        live stream comes back as ``event``. Messages without a stream or without offset/epoch (a v1
        server) are delivered untouched."""
        room = stream_of(msg)
        pos = position_of(msg) if room is not None else None
        if room is None or pos is None:
            return Decision(True)
        obs = self._tracker(room).observe(pos.epoch, pos.offset)
        if not obs.verdict.delivered:
            return Decision(False, obs.verdict)
        join = self._joins.get(room)
        if join is not None:
            join.replayed += 1
            if obs.verdict is Verdict.GAP:
                join.missed += obs.missed
            elif obs.verdict is Verdict.NEW_EPOCH:
                join.epoch_changed = True
            return Decision(True, obs.verdict)
        event = None
        if obs.verdict is Verdict.GAP:
            event = RecoveryEvent(room, False, 0, GAP, obs.missed, pos, live=True)
        elif obs.verdict is Verdict.NEW_EPOCH:
            event = RecoveryEvent(room, False, 0, EPOCH_CHANGED, None, pos, live=True)
        return Decision(True, obs.verdict, event)

    def join_sent(self, room: str, since: Position | None) -> None:
        """A ``join`` of ``room`` is on its way, with ``since`` or without (after ``bad_since``, the flag
        is kept until the answer)."""
        join = self._joins.get(room)
        if since is not None:
            tracker = self._tracker(room)
            if tracker.epoch is None:  # a position given by the application: start from it
                tracker.rebase(since.epoch, since.offset)
            self._joins[room] = _Join(since)
        elif join is not None and join.bad_since:
            join.since = None
        else:
            self._joins.pop(room, None)

    def join_refused(self, room: str) -> None:
        """``bad_since``: the server does not know our position; forget it and remember the loss for the
        answer to the next join."""
        self._tracker(room).reset()
        self._joins[room] = _Join(None, bad_since=True)

    def join_failed(self, room: str) -> RecoveryEvent | None:
        """A join was refused for another reason. A loss (``rejoin_failed``) if it was a re-join with a
        position (the stream is not followed any more), else nothing."""
        join = self._joins.pop(room, None)
        tracker = self._trackers.pop(room, None)
        if join is None:
            return None
        return RecoveryEvent(room, False, join.replayed, REJOIN_FAILED, None, tracker.position if tracker else None)

    def joined(self, msg: Mapping[str, Any]) -> RecoveryEvent | None:
        """Settle a ``joined`` answer: an event for a re-join with ``since`` (or after ``bad_since``), or for
        a known stream whose epoch changed; ``None`` otherwise."""
        room = msg.get("room")
        if not isinstance(room, str):
            return None
        pos = position_of(msg)
        join = self._joins.pop(room, None)
        if pos is None:  # a v1 server: nothing to settle
            return None
        tracker = self._tracker(room)
        if join is None:
            known = tracker.epoch is not None
            if tracker.rebase(pos.epoch, pos.offset) and known:
                return RecoveryEvent(room, False, 0, EPOCH_CHANGED, None, tracker.position)
            return None
        missed: int | None = join.missed
        reason = RESUMED
        if join.bad_since:
            tracker.rebase(pos.epoch, pos.offset)
            reason, missed = BAD_SINCE, None
        elif tracker.epoch != pos.epoch or join.epoch_changed:  # (a replayed message may have shown it)
            tracker.rebase(pos.epoch, pos.offset)
            reason, missed = EPOCH_CHANGED, None
        elif tracker.offset > pos.offset:  # we are ahead of the stream: its offsets will be used again
            tracker.rewind(pos.epoch, pos.offset)
            reason, missed = REWOUND, None
        else:
            if tracker.offset < pos.offset:  # not everything up to the stream's position was replayed
                missed = join.missed + tracker.skip_to(pos.offset)
            if missed:
                reason = GAP
            elif msg.get("recovered") is False:
                reason, missed = NOT_RECOVERED, None
        return RecoveryEvent(room, reason == RESUMED, join.replayed, reason, missed, tracker.position)

    def left(self, room: str) -> None:
        """The stream was left: stop following it (a later join starts afresh)."""
        self._trackers.pop(room, None)
        self._joins.pop(room, None)
