"""Sequenced streams over the pipe bus: each stream has one owner worker, which gives every message of the
stream its offset, keeps its history, and sends it to every worker in that order.

The owner of a stream is the worker of slot ``owner_slot(stream, workers)`` (:mod:`server.streams.owner`).
A worker submits a message to the owner (``SUBMIT``); the owner appends it to its :class:`StreamTable`,
sends it to every worker (``SEQ``, carrying the submitter's ticket, so the submitter learns its offset
when the message reaches it, after its own receivers got it) and delivers it to its own receivers; the
``SEQ`` leaves before the owner's writes to its clients (``Bus.send_now``), so every worker fans it out
at once. A resend within the dedup window gets ``OUTCOME`` with the first offset instead. A join asks the
owner for the stream's position and history (``HIST_REQ``/``HIST_REP``); since the owner's pipe to each
worker is FIFO, every live message a worker receives after the answer comes after the answer's ``latest``.

A ``SEQ`` goes to the workers the owner knows: a worker that does not know the owner yet has no receiver
of its streams that could miss it (a join waits for the owner's answer, which comes after). The other way
round, a new owner (at boot, or replacing a dead one) does not know who is there, while the workers
already running have receivers of its streams: so it sequences nothing until every other slot's worker
has answered its ``HELLO`` (normally a few milliseconds), or ``MESH_GRACE`` seconds have passed (a slot
whose worker is dead too; if one answers later than that, its receivers may miss what was sequenced
before: it is logged).

Who owns a slot, and what happens when that changes:

- At boot every worker owns its own slot and says so in its ``HELLO`` (flag ``OWNER``).
- A worker that dies (the supervisor says ``BYE`` for it) takes its history with it. Submissions waiting
  for its answer fail with ``unavailable`` (the publisher resends); history requests are asked again, and
  wait for the new owner. Its replacement owns the slot at once with an empty table: every stream of the
  slot starts a new epoch, so recovering clients learn ``recovered: false``: never a silent gap.
- A rolling restart hands the slot over without losing anything. The new worker starts as a non-owner
  (``takeover``); when the old one is told to stop it sends ``MOVING`` to everyone; each worker holds what
  it would send to that slot and answers ``MOVING_ACK`` (FIFO: nothing of its older traffic is still on
  the way); the old owner sends its table to the successor (``HANDOFF``), then ``MOVED`` to everyone, who
  send what they held to the new owner. The successor keeps what arrives before the table until it has it.
  If the successor dies before the table is sent, the old owner keeps the slot (``MOVED`` naming itself);
  if the old owner dies after ``MOVING``, whoever held the slot for it stops holding, and the successor
  owns the slot with fresh epochs, as after any death.

In a cluster (``--bus redis``) the owner decides, for its slot, *where* its streams are sequenced, and says
so to every worker of the node (``STATE``): in Redis while it reaches Redis (the worker submits there,
and every worker takes the stream's messages from its own Redis subscription), or here, by the owner,
while it does not (fresh epochs; the Redis messages of the slot are then dropped on every worker of the
node, and counted). Switching back first gives the streams sequenced here new epochs in Redis (clients
recovering across the outage learn ``recovered: false``; while it runs, what comes for the slot waits, and
the joins asked of the owner are sent back to be asked of Redis once it is done: ``retry``), then waits
until every worker acknowledged the switch (``STATE_ACK``). Each worker thus takes each stream from one
source at a time, and never sees two sequencers of one stream interleaved. What a worker dropped (or, its
own link down, never got) of a stream that stays in Redis is mended from Redis's history before the
stream's next message is delivered (:mod:`.mend`): no silent hole.

Operations for a slot with no known owner (between a death and the replacement's HELLO) or a held one
wait, at most ``wait_s`` seconds and ``max_waiting`` of them per slot; beyond that they fail with
``unavailable``. When the bus closes, every operation still waiting fails with ``unavailable``.

Why this module is long: ownership, hand-over and the cluster switch are one state machine per slot over
one set of frames; split, each half would have to know the other's states.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from ..metrics import Metrics
from ..streams import BROADCAST, stamp
from ..streams.owner import owner_slot
from ..streams.table import BadSince, Replay, StreamTable
from . import pipeframe as bf
from .base import BusHandler, Done, Outcome, Publication, ReplayDone, Submission
from .mend import Mender

log = logging.getLogger("fanwire.bus")

MAX_WAITING: Final = 10_000
WAIT_S: Final = 5.0
HANDOFF_CHUNK: Final = 4 << 20  # bytes of stream state per HANDOFF record
MOVING_ACK_TIMEOUT: Final = 2.0
SUCCESSOR_TIMEOUT: Final = 2.0
STATE_ACK_TIMEOUT: Final = 2.0
STARTUP_GRACE: Final = 5.0  # seconds a new owner waits for Redis before it sequences on its own
MESH_GRACE: Final = 2.0  # seconds a new owner waits for the other slots' workers before it sequences
RESET_RETRY_S: Final = 1.0  # after a failed switch back to Redis, when to try again
RETRY: Final = "retry"  # HIST_REP error: the slot moved to Redis meanwhile, ask there (never a client's code)

LOCAL: Final = 0  # the owner sequences its streams itself (the pipe bus, or a cluster node without Redis)
REDIS: Final = 1  # Redis sequences them (a cluster node that reaches Redis)


class Remote(Protocol):
    """The Redis bus, as the owner of a slot uses it in a cluster."""

    on_health: Callable[[bool], None] | None

    def healthy(self) -> bool: ...

    def submit(self, sub: Submission, done: Done) -> None: ...

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None: ...

    async def reset_epochs(self, streams: Iterable[str]) -> None:
        """New epochs for ``streams``; raises OSError when that could not be done."""


class Transport(Protocol):
    """What the streams layer needs of the pipe bus."""

    endpoint: int
    metrics: Metrics

    def send(self, endpoint: int, kind: int, body: bytes, force: bool = False) -> None: ...

    def live_endpoints(self) -> list[int]: ...

    def slot_of(self, endpoint: int) -> int: ...

    def sending_congested(self) -> bool:
        """Too much waits to be sent to the peers (see :class:`~.pipebus.PipeBus`); unlike ``congested``, not
        counting our own unanswered submissions: this drains whatever the other workers do."""

    def on_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, from the loop, when the bus is no longer :meth:`sending_congested`."""

    def credit_returned(self) -> None:
        """Our submissions in flight (:attr:`PipeStreams.inflight`) went down: publishers held may go on."""


