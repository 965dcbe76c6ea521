"""The bus interface: how a worker's publications reach the other workers (and, later, other nodes).

One interface, several implementations behind the ``bus`` short name: ``pipe`` (:mod:`.pipebus`, the
default, one machine) and ``redis`` (many machines). A bus never reaches into the hub: it pushes what
arrives into the :class:`BusHandler` it was started with, from the worker's event loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..stats import StatsQuery


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


@dataclass(frozen=True, slots=True)
class Publication:
    """A chat (``room`` set) or broadcast (``room is None``) on its way to other workers.

    ``payload`` is the outgoing message already encoded as JSON, the bus's canonical form: JSON receivers
    get it unchanged, msgpack receivers get it re-encoded once per receiving worker.
    """

    room: str | None
    payload: bytes
    ts_ms: int
    origin: str = ""


class BusHandler(Protocol):
    """What a bus pushes into: the worker's hub."""

    def on_publication(self, pub: Publication) -> None: ...

    def stats_snapshot(self, query: StatsQuery | None = None) -> dict[str, Any]: ...


class Bus(abc.ABC):
    """Carries publications between workers; gathers stats from them."""

    name: str = "bus"

    @abc.abstractmethod
    async def start(self, handler: BusHandler) -> None:
        """Begin delivering incoming publications to ``handler``."""

    @abc.abstractmethod
    def publish(self, pub: Publication) -> None:
        """Send to every other worker. Never blocks and never raises: what cannot be sent is counted."""

    @abc.abstractmethod
    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        """The stats snapshots of the other live workers (and nodes) that answer within ``timeout``; the
        workers of this node also count what ``query`` asks."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Say goodbye to the peers, flush what can be flushed without blocking, release resources."""

    def room_members(self, room: str, count: int) -> None:  # noqa: B027  (optional hook, no-op by default)
        """The hub's news: ``room`` now has ``count`` members on this worker (0: none left).

        A bus that routes by room (Redis) subscribes to the rooms with members here, and publishes the
        counts for the other nodes' stats; one that carries everything (the pipe bus) ignores it. Called
        synchronously on every join and leave: must be cheap, never raise.
        """

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
