"""The bus interface: how a worker's publications are sequenced and reach every worker (and node).

One interface, several implementations behind the ``bus`` short name: ``pipe`` (:mod:`.pipebus`, the
default, one machine) and ``redis`` (many machines). A bus never reaches into the hub: it pushes what
arrives into the :class:`BusHandler` it was started with, from the worker's event loop.

Every publication belongs to a *stream* (a room, or ``$broadcast``) and is *sequenced*: given the stream's
next offset and its epoch, stamped into its payload (:mod:`server.streams.stamp`), kept in the stream's
history, and delivered to every worker - the one that submitted it included - through
:meth:`BusHandler.on_publication`, in offset order. Who sequences is the bus's business (on the pipe bus,
the stream's owner worker; on the Redis bus, a Lua script in Redis); the worker only submits, and learns
the outcome (for the publisher's ack) through a callback.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..stats import StatsQuery
    from ..streams.table import Replay


@dataclass(frozen=True, slots=True)
class BusSettings:
    """What a bus needs to know of the server's options (the worker builds it from the Config; the bus
    package never sees the Config)."""

    node: str
    worker_id: int
    endpoint: int = 0  # this worker's end of the pipe mesh
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_message_size: int = 1 << 20
    high_water: int = 4 << 20  # bytes waiting above which publishers are held (back-pressure)
    max_queue: int = 64 << 20  # bytes waiting per peer beyond which publications are dropped (counted)
    workers: int = 1  # workers of this node (the pipe bus spreads stream ownership over them)
    takeover: bool = False  # a rolling restart's new worker: its slot's streams are handed over to it
    history_size: int = 256
    history_ttl: float = 300.0
    history_max_bytes: int = 64 << 20
    dedup_window: float = 60.0


@dataclass(frozen=True, slots=True)
class Submission:
    """A message to sequence in ``stream``. ``room`` is where it is delivered (None: everyone, for the
    ``$broadcast`` stream); ``payload`` is the message encoded as JSON, not stamped yet. ``identity`` and
    ``msg_id`` (both or neither) make a resend within the dedup window a duplicate."""

    stream: str
    room: str | None
    payload: bytes
    ts_ms: int
    identity: str | None = None
    msg_id: Any = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a submission: its position, or an ``error`` code (``unavailable``: resend it)."""

    offset: int = 0
    epoch: str = ""
    duplicate: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Publication:
    """A sequenced message on its way to this worker's receivers: ``payload`` is stamped JSON (the bus's
    canonical form: JSON receivers get it unchanged, msgpack receivers get it re-encoded once per worker).
    ``room`` None means everyone (the ``$broadcast`` stream)."""

    room: str | None
    payload: bytes
    ts_ms: int
    origin: str = ""


Done = Callable[[Outcome], None]
ReplayDone = Callable[["Replay | str"], None]  # a Replay, or an error code ("bad_since", "unavailable")


class BusHandler(Protocol):
    """What a bus pushes into: the worker's messaging."""

    def on_publication(self, pub: Publication) -> None: ...

    def stats_snapshot(self, query: StatsQuery | None = None) -> dict[str, Any]: ...

    def presence_part(self, room: str) -> dict[str, Any] | None:
        """This worker's presence list of ``room`` (``{"count", "members"}``), None when it tracks nobody."""
        ...

    def on_control(self, command: dict[str, Any]) -> None:
        """A command another node sent every worker of the cluster (see :meth:`Bus.control`)."""
        ...


class Bus(abc.ABC):
    """Sequences publications and carries them between workers; answers history; gathers stats."""

    name: str = "bus"

    @abc.abstractmethod
    async def start(self, handler: BusHandler) -> None:
        """Begin delivering incoming publications to ``handler``."""

    @abc.abstractmethod
    def submit(self, sub: Submission, done: Done) -> None:
        """Sequence ``sub`` and deliver it everywhere; call ``done`` once with the outcome. Never blocks and
        never raises: what cannot be sequenced ends in an ``Outcome`` with an error, and is counted."""

    @abc.abstractmethod
    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        """The stream's position and, with ``since``, the messages after it (see Replay); ``done`` is called
        once. Live messages of the stream that reach this worker after ``done`` all come after the
        replay's ``latest``; earlier ones may be in the replay too (stitch them by offset)."""

    @abc.abstractmethod
    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        """The stats snapshots of the other live workers (and nodes) that answer within ``timeout``; the
        workers of this node also count what ``query`` asks."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Say goodbye to the peers, flush what can be flushed without blocking, release resources. Every
        ``done`` still waiting is called (``unavailable`` when the outcome can no longer be known), as are
        those of later calls."""

    async def hand_over(self) -> None:  # noqa: B027  (optional: only a bus that owns streams has work here)
        """Before a rolling restart's old worker closes its clients: hand the streams it sequences to its
        successor, so that nothing of their history is lost."""

    def room_members(self, room: str, count: int) -> None:  # noqa: B027  (optional hook, no-op by default)
        """The hub's news: ``room`` now has ``count`` members on this worker (0: none left).

        A bus that routes by room (Redis) subscribes to the rooms with members here, and publishes the
        counts for the other nodes' stats; one that carries everything (the pipe bus) ignores it. Called
        synchronously on every join and leave: must be cheap, never raise.
        """

    def presence_changed(self, room: str) -> None:  # noqa: B027  (optional hook, no-op by default)
        """This worker's tracked members of ``room`` changed. A bus that serves the other nodes' presence
        lists (Redis) writes the room's list again, read back through :meth:`BusHandler.presence_part`;
        must be cheap (changes are coalesced), never raise."""

    def control(self, command: dict[str, Any]) -> int:
        """Send ``command`` (small, msgpack-able) to every worker of the *other* nodes, which get it through
        :meth:`BusHandler.on_control`; returns how many other nodes are alive (0 on a one-machine bus, whose
        own workers are reached through a stats round instead)."""
        return 0

    def send_now(self) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Send at once what this bus has queued for the other workers. The hub calls it before it writes a
        tick's output to its clients, so that a message it sequenced reaches the other workers, and their
        fan-out starts, while this worker still writes its own (one broadcast to 100,000 clients over 8
        workers otherwise waited for the sequencing worker's 12,500 writes). Must be cheap, never raise."""

    def congested(self) -> bool:
        """True while more is waiting to be sent than the bus wants to hold: the worker then stops reading
        from clients that publish (back-pressure) instead of letting the bus drop a shared batch."""
        return False

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, from the loop, when the bus is no longer congested."""
        callback()

    def healthy(self) -> bool:
        """False while the bus cannot reach where it should (the worker reports ``degraded``)."""
        return True

    def stats_complete(self) -> bool:
        """False when the last :meth:`gather_stats` could not read everything it should have (the reply
        then says ``partial``)."""
        return self.healthy()

    def peer_count(self) -> int:
        """How many peers are currently known to be alive."""
        return 0

    def prune(self, now: float) -> None:  # noqa: B027  (optional periodic upkeep)
        """Periodic upkeep (history age, dedup window), called by the worker's heartbeat tick."""
