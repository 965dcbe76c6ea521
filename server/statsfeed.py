"""The ``$stats`` stream: one snapshot of each node per second, published while anybody is subscribed.

Design: **one publisher per node, covering only its node's workers**, through the bus like any stream.

- Every worker runs a one-second timer. A tick costs one dictionary lookup unless the worker has members
  of ``$stats`` itself: with no subscriber anywhere, that lookup is all ``$stats`` costs.
- A worker with members publishes unless another worker of its node already does: one whose ``$stats``
  publication it heard within the last ``YIELD_S`` seconds. The publisher in place keeps the role (a
  worker that gets its first subscriber stays silent); should two publish at once (they got subscribers in
  the same second), the one with the higher id yields as soon as it hears the other. When the publisher
  loses its last member it stops, and another worker with members takes over after ``YIELD_S`` (a gap of
  about two seconds). The workers' timers are spread over the second (a phase per worker id), so two of
  them rarely decide in the same instant; a rare extra snapshot is harmless: the dashboard keys publishers
  by ``node``, so a second snapshot of the same node replaces, never adds.
- Publishing = one stats gathering round (:meth:`~server.messaging.Gatherer.gather`, which also serves
  ``get_stats`` and ``/metrics``: every worker of this node over the pipes, the other nodes' figures from
  Redis), then one publication of ``$stats`` through the bus (:meth:`~server.messaging.Messaging.inject`):
  sequenced like any stream (offsets, epochs), delivered to every worker of this node and, with Redis, to
  every node where someone is subscribed. A dashboard therefore hears every node that has a subscriber, and
  adds them up by ``node`` without counting anything twice: ``families`` (the merged Prometheus snapshot)
  covers this node's workers only (other nodes' workers send no metrics through Redis), and so do the
  ``fanwire_cluster_node_*`` figures it adds (this node's label only).
- ``workers`` lists this node's workers and, from Redis, the other nodes' (figures only: id, node, pid,
  connections, loop lag), and ``bus.nodes`` every node seen: a dashboard on node A learns of node B even
  when nobody on B is subscribed.

Costs while subscribed: per node and second, one gathering round (W-1 small requests over the pipes, one
Redis read in a cluster), one publication of a few kilobytes (its size depends on the label sets of the
metrics, never on the number of rooms or clients; at most ``MAX_WORKERS`` worker entries), kept in the
stream's history like any message (bounded by the history options; nobody needs it: the dashboard joins
without ``since``). At most one round per worker is in flight; a slow round skips ticks, never queues them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sized
from typing import Any, Final, Protocol

import orjson

from . import metrics
from .metrics import escape_label
from .protocol import STATS_ROOM

log = logging.getLogger("fanwire.worker")

INTERVAL_S: Final = 1.0
YIELD_S: Final = 2.0
MAX_WORKERS: Final = 1024
_PHASE: Final = 0.618034  # worker i's timer starts at (i * _PHASE mod 1) of the interval: spread out


class _Rooms(Protocol):
    @property
    def rooms(self) -> Mapping[str, Sized]: ...


class _Gatherer(Protocol):
    def gather(self, rooms: list[str], all_rooms: bool) -> Awaitable[list[dict[str, Any]]]: ...


class _Bus(Protocol):
    @property
    def name(self) -> str: ...

    def healthy(self) -> bool: ...


class FeedHost(Protocol):
    """What the feed needs of the worker's messaging."""

    @property
    def node(self) -> str: ...

    @property
    def worker_id(self) -> int: ...

    @property
    def hub(self) -> _Rooms: ...

    @property
    def gatherer(self) -> _Gatherer: ...

    @property
    def bus(self) -> _Bus: ...

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> Awaitable[dict[str, Any]]: ...


