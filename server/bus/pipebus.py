"""PipeBus: the default bus, a full mesh of SOCK_SEQPACKET socketpairs between a node's workers.

The supervisor creates one socketpair per pair of *endpoints* before forking (one endpoint more than there
are workers, so a rolling restart can run old and new worker side by side) and keeps both ends open, so a
worker that dies leaves its endpoint in place for its replacement. Each worker keeps its own ends.

Writes are batched per event-loop tick and never block. A peer that cannot take more gets a queue, and the
bus pushes back instead of dropping: above ``high_water`` bytes waiting (queued or still pending this tick),
or above ``high_water`` bytes of this worker's submissions not answered yet by their streams' owners,
:meth:`PipeBus.congested` is true, and the worker stops reading from the clients that publish until
:meth:`PipeBus.on_drained` calls them back (below ``low_water``), in the order they were held. An owner with
more than ``high_water`` bytes waiting to be sent also holds the SUBMITs of the other workers, in order,
until that has drained (:meth:`PipeBus.on_sent`; each sequenced message goes to every worker, and the
submitters wait meanwhile, their own in-flight bytes bounded), so what one worker's clients publish cannot
pile up in the owner's queue to a slow peer. Its own unanswered submissions do not count for that: two
owners each waiting for the other's answers would otherwise hold each other's SUBMITs forever. Only past
``max_queue`` is anything dropped, and then it is counted (``queue_full``).

Peers announce themselves with HELLO and leave with BYE, sent by the peer itself when it stops, or on its
behalf by the supervisor when it dies; a peer that is only busy (silent past ``peer_timeout_s``) is
logged but never taken for gone. Records older than this worker's boot (left in the socket by a
predecessor) are ignored; a publication among them is counted as ``stale``.

Closing answers every operation still waiting with ``unavailable`` (each ``done`` is called once), then
flushes and says BYE; the requests not sent yet (SUBMIT, HIST_REQ) are dropped rather than sent, so that a
publication its caller was told ``unavailable`` is published nowhere (a resend is never a duplicate).

Why this module is long: liveness, back-pressure, framing I/O and stats requests share one peer table and
one flush cycle; the pure framing is apart (:mod:`.pipeframe`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import BusFrameError
from ..metrics import Metrics
from ..stats import StatsQuery
from ..streams.table import StreamTable
from . import pipeframe as bf
from .base import Bus, BusHandler, Done, ReplayDone, Submission
from .pipestreams import PipeStreams, Remote

log = logging.getLogger("fanwire.bus")

MAX_PACKET = 60_000
SOCKET_BUFFER = 1 << 20
_REQUESTS = frozenset((bf.SUBMIT, bf.HIST_REQ))  # not sent once closed (see PipeBus.close)


def make_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
    return a, b


def make_mesh(endpoints: int) -> dict[int, dict[int, socket.socket]]:
    """``mesh[a][b]`` is endpoint a's socket to endpoint b."""
    mesh: dict[int, dict[int, socket.socket]] = {e: {} for e in range(endpoints)}
    for a, b in itertools.combinations(range(endpoints), 2):
        sa, sb = make_socketpair()
        mesh[a][b] = sa
        mesh[b][a] = sb
    return mesh


class _Peer:
    __slots__ = ("alive", "endpoint", "last_seen", "pending", "pid", "queue", "queued", "reasm", "silent",
                 "sock", "worker", "writing")

    def __init__(self, endpoint: int, sock: socket.socket, max_batch: int) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.alive = False
        self.silent = False
        self.last_seen = 0.0
        self.worker = -1
        self.pid = 0
        self.pending: list[bytes] = []
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.writing = False
        self.reasm = bf.Reassembler(max_batch)


