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
    __slots__ = ("epoch", "nbytes", "offset", "ring")

    def __init__(self, epoch: str, offset: int = 0) -> None:
        self.epoch = epoch
        self.offset = offset
        self.ring: deque[tuple[int, float, bytes]] = deque()  # (offset, time, stamped payload)
        self.nbytes = 0


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
        self.nbytes = 0
        self.dedup: dict[tuple[str, str, Any], tuple[int, str]] = {}  # (stream, identity, id) -> (offset, epoch)
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
        self.nbytes -= s.nbytes
        self.evicted_streams += 1
        for key in [k for k in self.dedup if k[0] == name]:
            del self.dedup[key]

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
            if seen is not None and seen[1] == s.epoch:
                return Appended(seen[0], seen[1], b"", duplicate=True)
        s.offset += 1
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
            self.dedup[key] = (s.offset, s.epoch)
            self.dedup_order.append((now + self.dedup_window, key))
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
        for s in list(self.streams.values()):
            while s.ring and self.nbytes > self.max_bytes and (s is not keep or len(s.ring) > 1):
                self._drop_oldest(s)
                self.evicted_messages += 1
            if self.nbytes <= self.max_bytes:
                return

    def _trim_dedup(self, now: float) -> None:
        order = self.dedup_order
        while order and (order[0][0] <= now or len(order) > self.max_dedup):
            _, key = order.popleft()
            self.dedup.pop(key, None)

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
        dedup = [[exp, list(key), list(self.dedup[key])] for exp, key in self.dedup_order
                 if key in self.dedup and (names is None or names(key[0]))]
        return {"streams": streams, "dedup": dedup}

    def load(self, state: dict[str, Any], now: float) -> None:
        """Take over exported streams (their epochs, offsets, history and dedup window)."""
        for name, (epoch, offset, ring) in state.get("streams", {}).items():
            if name in self.streams:
                self._forget(name)
                self.evicted_streams -= 1
            s = self.streams[name] = Stream(epoch, offset)
            for o, t, p in ring:
                s.ring.append((o, t, p))
                s.nbytes += len(p)
                self.nbytes += len(p)
        for exp, key, value in state.get("dedup", []):
            k = (key[0], key[1], key[2])
            self.dedup[k] = (value[0], value[1])
            self.dedup_order.append((exp, k))
        self.dedup_order = deque(sorted(self.dedup_order, key=lambda e: e[0]))
        if self.nbytes > self.max_bytes:
            for s in list(self.streams.values()):
                self._trim_bytes(keep=s)
                break
        self.prune(now)

    def names(self) -> Iterator[str]:
        return iter(self.streams)

    def clear(self) -> None:
        """Forget every stream (their next use starts new epochs) and the dedup window."""
        self.evicted_streams += len(self.streams)
        self.streams.clear()
        self.nbytes = 0
        self.dedup.clear()
        self.dedup_order.clear()
