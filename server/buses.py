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

from .bus import Bus
from .config import Config
from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class BusKind:
    make: Callable[[Config, str, int, int, dict[int, socket.socket], Metrics], Bus]
    cluster: bool  # spans nodes: stats and metrics gain per-node figures
    needs: str = ""  # the optional dependency it imports, for a clear error at start


def _pipe(cfg: Config, node: str, worker_id: int, endpoint: int, socks: dict[int, socket.socket],
          metrics: Metrics) -> Bus:
    from .pipebus import PipeBus

    return PipeBus(endpoint, worker_id, socks, metrics)


def _redis(cfg: Config, node: str, worker_id: int, endpoint: int, socks: dict[int, socket.socket],
           metrics: Metrics) -> Bus:
    from .nodebus import cluster_bus

    return cluster_bus(cfg, node, worker_id, _pipe(cfg, node, worker_id, endpoint, socks, metrics), metrics)


BUSES: Final[dict[str, BusKind]] = {
    "pipe": BusKind(_pipe, cluster=False),
    "redis": BusKind(_redis, cluster=True, needs="redis"),
}


def make(cfg: Config, node: str, worker_id: int, endpoint: int, socks: dict[int, socket.socket],
         metrics: Metrics) -> Bus:
    return BUSES[cfg.bus].make(cfg, node, worker_id, endpoint, socks, metrics)


def is_cluster(name: str) -> bool:
    return BUSES[name].cluster
