"""The sequencer's state for the streams it owns: epoch, offset, history, dedup window. Pure: the caller
passes the time (seconds, any monotonic clock).

Per stream: an ``epoch`` (made when the stream is first used here), the last ``offset`` (+1 per message,
no gaps) and a history ring of the last messages, each kept at most ``history_ttl`` seconds and at most
``history_size`` of them (``0``: none kept, offsets still assigned).

Bounds, and what happens at each (none of them can make a gap pass unnoticed):

- ``max_bytes`` of history in all: the oldest messages of the least recently published streams leave first.
  A recovery that needed them answers ``recovered: false``.
- ``max_streams``: the least recently used stream is forgotten whole; the next time it is used it starts a
  new epoch, so a client that recovers from the old one learns ``recovered: false``.
- the dedup window: an acknowledged publication is remembered ``dedup_window`` seconds, at most
  ``max_dedup`` of them (the oldest are forgotten first); a resend within the window gets the first ack
  again and publishes nothing.

A stream forgotten as a whole also forgets its dedup entries (they belong to its epoch).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ProtocolViolation
from . import stamp

DEFAULT_MAX_STREAMS: Final = 100_000
DEFAULT_MAX_DEDUP: Final = 200_000


class BadSince(ProtocolViolation):
    """A ``since`` ahead of the stream's latest offset in its epoch (or malformed)."""

    code = "bad_since"


@dataclass(frozen=True, slots=True)
class Appended:
    offset: int
    epoch: str
    payload: bytes  # the stamped payload to deliver (for a duplicate: b"", nothing is delivered)
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """What a join with (or without) ``since`` gets: the messages to replay, and the stream's position."""

    epoch: str
    latest: int
    messages: list[bytes]
    recovered: bool | None  # None when no ``since`` was given


class Stream:
    __slots__ = ("epoch", "keys", "nbytes", "offset", "ring")

    def __init__(self, epoch: str, offset: int = 0) -> None:
        self.epoch = epoch
        self.offset = offset
        self.ring: deque[tuple[int, float, bytes]] = deque()  # (offset, time, stamped payload)
        self.nbytes = 0
        self.keys: set[tuple[str, str, Any]] = set()  # its live dedup entries


