"""NodeBus: one worker's bus in a cluster, the pipe bus inside the node composed with the Redis bus across.

A publication goes to both: the pipe bus carries it to the other workers of this node, the Redis bus to
the other nodes. Nothing is delivered twice: the pipe bus never leaves the node, and the Redis bus drops
what its own node published. Workers of one node never depend on Redis to reach each other, so when Redis
is down the node keeps serving its local traffic and only the cross-node part is lost (and counted).

Every worker keeps its own Redis subscription (rather than one worker relaying for its node): see
docs/cluster.md for the measurements behind that choice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..metrics import Metrics
from ..stats import StatsQuery
from .base import Bus, BusHandler, BusSettings, Publication


class NodeBus(Bus):
    """A cluster worker's bus: ``local`` (the pipe bus, this node's workers) composed with ``remote`` (the
    Redis bus, the other nodes); see the module docstring."""

    name = "redis"

    def __init__(self, local: Bus, remote: Bus) -> None:
        self.local = local
        self.remote = remote

    async def start(self, handler: BusHandler) -> None:
        await self.local.start(handler)
        await self.remote.start(handler)

    def publish(self, pub: Publication) -> None:
        self.local.publish(pub)
        self.remote.publish(pub)

    def room_members(self, room: str, count: int) -> None:
        self.local.room_members(room, count)
        self.remote.room_members(room, count)

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        """This node's other workers (fresh, over the pipes) and the other nodes' workers (from Redis)."""
        local, remote = await asyncio.gather(self.local.gather_stats(timeout, query),
                                             self.remote.gather_stats(timeout, query))
        return local + remote

    async def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await self.remote.close()
        finally:
            await self.local.close()

    def congested(self) -> bool:
        return self.local.congested() or self.remote.congested()

    def on_drained(self, callback: Callable[[], None]) -> None:
        if self.local.congested():
            self.local.on_drained(lambda: self.on_drained(callback))
        elif self.remote.congested():
            self.remote.on_drained(lambda: self.on_drained(callback))
        else:
            callback()

    def healthy(self) -> bool:
        return self.local.healthy() and self.remote.healthy()

    def stats_complete(self) -> bool:
        return self.local.stats_complete() and self.remote.stats_complete()

    def peer_count(self) -> int:
        return self.local.peer_count() + self.remote.peer_count()


def cluster_bus(settings: BusSettings, pipe: Bus, metrics: Metrics) -> Bus:
    """The bus of a worker started with ``--bus redis``: its pipe bus composed with a Redis bus."""
    from ..protocol import DEFAULT_ROOM
    from .redisbus import RedisBus

    # a payload is the client's message re-encoded as JSON plus a few fields: allow ample room
    max_payload = max(16 << 20, 8 * settings.max_message_size)
    return NodeBus(pipe, RedisBus(settings.redis_url, settings.node, settings.worker_id, metrics,
                                  max_payload=max_payload, max_envelope=max_payload * 4, always=(DEFAULT_ROOM,)))
