"""RedisBus: streams sequenced by Redis, delivered through Redis pub/sub (redis-py asyncio, hiredis parser).

Every worker of every node runs one RedisBus with a subscriber connection and a small pool for commands
(``_POOL_SIZE``; a command that finds every connection in use waits for one, at most ``command_timeout``,
instead of failing - which would end the session). With the Redis bus, Redis is every stream's sequencer:
a submission runs the ``SEQUENCE`` script (:mod:`.redisscripts`), which gives the message its offset,
appends it to the stream's history (a Redis stream) and publishes it on the stream's channel, atomically,
so every worker of every node - the one that submitted it included - receives each stream's messages in
one order. History survives worker and node
restarts; a Redis restart loses it, and the streams then start new epochs (clients learn it on recovery).

Sending: :meth:`submit` never blocks and never raises. Submissions wait in a list; one writer task sends
them, all those of a tick in one pipeline (batches grow with the load), in order, and calls each one's
``done`` with the script's answer. Bytes waiting are bounded: above ``HIGH_WATER`` the bus says it is
congested (the worker holds its publishers), past ``max_queue`` a submission fails (``unavailable``,
counted); so does everything submitted while Redis is unreachable (:class:`.nodebus.NodeBus` then
sequences locally instead).

Receiving: the subscriber listens to the broadcast channel, to the rooms in ``always``, and to the channel
of every room with members on this worker (:meth:`room_members`) or a join in progress (:meth:`history`
subscribes first, waits for Redis to confirm, then runs ``REPLAY``, so every message published after the
replay's ``latest`` reaches this worker). At most ``_MAX_REPLAYS`` replays run at once: a burst of joins
(clients re-joining after a blip) queues for its turn - at most ``command_timeout`` - and leaves the pool's
other connections to the writer and the upkeep. Malformed, oversized or unstamped payloads are dropped and
counted (``redis_bad_frame``, ``redis_oversized``, ``redis_bad_payload``).

No silent hole: what the subscriber brings goes through a :class:`.mend.Mender`, so that what this worker
missed of a stream it follows (its connection dropped and came back while Redis stayed up, and the others
published meanwhile) is replayed from the stream's history before the stream's next message; what the
history no longer has shows as a jump in offsets (``bus_dropped{reason="unmended"}``). In a cluster the pipe
streams layer mends instead, after its own filter (``mend=False``).

Presence and stats: every ``stats_interval`` the worker writes its stats snapshot with a TTL and refreshes
its entry in a sorted set scored by expiry time, so a dead node disappears within ``ttl``; its members per
room live in a hash with the same TTL (read by the other nodes' ``get_stats``).

Faults: any Redis error tears both connections down; the bus reports unhealthy (the worker says
``"bus": "degraded"``), and reconnects with capped exponential backoff and full jitter (the project's one
generator, :mod:`server.backoff`), resubscribing on success; ``on_health`` is then called (the node bus
resets the epochs of the streams it sequenced locally meanwhile: :meth:`reset_epochs`, which raises when it
could not, so that the caller never goes on as if it had). Closing fails what is still pending and waits
(bounded) for the joins in flight to be answered.

Why this module is long: one connection session (subscriber, writer, interest, presence, room counts)
and its reconnect loop share the session's state; the pure framing and names are in :mod:`.redisframe`,
the scripts in :mod:`.redisscripts`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

import msgpack
from redis.exceptions import RedisError

from ..backoff import backoff
from ..errors import BusFrameError, ConfigError
from ..metrics import Metrics
from ..stats import MAX_LISTED_ROOMS, StatsQuery
from ..streams import BROADCAST, stamp
from ..streams.table import Replay
from . import redisframe as rf
from . import redisscripts
from .base import Bus, BusHandler, Done, Outcome, Publication, ReplayDone, Submission
from .mend import Mender

log = logging.getLogger("fanwire.bus.redis")

URL_SCHEMES = ("redis", "rediss", "unix")
_YIELD_EVERY = 64  # received messages between yields to the event loop, for fairness with clients
_MAX_BATCH = 512  # submissions per pipeline
_MAX_HEADER_CACHE = 4096
_POOL_SIZE = 16  # command connections per worker (the subscriber takes one more of them)
_MAX_REPLAYS = 4  # REPLAY scripts at once (joins, mendings); more wait their turn
_MAX_STATS = 2  # stats readings at once
HIGH_WATER = 4 << 20  # bytes waiting for Redis above which publishers are held (back-pressure)
LOW_WATER = 1 << 20
META_TTL_S = 7 * 24 * 3600  # an idle stream keeps its epoch and offset this long


def check_url(url: str) -> None:
    """Raise ConfigError unless ``url`` looks like a Redis URL redis-py accepts."""
    scheme = urlparse(url).scheme
    if scheme not in URL_SCHEMES:
        raise ConfigError(f"--redis-url must start with redis://, rediss:// or unix://, got {url!r}")


class _Down(Exception):
    """Internal: the session ended (Redis unreachable or a task finished)."""


async def _reap(task: asyncio.Task[Any] | None, timeout: float = 2.0) -> None:
    """Wait for a task we cancelled (or that ended) to finish; its own cancellation is expected, ours is not.
    (``asyncio.timeout``, never ``wait_for``, here and below: on Python 3.11, ``wait_for`` can swallow a
    cancellation that arrives as the awaited thing ends, and a cancelled session would go on.)"""
    if task is None:
        return
    try:
        async with asyncio.timeout(timeout):
            await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves: let it through
    except (TimeoutError, _Down, RedisError, OSError, BusFrameError) as exc:
        log.debug("redis bus: a task ended with %s", type(exc).__name__)


async def _close_quietly(closer: Any, what: str) -> None:
    try:
        async with asyncio.timeout(1.0):
            await closer()
    except (TimeoutError, RedisError, OSError, RuntimeError) as exc:
        log.debug("redis bus: closing the %s: %s", what, exc)


class RedisBus(Bus):
    """One worker's link to Redis, the cluster's sequencer: a session (subscriber, writer, interest, room
    counts, presence) and the loop that re-creates it after an outage (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str, node: str, worker_id: int, metrics: Metrics, *, prefix: str = "fanwire:",
                 stats_interval: float = 1.0, ttl: float = 3.0, max_payload: int = 16 << 20,
                 max_envelope: int = 64 << 20, max_queue: int = 16 << 20, connect_timeout: float = 2.0,
                 command_timeout: float = 2.0, backoff_base: float = 0.1, backoff_cap: float = 2.0,
                 always: tuple[str, ...] = (), history_size: int = 256, history_ttl: float = 300.0,
                 dedup_window: float = 60.0, mend: bool = True) -> None:
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
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.history_size = history_size
        self.history_ttl_ms = max(1, int(history_ttl * 1000))
        self.dedup_ms = max(1, int(dedup_window * 1000))
        self._node_b = node.encode()
        rf.header(self._node_b, worker_id, None)  # raises BusFrameError early for an absurd node id
        self._member = rf.member(node, worker_id, os.getpid())
        self._bchannel = rf.broadcast_channel(self.prefix)
        self._cchannel = rf.control_channel(self.prefix)
        self._headers: dict[str, tuple[bytes, bytes]] = {}  # stream -> (channel, envelope header)
        self._handler: BusHandler | None = None
        self._up = False
        self._live = False  # a session reached Redis and is not over (it may not be up yet: subscribing...)
        self._closed = False
        self.on_health: Callable[[bool], None] | None = None  # told when the link comes up or goes down
        # rooms subscribed for the life of the bus: the default room every new connection lands in, so
        # that a client's first messages from other nodes never race its worker's SUBSCRIBE
        self._always = frozenset(always)
        self._rooms: set[str] = set(always)  # rooms with local members or a join in progress: channels we want
        self._joining: dict[str, int] = {}  # room -> joins in progress (they keep its channel subscribed)
        self._confirmed: set[bytes] = set()  # channels Redis confirmed in this session
        self._confirm_waits: dict[bytes, list[asyncio.Future[bool]]] = {}  # True: confirmed; False: session over
        self._markers: dict[bytes, asyncio.Future[bool]] = {}  # a join's marker -> its waiter (as above)
        self._sub_changes: dict[str, bool] = {}  # room -> subscribe (True) / unsubscribe, not yet sent
        self._counts: dict[str, int] = {}  # members per room on this worker
        self._count_changes: dict[str, int] = {}  # not yet written to Redis
        self._presence_rooms: set[str] = set()  # rooms with tracked members here (their lists are in Redis)
        self._presence_changes: set[str] = set()  # rooms whose list is not yet written again
        self._pending: list[tuple[Submission, Done]] = []
        self._queued = 0  # bytes of submissions waiting (not yet handed to a pipeline)
        self._drained: list[Callable[[], None]] = []  # held publishers, called back below LOW_WATER
        self._members: list[bytes] = []  # presence members of the *other* nodes, from the last refresh
        self._wake: asyncio.Event | None = None  # submissions pending
        self._sub_wake: asyncio.Event | None = None  # subscription changes pending
        self._count_wake: asyncio.Event | None = None  # room count changes pending
        self._first: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: Any = None
        self._pubsub: Any = None
        self._scripts: dict[str, Any] = {}
        self._outage_logged = False
        self._was_up = False
        self._inflight = False  # a pipeline is on its way
        self._refreshing = False  # a presence refresh is on its way
        self._stats_slots: asyncio.Semaphore | None = None  # bounds concurrent MGETs (pool connections)
        self._replay_slots: asyncio.Semaphore | None = None  # bounds concurrent REPLAYs (pool connections)
        self._stats_ok = True  # the last reading of the other nodes' stats succeeded
        self._tasks: set[asyncio.Task[None]] = set()  # histories and control publications on their way
        # what the subscription brings, its holes mended (see .mend); off when the caller mends it itself
        self._mender = Mender(self._deliver, self._mend_history, metrics) if mend else None
        for room in self._always:
            self._follow(room, True)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: BusHandler) -> None:
        """Connect (waiting at most ``connect_timeout``); if Redis is not there, start degraded and retry."""
        self._handler = handler
        self._wake = asyncio.Event()
        self._sub_wake = asyncio.Event()
        self._count_wake = asyncio.Event()
        self._first = asyncio.Event()
        self._stats_slots = asyncio.Semaphore(_MAX_STATS)
        self._replay_slots = asyncio.Semaphore(_MAX_REPLAYS)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="redis-bus")
        try:
            async with asyncio.timeout(self.connect_timeout + self.command_timeout):
                await self._first.wait()
        except TimeoutError:
            log.warning("redis bus: %s not reachable at start; serving degraded until it is", self.url)

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
            try:
                async with asyncio.timeout(1.0):
                    await self._goodbye(client)
            except (TimeoutError, RedisError, OSError) as exc:
                log.debug("redis bus: goodbye failed: %s", exc)
        self._up = False
        if self._runner is not None:
            self._runner.cancel()
            await _reap(self._runner)
        await self._teardown()
        if self._tasks:  # histories on their way end now (their waits were woken): let each call its done
            await asyncio.wait(list(self._tasks), timeout=self.command_timeout)

    async def _goodbye(self, client: Any) -> None:
        """Leave the presence set at once (peers need not wait for the TTL)."""
        pipe = client.pipeline(transaction=False)
        pipe.delete(rf.stats_key(self.prefix, self._member))
        pipe.delete(rf.rooms_key(self.prefix, self._member))
        pipe.delete(rf.presence_key(self.prefix, self._member))
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
            except (_Down, RedisError, OSError, TimeoutError, BusFrameError) as exc:
                if self._closed:
                    break
                self._note_down(exc)
            finally:
                was_up, self._up = self._up, False
                await self._teardown()
                self._first.set()
                if was_up and self.on_health is not None:
                    self.on_health(False)
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
        # A blocking pool: a command that finds every connection in use waits for one (redis-py's default
        # pool raises instead, which would end the session); joins and stats take turns below the pool's
        # size (_MAX_REPLAYS, _MAX_STATS), so the writer and the upkeep always find one soon.
        pool = aredis.BlockingConnectionPool.from_url(
            self.url, max_connections=_POOL_SIZE, timeout=self.command_timeout,
            socket_connect_timeout=self.connect_timeout, socket_timeout=None, retry=Retry(NoBackoff(), 0),
            health_check_interval=0, client_name=f"fanwire:{self.node}:{self.worker_id}")
        client = self._client = aredis.Redis.from_pool(pool)  # (closing the client closes its pool)
        async with asyncio.timeout(self.command_timeout):
            await client.ping()
        self._live = True
        self._scripts = {name: client.register_script(getattr(redisscripts, name))
                         for name in ("SEQUENCE", "REPLAY", "RESET")}
        pubsub = self._pubsub = client.pubsub()
        self._sub_changes.clear()
        self._confirmed.clear()
        channels = [self._bchannel, self._cchannel] + [self._channel_of(r)[0] for r in self._rooms]
        async with asyncio.timeout(self.command_timeout):
            await self._subscribe_confirmed(pubsub, channels)
        self._count_changes.clear()
        await self._write_counts(client, {r: n for r, n in self._counts.items() if not r.startswith("$")},
                                 replace=True)
        self._presence_changes.clear()
        await self._write_presence(client, set(self._presence_rooms), replace=True)
        await self._refresh(client)
        self._up = self._was_up = True
        if self._outage_logged:
            self.metrics.redis_reconnects += 1
            log.warning("redis bus: %s reachable again; cross-node traffic resumes", self.url)
        self._outage_logged = False
        if self.on_health is not None:
            self.on_health(True)
        self._first.set()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._reader(pubsub)), loop.create_task(self._writer()),
                 loop.create_task(self._subscriptions(pubsub)), loop.create_task(self._ticker(client)),
                 loop.create_task(self._room_counts(client))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                await _reap(t)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
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
                self._confirm(msg["channel"])
            elif msg["type"] == "message":
                self._on_message(msg["data"])
        if want:
            raise _Down(f"{len(want)} subscriptions not confirmed")

    async def _teardown(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        self._live = False
        self._members = []
        self._scripts = {}  # bound to this session's client: a later call must not revive its pool
        self._confirmed.clear()
        for waits in self._confirm_waits.values():  # False: the session ended (a result, so that a waiter
            for fut in waits:  # gone already leaves no "exception never retrieved" behind)
                if not fut.done():
                    fut.set_result(False)
        self._confirm_waits.clear()
        for fut in self._markers.values():
            if not fut.done():
                fut.set_result(False)
        self._markers.clear()
        if self._pending:
            self._fail_pending("redis_down")
        if pubsub is not None:
            await _close_quietly(pubsub.aclose, "subscriber")
        if client is not None:
            await _close_quietly(client.aclose, "client")

    # --- receiving ----------------------------------------------------------------------------------

    async def _reader(self, pubsub: Any) -> None:
        n = 0
        get = pubsub.get_message
        while True:
            msg = await get(timeout=None)
            if msg is not None:
                kind = msg["type"]
                if kind == "message":
                    self._on_message(msg["data"])
                elif kind == "subscribe":
                    self._confirm(msg["channel"])
                elif kind == "unsubscribe":
                    self._confirmed.discard(msg["channel"])
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # parsed replies may be buffered: let clients run too

    def _on_message(self, env: bytes) -> None:
        m = self.metrics
        if not isinstance(env, bytes):
            m.inc(m.bus_dropped, "redis_bad_frame")
            return
        if env[:2] == rf.MARKER:
            waiter = self._markers.pop(env, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            return  # another worker's join: nothing for us
        if env[:2] == rf.CONTROL:
            self._on_control(env)
            return
        if len(env) > self.max_envelope:
            m.inc(m.bus_dropped, "redis_oversized")
            return
        try:
            node, worker, room, payload = rf.parse_envelope(env)
        except BusFrameError:
            m.inc(m.bus_dropped, "redis_bad_frame")
            return
        if len(payload) > self.max_payload:
            m.inc(m.bus_dropped, "redis_oversized")
            return
        if stamp.position(payload) is None:
            m.inc(m.bus_dropped, "redis_bad_payload")  # not sequenced by our script: not ours
            return
        handler = self._handler
        if handler is None:
            return
        m.redis_messages_in += 1
        pub = Publication(room, payload, 0, f"{node.decode(errors='replace')}/{worker}")
        if self._mender is not None:
            self._mender.on_publication(pub)
        else:
            handler.on_publication(pub)

    def _deliver(self, pub: Publication) -> None:
        if self._handler is not None:
            self._handler.on_publication(pub)

    def _follow(self, room: str, on: bool) -> None:
        if self._mender is not None:
            self._mender.follow(room, on)

    def _on_control(self, env: bytes) -> None:
        try:
            command = msgpack.unpackb(env[2:], raw=False) if len(env) <= rf.MAX_CONTROL else None
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            command = None
        if not isinstance(command, dict):
            self.metrics.inc(self.metrics.bus_dropped, "redis_bad_frame")
            return
        if command.get("from") == self.node or self._handler is None:
            return  # our own node's workers were reached through its pipe bus
        self._handler.on_control(command)

    def control(self, command: dict[str, Any]) -> int:
        client = self._client
        if not self._up or client is None:
            return 0
        data = rf.CONTROL + msgpack.packb({**command, "from": self.node}, use_bin_type=True)
        if len(data) > rf.MAX_CONTROL:
            raise ValueError("a control command over 64 KiB")

        async def send() -> None:
            try:
                async with asyncio.timeout(self.command_timeout):
                    await client.publish(self._cchannel, data)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("redis bus: a control command was not sent: %s", exc)

        self._spawn(send())
        return len(self.nodes())

    # --- sending ------------------------------------------------------------------------------------

    def submit(self, sub: Submission, done: Done) -> None:
        m = self.metrics
        if not self._up:
            m.inc(m.bus_dropped, "redis_down")
            done(Outcome(error="unavailable"))
            return
        size = len(sub.payload)
        if size > self.max_payload:
            m.inc(m.bus_dropped, "redis_oversized")
            done(Outcome(error="unavailable"))
            return
        try:
            self._channel_of(sub.stream)
        except BusFrameError:
            m.inc(m.bus_dropped, "redis_bad_frame")
            done(Outcome(error="unavailable"))
            return
        if self._queued + size > self.max_queue:
            m.inc(m.bus_dropped, "redis_queue_full")
            done(Outcome(error="unavailable"))
            return
        self._queued += size
        self._pending.append((sub, done))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _channel_of(self, stream: str) -> tuple[bytes, bytes]:
        entry = self._headers.get(stream)
        if entry is None:
            if len(self._headers) >= _MAX_HEADER_CACHE:
                self._headers.clear()
            room = None if stream == BROADCAST else stream
            channel = self._bchannel if room is None else rf.room_channel(self.prefix, room)
            entry = self._headers[stream] = (channel, rf.header(self._node_b, self.worker_id, room))
        return entry

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, []
        self._queued = 0
        if pending:
            self.metrics.inc(self.metrics.bus_dropped, reason, len(pending))
        for _, done in pending:
            done(Outcome(error="unavailable"))
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

    async def _writer(self) -> None:
        wake = self._wake
        assert wake is not None
        m = self.metrics
        client = self._client
        sequence = self._scripts["SEQUENCE"]
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                pipe = client.pipeline(transaction=False)
                for sub, _ in batch:
                    self._queued -= len(sub.payload)
                    channel, head = self._channel_of(sub.stream)
                    meta, hist = rf.stream_keys(self.prefix, sub.stream)
                    use_dedup = sub.identity is not None and sub.msg_id is not None
                    dedup = rf.dedup_key(self.prefix, sub.stream, sub.identity or "", sub.msg_id) if use_dedup \
                        else meta
                    await sequence(keys=[meta, hist, dedup],  # queued in the pipeline (no round trip)
                                   args=[channel, head, sub.payload, self.history_size, META_TTL_S * 1000,
                                         self.history_ttl_ms, self.dedup_ms, stamp.new_epoch(),
                                         "1" if use_dedup else "0"],
                                   client=pipe)
                self._inflight = True
                try:
                    async with asyncio.timeout(self.command_timeout):  # no extra task per batch
                        results = await pipe.execute(raise_on_error=False)
                except BaseException:
                    m.inc(m.bus_dropped, "redis_down", len(batch))
                    for _, done in batch:
                        done(Outcome(error="unavailable"))
                    raise
                finally:
                    self._inflight = False
                for (_, done), res in zip(batch, results):
                    if isinstance(res, Exception):
                        m.inc(m.bus_dropped, "redis_script_error")
                        log.warning("redis bus: the sequencing script failed: %s", res)
                        done(Outcome(error="unavailable"))
                    else:
                        m.redis_messages_out += 1
                        done(Outcome(int(res[0]), _text(res[1]), bool(res[2])))
                self._release()

    # --- history -------------------------------------------------------------------------------------------

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        if not self._live or self._closed:  # (while a session comes up, not only once up: a cluster's mender
            done("unavailable")  # asks as the first messages of a resubscribed channel arrive)
            return
        mender = self._mender
        if mender is not None:  # a hole of the stream being mended: the answer waits for it (see .mend)
            room, answer = None if stream == BROADCAST else stream, done

            def done(result: Replay | str) -> None:
                mender.after(room, lambda: answer(result))

        self._spawn(self._history(stream, since, done))

    def _mend_history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        """The mender's history: of a stream already subscribed, asked even while a session comes up (a hole
        shows right after a reconnect, as the first messages arrive)."""
        if self._closed:
            done("unavailable")
            return
        self._spawn(self._history(stream, since, done, join=False))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # (a reference, until it ends)
        task.add_done_callback(self._tasks.discard)

    async def _history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone, join: bool = True) -> None:
        """Subscribe (a join keeps the room's channel wanted meanwhile), wait for Redis to confirm, run REPLAY
        (a few at a time: a burst of joins queues for its turn rather than drain the connection pool), then
        wait for its marker: every live message up to the replay's latest has reached us then."""
        room = None if stream == BROADCAST else stream
        if room is not None and join:
            self._join_interest(room, +1)
        marker = rf.MARKER + os.urandom(12)
        loop = asyncio.get_running_loop()
        slots = self._replay_slots
        assert slots is not None
        try:
            channel = self._channel_of(stream)[0]
            if channel not in self._confirmed:
                fut: asyncio.Future[bool] = loop.create_future()
                self._confirm_waits.setdefault(channel, []).append(fut)
                async with asyncio.timeout(self.command_timeout):
                    if not await fut:
                        raise _Down("redis session ended")
            meta, hist = rf.stream_keys(self.prefix, stream)
            arrived: asyncio.Future[bool] = loop.create_future()
            self._markers[marker] = arrived
            async with asyncio.timeout(self.command_timeout):  # our turn
                await slots.acquire()
            try:
                async with asyncio.timeout(self.command_timeout):
                    res = await self._scripts["REPLAY"](
                        keys=[meta, hist],
                        args=["" if since is None else since[0], "" if since is None else since[1],
                              self.history_ttl_ms, stamp.new_epoch(), META_TTL_S * 1000, channel, marker])
            finally:
                slots.release()
            async with asyncio.timeout(self.command_timeout):
                if not await arrived:  # every live message up to the replay's latest has reached us now
                    raise _Down("redis session ended")
        except (TimeoutError, _Down, RedisError, OSError, KeyError, BusFrameError) as exc:
            log.debug("redis bus: history of %r failed: %s", stream, exc)
            done("unavailable")
        else:
            epoch, latest, verdict, payloads = _text(res[0]), int(res[1]), int(res[2]), res[3]
            if verdict == -2:
                done("bad_since")
            else:
                done(Replay(epoch, latest, [bytes(p) for p in payloads], None if verdict == -1 else verdict == 1))
        finally:
            self._markers.pop(marker, None)
            if room is not None and join:
                # after done(): the hub subscribed the joiner meanwhile, so the channel stays wanted
                loop.call_soon(self._join_interest, room, -1)

    def _join_interest(self, room: str, delta: int) -> None:
        n = self._joining.get(room, 0) + delta
        if n > 0:
            self._joining[room] = n
        else:
            self._joining.pop(room, None)
        self._want(room)

    def _confirm(self, channel: bytes) -> None:
        self._confirmed.add(channel)
        for fut in self._confirm_waits.pop(channel, []):
            if not fut.done():
                fut.set_result(True)

    async def reset_epochs(self, streams: Iterable[str]) -> None:
        """New epochs for these streams (they were published to locally while Redis was unreachable). Raises
        ConnectionError if one could not be reset: the caller must not act as if it had been."""
        script = self._scripts.get("RESET")
        if not self._up or script is None:
            raise ConnectionError(f"redis bus: {self.url} is not reachable")
        for stream in streams:
            meta, hist = rf.stream_keys(self.prefix, stream)
            try:
                async with asyncio.timeout(self.command_timeout):
                    await script(keys=[meta, hist], args=[stamp.new_epoch(), META_TTL_S * 1000])
            except (TimeoutError, RedisError, OSError) as exc:
                raise ConnectionError(f"redis bus: could not reset the epoch of {stream!r}: {exc}") from exc

    # --- interest and room counts ---------------------------------------------------------------------

    async def _subscriptions(self, pubsub: Any) -> None:
        """Applies interest changes. A task of its own, woken directly by :meth:`room_members`: it runs before
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
            if self._presence_changes:
                rooms, self._presence_changes = self._presence_changes, set()
                await self._write_presence(client, rooms, replace=False)

    async def _write_counts(self, client: Any, counts: dict[str, int], replace: bool) -> None:
        """This worker's members per room, in its hash (read by the other nodes' stats)."""
        gone = [r for r, n in counts.items() if not n]
        live = {r: n for r, n in counts.items() if n}
        await self._write_hash(client, rf.rooms_key(self.prefix, self._member), live, gone, replace)

    async def _write_presence(self, client: Any, rooms: set[str], replace: bool) -> None:
        """This worker's presence lists of ``rooms``, in its hash (read by the other nodes)."""
        handler = self._handler
        live: dict[str, bytes] = {}
        gone: list[str] = []
        for room in rooms:
            part = handler.presence_part(room) if handler is not None else None
            if part is None:
                self._presence_rooms.discard(room)
                gone.append(room)
            else:
                live[room] = msgpack.packb(part, use_bin_type=True)
        await self._write_hash(client, rf.presence_key(self.prefix, self._member), live, gone, replace)

    async def _write_hash(self, client: Any, key: bytes, live: Mapping[str, Any], gone: list[str],
                          replace: bool) -> None:
        """One pipeline: the hash ``key`` gets ``live`` and loses ``gone`` (all of it first, with
        ``replace``), and lives ``ttl_ms`` more."""
        pipe = client.pipeline(transaction=False)
        if replace:
            pipe.delete(key)
        if gone and not replace:
            pipe.hdel(key, *gone)
        if live:
            pipe.hset(key, mapping=live)
        pipe.pexpire(key, self.ttl_ms)
        async with asyncio.timeout(self.command_timeout):
            await pipe.execute()

    def presence_changed(self, room: str) -> None:
        self._presence_rooms.add(room)
        self._presence_changes.add(room)
        count_wake = self._count_wake
        if count_wake is not None and not count_wake.is_set():
            count_wake.set()

    def room_members(self, room: str, count: int) -> None:
        # recorded even while down or connecting: a session subscribes to ``_rooms`` and writes ``_counts``
        # as they are when it starts and clears the changes at that moment, so none is ever lost
        if room == BROADCAST:
            return  # it has its own channel, always subscribed
        if count:
            self._counts[room] = count
        else:
            self._counts.pop(room, None)
        if not room.startswith("$"):  # the server's other streams ($presence:...) are no rooms: not counted
            self._count_changes[room] = count
            count_wake = self._count_wake
            if count_wake is not None and not count_wake.is_set():
                count_wake.set()
        self._want(room)

    def _want(self, room: str) -> None:
        """Subscribe to or unsubscribe from ``room``'s channel, as its members and joins now say."""
        present = room in self._always or self._counts.get(room, 0) > 0 or self._joining.get(room, 0) > 0
        if (room in self._rooms) != present:
            if present:
                self._rooms.add(room)
            else:
                self._rooms.discard(room)
                self._confirmed.discard(self._channel_of(room)[0])  # a later join waits for a new SUBSCRIBE
            self._follow(room, present)  # mended while subscribed; afresh if subscribed again
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
        pipe.pexpire(rf.presence_key(self.prefix, self._member), self.ttl_ms)
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
        self._members = [mb for mb in res[5] if rf.member_node(mb) != own]

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
        presence = sorted(query.presence) if query is not None else []
        try:
            async with asyncio.timeout(timeout), slots:  # a burst of get_stats cannot drain the pool
                pipe = client.pipeline(transaction=False)
                pipe.mget(keys)
                for mb in members:
                    if query is not None and query.all_rooms:
                        pipe.hgetall(rf.rooms_key(self.prefix, mb))
                    elif rooms:
                        pipe.hmget(rf.rooms_key(self.prefix, mb), rooms)
                for mb in members if presence else ():
                    pipe.hmget(rf.presence_key(self.prefix, mb), presence)
                res = await pipe.execute()
        except (TimeoutError, OSError, RedisError) as exc:
            self._stats_ok = False
            log.warning("redis bus: reading the other nodes' stats failed: %s", exc)
            return []
        self._stats_ok = True
        values = res[0]
        counted = len(members) if (query is not None and query.all_rooms) or rooms else 0
        counts = res[1:1 + counted]
        lists = res[1 + counted:]
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
            if lists:
                snap["presence"] = _presence_lists(lists[i], presence)
            out.append(snap)
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _presence_lists(reply: Any, rooms: list[str]) -> dict[str, Any]:
    """HMGET of a worker's presence hash (in ``rooms`` order), decoded; malformed entries are skipped
    (:func:`server.presence.merge` checks each member again)."""
    out: dict[str, Any] = {}
    for room, value in zip(rooms, reply if isinstance(reply, list) else []):
        if not isinstance(value, bytes):
            continue
        try:
            part = msgpack.unpackb(value, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            continue
        if isinstance(part, dict):
            out[room] = part
    return out
