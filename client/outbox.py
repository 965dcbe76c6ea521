"""Acknowledged sends waiting for their ack (protocol v1.1). Pure: no sockets, no asyncio, no clock.

A ``chat``, ``broadcast`` or ``publish`` sent with ``ack=True`` carries an ``id`` and stays in the
:class:`Outbox` until the server's ``ack`` (or a final ``error``) for that ``id`` arrives, or its sender
gives up (timeout). The outbox is bounded (``capacity``; one more raises
:exc:`~client.errors.OutboxFull`) and remembers on which connection each message was last written:

* written on a connection that has since dropped: it is *re-sent with the same id* on the next one,
  before anything sent later (:meth:`Outbox.to_resend`, in the order the messages were first submitted).
  The server recognises the id (same session, within its dedup window) and answers with the first ack
  again, ``"duplicate": true``, instead of publishing twice: an exactly-once effect.
* never written (queued while reconnecting): it simply goes out with the queue.

``unavailable`` answers are counted per message (:meth:`Outbox.unavailable`) to space the client's own
re-sends with :func:`client.backoff.ceiling`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import OutboxFull
from .protocol import Message, MsgId

__all__ = ["Outbox", "Unacked"]


@dataclass(slots=True)
class Unacked:
    """One message waiting for its ack."""

    id: MsgId
    msg: Message
    sent_on: int | None = None  # the connection (generation) it was last written to; None: not yet
    sends: int = 0  # how many times it was written
    unavailable: int = 0  # how many ``unavailable`` answers it got


class Outbox:
    """Acknowledged sends by id, in submission order, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the outbox capacity must be >= 1, not {capacity!r}")
        self.capacity = capacity
        self._items: OrderedDict[MsgId, Unacked] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._items

    def __iter__(self) -> Iterator[Unacked]:
        return iter(list(self._items.values()))

    def get(self, msg_id: MsgId) -> Unacked | None:
        return self._items.get(msg_id)

    def add(self, msg: Message) -> Unacked:
        """Keep ``msg`` (which has its ``id``) until its ack. Raises :exc:`OutboxFull` when ``capacity``
        messages are already waiting, ValueError when one with the same id is."""
        msg_id = msg["id"]
        if msg_id in self._items:
            raise ValueError(f"a message with id {msg_id!r} is already waiting for its ack")
        if len(self._items) >= self.capacity:
            raise OutboxFull(f"{self.capacity} acknowledged messages are already waiting for their ack "
                             "(max_unacked); wait for some acks", id=msg_id, message=msg)
        entry = self._items[msg_id] = Unacked(msg_id, msg)
        return entry

    def sent(self, msg_id: MsgId, gen: int) -> None:
        """``msg_id`` was written on connection ``gen``."""
        entry = self._items.get(msg_id)
        if entry is not None:
            entry.sent_on = gen
            entry.sends += 1

    def unsent(self, msg_id: MsgId) -> None:
        """Writing ``msg_id`` failed: it is queued again (it goes out with the queue, not as a re-send)."""
        entry = self._items.get(msg_id)
        if entry is not None:
            entry.sent_on = None

    def unavailable(self, msg_id: MsgId) -> int:
        """Count an ``unavailable`` answer; returns how many ``msg_id`` got so far (0: not waiting)."""
        entry = self._items.get(msg_id)
        if entry is None:
            return 0
        entry.unavailable += 1
        return entry.unavailable

    def pop(self, msg_id: MsgId) -> Unacked | None:
        """Stop waiting for ``msg_id`` (acked, refused, or given up); returns what was kept, if anything."""
        return self._items.pop(msg_id, None)

    def to_resend(self, gen: int) -> list[Unacked]:
        """What to write again on connection ``gen``: every message written on an earlier connection and
        not acked, in submission order."""
        return [e for e in self._items.values() if e.sent_on is not None and e.sent_on != gen]

    def clear(self) -> list[Unacked]:
        """Forget everything (the client closed); returns what was waiting."""
        items = list(self._items.values())
        self._items.clear()
        return items
