"""The buses a worker can use, by short name (``--bus``): a registry, resolved lazily.

- ``pipe``: the workers of one machine, over the supervisor's socketpair mesh (:mod:`.pipebus`).
- ``redis``: several nodes; inside a node the pipe bus still carries worker-to-worker traffic, and a Redis
  bus crosses nodes (:mod:`.nodebus`, :mod:`.redisbus`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..metrics import Metrics
from .base import Bus, BusSettings


@dataclass(frozen=True, slots=True)
class BusKind:
    make: Callable[[BusSettings, dict[int, socket.socket], Metrics], Bus]
    cluster: bool  # spans nodes: stats and metrics gain per-node figures
    needs: str = ""  # the optional dependency (a module) it imports: checked at start for a clear error
    extra: str = ""  # the pip extra that installs it
    check: Callable[[BusSettings], None] | None = None  # refuses a bad setting before any worker starts


def _pipe(settings: BusSettings, socks: dict[int, socket.socket], metrics: Metrics) -> Bus:
    from ..streams.table import StreamTable
    from .pipebus import PipeBus

    table = StreamTable(settings.history_size, settings.history_ttl, settings.history_max_bytes,
                        settings.dedup_window)
    return PipeBus(settings.endpoint, settings.worker_id, socks, metrics, max_queue=settings.max_queue,
                   high_water=settings.high_water, low_water=settings.high_water // 4,
                   workers=settings.workers, takeover=settings.takeover, table=table,
                   max_batch=max(64 << 20, 2 * settings.history_max_bytes))


def _redis(settings: BusSettings, socks: dict[int, socket.socket], metrics: Metrics) -> Bus:
    from .nodebus import cluster_bus

    return cluster_bus(settings, socks, metrics)


def _check_redis(settings: BusSettings) -> None:
    from .redisbus import check_url

    check_url(settings.redis_url)


BUSES: Final[dict[str, BusKind]] = {
    "pipe": BusKind(_pipe, cluster=False),
    "redis": BusKind(_redis, cluster=True, needs="redis.asyncio", extra="redis", check=_check_redis),
}


def make(name: str, settings: BusSettings, socks: dict[int, socket.socket], metrics: Metrics) -> Bus:
    return BUSES[name].make(settings, socks, metrics)


def is_cluster(name: str) -> bool:
    return BUSES[name].cluster
