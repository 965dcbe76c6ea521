"""Mending the live messages of streams that arrive on a path that can miss some: a worker's Redis
subscription (its connection dropped and came back while Redis stayed up; or, in a cluster, the messages
its node dropped while the stream's slot was sequenced locally).

Redis publishes each stream's messages in offset order, so a worker that gets every one sees offsets go
up by one within an epoch, and a new epoch start at 1. A :class:`Mender` remembers the position of the
last message it delivered of every stream the worker follows (a room with members here; the broadcast
stream always). A message further on - a jump within the epoch, or a new epoch that does not start at 1 -
means some were missed: the mender then holds the stream's live messages, asks the stream's history since
the last position (the bus's own ``history``, whose answer meets the live messages: see
:meth:`.base.Bus.history`), and delivers the missed messages, then the held ones, each once and in offset
order (:class:`~server.streams.stitch.Stitch`). Joins of the stream answered while it mends wait for it
(:meth:`Mender.after`), so what a joiner gets after its answer still comes after the answer's ``latest``.

Never a silent hole: when the history no longer has what was missed (trimmed, expired, a new epoch
meanwhile, or no answer) the held messages are delivered as they are, so the receivers see the jump in
offsets (or the new epoch) and know they lost something; it is counted (``bus_dropped{reason="unmended"}``).

Costs: one position per followed stream (forgotten when the stream has no member here any more, so that a
stream followed again starts afresh rather than "mending" what its new members never asked for); one
history request per hole, while which the stream's live messages wait (at most ``max_held`` of them;
beyond, the mending gives up as above). A stream that is not followed passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..metrics import Metrics
from ..streams import BROADCAST, stamp
from ..streams.stitch import Stitch
from ..streams.table import Replay
from .base import Publication, ReplayDone

MAX_HELD: Final = 10_000  # live messages of one stream held while its hole is mended
MAX_HELD_BYTES: Final = 16 << 20

History = Callable[[str, "tuple[int, str] | None", ReplayDone], None]


class _Mending:
    """One stream's hole being mended: the live messages held meanwhile, the joins' answers waiting."""

    __slots__ = ("stitch", "waiting")

    def __init__(self, since: tuple[int, str]) -> None:
        self.stitch = Stitch(since)
        self.waiting: list[Callable[[], None]] = []


class Mender:
    """Delivers a path's live messages to ``deliver``, mending its holes from ``history`` (see the module
    docstring). Rooms are keyed as in :class:`.base.Publication` (None: the broadcast stream)."""

    def __init__(self, deliver: Callable[[Publication], None], history: History, metrics: Metrics, *,
                 max_held: int = MAX_HELD, max_held_bytes: int = MAX_HELD_BYTES) -> None:
        self.deliver = deliver
        self.history = history
        self.metrics = metrics
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.followed: set[str] = set()  # rooms with members here (the broadcast stream is always followed)
        self.last: dict[str | None, tuple[int, str]] = {}  # room -> position of the last message delivered
        self.mending: dict[str | None, _Mending] = {}

    def follow(self, room: str, on: bool) -> None:
        """``room`` has members here (``on``) or none any more: it is mended only while followed."""
        if room == BROADCAST:
            return
        if on:
            self.followed.add(room)
            return
        self.followed.discard(room)
        self.last.pop(room, None)
        m = self.mending.pop(room, None)
        if m is not None:  # nobody here to mend it for: what was held goes on as it came (pending joins want it)
            for _, _, payload in m.stitch.live:
                self.deliver(Publication(room, payload, 0))
            self._wake(m)

    def after(self, room: str | None, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``room``'s hole (if any is being mended) is mended: a join's answer."""
        m = self.mending.get(room)
        if m is None:
            callback()
        else:
            m.waiting.append(callback)

    def on_publication(self, pub: Publication) -> None:
        room = pub.room
        if room is not None and room not in self.followed:
            self.deliver(pub)
            return
        m = self.mending.get(room)
        if m is not None:
            m.stitch.add_live(pub.payload)
            if len(m.stitch.live) > self.max_held or m.stitch.size > self.max_held_bytes:
                self._give_up(room, m)
            return
        pos = stamp.position(pub.payload)
        last = self.last.get(room)
        if pos is not None and last is not None:
            offset, epoch = pos
            if epoch == last[1]:
                if offset <= last[0]:
                    return  # delivered already, by a mending
                if offset > last[0] + 1:
                    self._mend(room, last, pub)
                    return
            elif offset > 1:
                self._mend(room, (0, epoch), pub)  # a new epoch, and we missed its first messages
                return
        if pos is not None:
            self.last[room] = pos
        self.deliver(pub)

    def _mend(self, room: str | None, since: tuple[int, str], pub: Publication) -> None:
        m = self.mending[room] = _Mending(since)
        m.stitch.add_live(pub.payload)
        self.history(BROADCAST if room is None else room, since, lambda result: self._mended(room, m, result))

    def _mended(self, room: str | None, m: _Mending, result: Replay | str) -> None:
        if self.mending.get(room) is not m:
            return  # given up, or the stream is no longer followed
        del self.mending[room]
        if isinstance(result, Replay):
            messages, _, recovered = m.stitch.finish(result.epoch, result.latest, result.messages, result.recovered)
        else:
            messages, recovered = [payload for _, _, payload in m.stitch.live], False
        if not recovered:
            self.metrics.inc(self.metrics.bus_dropped, "unmended")
        for payload in messages:
            self._emit(room, payload)
        self._wake(m)

    def _give_up(self, room: str | None, m: _Mending) -> None:
        """Too much held: deliver it as it came (the receivers see the jump), and stop waiting."""
        del self.mending[room]
        self.metrics.inc(self.metrics.bus_dropped, "unmended")
        for _, _, payload in m.stitch.live:
            self._emit(room, payload)
        self._wake(m)

    def _emit(self, room: str | None, payload: bytes) -> None:
        pos = stamp.position(payload)
        if pos is not None:
            last = self.last.get(room)
            if last is not None and pos[1] == last[1] and pos[0] <= last[0]:
                return  # in the history and among the held ones: once
            self.last[room] = pos
        self.deliver(Publication(room, payload, 0))

    @staticmethod
    def _wake(m: _Mending) -> None:
        waiting, m.waiting = m.waiting, []
        for callback in waiting:
            callback()
