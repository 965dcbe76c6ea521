"""NodeBus: one worker's bus in a cluster: Redis sequences and carries every stream; the pipe bus keeps
the node's workers in touch, and each stream's owner worker decides where its streams are sequenced.

A submission goes to the stream's owner worker over the pipe bus (:mod:`.pipestreams`): while the owner
reaches Redis it runs Redis's sequencing script (every worker of every node then gets the message from
its own Redis subscription); while it does not, the owner sequences the stream itself, with epochs of its
own, and the node keeps serving its clients (the node drops what Redis brings of the slot meanwhile,
counted). When Redis is back, the streams sequenced locally get new epochs in Redis first, so a client that
recovers from a position taken before or during the outage learns ``recovered: false`` instead of missing
messages silently (what other nodes published to them during the outage is lost to this node, and the reset
tells their clients too); the slot's other streams go on in their epochs, and what the node dropped of them
is mended from Redis's history before their next message (:mod:`.mend`). The same mending covers a
worker whose own Redis connection dropped and came back while Redis stayed up. Each worker takes a
stream's messages from one source at a time (the owner's switch is acknowledged by every worker of the
node), so two sequencers are never interleaved.

Every worker keeps its own Redis subscription (rather than one worker relaying for its node): see
docs/cluster.md for the measurements behind that choice.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from ..metrics import Metrics
from ..stats import StatsQuery
from .base import Bus, BusHandler, BusSettings, Done, ReplayDone, Submission
from .pipebus import PipeBus
from .redisbus import RedisBus

log = logging.getLogger("fanwire.bus")


class _FromRedis:
    """What the Redis bus pushes into: the pipe bus's streams layer decides what is delivered (see
    :meth:`.pipestreams.PipeStreams.on_remote`)."""

    def __init__(self, local: PipeBus, handler: BusHandler) -> None:
        self.on_publication = local.streams.on_remote
        self.stats_snapshot = handler.stats_snapshot
        self.presence_part = handler.presence_part
        self.on_control = handler.on_control


class NodeBus(Bus):
    """A cluster worker's bus: ``local`` (the pipe bus: this node's workers, and each slot's owner, which
    has its streams sequenced by Redis or, while Redis is unreachable, itself) and ``remote`` (the Redis
    bus: the cluster); see the module docstring."""

    name = "redis"

    def __init__(self, local: PipeBus, remote: RedisBus) -> None:
        self.local = local
        self.remote = remote

    async def start(self, handler: BusHandler) -> None:
        self.local.streams.handler = handler
        await self.remote.start(_FromRedis(self.local, handler))
        await self.local.start(handler)

    def submit(self, sub: Submission, done: Done) -> None:
        self.local.submit(sub, done)  # to the slot's owner, which knows where to sequence it

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        self.local.history(stream, since, done)

    def room_members(self, room: str, count: int) -> None:
        self.local.room_members(room, count)
        self.remote.room_members(room, count)

    def presence_changed(self, room: str) -> None:
        self.remote.presence_changed(room)

    def control(self, command: dict[str, Any]) -> int:
        return self.remote.control(command)

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        """This node's other workers (fresh, over the pipes) and the other nodes' workers (from Redis)."""
        local, remote = await asyncio.gather(self.local.gather_stats(timeout, query),
                                             self.remote.gather_stats(timeout, query))
        return local + remote

    async def hand_over(self) -> None:
        await self.local.hand_over()

    async def close(self) -> None:
        """Close the Redis bus, then the pipe bus (whatever became of the first: the worker's shutdown must
        go on, and the node's other workers must get our BYE). A Redis error is logged, not raised: there is
        nothing left to do about it; an error of the pipe bus still surfaces."""
        try:
            await self.remote.close()
        except (RedisError, OSError, RuntimeError) as exc:
            log.warning("bus: closing the Redis bus failed: %s", exc)
        finally:
            await self.local.close()

    def prune(self, now: float) -> None:
        self.local.prune(now)

    def send_now(self) -> None:
        self.local.send_now()

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


def cluster_bus(settings: BusSettings, socks: dict[int, socket.socket], metrics: Metrics) -> Bus:
    """The bus of a worker started with ``--bus redis``: its pipe bus composed with a Redis bus."""
    from ..protocol import DEFAULT_ROOM
    from ..streams.table import StreamTable

    # a payload is the client's message re-encoded as JSON plus a few fields: allow ample room
    max_payload = max(16 << 20, 8 * settings.max_message_size)
    remote = RedisBus(settings.redis_url, settings.node, settings.worker_id, metrics, max_payload=max_payload,
                      max_envelope=max_payload * 4, always=(DEFAULT_ROOM,), history_size=settings.history_size,
                      history_ttl=settings.history_ttl, dedup_window=settings.dedup_window,
                      mend=False)  # the pipe streams layer mends what Redis brings, after its own filter
    table = StreamTable(settings.history_size, settings.history_ttl, settings.history_max_bytes,
                        settings.dedup_window)
    local = PipeBus(settings.endpoint, settings.worker_id, socks, metrics, max_queue=settings.max_queue,
                    high_water=settings.high_water, low_water=settings.high_water // 4, workers=settings.workers,
                    takeover=settings.takeover, table=table, max_batch=max(64 << 20, 2 * settings.history_max_bytes),
                    remote=remote)
    return NodeBus(local, remote)
