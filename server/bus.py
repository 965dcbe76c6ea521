"""The bus interface: how a worker's publications reach the other workers (and, later, other nodes).

One interface, several implementations behind the ``bus`` short name: ``pipe`` (:mod:`.pipebus`, the
default, one machine) and ``redis`` (many machines). A bus never reaches into the hub: it pushes what
arrives into the :class:`BusHandler` it was started with, from the worker's event loop.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol


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

    def stats_snapshot(self) -> dict[str, Any]: ...


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
    async def gather_stats(self, timeout: float) -> list[dict[str, Any]]:
        """The stats snapshots of the other live workers (and nodes) that answer within ``timeout``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Say goodbye to the peers, flush what can be flushed without blocking, release resources."""

    def interest(self, room: str, present: bool) -> None:  # noqa: B027  (optional hook, no-op by default)
        """The hub's hint: ``room`` just gained its first local member (``present``) or lost its last.

        A bus that routes by room (Redis) subscribes to the rooms it needs; one that carries everything
        (the pipe bus) ignores it. Called synchronously on joins and leaves: must be cheap, never raise.
        """

    def healthy(self) -> bool:
        """False while the bus cannot reach where it should (the worker reports ``degraded``)."""
        return True

    def peer_count(self) -> int:
        """How many peers are currently known to be alive."""
        return 0
