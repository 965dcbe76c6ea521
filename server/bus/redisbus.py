"""RedisBus: publications between *nodes* through Redis pub/sub (redis-py's asyncio client, hiredis parser).

Every worker of every node runs one RedisBus with two Redis connections: a subscriber and a small pool for
commands. Inside a node the pipe bus still carries worker-to-worker traffic (see :mod:`.nodebus`); this bus
only crosses nodes, and drops what its own node published (the pipe bus already delivered it).

Sending: :meth:`publish` never blocks and never raises. Publications are appended to a pending list and
one writer task sends them: each run of consecutive publications to the same channel becomes one
*envelope* (:mod:`.redisframe`), and all envelopes of a tick go out in one pipeline. While a pipeline is in
flight the next batch accumulates, so batches grow with the load. A single writer keeps the send order, so
one sender's messages reach each receiver in order. Unsent bytes are bounded (``max_queue``); what does not
fit, and everything offered while Redis is unreachable, is dropped and counted (``fanwire_bus_dropped_total``
with reason ``redis_queue_full`` / ``redis_down``): a node never buffers an outage.

Receiving: the subscriber listens to the broadcast channel, to the rooms in ``always`` (the default room), and
to the channel of every room that has members on this worker (:meth:`room_members`, driven by the hub), so a
worker only receives what it delivers. Interest changes are sent by a task of their own, woken before the
hub writes the ``joined`` reply of the same tick.
Malformed, oversized or non-JSON payloads are dropped and counted (``redis_bad_frame``,
``redis_oversized``, ``redis_bad_payload``).

Presence and stats: every ``stats_interval`` the worker writes its stats snapshot with a TTL and refreshes
its entry in a sorted set scored by expiry time, so a dead node disappears within ``ttl``.

Faults: any Redis error tears both connections down; the bus reports unhealthy (the worker says
``"bus": "degraded"``), and reconnects with capped exponential backoff and full jitter (the project's one
generator, :mod:`server.backoff`), resubscribing on success.

Why this module is long: one connection session (subscriber, writer, interest, presence, room counts)
and its reconnect loop share the session's state; the pure framing and names are in :mod:`.redisframe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import msgpack
import orjson
from redis.exceptions import RedisError

from ..backoff import backoff
from ..errors import BusFrameError, ConfigError
from ..metrics import Metrics
from ..stats import MAX_LISTED_ROOMS, StatsQuery
from . import redisframe as rf
from .base import Bus, BusHandler, Publication

log = logging.getLogger("fanwire.bus.redis")

URL_SCHEMES = ("redis", "rediss", "unix")
_YIELD_EVERY = 64  # received messages between yields to the event loop, for fairness with clients
_MAX_BATCH_CMDS = 512  # envelopes per pipeline
_MAX_HEADER_CACHE = 4096
HIGH_WATER = 4 << 20  # bytes waiting for Redis above which publishers are held (back-pressure)
LOW_WATER = 1 << 20


def check_url(url: str) -> None:
    """Raise ConfigError unless ``url`` looks like a Redis URL redis-py accepts."""
    scheme = urlparse(url).scheme
    if scheme not in URL_SCHEMES:
        raise ConfigError(f"--redis-url must start with redis://, rediss:// or unix://, got {url!r}")


class _Down(Exception):
    """Internal: the session ended (Redis unreachable or a task finished)."""


class RedisBus(Bus):
    """One worker's link to the other nodes through Redis: a session (subscriber, writer, interest, room
    counts, presence) and the loop that re-creates it after an outage (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str, node: str, worker_id: int, metrics: Metrics, *, prefix: str = "fanwire:",
                 stats_interval: float = 1.0, ttl: float = 3.0, max_payload: int = 16 << 20,
                 max_envelope: int = 64 << 20, max_queue: int = 16 << 20, envelope_target: int = 256 << 10,
                 connect_timeout: float = 2.0, command_timeout: float = 2.0, backoff_base: float = 0.1,
                 backoff_cap: float = 2.0, always: tuple[str, ...] = ()) -> None:
        check_url(url)
        self.url = url
        self.node = node
        self.worker_id = worker_id
        self.metrics = metrics
        self.prefix = prefix.encode()
        self.stats_interval = stats_interval
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_payload = max_payload
        self.max_envelope = max_envelope
        self.max_queue = max_queue
        self.envelope_target = envelope_target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._node_b = node.encode()
        rf.header(self._node_b, worker_id, None)  # raises BusFrameError early for an absurd node id
        self._member = rf.member(node, worker_id, os.getpid())
        self._bchannel = rf.broadcast_channel(self.prefix)
        self._bheader = rf.header(self._node_b, worker_id, None)
        self._headers: dict[str, tuple[bytes, bytes]] = {}  # room -> (channel, envelope header)
        self._handler: BusHandler | None = None
        self._up = False
        self._closed = False
        # rooms subscribed for the life of the bus: the default room every new connection lands in, so
        # that a client's first messages from other nodes never race its worker's SUBSCRIBE
        self._always = frozenset(always)
        self._rooms: set[str] = set(always)  # rooms with local members: the channels we want
        self._sub_changes: dict[str, bool] = {}  # room -> subscribe (True) / unsubscribe, not yet sent
        self._counts: dict[str, int] = {}  # members per room on this worker
        self._count_changes: dict[str, int] = {}  # not yet written to Redis
        self._pending: list[list[Any]] = []  # [channel, header, [records], size] in publish order
        self._queued = 0  # bytes of publications pending (not yet handed to a pipeline)
        self._drained: list[Callable[[], None]] = []  # held publishers, called back below low_water
        self._members: list[bytes] = []  # presence members of the *other* nodes, from the last refresh
        self._wake: asyncio.Event | None = None  # publications pending
        self._sub_wake: asyncio.Event | None = None  # subscription changes pending
        self._count_wake: asyncio.Event | None = None  # room count changes pending
        self._first: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: Any = None
        self._pubsub: Any = None
        self._outage_logged = False
        self._was_up = False
        self._inflight = False  # a publish pipeline is on its way
        self._refreshing = False  # a presence refresh is on its way
        self._stats_slots: asyncio.Semaphore | None = None  # bounds concurrent MGETs (pool connections)
        self._stats_ok = True  # the last reading of the other nodes' stats succeeded

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: BusHandler) -> None:
        """Connect (waiting at most ``connect_timeout``); if Redis is not there, start degraded and retry."""
        self._handler = handler
        self._wake = asyncio.Event()
        self._sub_wake = asyncio.Event()
        self._count_wake = asyncio.Event()
        self._first = asyncio.Event()
        self._stats_slots = asyncio.Semaphore(2)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="redis-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), self.connect_timeout + self.command_timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client = self._client
        if self._up and client is not None:
            deadline = time.monotonic() + 1.0
            while ((self._pending or self._inflight or self._refreshing) and self._up
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.005)  # let the writer flush, in order; let a refresh land first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._goodbye(client), 1.0)
        self._up = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._runner, 2.0)
        await self._teardown()

    async def _goodbye(self, client: Any) -> None:
        """Leave the presence set at once (peers need not wait for the TTL)."""
        pipe = client.pipeline(transaction=False)
        pipe.delete(rf.stats_key(self.prefix, self._member))
        pipe.delete(rf.rooms_key(self.prefix, self._member))
        pipe.zrem(rf.members_key(self.prefix), self._member)
        await pipe.execute()

    def healthy(self) -> bool:
        return self._up

    def stats_complete(self) -> bool:
        return self._up and self._stats_ok

    def peer_count(self) -> int:
        return len(self._members)

    def nodes(self) -> list[str]:
        """The other live nodes, from the last presence refresh."""
        return sorted({rf.member_node(m).decode(errors="replace") for m in self._members})

    # --- the session loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._first is not None
        delays = backoff(self.backoff_base, self.backoff_cap)
        while not self._closed:
            self._was_up = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure ends the session; the loop reconnects
                if self._closed:
                    break
                self._note_down(exc)
            finally:
                self._up = False
                await self._teardown()
                self._first.set()
            if self._closed:
                break
            if self._was_up:
                delays = backoff(self.backoff_base, self.backoff_cap)  # a fresh outage starts fast
            await asyncio.sleep(next(delays))

    def _note_down(self, exc: BaseException) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("redis bus: cannot use %s (%s: %s); serving local traffic only, reconnecting with "
                        "backoff", self.url, type(exc).__name__, exc or "")

    async def _session(self) -> None:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert self._wake is not None and self._first is not None
        # No retries inside redis-py: any error ends the session and our own backoff loop takes over.
        # No socket_timeout either: redis-py would run every write through asyncio.wait_for (a task per
        # command, sent a loop iteration late); our commands run under asyncio.timeout() instead, and a
        # dead subscriber connection is noticed by the command connection of the same session.
        client = self._client = aredis.Redis.from_url(
            self.url, socket_connect_timeout=self.connect_timeout, socket_timeout=None,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, max_connections=8,
            client_name=f"fanwire:{self.node}:{self.worker_id}")
        await asyncio.wait_for(client.ping(), self.command_timeout)
        pubsub = self._pubsub = client.pubsub()
        self._sub_changes.clear()
        channels = [self._bchannel] + [self._channel_of(r)[0] for r in self._rooms]
        await asyncio.wait_for(self._subscribe_confirmed(pubsub, channels), self.command_timeout)
        self._count_changes.clear()
        await self._write_counts(client, dict(self._counts), replace=True)
        await self._refresh(client)
        self._up = self._was_up = True
        if self._outage_logged:
            self.metrics.redis_reconnects += 1
            log.warning("redis bus: %s reachable again; cross-node traffic resumes", self.url)
        self._outage_logged = False
        self._first.set()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._reader(pubsub)), loop.create_task(self._writer(client)),
                 loop.create_task(self._subscriptions(pubsub)), loop.create_task(self._ticker(client)),
                 loop.create_task(self._room_counts(client))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        raise _Down("session ended")

    async def _subscribe_confirmed(self, pubsub: Any, channels: list[bytes]) -> None:
        """Subscribe and wait until Redis confirmed every channel, so nothing published after start is lost."""
        want = set(channels)
        await pubsub.subscribe(*channels)
        for _ in range(len(channels) * 4 + 16):
            if not want:
                return
            msg = await pubsub.get_message(timeout=self.command_timeout)
            if msg is None:
                break
            if msg["type"] == "subscribe":
                want.discard(msg["channel"])
            elif msg["type"] == "message":
                self._on_message(msg["data"])
        if want:
            raise _Down(f"{len(want)} subscriptions not confirmed")

    async def _teardown(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        self._members = []
        if self._pending:
            self._drop_pending("redis_down")
        if pubsub is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(pubsub.aclose(), 1.0)
        if client is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(client.aclose(), 1.0)

    # --- receiving ----------------------------------------------------------------------------------

    async def _reader(self, pubsub: Any) -> None:
        n = 0
        get = pubsub.get_message
        while True:
            msg = await get(timeout=None)
            if msg is not None and msg["type"] == "message":
                self._on_message(msg["data"])
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # parsed replies may be buffered: let clients run too

    def _on_message(self, env: bytes) -> None:
        m = self.metrics
        if not isinstance(env, bytes):
            m.inc(m.bus_dropped, "redis_bad_frame")
            return
        if len(env) > self.max_envelope:
            m.inc(m.bus_dropped, "redis_oversized")
            return
        try:
            node, worker, room, pos = rf.parse_header(env)
            if node == self._node_b:
                return  # our own node's publication: the pipe bus delivered it already
            recs, skipped = rf.records(env, pos, self.max_payload)
        except BusFrameError:
            m.inc(m.bus_dropped, "redis_bad_frame")
            return
        if skipped:
            m.inc(m.bus_dropped, "redis_oversized", skipped)
        handler = self._handler
        if handler is None:
            return
        expected = "chat" if room is not None else "broadcast"
        origin = f"{node.decode(errors='replace')}/{worker}"
        for ts, payload in recs:
            if not _valid_payload(payload, expected):
                m.inc(m.bus_dropped, "redis_bad_payload")
                continue
            m.redis_messages_in += 1
            try:
                handler.on_publication(Publication(room, payload, ts, origin))
            except Exception:
                m.inc(m.bus_dropped, "handler_error")
                log.exception("redis bus: delivering a publication from %s failed", origin)

    # --- sending ------------------------------------------------------------------------------------

    def publish(self, pub: Publication) -> None:
        m = self.metrics
        if not self._up:
            m.inc(m.bus_dropped, "redis_down")
            return
        payload = pub.payload
        if len(payload) > self.max_payload:
            m.inc(m.bus_dropped, "redis_oversized")
            return
        try:
            channel, head = self._channel_of(pub.room) if pub.room is not None else (self._bchannel,
                                                                                     self._bheader)
        except BusFrameError:
            m.inc(m.bus_dropped, "redis_bad_frame")
            return
        rec = rf.record(pub.ts_ms, payload)
        size = len(rec)
        if self._queued + size > self.max_queue:
            m.inc(m.bus_dropped, "redis_queue_full")
            return
        self._queued += size
        pending = self._pending
        if pending:
            last = pending[-1]
            if last[0] == channel and last[3] + size <= self.envelope_target:
                last[2].append(rec)
                last[3] += size
                return
        pending.append([channel, head, [rec], size])
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _channel_of(self, room: str) -> tuple[bytes, bytes]:
        entry = self._headers.get(room)
        if entry is None:
            if len(self._headers) >= _MAX_HEADER_CACHE:
                self._headers.clear()
            entry = self._headers[room] = (rf.room_channel(self.prefix, room),
                                           rf.header(self._node_b, self.worker_id, room))
        return entry

    def _take_pending(self, pipe: Any) -> int:
        """Move up to one pipeline's worth of pending envelopes into ``pipe``; returns publications taken."""
        pending = self._pending
        take = pending[:_MAX_BATCH_CMDS]
        del pending[:_MAX_BATCH_CMDS]
        n = 0
        for channel, head, recs, size in take:
            pipe.publish(channel, head + b"".join(recs))
            self._queued -= size
            n += len(recs)
        return n

    def _drop_pending(self, reason: str) -> None:
        n = sum(len(p[2]) for p in self._pending)
        self._pending = []
        self._queued = 0
        if n:
            self.metrics.inc(self.metrics.bus_dropped, reason, n)
        self._release()

    def congested(self) -> bool:
        return self._queued > HIGH_WATER

    def on_drained(self, callback: Callable[[], None]) -> None:
        self._drained.append(callback)
        if not self.congested():
            self._release()

    def _release(self) -> None:
        if self._drained and self._queued < LOW_WATER:
            waiting, self._drained = self._drained, []
            loop = asyncio.get_running_loop()
            for cb in waiting:
                loop.call_soon(cb)

    async def _writer(self, client: Any) -> None:
        wake = self._wake
        assert wake is not None
        m = self.metrics
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                pipe = client.pipeline(transaction=False)
                n = self._take_pending(pipe)
                self._inflight = True
                try:
                    async with asyncio.timeout(self.command_timeout):  # no extra task per batch
                        await pipe.execute()
                except BaseException:
                    m.inc(m.bus_dropped, "redis_down", n)
                    raise
                finally:
                    self._inflight = False
                m.redis_messages_out += n
                self._release()

    async def _subscriptions(self, pubsub: Any) -> None:
        """Applies interest changes. A task of its own, woken directly by :meth:`interest`: it runs before
        the hub flushes the ``joined`` reply of the same tick, and writes SUBSCRIBE without waiting for a
        publish batch in flight, so the subscription reaches Redis before the client can react."""
        wake = self._sub_wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            if self._sub_changes:
                changes, self._sub_changes = self._sub_changes, {}
                add = [self._channel_of(r)[0] for r, on in changes.items() if on]
                remove = [self._channel_of(r)[0] for r, on in changes.items() if not on]
                async with asyncio.timeout(self.command_timeout):
                    if add:
                        await pubsub.subscribe(*add)
                    if remove:
                        await pubsub.unsubscribe(*remove)

    async def _room_counts(self, client: Any) -> None:
        """Writes this worker's room counts as they change: a task of its own, so that a SUBSCRIBE never
        waits behind it."""
        wake = self._count_wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            if self._count_changes:
                counts, self._count_changes = self._count_changes, {}
                await self._write_counts(client, counts, replace=False)

    async def _write_counts(self, client: Any, counts: dict[str, int], replace: bool) -> None:
        """This worker's members per room, in its hash (read by the other nodes' stats)."""
        key = rf.rooms_key(self.prefix, self._member)
        pipe = client.pipeline(transaction=False)
        if replace:
            pipe.delete(key)
        gone = [r for r, n in counts.items() if not n]
        live = {r: n for r, n in counts.items() if n}
        if gone and not replace:
            pipe.hdel(key, *gone)
        if live:
            pipe.hset(key, mapping=live)
        pipe.pexpire(key, self.ttl_ms)
        async with asyncio.timeout(self.command_timeout):
            await pipe.execute()

    # --- interest and room counts ---------------------------------------------------------------------

    def room_members(self, room: str, count: int) -> None:
        # recorded even while down or connecting: a session subscribes to ``_rooms`` and writes ``_counts``
        # as they are when it starts and clears the changes at that moment, so none is ever lost
        if count:
            self._counts[room] = count
        else:
            self._counts.pop(room, None)
        self._count_changes[room] = count
        count_wake = self._count_wake
        if count_wake is not None and not count_wake.is_set():
            count_wake.set()
        present = count > 0
        if room not in self._always and (room in self._rooms) != present:
            if present:
                self._rooms.add(room)
            else:
                self._rooms.discard(room)
            self._sub_changes[room] = present
        wake = self._sub_wake
        if wake is not None and not wake.is_set():
            wake.set()

    # --- presence and stats -------------------------------------------------------------------------

    async def _ticker(self, client: Any) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            await self._refresh(client)

    async def _refresh(self, client: Any) -> None:
        """Write our snapshot with its TTL, renew our presence, prune the dead, read who is alive."""
        if self._closed:
            return  # leaving: the goodbye removes our entries, do not put them back
        handler = self._handler
        snap = dict(handler.stats_snapshot()) if handler is not None else {}
        snap.pop("metrics", None)  # each node's /metrics is its own; the cluster needs figures only
        snap.pop("room_counts", None)
        snap.setdefault("node", self.node)
        snap["bus_up"] = True
        data = msgpack.packb(snap, use_bin_type=True)
        now = int(time.time() * 1000)
        mkey = rf.members_key(self.prefix)
        pipe = client.pipeline(transaction=False)
        pipe.set(rf.stats_key(self.prefix, self._member), data, px=self.ttl_ms)
        pipe.pexpire(rf.rooms_key(self.prefix, self._member), self.ttl_ms)
        pipe.zadd(mkey, {self._member: now + self.ttl_ms})
        pipe.zremrangebyscore(mkey, "-inf", now)
        pipe.zrangebyscore(mkey, now, "+inf")
        pipe.pexpire(mkey, self.ttl_ms * 10)
        self._refreshing = True
        try:
            async with asyncio.timeout(self.command_timeout):
                res = await pipe.execute()
        finally:
            self._refreshing = False
        own = self._node_b
        self._members = [mb for mb in res[4] if rf.member_node(mb) != own]

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        """Snapshots of the workers of the *other* nodes (this node's own come through the pipe bus)."""
        client = self._client
        if not self._up or client is None or not self._members:
            return []
        members = list(self._members)
        keys = [rf.stats_key(self.prefix, mb) for mb in members]
        slots = self._stats_slots
        assert slots is not None
        rooms = sorted(query.rooms) if query is not None and not query.all_rooms else []
        try:
            async with asyncio.timeout(timeout), slots:  # a burst of get_stats cannot drain the pool
                pipe = client.pipeline(transaction=False)
                pipe.mget(keys)
                for mb in members:
                    if query is not None and query.all_rooms:
                        pipe.hgetall(rf.rooms_key(self.prefix, mb))
                    elif rooms:
                        pipe.hmget(rf.rooms_key(self.prefix, mb), rooms)
                res = await pipe.execute()
        except (TimeoutError, OSError, RedisError) as exc:
            self._stats_ok = False
            log.warning("redis bus: reading the other nodes' stats failed: %s", exc)
            return []
        self._stats_ok = True
        values = res[0]
        counts = res[1:]
        out: list[dict[str, Any]] = []
        for i, v in enumerate(values):
            if not v:
                continue  # expired or removed since the last refresh
            try:
                snap = msgpack.unpackb(v, raw=False, strict_map_key=False)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                self.metrics.inc(self.metrics.bus_dropped, "redis_bad_frame")
                continue
            if not isinstance(snap, dict):
                continue
            if counts:
                snap["room_counts"] = _room_counts(counts[i], rooms)
            out.append(snap)
        return out


def _room_counts(reply: Any, rooms: list[str]) -> dict[str, int]:
    """HGETALL (a dict) or HMGET (a list in ``rooms`` order) of a worker's room counts, as a dict."""
    items = reply.items() if isinstance(reply, dict) else zip(rooms, reply)
    out: dict[str, int] = {}
    for room, n in items:
        try:
            name = room.decode() if isinstance(room, bytes) else room
            out[name] = int(n)
        except (TypeError, ValueError):
            continue  # absent (None) or not a number
        if len(out) >= MAX_LISTED_ROOMS:
            break
    return out


def _valid_payload(payload: bytes, expected: str) -> bool:
    """A payload from another node must be a JSON object of the type its channel carries."""
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return type(msg) is dict and msg.get("type") == expected
