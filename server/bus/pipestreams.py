"""Sequenced streams over the pipe bus: each stream has one owner worker, which gives every message of the
stream its offset, keeps its history, and sends it to every worker in that order.

The owner of a stream is the worker of slot ``owner_slot(stream, workers)`` (:mod:`server.streams.owner`).
A worker submits a message to the owner (``SUBMIT``); the owner appends it to its :class:`StreamTable`,
delivers it to its own receivers and sends it to every worker (``SEQ``, carrying the submitter's ticket,
so the submitter learns its offset when the message reaches it, after its own receivers got it). A resend
within the dedup window gets ``OUTCOME`` with the first offset instead. A join asks the owner for the
stream's position and history (``HIST_REQ``/``HIST_REP``); since the owner's pipe to each worker is FIFO,
every live message a worker receives after the answer comes after the answer's ``latest``.

Who owns a slot, and what happens when that changes:

- At boot every worker owns its own slot and says so in its ``HELLO`` (flag ``OWNER``).
- A worker that dies (the supervisor says ``BYE`` for it) takes its history with it. Submissions waiting
  for its answer fail with ``unavailable`` (the publisher resends); history requests wait for the new
  owner. Its replacement owns the slot at once with an empty table: every stream of the slot starts a new
  epoch, so recovering clients learn ``recovered: false``: never a silent gap.
- A rolling restart hands the slot over without losing anything. The new worker starts as a non-owner
  (``takeover``); when the old one is told to stop it sends ``MOVING`` to everyone; each worker holds what
  it would send to that slot and answers ``MOVING_ACK`` (FIFO: nothing of its older traffic is still on
  the way); the old owner sends its table to the successor (``HANDOFF``), then ``MOVED`` to everyone, who
  send what they held to the new owner. The successor keeps what arrives before the table until it has it.

In a cluster (``--bus redis``) the owner decides, for its slot, *where* its streams are sequenced, and says
so to every worker of the node (``STATE``): in Redis while it reaches Redis (the worker submits there,
and every worker takes the stream's messages from its own Redis subscription), or here, by the owner,
while it does not (fresh epochs; the Redis messages of the slot are then dropped on every worker of the
node: cross-node traffic is lost during the outage, and counted). Switching back waits until every worker
acknowledged the switch (``STATE_ACK``), then gives the streams sequenced here new epochs in Redis
(clients recovering across the outage learn ``recovered: false``). Each worker thus takes each stream from
one source at a time, and never sees two sequencers of one stream interleaved.

Operations for a slot with no known owner (between a death and the replacement's HELLO) or a held one
wait, at most ``wait_s`` seconds and ``max_waiting`` of them per slot; beyond that they fail with
``unavailable``.

Why this module is long: ownership, hand-over and the cluster switch are one state machine per slot over
one set of frames; split, each half would have to know the other's states.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from ..metrics import Metrics
from ..streams import BROADCAST, stamp
from ..streams.owner import owner_slot
from ..streams.table import BadSince, Replay, StreamTable
from . import pipeframe as bf
from .base import BusHandler, Done, Outcome, Publication, ReplayDone, Submission

log = logging.getLogger("fanwire.bus")

MAX_WAITING: Final = 10_000
WAIT_S: Final = 5.0
HANDOFF_CHUNK: Final = 4 << 20  # bytes of stream state per HANDOFF record
MOVING_ACK_TIMEOUT: Final = 2.0
SUCCESSOR_TIMEOUT: Final = 2.0
STATE_ACK_TIMEOUT: Final = 2.0
STARTUP_GRACE: Final = 5.0  # seconds a new owner waits for Redis before it sequences on its own

LOCAL: Final = 0  # the owner sequences its streams itself (the pipe bus, or a cluster node without Redis)
REDIS: Final = 1  # Redis sequences them (a cluster node that reaches Redis)


class Remote(Protocol):
    """The Redis bus, as the owner of a slot uses it in a cluster."""

    on_health: Callable[[bool], None] | None

    def healthy(self) -> bool: ...

    def submit(self, sub: Submission, done: Done) -> None: ...

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None: ...

    async def reset_epochs(self, streams: Iterable[str]) -> None: ...


class Transport(Protocol):
    """What the streams layer needs of the pipe bus."""

    endpoint: int
    metrics: Metrics

    def send(self, endpoint: int, kind: int, body: bytes, force: bool = False) -> None: ...

    def live_endpoints(self) -> list[int]: ...

    def slot_of(self, endpoint: int) -> int: ...


class _Waiting:
    __slots__ = ("op", "since")

    def __init__(self, op: Callable[[int | None], None]) -> None:
        self.op = op  # called with the owner endpoint (None: give up with 'unavailable')
        self.since = time.monotonic()


class PipeStreams:
    """The sequencing half of the pipe bus (see the module docstring)."""

    def __init__(self, transport: Transport, slot: int, workers: int, table: StreamTable, *,
                 takeover: bool = False, wait_s: float = WAIT_S, max_waiting: int = MAX_WAITING,
                 remote: Remote | None = None) -> None:
        self.t = transport
        self.slot = slot
        self.workers = workers
        self.table = table
        self.owning = not takeover
        self.takeover = takeover
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.handler: BusHandler | None = None
        self.owners: dict[int, int] = {}  # slot -> endpoint of its owner (other slots)
        self.frozen: set[int] = set()  # slots being handed over: hold what goes to them
        self.waiting: dict[int, list[_Waiting]] = {}  # slot -> operations held
        self.early: list[tuple[int, bytes]] = []  # (kind, body) for our slot, before we own it
        self.pending: dict[int, tuple[Done, int]] = {}  # ticket -> (done, owner endpoint asked)
        self.hist_pending: dict[int, tuple[ReplayDone, str, tuple[int, str] | None]] = {}
        self.tickets = itertools.count(1)
        self.moving_acks: set[int] | None = None  # endpoints we wait for while handing over
        self.moving_done: asyncio.Event | None = None
        self.handed_over = False
        self.remote = remote
        self.mode = REDIS if remote is not None else LOCAL  # where our slot's streams are sequenced
        self.modes: dict[int, int] = {}  # the other slots' modes, as their owners said
        self.local_streams: set[str] = set()  # ours, sequenced here while Redis was unreachable
        self.switching = False  # moving our slot back to Redis: what comes for it waits
        self.starting = False  # at boot, Redis not reached yet
        self.switch_queue: list[Callable[[], None]] = []
        self.state_acks: set[int] | None = None
        self.state_done: asyncio.Event | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        if remote is not None:
            remote.on_health = self.remote_health

    # --- who owns what ---------------------------------------------------------------------------------

    def owner_of(self, slot: int) -> int | None:
        """The endpoint that sequences ``slot`` (ours included), or None while it is unknown or held."""
        if slot in self.frozen or (slot == self.slot and self.switching):
            return None
        if slot == self.slot and self.owning:
            return self.t.endpoint
        return self.owners.get(slot)

    def hello_flags(self) -> int:
        return bf.OWNER if self.owning else 0

    def peer_up(self, endpoint: int, slot: int, flags: int) -> None:
        if flags & bf.OWNER and (slot != self.slot or not self.owning):
            self.owners[slot] = endpoint  # (our own slot: our predecessor, until it hands over)
            self._release(slot)
        if self.remote is not None and self.owning:
            self.t.send(endpoint, bf.STATE, bf.meta_body(0, [self.slot, self.mode]))  # where ours are sequenced

    # --- where streams are sequenced (a cluster) -----------------------------------------------------------

    def mode_of(self, slot: int) -> int:
        if slot == self.slot and self.owning:
            return self.mode
        return self.modes.get(slot, REDIS if self.remote is not None else LOCAL)

    def start(self) -> None:
        """At boot in a cluster: if Redis is not reached yet, hold our slot's traffic a little while rather
        than start sequencing here (which would give the streams new epochs once Redis is back)."""
        if self.remote is not None and not self.remote.healthy() and self.owning:
            self.switching = True
            self.starting = True
            asyncio.get_running_loop().call_later(STARTUP_GRACE, self._startup_over)

    def _startup_over(self) -> None:
        if self.starting:  # Redis is really not there: serve on our own
            self.starting = False
            self.mode = LOCAL
            self._announce()
            self._switched()

    def on_remote(self, pub: Publication) -> None:
        """A message from Redis: ours to deliver only while its stream is sequenced in Redis."""
        slot = owner_slot(pub.room if pub.room is not None else BROADCAST, self.workers)
        if self.mode_of(slot) != REDIS:
            self.t.metrics.inc(self.t.metrics.dropped, "redis_while_local")  # its owner is on its own
            return
        if self.handler is not None:
            self.handler.on_publication(pub)

    def remote_health(self, up: bool) -> None:
        """Our link to Redis went down or came back: move our slot's streams accordingly."""
        if not self.owning:
            return
        if self.starting:
            if up:
                self.starting = False
                self.mode = REDIS
                self._switched()
            return
        if not up and self.mode == REDIS:
            self.mode = LOCAL
            self.table.clear()  # new epochs: nothing of the Redis ones is here
            self._announce()
            log.warning("bus: worker %d sequences its streams itself while Redis is unreachable", self.slot)
        elif up and self.mode == LOCAL and not self.switching:
            task = asyncio.get_running_loop().create_task(self._back_to_redis())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _back_to_redis(self) -> None:
        assert self.remote is not None
        self.switching = True
        try:
            self.state_acks = set(self.t.live_endpoints())
            self.state_done = asyncio.Event()
            for ep in list(self.state_acks):
                self.t.send(ep, bf.STATE, bf.meta_body(0, [self.slot, REDIS]))
            if self.state_acks:
                try:
                    await asyncio.wait_for(self.state_done.wait(), STATE_ACK_TIMEOUT)
                except TimeoutError:
                    log.warning("bus: %d workers did not acknowledge worker %d's switch back to Redis",
                                len(self.state_acks), self.slot)
            streams, self.local_streams = sorted(self.local_streams), set()
            if streams:
                await self.remote.reset_epochs(streams)
                log.warning("bus: %d streams were sequenced here during the Redis outage: new epochs for them",
                            len(streams))
            self.mode = REDIS
        finally:
            self.state_acks = None
            self._switched()

    def _switched(self) -> None:
        self.switching = False
        queued, self.switch_queue = self.switch_queue, []
        for op in queued:
            op()
        self._release(self.slot)

    def _announce(self) -> None:
        for ep in self.t.live_endpoints():
            self.t.send(ep, bf.STATE, bf.meta_body(0, [self.slot, self.mode]))

    def peer_gone(self, endpoint: int) -> None:
        for slot, ep in list(self.owners.items()):
            if ep == endpoint:
                del self.owners[slot]
        for ticket, (done, ep) in list(self.pending.items()):
            if ep == endpoint:
                del self.pending[ticket]
                self.t.metrics.inc(self.t.metrics.dropped, "sequencer_gone")
                done(Outcome(error="unavailable"))
        if self.moving_acks is not None:
            self.moving_acks.discard(endpoint)
            if not self.moving_acks and self.moving_done is not None:
                self.moving_done.set()
        if self.state_acks is not None:
            self.state_acks.discard(endpoint)
            if not self.state_acks and self.state_done is not None:
                self.state_done.set()
        gone_slot = self.t.slot_of(endpoint)
        if self.takeover and not self.owning and gone_slot == self.slot:
            # our predecessor died before handing over: we own the slot now, with fresh epochs
            log.warning("bus: worker %d's predecessor is gone without a hand-over: its streams start new epochs",
                        self.slot)
            self._become_owner()

    # --- submitting ----------------------------------------------------------------------------------------

    def submit(self, sub: Submission, done: Done) -> None:
        slot = owner_slot(sub.stream, self.workers)
        if slot == self.slot and self.owning and self.switching:
            self.switch_queue.append(lambda: self.submit(sub, done))
            return
        owner = self.owner_of(slot)
        if owner == self.t.endpoint:
            self._sequence(sub.stream, sub.room, sub.payload, sub.ts_ms, sub.identity, sub.msg_id, None, 0, done)
            return

        def go(ep: int | None) -> None:
            if ep is None:
                done(Outcome(error="unavailable"))
            elif ep == self.t.endpoint:
                self._sequence(sub.stream, sub.room, sub.payload, sub.ts_ms, sub.identity, sub.msg_id, None, 0,
                               done)
            else:
                ticket = next(self.tickets) & 0xFFFFFFFF
                self.pending[ticket] = (done, ep)
                meta = [sub.stream, sub.room, sub.ts_ms, sub.identity, sub.msg_id, self.t.endpoint]
                self.t.send(ep, bf.SUBMIT, bf.meta_body(ticket, meta, sub.payload))

        if owner is None:
            self._hold(slot, go)
        else:
            go(owner)

    def _sequence(self, stream: str, room: str | None, payload: bytes, ts_ms: int, identity: str | None,
                  msg_id: Any, origin: int | None, ticket: int, done: Done | None) -> None:
        """We own the stream: give it its offset, deliver it here and everywhere (or have Redis do it)."""
        if self.remote is not None and self.mode == REDIS:
            def answered(outcome: Outcome) -> None:
                if origin is None:
                    if done is not None:
                        done(outcome)
                else:
                    self.t.send(origin, bf.OUTCOME, bf.meta_body(
                        ticket, [outcome.offset, outcome.epoch, outcome.duplicate, outcome.error]))

            self.remote.submit(Submission(stream, room, payload, ts_ms, identity, msg_id), answered)
            return
        if self.remote is not None:  # a cluster without Redis: this message will not reach the other nodes
            self.local_streams.add(stream)
            self.t.metrics.inc(self.t.metrics.bus_dropped, "redis_down")
        a = self.table.append(stream, payload, time.monotonic(), identity, msg_id)
        outcome = Outcome(a.offset, a.epoch, a.duplicate)
        if a.duplicate:
            if origin is None:
                if done is not None:
                    done(outcome)
            else:
                self.t.send(origin, bf.OUTCOME, bf.meta_body(ticket, [a.offset, a.epoch, True, None]))
            return
        if self.handler is not None:
            self.handler.on_publication(Publication(room, a.payload, ts_ms, str(self.slot)))
        body = bf.seq_body(bf.NO_ORIGIN if origin is None else origin, ticket, room, a.payload)
        for ep in self.t.live_endpoints():
            self.t.send(ep, bf.SEQ, body)
        if done is not None:
            done(outcome)

    # --- history ---------------------------------------------------------------------------------------------

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        slot = owner_slot(stream, self.workers)
        if self.remote is not None and self.mode_of(slot) == REDIS and not (slot == self.slot and self.switching):
            self.remote.history(stream, since, done)  # our own subscription stitches with the replay
            return

        def go(ep: int | None) -> None:
            if ep is None:
                done("unavailable")
            elif ep == self.t.endpoint:
                done(self._replay(stream, since))
            else:
                ticket = next(self.tickets) & 0xFFFFFFFF
                self.hist_pending[ticket] = (done, stream, since)
                meta = [stream, since[0] if since else None, since[1] if since else None, self.t.endpoint]
                self.t.send(ep, bf.HIST_REQ, bf.meta_body(ticket, meta))

        owner = self.owner_of(slot)
        if owner is None:
            self._hold(slot, go)
        else:
            go(owner)

    def _replay(self, stream: str, since: tuple[int, str] | None) -> Replay | str:
        try:
            return self.table.replay(stream, since, time.monotonic())
        except BadSince:
            return "bad_since"

    # --- records from peers ------------------------------------------------------------------------------------

    def on_record(self, src: int, kind: int, body: bytes, ts_ms: int) -> None:
        if kind == bf.SEQ:
            origin, ticket, room, payload = bf.parse_seq(body)
            if self.handler is not None:
                self.handler.on_publication(Publication(room, payload, ts_ms, str(self.t.slot_of(src))))
            if origin == self.t.endpoint:
                waiting = self.pending.pop(ticket, None)
                if waiting is not None:
                    pos = stamp.position(payload)
                    waiting[0](Outcome(pos[0], pos[1]) if pos else Outcome(error="unavailable"))
        elif kind in (bf.SUBMIT, bf.HIST_REQ):
            self._for_owner(kind, body)
        elif kind == bf.OUTCOME:
            ticket, (offset, epoch, duplicate, error), _ = bf.parse_meta(body)
            waiting = self.pending.pop(ticket, None)
            if waiting is not None:
                waiting[0](Outcome(offset, epoch, duplicate, error))
        elif kind == bf.HIST_REP:
            ticket, (error, epoch, latest, recovered, messages), _ = bf.parse_meta(body)
            hist = self.hist_pending.pop(ticket, None)
            if hist is not None:
                hist[0](error if error else Replay(epoch, latest, list(messages), recovered))
        elif kind == bf.MOVING:
            _, (slot,), _ = bf.parse_meta(body)
            self.frozen.add(slot)
            self.t.send(src, bf.MOVING_ACK, bf.meta_body(0, [slot]))
        elif kind == bf.MOVING_ACK:
            if self.moving_acks is not None:
                self.moving_acks.discard(src)
                if not self.moving_acks and self.moving_done is not None:
                    self.moving_done.set()
        elif kind == bf.HANDOFF:
            _, (slot, state, last), _ = bf.parse_meta(body)
            if slot == self.slot and not self.owning:
                self.table.load(state, time.monotonic())
                if last:
                    self._become_owner()
        elif kind == bf.STATE:
            _, (slot, mode), _ = bf.parse_meta(body)
            if slot != self.slot or not self.owning:
                self.modes[slot] = mode
            self.t.send(src, bf.STATE_ACK, bf.meta_body(0, [slot, mode]))
        elif kind == bf.STATE_ACK:
            if self.state_acks is not None:
                self.state_acks.discard(src)
                if not self.state_acks and self.state_done is not None:
                    self.state_done.set()
        elif kind == bf.MOVED:
            _, (slot, endpoint), _ = bf.parse_meta(body)
            self.frozen.discard(slot)
            if slot != self.slot:
                self.owners[slot] = endpoint
            self._release(slot)

    def _for_owner(self, kind: int, body: bytes) -> None:
        """A SUBMIT or HIST_REQ: ours to answer, to keep until we own our slot, or to pass on."""
        ticket, meta, rest = bf.parse_meta(body)
        stream = meta[0]
        slot = owner_slot(stream, self.workers)
        if slot == self.slot and not self.owning and not self.handed_over:
            self.early.append((kind, body))  # a hand-over in progress: we answer once we have the table
            return
        if slot == self.slot and self.owning and self.switching:
            self.switch_queue.append(lambda: self._for_owner(kind, body))
            return
        if slot == self.slot and self.owning:
            if kind == bf.HIST_REQ and self.remote is not None and self.mode == REDIS:
                # asked while we moved to Redis: the asker takes it from Redis when it asks again
                self.t.send(meta[-1], bf.HIST_REP, bf.meta_body(ticket, ["unavailable", "", 0, None, []]))
                return
            if kind == bf.SUBMIT:
                _, room, ts_ms, identity, msg_id, origin = meta
                self._sequence(stream, room, rest, ts_ms, identity, msg_id, origin, ticket, None)
            else:
                _, off, ep, origin = meta
                replay = self._replay(stream, (off, ep) if off is not None else None)
                if isinstance(replay, str):
                    reply = [replay, "", 0, None, []]
                else:
                    reply = [None, replay.epoch, replay.latest, replay.recovered, replay.messages]
                self.t.send(origin, bf.HIST_REP, bf.meta_body(ticket, reply))
            return
        owner = self.owner_of(slot)  # not ours (any more): pass it on, the origin stays in the meta

        def forward(ep: int | None) -> None:
            if ep is None:
                origin = meta[-1]
                if kind == bf.SUBMIT:
                    self.t.send(origin, bf.OUTCOME, bf.meta_body(ticket, [0, "", False, "unavailable"]))
                else:
                    self.t.send(origin, bf.HIST_REP, bf.meta_body(ticket, ["unavailable", "", 0, None, []]))
            elif ep == self.t.endpoint:
                self._for_owner(kind, body)
            else:
                self.t.send(ep, kind, body)

        if owner is None:
            self._hold(slot, forward)
        else:
            forward(owner)

    # --- held operations ------------------------------------------------------------------------------------

    def _hold(self, slot: int, op: Callable[[int | None], None]) -> None:
        held = self.waiting.setdefault(slot, [])
        if len(held) >= self.max_waiting:
            self.t.metrics.inc(self.t.metrics.dropped, "sequencer_unavailable")
            op(None)
            return
        held.append(_Waiting(op))

    def _release(self, slot: int) -> None:
        owner = self.owner_of(slot)
        if owner is None:
            return
        for w in self.waiting.pop(slot, []):
            w.op(owner)

    def expire(self, now: float) -> None:
        """Give up on operations held longer than ``wait_s`` (periodic)."""
        for slot, held in list(self.waiting.items()):
            while held and now - held[0].since > self.wait_s:
                self.t.metrics.inc(self.t.metrics.dropped, "sequencer_unavailable")
                held.pop(0).op(None)
            if not held:
                del self.waiting[slot]

    # --- our own slot -------------------------------------------------------------------------------------------

    def _become_owner(self) -> None:
        self.owning = True
        self.takeover = False
        if self.remote is not None:
            self.mode = REDIS if self.remote.healthy() else LOCAL
            self._announce()
        early, self.early = self.early, []
        for kind, body in early:
            self._for_owner(kind, body)
        for ep in self.t.live_endpoints():
            self.t.send(ep, bf.MOVED, bf.meta_body(0, [self.slot, self.t.endpoint]))
        self._release(self.slot)

    async def hand_over(self) -> None:
        """A rolling restart retires us: hand our slot's streams to our successor (see the docstring)."""
        if not self.owning:
            return
        deadline = time.monotonic() + SUCCESSOR_TIMEOUT
        successor = self._successor()
        while successor is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            successor = self._successor()
        if successor is None:
            log.warning("bus: no successor for worker %d's streams; they will start new epochs", self.slot)
            return
        self.frozen.add(self.slot)  # our own clients' publications to our slot wait too
        self.moving_acks = set(self.t.live_endpoints())
        self.moving_done = asyncio.Event()
        for ep in list(self.moving_acks):
            self.t.send(ep, bf.MOVING, bf.meta_body(0, [self.slot]))
        if self.moving_acks:
            try:
                await asyncio.wait_for(self.moving_done.wait(), MOVING_ACK_TIMEOUT)
            except TimeoutError:
                log.warning("bus: %d workers did not answer the hand-over of worker %d's streams in time",
                            len(self.moving_acks), self.slot)
        self.owning = False
        self.handed_over = True
        chunks = _chunks(self.table.export())
        for i, part in enumerate(chunks):
            self.t.send(successor, bf.HANDOFF, bf.meta_body(0, [self.slot, part, i == len(chunks) - 1]), force=True)
        self.frozen.discard(self.slot)
        self.owners[self.slot] = successor
        for ep in self.t.live_endpoints():
            self.t.send(ep, bf.MOVED, bf.meta_body(0, [self.slot, successor]))
        self._release(self.slot)
        log.info("bus: worker %d handed %d streams over to endpoint %d", self.slot,
                 sum(1 for _ in self.table.names()), successor)

    def _successor(self) -> int | None:
        for ep in self.t.live_endpoints():
            if self.t.slot_of(ep) == self.slot:
                return ep
        return None


def _chunks(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's state cut into parts of about HANDOFF_CHUNK bytes (the dedup window in the last)."""
    parts: list[dict[str, Any]] = []
    part: dict[str, Any] = {}
    size = 0
    for name, value in state["streams"].items():
        part[name] = value
        size += sum(len(e[2]) for e in value[2]) + len(name) + 32
        if size >= HANDOFF_CHUNK:
            parts.append({"streams": part, "dedup": []})
            part, size = {}, 0
    parts.append({"streams": part, "dedup": state["dedup"]})
    return parts