class _Waiting:
    __slots__ = ("op", "since")

    def __init__(self, op: Callable[[int | None], None]) -> None:
        self.op = op  # called with the owner endpoint (None: give up with 'unavailable')
        self.since = time.monotonic()


class _Asked:
    """A history request sent to a worker, waiting for its HIST_REP."""

    __slots__ = ("done", "endpoint", "retried", "since", "stream")

    def __init__(self, done: ReplayDone, stream: str, since: tuple[int, str] | None, endpoint: int,
                 retried: bool) -> None:
        self.done = done
        self.stream = stream
        self.since = since
        self.endpoint = endpoint
        self.retried = retried  # asked again after a RETRY already: a second one is 'unavailable'


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
        self.frozen: dict[int, int] = {}  # slot being handed over -> the endpoint that said MOVING: hold it
        self.waiting: dict[int, list[_Waiting]] = {}  # slot -> operations held
        self.early: list[tuple[int, bytes]] = []  # (kind, body) for our slot, before we own it
        self.pending: dict[int, tuple[Done, int]] = {}  # ticket -> (done, owner endpoint asked)
        self.inflight = 0  # bytes of our submissions not answered yet (see submit)
        self.backlog: deque[bytes] = deque()  # other workers' SUBMITs held while our queues are over high water
        self.hist_pending: dict[int, _Asked] = {}
        self.tickets = itertools.count(1)
        self.moving_acks: set[int] | None = None  # endpoints we wait for while handing over
        self.moving_done: asyncio.Event | None = None
        self.handed_over = False
        self.closed = False
        self.gathering = False  # a new owner: the other slots' workers are not all known yet
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
        self.timers: list[asyncio.TimerHandle] = []
        self.mender: Mender | None = None  # a cluster: what Redis brings, its holes mended
        if remote is not None:
            remote.on_health = self.remote_health
            self.mender = Mender(self._deliver, remote.history, transport.metrics)

    # --- who owns what ---------------------------------------------------------------------------------

    def owner_of(self, slot: int) -> int | None:
        """The endpoint that sequences ``slot`` (ours included), or None while it is unknown or held."""
        if slot in self.frozen or (slot == self.slot and self._ours_held()):
            return None
        if slot == self.slot and self.owning:
            return self.t.endpoint
        return self.owners.get(slot)

    def _ours_held(self) -> bool:
        """What comes for our slot waits: it is switching to Redis, or (sequenced here) we do not know every
        worker that must get its messages yet."""
        return self.owning and (self.switching or (self.gathering and self.mode == LOCAL))

    def hello_flags(self) -> int:
        return bf.OWNER if self.owning else 0

    def peer_up(self, endpoint: int, slot: int, flags: int) -> None:
        if flags & bf.OWNER and (slot != self.slot or not self.owning):
            self.owners[slot] = endpoint  # (our own slot: our predecessor, until it hands over)
            self._release(slot)
        if self.remote is not None and self.owning:
            self.t.send(endpoint, bf.STATE, bf.meta_body(0, [self.slot, self.mode]))  # where ours are sequenced
        if self.gathering and self._mesh_known():
            self._gathered()

    def _mesh_known(self) -> bool:
        live = {self.t.slot_of(ep) for ep in self.t.live_endpoints()}
        return all(s in live for s in range(self.workers) if s != self.slot)

    def _gathered(self) -> None:
        if not self.gathering:
            return
        self.gathering = False
        if not self._mesh_known():
            log.warning("bus: worker %d sequences its streams before hearing from every other worker: one that "
                        "answers later may miss their first messages", self.slot)
        self._unhold()

    # --- where streams are sequenced (a cluster) -----------------------------------------------------------

    def mode_of(self, slot: int) -> int:
        if slot == self.slot and self.owning:
            return self.mode
        return self.modes.get(slot, REDIS if self.remote is not None else LOCAL)

    def start(self) -> None:
        """At boot, as a new owner: wait (a little) for the other workers (see the module docstring); in a
        cluster, if Redis is not reached yet, hold our slot's traffic a little while rather than start
        sequencing here (which would give the streams new epochs once Redis is back)."""
        if not self.owning:
            return
        if self.workers > 1:
            self.gathering = True
            self._later(MESH_GRACE, self._gathered)
        if self.remote is not None and not self.remote.healthy():
            self.switching = True
            self.starting = True
            self._later(STARTUP_GRACE, self._startup_over)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        """``callback`` in ``delay`` seconds, unless we close first (the handles kept: those still to run)."""
        loop = asyncio.get_running_loop()
        self.timers = [h for h in self.timers if h.when() > loop.time() and not h.cancelled()]
        self.timers.append(loop.call_later(delay, callback))

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
        assert self.mender is not None  # (a remote, hence a mender)
        self.mender.on_publication(pub)

    def follow(self, room: str, on: bool) -> None:
        """``room`` has members on this worker (``on``), or none any more: its holes are mended meanwhile."""
        if self.mender is not None:
            self.mender.follow(room, on)

    def _deliver(self, pub: Publication) -> None:
        if self.handler is not None:
            self.handler.on_publication(pub)

    def remote_health(self, up: bool) -> None:
        """Our link to Redis went down or came back: move our slot's streams accordingly."""
        if not self.owning or self.closed:
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
        """Redis is back: new epochs there for the streams sequenced here first (a worker told REDIS answers
        joins from Redis at once, and must never find a pre-outage epoch there), then the switch, acknowledged
        by every worker of the node; only then are our slot's submissions sent to Redis."""
        assert self.remote is not None
        self.switching = True
        try:
            streams = sorted(self.local_streams)
            if streams:
                try:
                    await self.remote.reset_epochs(streams)
                except OSError as exc:
                    log.warning("bus: worker %d could not give its %d locally sequenced streams new epochs in "
                                "Redis (%s); it goes on sequencing them itself", self.slot, len(streams), exc)
                    self._later(RESET_RETRY_S, self._retry_back)
                    return
                self.local_streams.difference_update(streams)
                log.warning("bus: %d streams were sequenced here during the Redis outage: new epochs for them",
                            len(streams))
            self.state_acks = set(self.t.live_endpoints())
            self.state_done = asyncio.Event()
            for ep in list(self.state_acks):
                self.t.send(ep, bf.STATE, bf.meta_body(0, [self.slot, REDIS]))
            if self.state_acks:
                try:
                    async with asyncio.timeout(STATE_ACK_TIMEOUT):
                        await self.state_done.wait()
                except TimeoutError:
                    log.warning("bus: %d workers did not acknowledge worker %d's switch back to Redis",
                                len(self.state_acks), self.slot)
            if self.remote.healthy():
                self.mode = REDIS
            else:  # gone again meanwhile: on our own again, with fresh epochs
                self.table.clear()
                self._announce()
        finally:
            self.state_acks = None
            self._switched()

    def _retry_back(self) -> None:
        if self.remote is not None and self.remote.healthy():
            self.remote_health(True)

    def _switched(self) -> None:
        self.switching = False
        self._unhold()

    def _unhold(self) -> None:
        """Our slot is no longer held (see :meth:`_ours_held`): what waited for it goes on, in order."""
        if self._ours_held():
            return
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
        unfrozen = [slot for slot, ep in self.frozen.items() if ep == endpoint]  # its hand-over will not end
        for slot in unfrozen:
            del self.frozen[slot]
        for ticket, (done, ep) in list(self.pending.items()):
            if ep == endpoint:
                del self.pending[ticket]
                self.t.metrics.inc(self.t.metrics.dropped, "sequencer_gone")
                done(Outcome(error="unavailable"))
        unanswered = [a for a in self.hist_pending.values() if a.endpoint == endpoint]
        self.hist_pending = {t: a for t, a in self.hist_pending.items() if a.endpoint != endpoint}
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
        for asked in unanswered:  # a position is asked again (of the new owner, once there is one)
            self._history(asked.stream, asked.since, asked.done, asked.retried)
        for slot in unfrozen:
            self._release(slot)

    # --- submitting ----------------------------------------------------------------------------------------

    def submit(self, sub: Submission, done: Done) -> None:
        """Have ``sub`` sequenced by its stream's owner. Its bytes count in :attr:`inflight` until it is
        answered, and the bus is congested while that is above its high water: this worker's publishers
        wait, so what it asks of the owners (who send every message back to everyone) stays bounded."""
        size = len(sub.payload)
        self.inflight += size

        def answered(outcome: Outcome) -> None:
            self.inflight -= size
            self.t.credit_returned()
            done(outcome)

        self._submit(sub, answered)

    def _submit(self, sub: Submission, done: Done) -> None:
        if self.closed:
            done(Outcome(error="unavailable"))
            return
        slot = owner_slot(sub.stream, self.workers)
        if slot == self.slot and self._ours_held():
            self.switch_queue.append(lambda: self._submit(sub, done))
            return
        owner = self.owner_of(slot)
        if owner == self.t.endpoint:
            self._sequence(sub.stream, sub.room, sub.payload, sub.ts_ms, sub.identity, sub.msg_id, None, 0, done)
            return

        def go(ep: int | None) -> None:
            if ep is None or self.closed:
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
        body = bf.seq_body(bf.NO_ORIGIN if origin is None else origin, ticket, room, a.payload)
        for ep in self.t.live_endpoints():  # queued first: sent before this tick's writes to our clients
            self.t.send(ep, bf.SEQ, body)
        if self.handler is not None:
            self.handler.on_publication(Publication(room, a.payload, ts_ms, str(self.slot)))
        if done is not None:
            done(outcome)

    # --- history ---------------------------------------------------------------------------------------------

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        self._history(stream, since, done, False)

    def _history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone, retried: bool) -> None:
        if self.closed:
            done("unavailable")
            return
        slot = owner_slot(stream, self.workers)
        if self._from_redis(slot):
            self._remote_history(stream, since, done)  # our own subscription stitches with the replay
            return

        def go(ep: int | None) -> None:
            if ep is None or self.closed:
                done("unavailable")
            elif self._from_redis(slot):  # the slot moved to Redis while this waited
                self._remote_history(stream, since, done)
            elif ep == self.t.endpoint:
                done(self._replay(stream, since))
            else:
                ticket = next(self.tickets) & 0xFFFFFFFF
                self.hist_pending[ticket] = _Asked(done, stream, since, ep, retried)
                meta = [stream, since[0] if since else None, since[1] if since else None, self.t.endpoint]
                self.t.send(ep, bf.HIST_REQ, bf.meta_body(ticket, meta))

        owner = self.owner_of(slot)
        if owner is None:
            self._hold(slot, go)
        else:
            go(owner)

    def _from_redis(self, slot: int) -> bool:
        """A join of this slot's streams is answered by Redis (and our own Redis subscription)."""
        return self.remote is not None and self.mode_of(slot) == REDIS and not (slot == self.slot
                                                                                and self._ours_held())

    def _remote_history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        """Redis answers; if the stream's hole is being mended meanwhile, the answer waits for it, so that
        every live message the joiner gets after it still comes after its ``latest``."""
        assert self.remote is not None and self.mender is not None
        mender = self.mender
        room = None if stream == BROADCAST else stream

        def answered(result: Replay | str) -> None:
            mender.after(room, lambda: done(result))

        self.remote.history(stream, since, answered)

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
            asked = self.hist_pending.pop(ticket, None)
            if asked is not None and error == RETRY and not asked.retried:
                self._history(asked.stream, asked.since, asked.done, True)  # (FIFO: its STATE came first)
            elif asked is not None:
                asked.done(Replay(epoch, latest, list(messages), recovered) if not error
                           else "unavailable" if error == RETRY else error)
        elif kind == bf.MOVING:
            _, (slot,), _ = bf.parse_meta(body)
            self.frozen[slot] = src
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
            self.frozen.pop(slot, None)
            if slot != self.slot:
                self.owners[slot] = endpoint
            self._release(slot)

    def _for_owner(self, kind: int, body: bytes, from_backlog: bool = False) -> None:
        """A SUBMIT or HIST_REQ: ours to answer, to keep until we own our slot, or to pass on."""
        ticket, meta, rest = bf.parse_meta(body)
        if self.closed:
            self._refuse(kind, ticket, meta[-1])
            return
        stream = meta[0]
        slot = owner_slot(stream, self.workers)
        if slot == self.slot and not self.owning and not self.handed_over:
            self.early.append((kind, body))  # a hand-over in progress: we answer once we have the table
            return
        if slot == self.slot and self._ours_held():
            self.switch_queue.append(lambda: self._for_owner(kind, body))
            return
        if slot == self.slot and self.owning:
            if kind == bf.HIST_REQ and self.remote is not None and self.mode == REDIS:
                # asked while we moved to Redis: the asker (told REDIS before this answer) asks Redis itself
                self.t.send(meta[-1], bf.HIST_REP, bf.meta_body(ticket, [RETRY, "", 0, None, []]))
                return
            if kind == bf.SUBMIT:
                if not from_backlog and (self.backlog or self.t.sending_congested()):
                    # what we send to everyone waits to go out: the SUBMITs wait here, in order, so our
                    # queues to slow peers stay bounded (their submitters are bounded by their own inflight).
                    # Only our queues count: were our own unanswered submissions to count, two owners each
                    # waiting for the other's answers would hold each other's SUBMITs forever.
                    self.backlog.append(body)
                    if len(self.backlog) == 1:
                        self.t.on_sent(self._drain_backlog)
                    return
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
            if ep is None or self.closed:
                self._refuse(kind, ticket, meta[-1])
            elif ep == self.t.endpoint:
                self._for_owner(kind, body)
            else:
                self.t.send(ep, kind, body)

        if owner is None:
            self._hold(slot, forward)
        else:
            forward(owner)

    def _drain_backlog(self, force: bool = False) -> None:
        """Our queues drained: sequence the SUBMITs held, in order, until they are over high water again."""
        backlog = self.backlog
        while backlog and not self.closed:
            if not force and self.t.sending_congested():
                self.t.on_sent(self._drain_backlog)
                return
            self._for_owner(bf.SUBMIT, backlog.popleft(), from_backlog=True)

    def _refuse(self, kind: int, ticket: int, origin: int) -> None:
        """Answer a SUBMIT or HIST_REQ of ``origin`` with ``unavailable``."""
        if kind == bf.SUBMIT:
            self.t.send(origin, bf.OUTCOME, bf.meta_body(ticket, [0, "", False, "unavailable"]))
        else:
            self.t.send(origin, bf.HIST_REP, bf.meta_body(ticket, ["unavailable", "", 0, None, []]))

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

    def close(self) -> None:
        """The bus closes: every operation still waiting is answered now, ``unavailable`` (its outcome can no
        longer be known here), so that each ``done`` is called once; the peers whose requests we hold get
        that answer too (the bus sends it before its BYE)."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        for handle in self.timers:
            handle.cancel()
        pending, self.pending = self.pending, {}
        for done, _ in pending.values():
            done(Outcome(error="unavailable"))
        asked, self.hist_pending = self.hist_pending, {}
        for a in asked.values():
            a.done("unavailable")
        queued, self.switch_queue = self.switch_queue, []
        for op in queued:
            op()  # closed: each answers 'unavailable'
        held, self.waiting = self.waiting, {}
        for ops in held.values():
            for w in ops:
                w.op(None)
        early, self.early = self.early, []
        early.extend((bf.SUBMIT, body) for body in self.backlog)
        self.backlog.clear()
        for kind, body in early:
            ticket, meta, _ = bf.parse_meta(body)
            self._refuse(kind, ticket, meta[-1])

    # --- our own slot -------------------------------------------------------------------------------------------

    def _become_owner(self) -> None:
        self.owning = True
        self.takeover = False
        self.frozen.pop(self.slot, None)  # a MOVING of our predecessor's: it will never say MOVED now
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
        if not self.owning or self.closed:
            return
        deadline = time.monotonic() + SUCCESSOR_TIMEOUT
        successor = self._successor()
        while successor is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            successor = self._successor()
        if successor is None:
            log.warning("bus: no successor for worker %d's streams; they will start new epochs", self.slot)
            return
        self.frozen[self.slot] = self.t.endpoint  # our own clients' publications to our slot wait too
        self.moving_acks = set(self.t.live_endpoints())
        self.moving_done = asyncio.Event()
        for ep in list(self.moving_acks):
            self.t.send(ep, bf.MOVING, bf.meta_body(0, [self.slot]))
        if self.moving_acks:
            try:
                async with asyncio.timeout(MOVING_ACK_TIMEOUT):
                    await self.moving_done.wait()
            except TimeoutError:
                log.warning("bus: %d workers did not answer the hand-over of worker %d's streams in time",
                            len(self.moving_acks), self.slot)
        self.moving_acks = None
        if successor not in self.t.live_endpoints():
            # it died meanwhile: we keep the slot (everyone holding it sends to us again), and retire
            # without a hand-over (its streams start new epochs with whoever owns the slot next)
            log.warning("bus: worker %d's successor is gone; it keeps its streams", self.slot)
            self.frozen.pop(self.slot, None)
            for ep in self.t.live_endpoints():
                self.t.send(ep, bf.MOVED, bf.meta_body(0, [self.slot, self.t.endpoint]))
            self._release(self.slot)
            return
        self._drain_backlog(force=True)  # sequenced here, so the table we hand over has them
        self.owning = False
        self.handed_over = True
        chunks = _chunks(self.table.export())
        for i, part in enumerate(chunks):
            self.t.send(successor, bf.HANDOFF, bf.meta_body(0, [self.slot, part, i == len(chunks) - 1]), force=True)
        self.frozen.pop(self.slot, None)
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