class PipeBus(Bus):
    """One worker's end of the pipe mesh: publications, liveness and stats requests to and from the other
    workers of this node, batched per tick, with back-pressure (see the module docstring)."""

    name = "pipe"

    def __init__(self, endpoint: int, worker_id: int, socks: dict[int, socket.socket], metrics: Metrics, *,
                 max_queue: int = 64 << 20, max_batch: int = 64 << 20, heartbeat_s: float = 0.5,
                 peer_timeout_s: float = 5.0, boot_ts_ms: int | None = None, high_water: int = 4 << 20,
                 low_water: int = 1 << 20, workers: int = 1, takeover: bool = False,
                 table: StreamTable | None = None, remote: Remote | None = None) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.metrics = metrics
        self.max_queue = max_queue
        self.high_water = high_water
        self.low_water = low_water
        self._pending_bytes = 0  # records enqueued this tick, not yet flushed
        self._backlog = 0  # bytes queued for all peers (the socket would not take them yet)
        self._drained: list[Callable[[], None]] = []  # held publishers (on_drained)
        self._sending: list[Callable[[], None]] = []  # an owner's held SUBMITs (on_sent)
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        self.boot_ts_ms = int(time.time() * 1000) if boot_ts_ms is None else boot_ts_ms
        self.peers = {ep: _Peer(ep, s, max_batch) for ep, s in socks.items()}
        self._handler: BusHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._stats_ids = itertools.count(1)
        self._stats_waits: dict[int, tuple[asyncio.Future[None], list[dict[str, Any]], int]] = {}
        self._closed = False
        self.streams = PipeStreams(self, worker_id, workers, table or StreamTable(), takeover=takeover,
                                   remote=remote)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, handler: BusHandler) -> None:
        self._handler = handler
        self.streams.handler = handler
        self.streams.start()
        loop = self._loop = asyncio.get_running_loop()
        for peer in self.peers.values():
            peer.sock.setblocking(False)
            loop.add_reader(peer.sock.fileno(), self._on_readable, peer)
        hello = bf.record(bf.HELLO, self.endpoint, self._now_ms(),
                          bf.hello_body(self.worker_id, _getpid(), self.streams.hello_flags()))
        for peer in self.peers.values():
            self._send_records(peer, [hello])  # to every endpoint: whoever is there learns of us
        self._timer = loop.call_later(self.heartbeat_s, self._tick)

    async def close(self) -> None:
        """Answer what waits (``unavailable``), flush, say BYE. The requests this worker still had to send
        (SUBMIT, HIST_REQ) are not sent: their callers were just told ``unavailable``, and a publication so
        refused must be published nowhere (the peers that forwarded theirs through us learn it from our BYE)."""
        if self._closed:
            return
        self.streams.close()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        bye = bf.record(bf.BYE, self.endpoint, self._now_ms())
        loop = self._loop
        for peer in self.peers.values():
            if peer.pending:
                self._send_records(peer, [r for r in peer.pending if r[0] not in _REQUESTS])
                peer.pending = []
            if peer.alive:
                self._send_records(peer, [bye])
            if loop is not None:
                loop.remove_reader(peer.sock.fileno())
                if peer.writing:
                    loop.remove_writer(peer.sock.fileno())
        for fut, _, _ in self._stats_waits.values():
            if not fut.done():
                fut.set_result(None)

    def peer_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.alive)

    def room_members(self, room: str, count: int) -> None:
        self.streams.follow(room, count > 0)  # (a cluster: what Redis brings of it is mended while followed)

    # --- sending ------------------------------------------------------------------------------------

    def submit(self, sub: Submission, done: Done) -> None:
        self.streams.submit(sub, done)

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        self.streams.history(stream, since, done)

    async def hand_over(self) -> None:
        await self.streams.hand_over()

    def prune(self, now: float) -> None:
        self.streams.table.prune(now)
        self.streams.expire(now)

    # --- the transport the streams layer uses ------------------------------------------------------------

    def send(self, endpoint: int, kind: int, body: bytes, force: bool = False) -> None:
        if self._closed:
            return  # nothing goes out after our BYE
        peer = self.peers.get(endpoint)
        if peer is None or not peer.alive:
            self.metrics.inc(self.metrics.bus_dropped, "peer_gone")
            return
        rec = bf.record(kind, self.endpoint, self._now_ms(), body)
        if force:  # a hand-over: bigger than the queue limit, and worth it
            self._send_records(peer, [rec], force=True)
        else:
            self._enqueue(peer, rec)

    def live_endpoints(self) -> list[int]:
        return [p.endpoint for p in self.peers.values() if p.alive]

    def slot_of(self, endpoint: int) -> int:
        peer = self.peers.get(endpoint)
        return peer.worker if peer is not None else -1

    def congested(self) -> bool:
        return self.sending_congested() or self.streams.inflight > self.high_water

    def sending_congested(self) -> bool:
        return self._pending_bytes + self._backlog > self.high_water

    def _sent(self) -> bool:
        """What waits to be sent is low enough again (the low-water side of :meth:`sending_congested`)."""
        return not self._pending_bytes and self._backlog < self.low_water

    def _calm(self) -> bool:
        """Low enough again to let held publishers go on (the low-water side of :meth:`congested`)."""
        return self._sent() and self.streams.inflight <= self.low_water

    def credit_returned(self) -> None:
        self._check_release()

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once, from the loop) when the bus is no longer congested."""
        self._drained.append(callback)
        if not self.congested():
            self._release()

    def on_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once, from the loop) when the bus is no longer :meth:`sending_congested`."""
        self._sending.append(callback)
        if not self.sending_congested():
            self._release()

    def _release(self) -> None:
        """Call back, from the loop, the waiters whose condition holds (:meth:`on_sent`'s, then
        :meth:`on_drained`'s): the bus is not congested in their sense (``low_water`` < ``high_water``, so
        :meth:`_sent` and :meth:`_calm` imply it)."""
        loop = self._loop
        if loop is None:
            return
        if self._sending and not self.sending_congested():
            waiting, self._sending = self._sending, []
            for cb in waiting:
                loop.call_soon(cb)
        if self._drained and not self.congested():
            waiting, self._drained = self._drained, []
            for cb in waiting:
                loop.call_soon(cb)

    def _check_release(self) -> None:
        """Release the waiters once below low water (the hysteresis: held until then)."""
        if (self._sending and self._sent()) or (self._drained and self._calm()):
            self._release()

    def _enqueue(self, peer: _Peer, rec: bytes) -> None:
        self._pending_bytes += len(rec)
        peer.pending.append(rec)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send_now(self) -> None:
        if self._flush_scheduled:
            self._flush()  # the scheduled call then finds nothing queued

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        self._pending_bytes = 0
        for peer in self.peers.values():
            if peer.pending:
                records, peer.pending = peer.pending, []
                self._send_records(peer, records)
        self._check_release()

    def _send_records(self, peer: _Peer, records: list[bytes], force: bool = False) -> None:
        m = self.metrics
        size = sum(len(r) for r in records)
        if peer.queued + size > self.max_queue and not force:
            m.inc(m.bus_dropped, "queue_full", len(records))
            return
        m.bus_frames_out += len(records)
        m.bus_bytes_out += size
        for pkt in bf.packets(records, MAX_PACKET):
            if peer.queue:
                peer.queue.append(pkt)
                peer.queued += len(pkt)
                self._backlog += len(pkt)
                continue
            try:
                peer.sock.send(pkt)
            except (BlockingIOError, InterruptedError):
                peer.queue.append(pkt)
                peer.queued += len(pkt)
                self._backlog += len(pkt)
                self._want_write(peer)
            except OSError as exc:
                m.inc(m.bus_dropped, "send_error", len(records))
                log.warning("bus: cannot send to endpoint %d: %s", peer.endpoint, exc)
                self._forget(peer)
                return

    def _want_write(self, peer: _Peer) -> None:
        if not peer.writing and self._loop is not None and not self._closed:
            peer.writing = True
            self._loop.add_writer(peer.sock.fileno(), self._on_writable, peer)

    def _on_writable(self, peer: _Peer) -> None:
        q = peer.queue
        while q:
            pkt = q[0]
            try:
                peer.sock.send(pkt)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.metrics.inc(self.metrics.bus_dropped, "send_error", 1)
                self._forget(peer)
                break
            q.popleft()
            peer.queued -= len(pkt)
            self._backlog -= len(pkt)
        if not q:
            peer.writing = False
            if self._loop is not None:
                self._loop.remove_writer(peer.sock.fileno())
        self._check_release()

    def _forget(self, peer: _Peer) -> None:
        """The peer is gone: what was queued for it has nobody to reach."""
        was_alive = peer.alive
        peer.alive = False
        self._backlog -= peer.queued
        peer.queue.clear()
        peer.queued = 0
        if peer.writing and self._loop is not None:
            peer.writing = False
            self._loop.remove_writer(peer.sock.fileno())
        self._check_release()
        if was_alive:
            self.streams.peer_gone(peer.endpoint)

    # --- receiving ----------------------------------------------------------------------------------

    def _on_readable(self, peer: _Peer) -> None:
        sock = peer.sock
        for _ in range(256):  # bounded per callback, for fairness with client sockets
            try:
                pkt = sock.recv(MAX_PACKET + 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("bus: read from endpoint %d failed: %s", peer.endpoint, exc)
                self._drop_reader(peer)
                return
            if not pkt:
                self._drop_reader(peer)
                return
            before = peer.reasm.discarded
            batch = peer.reasm.feed(pkt)
            if peer.reasm.discarded != before:
                self.metrics.inc(self.metrics.bus_dropped, "incomplete", peer.reasm.discarded - before)
            if batch is None:
                continue
            try:
                records = bf.split_batch(batch)
            except BusFrameError:
                self.metrics.inc(self.metrics.bus_dropped, "bad_frame")
                continue
            for rec in records:
                self._on_record(peer, rec)

    def _drop_reader(self, peer: _Peer) -> None:
        if self._loop is not None:
            self._loop.remove_reader(peer.sock.fileno())
        self._forget(peer)

    def _on_record(self, peer: _Peer, rec: bytes) -> None:
        m = self.metrics
        try:
            kind, _src, ts, body = bf.parse_record(rec)
        except BusFrameError:
            m.inc(m.bus_dropped, "bad_frame")
            return
        m.bus_frames_in += 1
        m.bus_bytes_in += len(rec)
        if ts < self.boot_ts_ms:
            # left in the socket by a predecessor (or a liveness record that raced our boot: the peer
            # answers our own HELLO anyway); only a lost message counts as a drop
            if kind in (bf.PUBLISH, bf.SEQ, bf.SUBMIT):
                m.inc(m.bus_dropped, "stale")
            return
        peer.last_seen = time.monotonic()
        peer.silent = False
        handler = self._handler
        try:
            if kind >= bf.SEQ:
                self.streams.on_record(peer.endpoint, kind, body, ts)
            elif kind == bf.HEARTBEAT:
                peer.alive = True
            elif kind == bf.HELLO:
                peer.worker, peer.pid, flags = bf.parse_hello(body)
                peer.alive = True
                # answer at once so the newcomer learns of us before its first client arrives
                self._enqueue(peer, bf.record(bf.HELLO_ACK, self.endpoint, self._now_ms(),
                                              bf.hello_body(self.worker_id, _getpid(), self.streams.hello_flags())))
                self.streams.peer_up(peer.endpoint, peer.worker, flags)
            elif kind == bf.HELLO_ACK:
                peer.worker, peer.pid, flags = bf.parse_hello(body)
                peer.alive = True
                self.streams.peer_up(peer.endpoint, peer.worker, flags)
            elif kind == bf.BYE:
                self._forget(peer)
            elif kind == bf.STATS_REQ:
                req_id, rest = bf.parse_u32(body)
                query = StatsQuery.from_wire(msgpack.unpackb(rest, raw=False)) if rest else None
                snap = handler.stats_snapshot(query) if handler is not None else {}
                self._enqueue(peer, bf.record(bf.STATS_REP, self.endpoint, self._now_ms(),
                                              bf.u32_body(req_id, msgpack.packb(snap, use_bin_type=True))))
            elif kind == bf.STATS_REP:
                req_id, rest = bf.parse_u32(body)
                wait = self._stats_waits.get(req_id)
                if wait is not None:
                    fut, results, expected = wait
                    snap = msgpack.unpackb(rest, raw=False, strict_map_key=False)
                    if isinstance(snap, dict):
                        results.append(snap)
                    if len(results) >= expected and not fut.done():
                        fut.set_result(None)
        except BusFrameError:
            m.inc(m.bus_dropped, "bad_frame")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            m.inc(m.bus_dropped, "bad_frame")

    # --- liveness -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._closed or self._loop is None:
            return
        now = time.monotonic()
        rec = bf.record(bf.HEARTBEAT, self.endpoint, self._now_ms())
        for peer in self.peers.values():
            if peer.alive:
                if now - peer.last_seen > self.peer_timeout_s and not peer.silent:
                    peer.silent = True  # busy, or dead: only its BYE (or the supervisor's) says it is gone
                    log.warning("bus: worker %d (endpoint %d) silent for %.1fs", peer.worker, peer.endpoint,
                                now - peer.last_seen)
                self._enqueue(peer, rec)
        self._timer = self._loop.call_later(self.heartbeat_s, self._tick)

    # --- stats --------------------------------------------------------------------------------------

    async def gather_stats(self, timeout: float, query: StatsQuery | None = None) -> list[dict[str, Any]]:
        live = [p for p in self.peers.values() if p.alive]
        if not live or self._loop is None:
            return []
        req_id = next(self._stats_ids) & 0xFFFFFFFF or 1
        fut: asyncio.Future[None] = self._loop.create_future()
        results: list[dict[str, Any]] = []
        self._stats_waits[req_id] = (fut, results, len(live))
        wire = msgpack.packb(query.to_wire(), use_bin_type=True) if query is not None else b""
        rec = bf.record(bf.STATS_REQ, self.endpoint, self._now_ms(), bf.u32_body(req_id, wire))
        for peer in live:
            self._enqueue(peer, rec)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._stats_waits.pop(req_id, None)
        return list(results)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)


_getpid = os.getpid
