"""Messaging inside a worker: replies, publications to the hub and the bus, room changes, stats queries.

The message handlers (:mod:`.handlers`) carry out the protocol's actions through :class:`Messaging`; the
bus pushes other workers' publications into it (it is the bus's :class:`~server.bus.BusHandler`).

Stats queries are *gathered in rounds*: while one round is out on the bus, every new query joins the next
one, so a flood of ``get_stats`` (or of scrapes) costs the bus one request per round trip, whatever its
size; a connection may have at most ``MAX_PENDING_STATS`` queries waiting (more are refused with
``too_many_requests``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from . import metrics
from .bus import Bus, Publication, cluster
from .bus.base import Outcome, Submission
from .hub import Hub
from .metrics import Metrics
from .protocol import Join, Publish, QueryStats, ack_msg, error_msg, joined_msg
from .stats import StatsQuery, merge_rooms, room_counts, stats_reply
from .streams import BROADCAST
from .streams.stamp import position
from .streams.stitch import Stitch
from .streams.table import Replay

if TYPE_CHECKING:
    from .connection import Conn

log = logging.getLogger("fanwire.worker")

MAX_PENDING_STATS: Final = 4


class Gatherer:
    """Rounds of stats gathering over the bus (see the module docstring)."""

    __slots__ = ("bus", "local", "next_query", "next_round", "running", "timeout")

    def __init__(self, bus: Bus, local: Callable[[StatsQuery | None], dict[str, Any]], timeout: float) -> None:
        self.bus = bus
        self.local = local
        self.timeout = timeout
        self.next_query: StatsQuery | None = None
        self.next_round: asyncio.Future[list[dict[str, Any]]] | None = None
        self.running = False

    async def gather(self, rooms: list[str], all_rooms: bool) -> list[dict[str, Any]]:
        """Every worker's snapshot (this one first), counting ``rooms`` (or, ``all_rooms``, the largest)."""
        if self.next_round is None:
            self.next_round = asyncio.get_running_loop().create_future()
            self.next_query = StatsQuery()
        assert self.next_query is not None
        self.next_query.add(rooms, all_rooms)
        fut = self.next_round
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._rounds())
        return await asyncio.shield(fut)

    async def _rounds(self) -> None:
        try:
            while self.next_round is not None:
                fut, query = self.next_round, self.next_query
                self.next_round = self.next_query = None
                try:
                    snaps = [self.local(query)] + await self.bus.gather_stats(self.timeout, query)
                except Exception as exc:  # a round must always be answered
                    log.exception("stats gathering failed")
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                if not fut.done():
                    fut.set_result(snaps)
        finally:
            self.running = False


class _PendingJoin:
    __slots__ = ("conn", "join", "stitch")

    def __init__(self, conn: Conn, join: Join) -> None:
        self.conn = conn
        self.join = join
        self.stitch = Stitch(join.since)


def _mtype(payload: bytes) -> str:
    """The ``type`` of a stamped JSON payload (our own encoding puts it right after the position)."""
    i = payload.find(b'"type":"')
    if i < 0:
        return "publication"
    j = payload.find(b'"', i + 8)
    return payload[i + 8 : j].decode(errors="replace") if 0 < j - i - 8 <= 16 else "publication"