def snapshot(snaps: Iterable[Mapping[str, Any]], node: str, worker: int, bus_name: str, bus_up: bool,
             ts_ms: int) -> dict[str, Any]:
    """The data of one ``$stats`` publication, from a gathering round's snapshots. Pure."""
    workers: list[dict[str, Any]] = []
    own: list[metrics.Snapshot] = []
    nodes = {node}
    for s in snaps:
        s_node = s.get("node")
        s_node = s_node if type(s_node) is str else node
        nodes.add(s_node)
        if len(workers) < MAX_WORKERS:
            lag: Any = s.get("loop_lag_ms")
            workers.append({"id": _int(s.get("id")), "node": s_node, "pid": _int(s.get("pid")),
                            "connections": _int(s.get("clients")),
                            "loop_lag_ms": float(lag) if type(lag) in (int, float) else None})
        m = s.get("metrics")
        if s_node == node and isinstance(m, dict):
            own.append(m)
    workers.sort(key=lambda w: (w["node"], w["id"]))
    families = metrics.merge(own)
    label = f'node="{escape_label(node)}"'
    mine = [w for w in workers if w["node"] == node]
    families["fanwire_cluster_node_connections"] = {label: sum(w["connections"] for w in mine)}
    families["fanwire_cluster_node_workers"] = {label: len(mine)}
    return {"ts_ms": ts_ms, "node": node, "worker": worker,
            "bus": {"name": bus_name, "up": bus_up, "nodes": sorted(nodes)},
            "workers": workers, "families": families}


def _int(v: Any) -> int:
    return v if type(v) is int else 0


class StatsFeed:
    """One worker's part of the ``$stats`` stream (see the module docstring)."""

    __slots__ = ("_handle", "_heard", "_last", "_loop", "_running", "clock", "host", "interval", "published",
                 "spawn")

    def __init__(self, host: FeedHost, loop: asyncio.AbstractEventLoop,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self._loop = loop
        self.spawn = spawn
        self.interval = interval
        self.clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._heard: dict[int, float] = {}  # worker id of this node -> when its last snapshot reached us
        self._running = False  # a round is out
        self._last = -1e18  # when this worker last published
        self.published = 0

    def start(self) -> None:
        phase = (self.host.worker_id * _PHASE) % 1.0
        self._handle = self._loop.call_later(self.interval * (1.0 + phase), self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def members(self) -> int:
        members = self.host.hub.rooms.get(STATS_ROOM)
        return len(members) if members is not None else 0

    def heard(self, payload: bytes) -> None:
        """A ``$stats`` publication reached this worker (the messaging's ``on_publication``): note which worker
        of this node published it. Cheap (one small JSON document per node and second); malformed ones
        are ignored."""
        try:
            msg = orjson.loads(payload)
            data = msg["data"]
            node, worker = data["node"], data["worker"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        host = self.host
        if node == host.node and type(worker) is int and worker != host.worker_id and len(self._heard) < MAX_WORKERS:
            self._heard[worker] = self.clock()

    def should_publish(self, now: float) -> bool:
        """Members here, and no other worker of this node publishing (see the module docstring)."""
        if not self.members():
            return False
        others = [w for w, t in self._heard.items() if now - t < YIELD_S]
        if not others:
            return True
        if now - self._last < YIELD_S:  # two publishers at once: the lower id stays
            return all(w > self.host.worker_id for w in others)
        return False  # another worker publishes for this node: leave it the role

    def _tick(self) -> None:
        self._handle = self._loop.call_later(self.interval, self._tick)
        if self._running or not self.should_publish(self.clock()):
            return
        self._running = True
        self.spawn(self._publish())

    async def _publish(self) -> None:
        host = self.host
        try:
            snaps = await host.gatherer.gather([], False)
            if not self.members():
                return  # the last member left during the round
            bus = host.bus
            data = snapshot(snaps, host.node, host.worker_id, bus.name, bus.healthy(), int(time.time() * 1000))
            msg = {"type": "publication", "room": STATS_ROOM, "data": data, "ts": data["ts_ms"]}
            fut = host.inject(STATS_ROOM, STATS_ROOM, msg, kind="stats")
            self.published += 1
            self._last = self.clock()
            del fut  # the outcome matters to nobody: a lost snapshot is replaced within a second
        except Exception:
            log.exception("$stats: a snapshot could not be published")
        finally:
            self._running = False
