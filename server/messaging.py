"""Messaging inside a worker: replies, publications to the hub and the bus, room changes, stats queries.

The message handlers (:mod:`.handlers`) carry out the protocol's actions through :class:`Messaging`; the
bus pushes other workers' publications into it (it is the bus's :class:`~server.bus.BusHandler`).

Stats queries are *gathered in rounds*: while one round is out on the bus, every new query joins the next
one, so a flood of ``get_stats`` (or of scrapes) costs the bus one request per round trip, whatever its
size; a connection may have at most ``MAX_PENDING_STATS`` queries waiting (more are refused with
``too_many_requests``). Presence lists (``get_presence``) and the HTTP API's questions ride the same rounds.

Presence (:mod:`.presence`): a join with ``presence: true`` tracks the connection in the room and subscribes
it to the room's ``$presence:<room>`` stream, where its arrival and departure are published like any message.

Why this module is long: it is the one place where the protocol's actions meet the hub and the bus (joins
and their stitching, publications, replies, presence, the gathering rounds); the application's code runs in
:mod:`.apprunner` and the HTTP API in :mod:`.http.api`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from . import metrics
from . import presence as pres
from .application import App
from .apprunner import AppRunner
from .bus import Bus, Publication, cluster
from .bus.base import Outcome, Submission
from .codecs import encode_json
from .errors import PublishFailed
from .hub import Hub
from .metrics import Metrics
from .protocol import (
    STATS_ROOM,
    SYSTEM_PREFIX,
    Custom,
    Join,
    Publish,
    QueryPresence,
    QueryStats,
    ack_msg,
    error_msg,
    joined_msg,
)
from .stats import StatsQuery, merge_rooms, room_counts, stats_reply
from .streams import BROADCAST
from .streams.stamp import position
from .streams.stitch import Stitch
from .streams.table import Replay

if TYPE_CHECKING:
    from .connection import Conn
    from .looplag import LoopLag
    from .statsfeed import StatsFeed

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

    async def gather(self, rooms: list[str], all_rooms: bool, presence: list[str] | None = None,
                     disconnect: list[tuple[str, int, str]] | None = None) -> list[dict[str, Any]]:
        """Every worker's snapshot (this one first), counting ``rooms`` (or, ``all_rooms``, the largest),
        listing the ``presence`` rooms, closing the clients named in ``disconnect``."""
        if self.next_round is None:
            self.next_round = asyncio.get_running_loop().create_future()
            self.next_query = StatsQuery()
        assert self.next_query is not None
        self.next_query.add(rooms, all_rooms, presence or (), disconnect or ())
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


def _quiet(fut: asyncio.Future[Any]) -> None:
    """A publication's future nobody awaits: retrieve its exception so asyncio does not warn about it."""
    if not fut.cancelled():
        fut.exception()


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
                 spawn: Callable[[Coroutine[Any, Any, None]], None], max_stitch: int = 1 << 20,
                 app: App | None = None, presence_max_members: int = 1000) -> None:
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
        self.app = app
        self.apps = AppRunner(app, self) if app is not None else None
        self.presence: pres.PresenceTable[Conn] = pres.PresenceTable(presence_max_members)
        self.count_in = metrics.count_in
        self.count_out = metrics.count_out
        self.looplag: LoopLag | None = None  # set by the worker: the loop lag in every snapshot
        self.statsfeed: StatsFeed | None = None  # set by the worker: hears the $stats publications

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

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> asyncio.Future[dict[str, Any]]:
        """Publish a message of the server's own (the application's, the HTTP API's, a presence event):
        the future gives ``{"room", "offset", "epoch"}`` (and ``duplicate``) or raises PublishFailed;
        a message that is not JSON-representable raises BadMessage at once."""
        payload = encode_json(msg)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if fut.done():
                return
            if outcome.error is not None:
                self.metrics.inc(self.metrics.dropped, outcome.error)
                fut.set_exception(PublishFailed(outcome.error))
                return
            result: dict[str, Any] = {"room": stream, "offset": outcome.offset, "epoch": outcome.epoch}
            if outcome.duplicate:
                result["duplicate"] = True
            fut.set_result(result)

        self.metrics.inc(self.metrics.publishes, kind)
        self.bus.submit(Submission(stream, room, payload, msg.get("ts") or int(time.time() * 1000), identity,
                                   msg_id), done)
        fut.add_done_callback(_quiet)
        return fut

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
        tracked = self._track(conn, join.stream) if join.presence else None
        if join.already:
            self.reply(conn, joined_msg(conn, join, result.epoch, result.latest, None, 0, tracked))
            if tracked == "new":
                self._announce(conn, join.stream)
            return
        messages, _, recovered = pending.stitch.finish(result.epoch, result.latest, result.messages,
                                                       result.recovered)
        replayed = 0
        for payload in messages:
            pos = position(payload)
            if pos is not None and pos[0] <= result.latest:
                self._send_one(conn, payload)
                replayed += 1
        self.reply(conn, joined_msg(conn, join, result.epoch, result.latest, recovered, replayed, tracked))
        for payload in messages[replayed:]:  # live ones, after the answer
            self._send_one(conn, payload)
        self.hub.subscribe(conn, join.stream)
        if tracked == "new":
            self._announce(conn, join.stream)

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
        if self.presence.tracked(room, conn):
            self._untrack(conn, room)

    def closed(self, conn: Conn) -> None:
        """The connection is gone: its presence ends (announced), its application hooks run."""
        if conn.system:
            for stream in [s for s in conn.system if s.startswith(pres.PREFIX)]:
                self._untrack(conn, stream[len(pres.PREFIX):])
        if self.apps is not None:
            self.apps.disconnected(conn)

    # --- presence (server.presence) ---------------------------------------------------------------------

    def _track(self, conn: Conn, room: str) -> str | None:
        """Track ``conn`` in ``room``: "new" (announce it once ``joined`` is sent), "already", or None
        (the room's list is full on this worker: no presence)."""
        if self.presence.tracked(room, conn):
            return "already"
        if not self.presence.track(room, conn):
            self.metrics.presence_full += 1
            return None
        return "new"

    def _announce(self, conn: Conn, room: str) -> None:
        """Subscribe the tracked ``conn`` to the room's presence events, then announce its arrival."""
        stream = pres.stream_of(room)
        system = conn.system if conn.system is not None else set()
        system.add(stream)
        conn.system = system
        self.hub.subscribe(conn, stream)
        self._presence_event(conn, room, "join")

    def _untrack(self, conn: Conn, room: str) -> None:
        self.presence.untrack(room, conn)
        stream = pres.stream_of(room)
        if conn.system:
            conn.system.discard(stream)
        self.hub.unsubscribe(conn, stream)
        self._presence_event(conn, room, "leave")

    def _presence_event(self, conn: Conn, room: str, event: str) -> None:
        stream = pres.stream_of(room)
        msg = pres.event_msg(room, event, conn.client_id, conn.user, self.node)
        self.inject(stream, stream, msg, kind="presence")
        self.bus.presence_changed(room)

    def presence_part(self, room: str) -> dict[str, Any] | None:
        return self.presence.listing([room], self.node).get(room)

    def query_presence(self, conn: Conn, query: QueryPresence) -> None:
        if not self._may_query(conn, query.id):
            return
        self.spawn(self._presence_list(conn, query))

    async def _presence_list(self, conn: Conn, query: QueryPresence) -> None:
        try:
            listing = await self.presence_of(query.room)
            reply: dict[str, Any] = {"type": "presence_list", "room": query.room, **listing}
            if query.id is not None:
                reply["id"] = query.id
            self.reply(conn, reply)
        finally:
            self._query_done(conn)

    async def presence_of(self, room: str) -> dict[str, Any]:
        """``room``'s presence over every worker and node: ``{"count", "members", "truncated"}``."""
        snaps = await self.gatherer.gather([], False, presence=[room])
        return pres.merge(snaps, room)

    # --- the HTTP API's questions (server.http.api) ------------------------------------------------------

    async def cluster_stats(self) -> dict[str, Any]:
        """What an admin's ``get_stats`` answers, without ``you``."""
        snaps = await self.gatherer.gather([], True)
        extra = cluster.stats_fields(snaps, self.node, self.worker_count, self.cluster_bus,
                                     self.bus.stats_complete())
        reply = stats_reply(snaps, merge_rooms(snaps, None), {}, extra)
        reply.pop("you", None)
        reply.pop("type", None)
        return reply

    async def disconnect(self, client_id: str, code: int, reason: str) -> tuple[int, int]:
        """Close ``client_id`` wherever it is: (how many this node closed, how many other nodes were asked)."""
        snaps = await self.gatherer.gather([], False, disconnect=[(client_id, code, reason)])
        closed = sum(1 for s in snaps for c in s.get("disconnected", ()) if c == client_id)
        others = self.bus.control({"disconnect": [client_id], "code": code, "reason": reason})
        return closed, others

    def _close_clients(self, targets: dict[str, tuple[int, str]]) -> list[str]:
        """Close the clients of ``targets`` (client id -> close code and reason) that are here."""
        closed = []
        for conn in list(self.hub.conns):
            target = targets.get(conn.client_id)
            if target is not None and conn.close_reason is None:
                conn.close(target[0], target[1], "api")
                closed.append(conn.client_id)
        return closed

    def on_control(self, command: dict[str, Any]) -> None:
        ids = command.get("disconnect")
        code = command.get("code")
        reason = command.get("reason")
        if isinstance(ids, list) and type(code) is int and 4000 <= code <= 4999 and type(reason) is str:
            self._close_clients({i: (code, reason[:120]) for i in ids[:256] if type(i) is str})

    # --- the application (server.App): see server.apprunner ------------------------------------------------

    def custom(self, conn: Conn, call: Custom) -> None:
        if self.apps is None:
            self.reply(conn, error_msg("unknown_action", f"unknown action {call.action!r}; known: get_stats",
                                       call.id))
            return
        self.apps.call(conn, call)

    def _may_query(self, conn: Conn, request_id: Any) -> bool:
        pending = self.pending_stats.get(conn, 0)
        if pending >= MAX_PENDING_STATS:
            self.reply(conn, error_msg("too_many_requests",
                                       f"at most {MAX_PENDING_STATS} get_stats or get_presence at a time",
                                       request_id))
            return False
        self.pending_stats[conn] = pending + 1
        return True

    def _query_done(self, conn: Conn) -> None:
        left = self.pending_stats.get(conn, 1) - 1
        if left > 0:
            self.pending_stats[conn] = left
        else:
            self.pending_stats.pop(conn, None)

    def query_stats(self, conn: Conn, query: QueryStats) -> None:
        if self._may_query(conn, query.id):
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
            self._query_done(conn)

    # --- the bus's handler ----------------------------------------------------------------------------------

    def on_publication(self, pub: Publication) -> None:
        stream = pub.room if pub.room is not None else BROADCAST
        if stream == STATS_ROOM and self.statsfeed is not None:
            self.statsfeed.heard(pub.payload)  # which worker of this node publishes $stats
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
        nrooms = sum(1 for r in hub.rooms if not r.startswith(SYSTEM_PREFIX))  # the server's own are no rooms
        lag = self.looplag.seconds() if self.looplag is not None else 0.0
        snap = {
            "id": self.worker_id,
            "pid": self.pid,
            "node": self.node,
            "clients": nconns,
            "messages_in": m.total_in(),
            "messages_out": m.total_out(),
            "room_count": nrooms,
            "room_counts": room_counts(hub.rooms, query),
            "uptime_s": uptime,
            "loop_lag_ms": round(lag * 1000, 3),
            "metrics": m.snapshot(nconns, nrooms, self.worker_id, uptime, self.bus.healthy(), lag),
        }
        if query is not None:
            if query.presence:
                snap["presence"] = self.presence.listing(query.presence, self.node)
            if query.disconnect:
                snap["disconnected"] = self._close_clients(query.disconnect)
        return snap

    async def metrics_text(self) -> str:
        snaps = await self.gatherer.gather([], False)
        merged = metrics.merge(s.get("metrics", {}) for s in snaps)  # this node's (others carry none)
        if self.cluster_bus:
            merged.update(cluster.metric_families(snaps))
        return metrics.render(merged)