class Messaging:
    """The worker's messaging: the handlers' :class:`~server.handlers.MessageSink`, the bus's handler."""

    def __init__(self, hub: Hub[Conn], bus: Bus, metrics: Metrics, *, worker_id: int, node: str,
                 max_rooms: int, stats_timeout: float, worker_count: int, cluster_bus: bool,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], max_stitch: int = 1 << 20) -> None:
        self.hub = hub
        self.bus = bus
        self.metrics = metrics
        self.worker_id = worker_id
        self.origin = str(worker_id)
        self.node = node
        self.max_rooms = max_rooms
        self.worker_count = worker_count
        self.cluster_bus = cluster_bus
        self.spawn = spawn
        self.pid = 0
        self.started = time.monotonic()
        self.gatherer = Gatherer(bus, self.stats_snapshot, stats_timeout)
        self.pending_stats: dict[Conn, int] = {}
        self.pending_joins: dict[str, list[_PendingJoin]] = {}  # stream -> joins waiting for its position
        self.max_stitch = max_stitch
        self.count_in = metrics.count_in
        self.count_out = metrics.count_out

    # --- the handlers' sink ---------------------------------------------------------------------------

    def reply(self, conn: Conn, msg: dict[str, Any]) -> None:
        """Send one message to one client, encoded with its codec."""
        if conn.close_reason is not None:
            return
        codec = conn.codec
        payload = codec.encode(msg)
        conn.send_message(payload, codec.text)
        conn.msgs_out += 1
        conn.bytes_out += len(payload)
        m = self.metrics
        mtype = msg["type"]
        m.count_out(mtype, 1, len(payload))
        if mtype == "error":
            m.inc(m.errors, msg["code"])

    def publish(self, conn: Conn, action: Publish) -> None:
        """Submit to the stream's sequencer; the message reaches this worker's receivers (the sender
        included) through :meth:`on_publication`, like every other worker's."""
        m = self.metrics
        m.inc(m.publishes, "room" if action.room is not None else "all")
        mid = action.id
        sub = Submission(action.stream, action.room, action.payload, action.msg["ts"],
                         conn.identity if mid is not None else None, mid)
        bus = self.bus
        bus.submit(sub, lambda outcome: self._published(conn, action, outcome))
        if bus.congested() and not conn.held:
            conn.hold()  # back-pressure: this publisher waits for the bus, nobody loses a message
            m.inc(m.held, "bus")
            bus.on_drained(conn.release)

    def _published(self, conn: Conn, action: Publish, outcome: Outcome) -> None:
        if outcome.error is not None:
            m = self.metrics
            m.inc(m.dropped, outcome.error)
            detail = ("the stream's sequencer is gone: the message was not published; send it again"
                      if outcome.error == "unavailable" else "the message was not published")
            self.reply(conn, error_msg(outcome.error, detail, action.id))
        elif action.id is not None:
            self.reply(conn, ack_msg(action.stream, outcome.offset, outcome.epoch, outcome.duplicate, action.id))

    def join(self, conn: Conn, join: Join) -> None:
        """Fetch the stream's position (and what was missed); until then the connection gets none of the
        stream's live messages directly: they are kept in the join's stitch (see :meth:`on_publication`)."""
        pending = _PendingJoin(conn, join)
        if not join.already:
            self.pending_joins.setdefault(join.stream, []).append(pending)
        self.bus.history(join.stream, join.since if not join.already else None,
                         lambda result: self._joined(pending, result))

    def _joined(self, pending: _PendingJoin, result: Replay | str) -> None:
        conn, join = pending.conn, pending.join
        waiting = self.pending_joins.get(join.stream)
        if waiting is not None and pending in waiting:
            waiting.remove(pending)
            if not waiting:
                del self.pending_joins[join.stream]
        if conn.close_reason is not None or conn not in self.hub.conns:
            return
        if isinstance(result, str):  # bad_since, unavailable: the join did not happen
            if not join.already:
                if join.stream == BROADCAST:
                    conn.broadcasts = False
                elif conn.system and join.stream in conn.system:
                    conn.system.discard(join.stream)
                elif join.stream in conn.rooms:
                    conn.rooms.remove(join.stream)
            detail = ("'since' is ahead of the stream's latest offset in that epoch" if result == "bad_since"
                      else "the stream's sequencer is gone: join again")
            self.reply(conn, error_msg(result, detail, join.id))
            return
        if join.already:
            self.reply(conn, joined_msg(conn, join, result.epoch, result.latest, None, 0))
            return
        messages, _, recovered = pending.stitch.finish(result.epoch, result.latest, result.messages,
                                                       result.recovered)
        replayed = 0
        for payload in messages:
            pos = position(payload)
            if pos is not None and pos[0] <= result.latest:
                self._send_one(conn, payload)
                replayed += 1
        self.reply(conn, joined_msg(conn, join, result.epoch, result.latest, recovered, replayed))
        for payload in messages[replayed:]:  # live ones, after the answer
            self._send_one(conn, payload)
        self.hub.subscribe(conn, join.stream)

    def _send_one(self, conn: Conn, payload: bytes) -> None:
        """One stamped message (replayed or stitched) to one connection, in its codec."""
        codec = conn.codec
        body = codec.from_json(payload)
        conn.send_message(body, codec.text)
        conn.msgs_out += 1
        conn.bytes_out += len(body)
        self.metrics.count_out(_mtype(payload), 1, len(body))

    def unsubscribe(self, conn: Conn, room: str) -> None:
        self.hub.unsubscribe(conn, room)

    def query_stats(self, conn: Conn, query: QueryStats) -> None:
        pending = self.pending_stats.get(conn, 0)
        if pending >= MAX_PENDING_STATS:
            self.reply(conn, error_msg("too_many_requests",
                                       f"at most {MAX_PENDING_STATS} get_stats at a time", query.id))
            return
        self.pending_stats[conn] = pending + 1
        self.spawn(self._stats(conn, query))

    async def _stats(self, conn: Conn, query: QueryStats) -> None:
        try:
            admin = conn.grant is not None and conn.grant.admin
            visible = None if admin else list(conn.rooms)
            snaps = await self.gatherer.gather(visible or [], admin)
            extra = cluster.stats_fields(snaps, self.node, self.worker_count, self.cluster_bus,
                                         self.bus.stats_complete())
            you = {"client_id": conn.client_id, "messages_in": conn.msgs_in, "messages_out": conn.msgs_out,
                   "bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out,
                   "connected_s": round(time.monotonic() - conn.opened_at, 3), "rooms": list(conn.rooms)}
            reply = stats_reply(snaps, merge_rooms(snaps, visible), you, extra)
            if query.data is not None:
                reply["data"] = query.data
            if query.id is not None:
                reply["id"] = query.id
            self.reply(conn, reply)
        finally:
            left = self.pending_stats.get(conn, 1) - 1
            if left > 0:
                self.pending_stats[conn] = left
            else:
                self.pending_stats.pop(conn, None)

    # --- the bus's handler ----------------------------------------------------------------------------------

    def on_publication(self, pub: Publication) -> None:
        stream = pub.room if pub.room is not None else BROADCAST
        if self.pending_joins:
            waiting = self.pending_joins.get(stream)
            if waiting:
                for pending in waiting:
                    pending.stitch.add_live(pub.payload)
                    if pending.stitch.size > self.max_stitch:
                        pending.conn.overflow(pending.stitch.size)
        self.hub.deliver(stream, pub.payload, _mtype(pub.payload))

    def stats_snapshot(self, query: StatsQuery | None = None) -> dict[str, Any]:
        m = self.metrics
        hub = self.hub
        uptime = round(time.monotonic() - self.started, 3)
        nconns = len(hub.conns)
        nrooms = sum(1 for r in hub.rooms if not r.startswith("$"))  # the server's own streams are no rooms
        return {
            "id": self.worker_id,
            "pid": self.pid,
            "node": self.node,
            "clients": nconns,
            "messages_in": m.total_in(),
            "messages_out": m.total_out(),
            "room_count": nrooms,
            "room_counts": room_counts(hub.rooms, query),
            "uptime_s": uptime,
            "metrics": m.snapshot(nconns, nrooms, self.worker_id, uptime, self.bus.healthy()),
        }

    async def metrics_text(self) -> str:
        snaps = await self.gatherer.gather([], False)
        merged = metrics.merge(s.get("metrics", {}) for s in snaps)  # this node's (others carry none)
        if self.cluster_bus:
            merged.update(cluster.metric_families(snaps))
        return metrics.render(merged)