class StreamTable:
    """The streams a sequencer owns (see the module docstring)."""

    def __init__(self, history_size: int = 256, history_ttl: float = 300.0, max_bytes: int = 64 << 20,
                 dedup_window: float = 60.0, *, max_streams: int = DEFAULT_MAX_STREAMS,
                 max_dedup: int = DEFAULT_MAX_DEDUP, new_epoch: Callable[[], str] = stamp.new_epoch) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_bytes = max_bytes
        self.dedup_window = dedup_window
        self.max_streams = max_streams
        self.max_dedup = max_dedup
        self.new_epoch = new_epoch
        self.streams: OrderedDict[str, Stream] = OrderedDict()  # least recently used first
        self.published: OrderedDict[str, None] = OrderedDict()  # least recently published first
        self.nbytes = 0
        # (stream, identity, id) -> (offset, epoch, expiry); an entry of dedup_order whose expiry no longer
        # matches its key's entry is stale (the key was forgotten or published again) and is skipped
        self.dedup: dict[tuple[str, str, Any], tuple[int, str, float]] = {}
        self.dedup_order: deque[tuple[float, tuple[str, str, Any]]] = deque()  # (expiry, key), oldest first
        self.evicted_streams = 0
        self.evicted_messages = 0

    # --- streams ---------------------------------------------------------------------------------------

    def stream(self, name: str) -> Stream:
        s = self.streams.get(name)
        if s is None:
            s = self.streams[name] = Stream(self.new_epoch())
            while len(self.streams) > self.max_streams:
                self._forget(next(iter(self.streams)))
        else:
            self.streams.move_to_end(name)
        return s

    def position(self, name: str) -> tuple[int, str]:
        s = self.stream(name)
        return s.offset, s.epoch

    def _forget(self, name: str) -> None:
        s = self.streams.pop(name)
        self.published.pop(name, None)
        self.nbytes -= s.nbytes
        self.evicted_streams += 1
        for key in s.keys:
            del self.dedup[key]
        self._compact_dedup()

    # --- appending -------------------------------------------------------------------------------------

    def append(self, name: str, payload: bytes, now: float, identity: str | None = None,
               msg_id: Any = None) -> Appended:
        """Give ``payload`` (a JSON object) the stream's next offset and keep it in history; a publication
        already acknowledged within the dedup window (same stream, identity and id) gets its first ack."""
        s = self.stream(name)
        key = None
        if identity is not None and msg_id is not None:
            key = (name, identity, msg_id)
            seen = self.dedup.get(key)
            if seen is not None and seen[1] == s.epoch and seen[2] > now:
                return Appended(seen[0], seen[1], b"", duplicate=True)
        s.offset += 1
        self.published[name] = None
        self.published.move_to_end(name)
        stamped = stamp.stamp(payload, s.offset, s.epoch)
        if self.history_size:
            s.ring.append((s.offset, now, stamped))
            s.nbytes += len(stamped)
            self.nbytes += len(stamped)
            while len(s.ring) > self.history_size:
                self._drop_oldest(s)
            self._trim_age(s, now)
            if self.nbytes > self.max_bytes:
                self._trim_bytes(keep=s)
        if key is not None:
            expiry = now + self.dedup_window
            self.dedup[key] = (s.offset, s.epoch, expiry)
            s.keys.add(key)
            self.dedup_order.append((expiry, key))
            self._trim_dedup(now)
        return Appended(s.offset, s.epoch, stamped)

    def _drop_oldest(self, s: Stream) -> None:
        _, _, p = s.ring.popleft()
        s.nbytes -= len(p)
        self.nbytes -= len(p)

    def _trim_age(self, s: Stream, now: float) -> None:
        limit = now - self.history_ttl
        ring = s.ring
        while ring and ring[0][1] < limit:
            self._drop_oldest(s)

    def _trim_bytes(self, keep: Stream) -> None:
        """Over ``max_bytes``: the oldest messages of the least recently published streams leave first."""
        for name in list(self.published):
            s = self.streams[name]
            while s.ring and self.nbytes > self.max_bytes and (s is not keep or len(s.ring) > 1):
                self._drop_oldest(s)
                self.evicted_messages += 1
            if self.nbytes <= self.max_bytes:
                return

    def _trim_dedup(self, now: float) -> None:
        order = self.dedup_order
        dedup = self.dedup
        while order and (order[0][0] <= now or len(dedup) > self.max_dedup):
            expiry, key = order.popleft()
            seen = dedup.get(key)
            if seen is not None and seen[2] == expiry:
                del dedup[key]
                s = self.streams.get(key[0])
                if s is not None:
                    s.keys.discard(key)
        self._compact_dedup()

    def _compact_dedup(self) -> None:
        """Drop stale order entries once they outnumber the live ones (keeps dedup_order bounded)."""
        order = self.dedup_order
        if len(order) > 2 * len(self.dedup) + 64:
            dedup = self.dedup
            self.dedup_order = deque(e for e in order if (seen := dedup.get(e[1])) is not None
                                     and seen[2] == e[0])

    def prune(self, now: float) -> None:
        """Periodic upkeep: history past its age, expired dedup entries."""
        for s in self.streams.values():
            self._trim_age(s, now)
        self._trim_dedup(now)

    # --- recovery ----------------------------------------------------------------------------------------

    def replay(self, name: str, since: tuple[int, str] | None, now: float) -> Replay:
        """The messages a join with ``since`` must replay, and the stream's position (see docs/protocol.md).

        Raises BadSince when ``since`` is ahead of the latest offset of the current epoch.
        """
        s = self.stream(name)
        self._trim_age(s, now)
        if since is None:
            return Replay(s.epoch, s.offset, [], None)
        offset, epoch = since
        if epoch != s.epoch:
            return Replay(s.epoch, s.offset, [p for _, _, p in s.ring], False)
        if offset > s.offset:
            raise BadSince(f"since offset {offset} is ahead of the latest offset {s.offset} of epoch {epoch}")
        first = s.ring[0][0] if s.ring else s.offset + 1
        if offset + 1 >= first:
            return Replay(s.epoch, s.offset, [p for o, _, p in s.ring if o > offset], True)
        return Replay(s.epoch, s.offset, [p for _, _, p in s.ring], False)

    # --- handing over (rolling restart) ---------------------------------------------------------------------

    def export(self, names: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """The state of the streams ``names`` selects, as plain values (msgpack-able)."""
        streams = {n: [s.epoch, s.offset, [list(e) for e in s.ring]] for n, s in self.streams.items()
                   if names is None or names(n)}
        dedup = [[exp, list(key), list(seen[:2])] for exp, key in self.dedup_order
                 if (seen := self.dedup.get(key)) is not None and seen[2] == exp
                 and (names is None or names(key[0]))]
        published = [n for n in self.published if n in streams]
        return {"streams": streams, "dedup": dedup, "published": published}

    def load(self, state: dict[str, Any], now: float) -> None:
        """Take over exported streams (their epochs, offsets, history and dedup window), within this
        table's own bounds."""
        for name, (epoch, offset, ring) in state.get("streams", {}).items():
            if name in self.streams:
                self._forget(name)
                self.evicted_streams -= 1
            s = self.streams[name] = Stream(epoch, offset)
            if ring:
                self.published[name] = None
                self.published.move_to_end(name)
            for o, t, p in ring[-self.history_size:] if self.history_size else ():
                s.ring.append((o, t, p))
                s.nbytes += len(p)
                self.nbytes += len(p)
        for name in state.get("published", ()):  # the source's publication order, for max_bytes
            if name in self.published:
                self.published.move_to_end(name)
        while len(self.streams) > self.max_streams:
            self._forget(next(iter(self.streams)))
        for exp, key, value in state.get("dedup", []):
            k = (key[0], key[1], key[2])
            owner = self.streams.get(k[0])
            if owner is None or owner.epoch != value[1]:
                continue
            self.dedup[k] = (value[0], value[1], exp)
            owner.keys.add(k)
            self.dedup_order.append((exp, k))
        self.dedup_order = deque(sorted(self.dedup_order, key=lambda e: e[0]))
        if self.nbytes > self.max_bytes and self.published:
            self._trim_bytes(keep=self.streams[next(reversed(self.published))])
        self.prune(now)

    def names(self) -> Iterator[str]:
        return iter(self.streams)

    def clear(self) -> None:
        """Forget every stream (their next use starts new epochs) and the dedup window."""
        self.evicted_streams += len(self.streams)
        self.streams.clear()
        self.published.clear()
        self.nbytes = 0
        self.dedup.clear()
        self.dedup_order.clear()
