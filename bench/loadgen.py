"""The load generator: several forked processes, each a uvloop loop of raw ``asyncio.Protocol`` clients.

Why not a WebSocket library: a Python client library tops out well below the server (measured on the
2-vCPU machine: a generator built on a fast client library topped out near 295k msg/s at 100 % CPU, less
than the servers it was meant to load), so each load process speaks just enough RFC 6455 itself
(bench.wsproto):

- frames whose payload does not change are built and masked once, and re-sent from a table of
  pre-joined batches (``frame * k``), so a pipelined round trip costs one ``write`` per batch;
- when only throughput is measured, replies are counted from frame headers and the first bytes of their
  payload, which must hold a marker of ours (:class:`~bench.wsproto.Expect`): an error frame, or a reply
  to someone else, is counted apart (``bad``), never as a round trip; the rest of the payload is skipped
  without being copied or decoded (:class:`~bench.wsproto.FrameCounter`);
- when latency is measured, the send time is in the payload and is the time the message was *scheduled*
  (open loop, no coordinated omission); the reply's timestamp is read with one regex (JSON) or one
  ``msgpack.unpackb`` and recorded in a per-process :class:`~bench.hist.Histogram` that merges exactly; a
  reply without our timestamp is counted as unexpected;
- connections opened at a controlled rate start on time (:func:`~bench.timing.wait_until` spins the last
  2 ms instead of trusting a timer that fires early) and their handshake time runs from the *real* start;
  early starts are counted, never hidden;
- every command reports what was sent, what came back as expected, what came back unexpected, and which
  connections closed, so the parent can mark a window invalid when anything was lost.

The parent (:class:`LoadPool`) sends each process a command over a pipe (``open``, ``pingpong``,
``openloop``, ``listen``, ``hush``, ``arrivals``, ``publish``, ``progress``, ``collect``, ``wait_all``,
``hold``, ``count``, ``close``, ``quit``; ``recovery_open``, ``recovery_run``, ``recovery_settle``,
``recovery_close`` drive the v1.1 subscribers of :mod:`bench.recoveryload`) with absolute start times
on the shared ``CLOCK_MONOTONIC``, so all processes start and measure the same window. Every loop
is bounded by a count and a deadline; a process whose parent disappears exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import orjson

from .arrival import ArrivalWatch, StampedReads, realtime_offset_ns, stamping_live
from .hist import Histogram
from .procstat import pin
from .recoveryload import RecoveryLoad
from .timing import Starts, wait_until
from .wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Expect,
    FrameCounter,
    FrameReader,
    expected_accept,
    handshake_request,
    masked_frame,
    new_key,
)

__all__ = ["LoadError", "LoadPool", "new_marker", "ping_frame", "ping_payload"]

_now = time.monotonic_ns
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# Client modes
M_HANDSHAKE = 0  # waiting for the 101 response
M_WELCOME = 1  # waiting for fanwire's welcome message (to learn the worker id)
M_IDLE = 2  # counting messages from headers, noting first/last arrival
M_PINGPONG = 3  # counting replies and re-sending pre-built batches (closed loop)
M_TS = 4  # reading the timestamp out of every message and recording latency

_TS_JSON = re.compile(rb'"ts":\s*\[?(\d+)')
_TEXT_JSON = re.compile(rb'"text":\s*"(\d+)')


def _ts_pong_json(buf: bytearray, s: int, e: int) -> int:
    m = _TS_JSON.search(buf, s, e)
    return int(m.group(1)) if m else 0


def _ts_text_json(buf: bytearray, s: int, e: int) -> int:
    m = _TEXT_JSON.search(buf, s, e)
    return int(m.group(1)) if m else 0


def _ts_pong_msgpack(buf: bytearray, s: int, e: int) -> int:
    try:
        ts = msgpack.unpackb(bytes(buf[s:e]))["ts"]
        return int(ts[0] if type(ts) is list else ts)
    except Exception:
        return 0


def _ts_text_msgpack(buf: bytearray, s: int, e: int) -> int:
    try:
        text = msgpack.unpackb(bytes(buf[s:e]))["text"]
        return int(text.partition(" ")[0])
    except Exception:
        return 0


TS_PARSERS: dict[tuple[str, str], Callable[[bytearray, int, int], int]] = {
    ("pong", "json"): _ts_pong_json,
    ("pong", "msgpack"): _ts_pong_msgpack,
    ("text", "json"): _ts_text_json,
    ("text", "msgpack"): _ts_text_msgpack,
}


def new_marker() -> str:
    """A random marker for one run's messages: the replies that carry it are ours (ASCII, 12 chars)."""
    return "fw" + os.urandom(5).hex()


def ping_payload(codec: str, size: int, ts: Any = None, marker: str = "") -> bytes:
    """A ``ping`` of about ``size`` bytes whose ``ts`` is ``marker`` plus padding (pong echoes it back, so
    replies are the same size and carry the marker) -- or ``[ts, marker + padding]`` with a timestamp."""
    head = {"type": "ping", "ts": marker if ts is None else [ts, marker]}
    base = len(orjson.dumps(head) if codec == "json" else msgpack.packb(head))
    pad = marker + "x" * max(0, size - base - (2 if size - base > 31 else 0))
    msg = {"type": "ping", "ts": pad if ts is None else [ts, pad]}
    return orjson.dumps(msg) if codec == "json" else bytes(msgpack.packb(msg))


def ping_frame(codec: str, size: int, mask: bytes, marker: str = "") -> bytes:
    return masked_frame(OP_TEXT if codec == "json" else OP_BINARY, ping_payload(codec, size, marker=marker), mask)


def pong_expect(marker: str) -> dict[str, Any]:
    """The :class:`~bench.wsproto.Expect` (as a dict, to cross the pipe) of a pong to our ping."""
    return {"tokens": (b"pong", marker.encode()), "head": 128}


def echo_payload(size: int, marker: str) -> bytes:
    """An echo message of exactly ``size`` bytes starting with ``marker`` (cut when ``size`` is smaller)."""
    return (marker.encode() + b"x" * size)[:size]


def echo_expect(payload: bytes, opcode: int) -> dict[str, Any]:
    """The echo of ``payload``: same opcode, same length, same first bytes."""
    return {"tokens": (payload[:16],) if payload else (), "opcode": opcode, "length": len(payload), "head": 16}


class LoadError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------
# one client connection


class Client(asyncio.Protocol):
    __slots__ = ("aborting", "accept", "bad", "batch", "batches", "closed", "codec", "counter", "expect_welcome",
                 "first_ns", "gen", "hbuf", "hist", "hs_ns", "inflight", "last_ns", "mode", "opened", "owed",
                 "reader", "received", "request", "rhist", "running", "rx_bytes", "sent", "stamped", "transport",
                 "ts_of", "ts_range", "worker")

    def __init__(self, gen: Gen, request: bytes, accept: bytes, expect_welcome: bool, codec: str) -> None:
        self.gen = gen
        self.request = request
        self.accept = accept
        self.expect_welcome = expect_welcome
        self.codec = codec
        self.transport: asyncio.Transport | None = None
        self.mode = M_HANDSHAKE
        self.hbuf = b""
        self.opened: asyncio.Future[None] = gen.loop.create_future()
        self.hs_ns = 0
        self.worker = -1
        self.counter = FrameCounter()
        self.reader: FrameReader | None = None
        self.received = 0  # messages that were what we expected
        self.bad = 0  # messages that were not (read in M_TS; M_IDLE / M_PINGPONG count in counter.bad)
        self.sent = 0
        self.rx_bytes = 0
        self.first_ns = 0
        self.last_ns = 0
        self.owed = 0
        self.batch = 1
        self.inflight = 0
        self.batches: list[bytes] = []
        self.running = False
        self.ts_of: Callable[[bytearray, int, int], int] = _ts_pong_json
        self.ts_range = (0, 1 << 62)  # a timestamp of ours lies in here
        self.hist: Histogram | None = None
        self.rhist: Histogram | None = None  # with ``stamped``: latency to the read (``hist``: to the arrival)
        self.stamped: StampedReads | None = None  # read by us, with the kernel's arrival stamps (fan-out)
        self.closed = False
        self.aborting = False  # we are closing it: its loss is not the server's

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.unstamp()
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        elif not self.aborting:
            self.gen.lost += 1

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        mode = self.mode
        if mode == M_PINGPONG:
            n = self.counter.feed(data)
            self.rx_bytes += len(data)
            if n:
                self.received += n
                if self.running:
                    owed = self.owed + n
                    if owed >= self.batch:
                        if owed > self.inflight:
                            owed = self.inflight
                        self.transport.write(self.batches[owed])  # type: ignore[union-attr]
                        self.sent += owed
                        self.owed = 0
                    else:
                        self.owed = owed
            if self.counter.control:
                self._controls()
        elif mode == M_TS:
            self._read_ts(data)
        elif mode == M_IDLE:
            c = self.counter
            # the common case in fan-out: exactly one small, final data frame, and ours
            n = 1 if c.one_small_frame(data) else c.feed(data)
            self.rx_bytes += len(data)
            if n:
                now = _now()
                self.received += n
                if not self.first_ns:
                    self.first_ns = now
                self.last_ns = now
                g = self.gen
                g.rx_total += n
                if g.w0 <= now < g.w1:
                    g.win_rx += n
            if self.counter.control:
                self._controls()
        elif mode == M_HANDSHAKE:
            self._handshake(data)
        else:
            self._welcome(data)

    # --- states -------------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        buf = self.hbuf + data
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > 65536:
                self._fail("handshake response too long")
            else:
                self.hbuf = buf
            return
        head, rest = buf[:i], buf[i + 4:]
        self.hbuf = b""
        if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
            self._fail(f"handshake refused: {head[:80]!r}")
            return
        self.hs_ns = _now()
        if self.expect_welcome:
            self.mode = M_WELCOME
            self.reader = FrameReader()
            if rest:
                self._welcome(rest)
        else:
            self.mode = M_IDLE
            self.opened.set_result(None)
            if rest:
                self.data_received(rest)

    def _welcome(self, data: bytes) -> None:
        reader = self.reader
        assert reader is not None
        frames = reader.feed(data)
        buf = reader.buf
        for op, s, e in frames:
            if op & 0x08:
                self._control(op, bytes(buf[s:e]))
            elif self.mode == M_WELCOME:
                try:
                    msg = orjson.loads(bytes(buf[s:e])) if op == OP_TEXT else msgpack.unpackb(bytes(buf[s:e]))
                    self.worker = int(msg.get("worker", -1))
                except Exception:
                    self.worker = -1
                self.mode = M_IDLE
                if not self.opened.done():
                    self.opened.set_result(None)
        reader.consume()
        if self.mode != M_WELCOME:
            self.reader = None
            if reader.buf:  # the start of the next frame
                self.data_received(bytes(reader.buf))

    def _read_stamped(self, data: bytes, arrived: int | None) -> None:
        if arrived is None:
            self.gen.unstamped += 1
        self._read_ts(data, arrived)

    def _read_ts(self, data: bytes, arrived: int | None = None) -> None:
        """Latency from each message's timestamp to ``arrived`` (the kernel's stamp), else to now."""
        reader = self.reader
        assert reader is not None
        frames = reader.feed(data)
        if not frames:
            return
        now = _now()
        at = now if arrived is None else arrived
        g = self.gen
        buf = reader.buf
        ts_of = self.ts_of
        lo, hi = self.ts_range
        hist = self.hist
        rhist = self.rhist
        n = 0
        for op, s, e in frames:
            if op & 0x08:
                self._control(op, bytes(buf[s:e]))
                continue
            ts = ts_of(buf, s, e)
            if not lo <= ts < hi:  # not ours: an error frame, someone else's message, a fragment
                self.bad += 1
                continue
            n += 1
            if g.w0 <= ts < g.w1:
                g.win_replies += 1
                if hist is not None:
                    hist.record((at - ts) // 1000)
                    if rhist is not None:
                        rhist.record((now - ts) // 1000)
        reader.consume()
        if n:
            self.received += n
            if not self.first_ns:
                self.first_ns = now
            self.last_ns = now
            g.rx_total += n
            if g.w0 <= now < g.w1:
                g.win_rx += n

    def _controls(self) -> None:
        ctl = self.counter.control
        self.counter.control = []
        for op, payload in ctl:
            self._control(op, payload)

    def _control(self, op: int, payload: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if op == OP_PING:
            t.write(masked_frame(OP_PONG, payload, self.gen.mask))
            self.gen.pings += 1
        elif op == OP_CLOSE:
            t.write(masked_frame(OP_CLOSE, payload[:2], self.gen.mask))
            self.closed = True
            code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
            codes = self.gen.close_codes
            codes[code] = codes.get(code, 0) + 1

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    # --- modes --------------------------------------------------------------------------------------

    def stamp(self, offset: int) -> None:
        """Read this connection ourselves from now on, each read with its arrival (see StampedReads)."""
        t = self.transport
        if self.stamped is None and t is not None and not t.is_closing():
            self.stamped = StampedReads(self.gen.loop, t, offset, self._read_stamped)

    def unstamp(self) -> None:
        if self.stamped is not None:
            self.stamped.close()
            self.stamped = None

    def to_mode(self, mode: int, expect: Expect | None = None) -> None:
        """Switch mode and reset the counters, carrying over a frame that is half-way through. ``expect``:
        what a valid message looks like from now on (M_IDLE and M_PINGPONG)."""
        self.unstamp()
        if self.counter.control:
            self._controls()
        if mode == M_TS:
            if self.reader is None:
                c = self.counter
                self.reader = FrameReader(c.skip, c.partial)
                self.counter = FrameCounter()
        elif self.reader is not None:
            leftover = bytes(self.reader.buf)
            skip = self.reader.skip
            self.reader = None
            self.counter = FrameCounter()
            self.counter.skip = skip
            if leftover:
                self.counter.feed(leftover)
                if self.counter.control:
                    self._controls()
        self.counter.expect = expect
        self.counter.bad = 0
        self.bad = 0
        self.mode = mode
        self.received = 0
        self.rx_bytes = 0
        self.sent = 0
        self.first_ns = 0
        self.last_ns = 0
        self.owed = 0
        self.running = False

    def bad_total(self) -> int:
        """Messages since the last mode switch that were not what we expected."""
        return self.bad + self.counter.bad

    def abort(self) -> None:
        """Close it from our side (not counted as lost)."""
        self.aborting = True
        self.unstamp()
        if self.transport is not None:
            self.transport.abort()


# ---------------------------------------------------------------------------------------------------
# one load process


class Gen:
    """The state of one load process: its connections, and the command loop."""

    def __init__(self, pipe: Connection, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.conns: list[Client] = []
        self.mask = os.urandom(4)
        self.key = new_key()
        self.accept = expected_accept(self.key)
        self.lost = 0  # connections the server (or the network) closed under us
        self.pings = 0  # server pings answered
        self.close_codes: dict[str, int] = {}  # close frames received, by code
        self.listening: list[Client] = []  # the connections a ``listen`` started with
        # measurement window (ns, CLOCK_MONOTONIC) shared by all connections of this process
        self.w0 = 0
        self.w1 = 0
        self.win_rx = 0  # messages that arrived inside the window
        self.win_replies = 0  # messages whose timestamp lies inside the window
        self.rx_total = 0
        self.hists: dict[int, Histogram] = {}
        self.read_hists: dict[int, Histogram] = {}  # listen(stamped=True): latency to the read, per worker
        self.unstamped = 0  # stamped reads that came without the kernel's stamp (timed at the read)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.ppid = os.getppid()
        self.recovery: RecoveryLoad | None = None  # the recovery scenario's subscribers and publisher
        self.listen_expect: Expect | None = None  # what a message of the current ``listen`` looks like
        self.watch: ArrivalWatch | None = None  # the listeners' sockets, stamped for one broadcast (``hush``)

    async def main(self) -> None:
        self.loop.add_reader(self.pipe.fileno(), self._on_pipe)
        self.loop.call_later(1.0, self._watch_parent)
        await self.done
        for c in self.conns:
            c.abort()
        if self.recovery is not None:
            self.recovery.close()
        await asyncio.sleep(0)

    def _watch_parent(self) -> None:
        if os.getppid() != self.ppid:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.loop.call_later(1.0, self._watch_parent)

    def _on_pipe(self) -> None:
        try:
            # the loop's reader may have made the fd non-blocking; a large command arrives in pieces
            os.set_blocking(self.pipe.fileno(), True)
            rid, cmd, args = self.pipe.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(self.pipe.fileno())
            if not self.done.done():
                self.done.set_result(None)
            return
        self.loop.create_task(self._run(rid, cmd, args))

    async def _run(self, rid: int, cmd: str, args: dict[str, Any]) -> None:
        try:
            result = await getattr(self, f"cmd_{cmd}")(**args)
            reply: tuple[int, str, Any] = (rid, "ok", result)
        except Exception:
            reply = (rid, "error", f"load process {self.index}: {cmd}: {traceback.format_exc()}")
        with contextlib.suppress(OSError):
            self.pipe.send(reply)

    def alive(self) -> list[Client]:
        return [c for c in self.conns if not c.closed and c.transport is not None]

    # --- commands -----------------------------------------------------------------------------------

    async def cmd_quit(self) -> None:
        self.loop.call_soon(self.done.set_result, None)

    async def cmd_open(self, host: str, port: int, count: int, rate: float | None, start_at: float,
                       subprotocol: str | None = None, codec: str = "json", expect_welcome: bool = False,
                       sources: Sequence[str] = (), max_pending: int = 256, timeout: float = 10.0,
                       deadline: float = 120.0) -> dict[str, Any]:
        """Open ``count`` connections, the i-th due at ``start_at + i / rate`` (``rate`` None: as fast as
        ``max_pending`` concurrent handshakes allow). A due start is waited for without ever starting
        early (:func:`~bench.timing.wait_until`); handshake time runs from the *real* start (taken just
        before the TCP connect) to the 101 response (a connection counts as open once fanwire's welcome
        message has come too, but the welcome is not part of the time). How late each
        real start was against the schedule, and how many were early, is reported beside it."""
        request = handshake_request(host, port, self.key, subprotocol)
        hist = Histogram()
        starts = Starts()
        errors: dict[str, int] = {}
        sem = asyncio.Semaphore(max_pending)
        tasks: list[asyncio.Task[None]] = []
        t0 = int(start_at * 1e9)
        stop_at = time.monotonic() + deadline
        first = last = 0

        async def one(i: int, due_ns: int) -> None:
            nonlocal first, last
            src = sources[i % len(sources)] if sources else None
            sock: socket.socket | None = None
            proto: Client | None = None
            start = _now()
            if rate:
                starts.note(due_ns, start)
            try:
                async with asyncio.timeout(timeout):
                    if src:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                        sock.bind((src, 0))
                        await self.loop.sock_connect(sock, (host, port))
                        _, proto = await self.loop.create_connection(
                            lambda: Client(self, request, self.accept, expect_welcome, codec), sock=sock)
                    else:  # one step: no extra loop iterations between connect and handshake
                        _, proto = await self.loop.create_connection(
                            lambda: Client(self, request, self.accept, expect_welcome, codec), host, port)
                    await proto.opened
                hist.record((proto.hs_ns - start) // 1000)
                self.conns.append(proto)
                last = max(last, proto.hs_ns)
                first = min(first, start) if first else start
            except Exception as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                if isinstance(exc, OSError) and exc.errno is not None:
                    kind += f" ({errno.errorcode.get(exc.errno, exc.errno)})"
                elif type(exc) is ConnectionError and exc.args:  # ours: what the server answered, in short
                    kind += f" ({str(exc.args[0])[:48]})"
                errors[kind] = errors.get(kind, 0) + 1
                if proto is not None:
                    proto.abort()
                elif sock is not None:
                    sock.close()
            finally:
                sem.release()

        for i in range(count):
            if time.monotonic() > stop_at:
                errors["deadline"] = errors.get("deadline", 0) + count - i
                break
            if rate:
                due = t0 + int(i * 1e9 / rate)
                await wait_until(due)
                await sem.acquire()
            else:
                await sem.acquire()
                due = _now()
            tasks.append(self.loop.create_task(one(i, due)))
        if tasks:
            await asyncio.wait(tasks)
        workers: dict[int, int] = {}
        for c in self.conns:
            workers[c.worker] = workers.get(c.worker, 0) + 1
        return {"opened": hist.count, "errors": errors, "handshake_us": hist.to_dict(), "first_ns": first,
                "last_ns": last, "workers": workers, "conns": len(self.alive()),
                "starts": starts.to_dict() if rate else None}

    async def cmd_pingpong(self, frame: bytes, inflight: int, batch: int, start_at: float, warmup: float,
                           duration: float, expect: dict[str, Any], drain: float = 2.0) -> dict[str, Any]:
        """Closed loop: every connection keeps ``inflight`` messages outstanding and re-sends a batch as
        soon as ``batch`` expected replies are in. Counts replies inside [start+warmup,
        start+warmup+duration]; after a drain, reports every request that was not answered as expected."""
        conns = self.alive()
        exp = Expect(**expect)
        lost0 = self.lost
        batches = [frame * k for k in range(inflight + 1)]
        for c in conns:
            c.to_mode(M_PINGPONG, exp)
            c.batches = batches
            c.batch = batch
            c.inflight = inflight
        await _sleep_until(start_at)
        for c in conns:
            if c.transport is not None:
                c.running = True
                c.transport.write(batches[inflight])
                c.sent = inflight
        await _sleep_until(start_at + warmup)
        r0 = sum(c.received for c in conns)
        b0 = sum(c.rx_bytes for c in conns)
        t0 = time.monotonic()
        await _sleep_until(start_at + warmup + duration)
        r1 = sum(c.received for c in conns)
        b1 = sum(c.rx_bytes for c in conns)
        t1 = time.monotonic()
        for c in conns:
            c.running = False
        await _drain(lambda: not any(c.sent > c.received + c.bad_total() and not c.closed for c in conns),
                     lambda: sum(c.received + c.bad_total() for c in conns), drain)
        sent = sum(c.sent for c in conns)
        ok = sum(c.received for c in conns)
        bad = sum(c.bad_total() for c in conns)
        extra = sum(max(0, c.received - c.sent) for c in conns)
        closed = sum(c.closed for c in conns)
        for c in conns:
            c.to_mode(M_IDLE)
        return {"received": r1 - r0, "rx_bytes": b1 - b0, "window_s": t1 - t0, "sent_total": sent,
                "ok_total": ok, "unexpected": bad, "extra": extra, "closed": closed,
                "outstanding": sum(max(0, c.sent - c.received - c.bad_total()) for c in conns if not c.closed),
                "conns": len(conns), "lost_conns": self.lost - lost0, "close_codes": dict(self.close_codes),
                "tx_frame_bytes": len(frame)}

    async def cmd_openloop(self, rate: float, start_at: float, warmup: float, duration: float, codec: str,
                           size: int, drain: float = 2.0) -> dict[str, Any]:
        """Open loop: ``rate`` pings per second spread round-robin over this process's connections, each
        carrying the time it was *scheduled* to be sent. Latency = reply arrival - scheduled send time.
        A reply counts only when it carries one of our scheduled times."""
        conns = self.alive()
        if not conns:
            raise LoadError("no open connections")
        lost0 = self.lost
        hist = Histogram()
        lag = Histogram()
        parse = TS_PARSERS[("pong", codec)]
        t0 = int(start_at * 1e9)
        total = int(rate * (warmup + duration))
        interval = 1e9 / rate
        for c in conns:
            c.to_mode(M_TS)
            c.ts_of = parse
            c.ts_range = (t0, t0 + int(total * interval) + 1)
            c.hist = hist
        self.w0 = t0 + int(warmup * 1e9)
        self.w1 = self.w0 + int(duration * 1e9)
        self.win_rx = self.win_replies = self.rx_total = 0
        opcode = OP_TEXT if codec == "json" else OP_BINARY
        mask = self.mask
        template = ping_payload(codec, size, ts=10**15)  # the size with a 16-digit timestamp
        if codec == "json":
            prefix, _, suffix = template.partition(b"1000000000000000")

            def payload(ts: int) -> bytes:
                return prefix + str(ts).encode() + suffix
        else:
            pad = msgpack.unpackb(template)["ts"][1]

            def payload(ts: int) -> bytes:
                return bytes(msgpack.packb({"type": "ping", "ts": [ts, pad]}))

        nconn = len(conns)
        sent = 0
        sent_window = 0
        w0, w1 = self.w0, self.w1
        hard_stop = _now() + int((warmup + duration + 30) * 1e9)
        while sent < total:
            now = _now()
            if now > hard_stop:
                break
            due = min(total, int((now - t0) / interval) + 1) if now >= t0 else 0
            if due > sent:
                lag.record((now - (t0 + int(sent * interval))) // 1000)
                for k in range(sent, due):
                    ts = t0 + int(k * interval)
                    c = conns[k % nconn]
                    if c.transport is not None:
                        c.transport.write(masked_frame(opcode, payload(ts), mask))
                    if w0 <= ts < w1:
                        sent_window += 1
                sent = due
                await asyncio.sleep(0)
            else:
                wait = (t0 + sent * interval - now) / 1e9
                # timers are 1 ms coarse: sleep only when the next send is far away, else spin
                await asyncio.sleep(wait - 0.0015 if wait > 0.002 else 0)
        await _drain(lambda: sum(c.received + c.bad for c in conns) >= sent or all(c.closed for c in conns),
                     lambda: sum(c.received + c.bad for c in conns), drain)
        ok = sum(c.received for c in conns)
        bad = sum(c.bad for c in conns)
        closed = sum(c.closed for c in conns)
        for c in conns:
            c.to_mode(M_IDLE)
            c.hist = None
        return {"sent": sent, "sent_window": sent_window, "replies_window": self.win_replies,
                "received": ok, "unexpected": bad, "closed": closed, "lost_conns": self.lost - lost0,
                "latency_us": hist.to_dict(), "send_lag_us": lag.to_dict(), "conns": nconn}

    async def cmd_listen(self, w0: float, w1: float, marker: str, sample_every: int = 1,
                         stamped: bool = False) -> dict[str, Any]:
        """Receive mode for fan-out: every ``sample_every``-th connection reads the timestamp out of
        each message and records its delivery latency (per worker id of the receiving connection); the
        others count messages from headers and check our ``marker`` in their first bytes. Deliveries
        inside [w0, w1) are counted by arrival time. ``stamped``: the latency runs to the message's
        arrival at the receiving socket (the kernel's stamp, :class:`~bench.arrival.StampedReads`), and
        the latency to its read goes into ``read_hists``."""
        self.w0 = int(w0 * 1e9)
        self.w1 = int(w1 * 1e9)
        self.win_rx = self.win_replies = self.rx_total = 0
        self.hists = {}
        self.read_hists = {}
        self.unstamped = 0
        offset = realtime_offset_ns() if stamped else 0
        live = stamping_live() if stamped else None
        exp = self.listen_expect = Expect((marker.encode(),), head=256)
        sampled = 0
        self.listening = self.alive()
        for i, c in enumerate(self.listening):
            if sample_every and i % sample_every == 0:
                c.to_mode(M_TS)
                c.ts_of = TS_PARSERS[("text", c.codec)]
                c.ts_range = (self.w0 - 3600 * 10**9, self.w1 + 3600 * 10**9)
                h = self.hists.get(c.worker)
                if h is None:
                    h = self.hists[c.worker] = Histogram()
                c.hist = h
                c.rhist = None
                if stamped:
                    rh = self.read_hists.get(c.worker)
                    if rh is None:
                        rh = self.read_hists[c.worker] = Histogram()
                    c.rhist = rh
                    c.stamp(offset)
                sampled += 1
            else:
                c.to_mode(M_IDLE, exp)
                c.hist = c.rhist = None
        return {"listening": len(self.listening), "sampled": sampled, "stamping": live}

    async def cmd_hush(self) -> dict[str, Any]:
        """Have the kernel stamp what arrives on the connections of the current ``listen``
        (:class:`~bench.arrival.ArrivalWatch`), for ``arrivals``; they are read as usual meanwhile."""
        if self.watch is not None or self.listen_expect is None:
            raise LoadError("hush needs a listen, and no hush in progress")
        self.watch = ArrivalWatch(self.listening, self.listen_expect)
        return {"hushed": len(self.watch.socks)}

    async def cmd_arrivals(self, start_at: float, timeout: float, publish: dict[str, Any] | None = None
                           ) -> dict[str, Any]:
        """Stop this process's event loop from ``start_at`` (monotonic) on, so no client reads and the load
        idles, until one message of ours has arrived on every connection of the ``hush`` (or ``timeout``
        seconds); with ``publish`` (``marker``, ``size``), send that broadcast at ``start_at`` first. The
        clients then read again. Returns the histogram (us) of the arrivals from ``start_at`` on (all, and
        per worker of the receiving connection), and what was not stamped; ``late_start`` when this process
        was not ready (armed, its loop stopped) by ``start_at``, so its clients may have read the broadcast
        unstamped; ``slack_ms``, how much time it had to spare."""
        watch = self.watch
        if watch is None:
            raise LoadError("arrivals without a hush")
        sent = 0
        try:
            watch.arm()
            slack = start_at - time.monotonic()
            late_start = slack <= 0
            while (d := start_at - time.monotonic()) > 0:
                time.sleep(d)  # blocking, on purpose: the event loop must not run (nor read) until the end
            conns = self.alive()
            if publish is not None and conns and conns[0].transport is not None:
                ts = int(start_at * 1e9)
                conns[0].transport.write(self._publish_frame("broadcast", "json", ts, publish["marker"],
                                                             publish["size"]))
                sent = 1
            watch.wait(start_at + timeout)
        finally:
            watch.close()
            self.watch = None
        since = int(start_at * 1e9)
        h = Histogram()
        per_worker: dict[int, Histogram] = {}
        for ts, r in zip(watch.stamps, watch.whose, strict=True):
            us = (ts - since) // 1000
            h.record(us)
            w = getattr(r, "worker", -1)
            hw = per_worker.get(w)
            if hw is None:
                hw = per_worker[w] = Histogram()
            hw.record(us)
        return {"sent": sent, "late_start": late_start, "slack_ms": round(slack * 1000, 1), "arrivals": h.to_dict(),
                "per_worker": {str(w): hw.to_dict() for w, hw in per_worker.items()}, "stamped": len(watch.stamps),
                "late": watch.late, "by_poll": watch.by_poll, "not_ours": watch.other, "unarrived": len(watch.pending),
                "ended": watch.ended, "controls": watch.controls}

    def _publish_frame(self, kind: str, codec: str, ts: int, marker: str, size: int) -> bytes:
        """A masked ``kind`` message (broadcast or chat) carrying ``ts`` and our ``marker`` at the start of
        its ``text``, padded to about ``size`` bytes."""
        msg = {"type": kind, "text": f"{ts} {marker}{'x' * max(0, size - 60 - len(marker))}"}
        data = orjson.dumps(msg) if codec == "json" else bytes(msgpack.packb(msg))
        return masked_frame(OP_TEXT if codec == "json" else OP_BINARY, data, self.mask)

    async def cmd_publish(self, rate: float, start_at: float, count: int, marker: str, codec: str = "json",
                          size: int = 100, kind: str = "broadcast", from_send: bool = False) -> dict[str, Any]:
        """Send ``count`` messages of ``kind`` (broadcast or chat) from this process's first connection,
        on an open-loop schedule, each carrying its scheduled send time (ns) and our ``marker`` at the
        start of ``text`` -- or, with ``from_send``, the time it was written (the fan-out scenario's
        latency to the arrival: this process also reads receivers, and how late that made a send is its
        own, not the server's). ``send_lag_us``: how late each send was against the schedule."""
        conns = self.alive()
        if not conns:
            raise LoadError("no open connection to publish from")
        pub = conns[0]
        t0 = int(start_at * 1e9)
        interval = 1e9 / rate if rate else 0.0
        sent = 0
        lag = Histogram()
        hard_stop = _now() + int((count / (rate or 1e9) + 30) * 1e9)
        while sent < count and not pub.closed:
            ts = t0 + int(sent * interval)
            now = _now()
            if now > hard_stop:
                break
            if ts > now:
                await wait_until(ts)
                continue
            if pub.transport is not None:
                at = _now()
                lag.record((at - ts) // 1000)
                pub.transport.write(self._publish_frame(kind, codec, at if from_send else ts, marker, size))
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)
        return {"sent": sent, "worker": pub.worker, "send_lag_us": lag.to_dict()}

    async def cmd_collect(self, expected_each: int | None = None, arrivals_since_ns: int | None = None
                          ) -> dict[str, Any]:
        """What the receivers saw since ``listen``; back to idle. With ``expected_each`` (the messages
        every receiver was owed), also what was lost: owed and not received as expected, received but
        not ours, received more than once, and the receivers that closed. With ``arrivals_since_ns``,
        also the histogram (us) of each receiver's first message of ours, from that time on: a message
        sent once at that time needs no timestamp read out of every copy (see ``broadcast_all``)."""
        conns = self.listening
        arrivals: dict[str, Any] | None = None
        if arrivals_since_ns is not None:
            h = Histogram()
            for c in conns:
                if c.first_ns:
                    h.record((c.first_ns - arrivals_since_ns) // 1000)
            arrivals = h.to_dict()
        counts = [c.received for c in conns]
        firsts = [c.first_ns for c in conns if c.first_ns]
        lasts = [c.last_ns for c in conns if c.last_ns]
        out: dict[str, Any] = {
            "win_rx": self.win_rx, "received": sum(counts), "conns": len(conns),
            "min_received": min(counts) if counts else 0,
            "first_ns": min(firsts) if firsts else 0, "last_first_ns": max(firsts) if firsts else 0,
            "last_ns": max(lasts) if lasts else 0,
            "hists": {str(w): h.to_dict() for w, h in self.hists.items()}, "lost_conns": self.lost,
            "read_hists": {str(w): h.to_dict() for w, h in self.read_hists.items()}, "unstamped": self.unstamped,
            "unexpected": sum(c.bad_total() for c in conns), "closed": sum(c.closed for c in conns),
            "close_codes": dict(self.close_codes), "arrivals": arrivals}
        if expected_each is not None:
            out["expected"] = expected_each * len(conns)
            out["missing"] = sum(max(0, expected_each - n) for n in counts)
            out["extra"] = sum(max(0, n - expected_each) for n in counts)
        for c in self.alive():
            c.to_mode(M_IDLE)
            c.hist = c.rhist = None
        self.listening = []
        self.w0 = self.w1 = 0
        return out

    async def cmd_progress(self) -> dict[str, Any]:
        """How many expected messages the connections of the current ``listen`` have received so far."""
        return {"received": sum(c.received for c in self.listening), "conns": len(self.listening)}

    async def cmd_wait_all(self, expect: int, timeout: float) -> dict[str, Any]:
        """Wait until every open connection has received ``expect`` messages since ``listen``.

        Looking at every connection costs milliseconds with tens of thousands of them, and this process
        shares the cores with the server it measures: so the connections are looked at only once the
        process's total of messages received (or a connection lost) says they may all be there, and
        otherwise every quarter of a second."""
        end = time.monotonic() + timeout
        need = expect * len(self.alive())
        lost, seen = self.lost, -1
        full_check = 0.0
        while (now := time.monotonic()) < end:
            total = self.rx_total
            if (total >= need and total != seen) or self.lost != lost or now >= full_check:
                if all(c.received >= expect for c in self.alive()):
                    break
                lost, seen = self.lost, total
                full_check = now + 0.25
            await asyncio.sleep(0.002)
        conns = self.alive()
        return {"reached": sum(c.received >= expect for c in conns), "conns": len(conns)}

    async def cmd_hold(self, duration: float) -> dict[str, Any]:
        """Keep every open connection open for ``duration`` seconds, answering the server's pings; report
        what closed under us and how many pings were answered."""
        conns = self.alive()
        lost0, pings0 = self.lost, self.pings
        codes0 = dict(self.close_codes)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        codes = {k: v - codes0.get(k, 0) for k, v in self.close_codes.items() if v - codes0.get(k, 0)}
        return {"conns": len(conns), "alive": len(self.alive()), "closed": self.lost - lost0,
                "pings_answered": self.pings - pings0, "close_codes": codes}

    async def cmd_count(self) -> dict[str, Any]:
        return {"conns": len(self.alive()), "lost": self.lost, "pings": self.pings,
                "close_codes": dict(self.close_codes)}

    # --- the recovery scenario (bench.recoveryload) -------------------------------------------------------

    async def cmd_recovery_open(self, count: int, publisher: bool = False, **kw: Any) -> dict[str, Any]:
        """v1.1 subscribers (``autojoin=0``, every stream joined) and, when asked, the publisher."""
        if self.recovery is not None:
            self.recovery.close()
        self.recovery = RecoveryLoad(self, **kw)
        return await self.recovery.open(count, publisher)

    async def cmd_recovery_run(self, **kw: Any) -> dict[str, Any]:
        """Publish and cut on schedule (:meth:`bench.recoveryload.RecoveryLoad.run`)."""
        if self.recovery is None:
            raise LoadError("recovery_run before recovery_open")
        return await self.recovery.run(**kw)

    async def cmd_recovery_settle(self, ends: dict[str, dict[str, int]], timeout: float) -> dict[str, Any]:
        """Wait until every subscriber caught up with ``ends``; the verdict from offsets."""
        if self.recovery is None:
            raise LoadError("recovery_settle before recovery_open")
        return await self.recovery.settle(ends, timeout)

    async def cmd_recovery_close(self) -> dict[str, Any]:
        n = self.recovery.close() if self.recovery is not None else 0
        self.recovery = None
        await asyncio.sleep(0.01)
        return {"closed": n}

    async def cmd_close(self) -> dict[str, Any]:
        n = 0
        for c in self.conns:
            if c.transport is not None:
                n += 1
            c.abort()
        self.conns = []
        await asyncio.sleep(0.01)
        return {"aborted": n}


async def _drain(done: Callable[[], bool], count: Callable[[], int], drain: float, limit: float = 15.0) -> None:
    """Wait for the replies still in flight: ``drain`` seconds, and longer (up to ``limit``) while they
    keep coming; a late reply is not a lost one, a reply that stopped coming is."""
    t0 = time.monotonic()
    last, since = -1, t0
    while not done():
        now = time.monotonic()
        n = count()
        if n != last:
            last, since = n, now
        if now - t0 > limit or (now - t0 > drain and now - since > 1.0):
            return
        await asyncio.sleep(0.005)


async def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)


def _child_main(pipe: Connection, index: int, cpus: Sequence[int] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # what was imported before the fork never needs collecting: keep full collections short
    gc.freeze()
    if cpus:
        pin(0, cpus)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def main() -> None:
        await Gen(pipe, index).main()

    runner(main())


# ---------------------------------------------------------------------------------------------------
# the parent's side


class LoadPool:
    """``n`` load processes (forked), each pinned to ``cpus`` when given. Use as a context manager."""

    def __init__(self, n: int, cpus: Sequence[int] | None = None) -> None:
        self.n = n
        self.cpus = list(cpus) if cpus else None
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self._rid = 0
        self._ready: dict[int, tuple[str, Any]] = {}

    def start(self) -> LoadPool:
        ctx = multiprocessing.get_context("fork")
        for i in range(self.n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child_main, args=(child, i, self.cpus), name=f"fanwire-load-{i}",
                            daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def submit(self, cmd: str, args: dict[str, Any] | Sequence[dict[str, Any]],
               only: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """Send ``cmd`` to every process (or those in ``only``); ``args`` is one dict for all or one per
        process. Returns tickets for :meth:`wait`."""
        targets = list(only) if only is not None else list(range(self.n))
        tickets = []
        for j, i in enumerate(targets):
            a = args if isinstance(args, dict) else args[j]
            self._rid += 1
            self.pipes[i].send((self._rid, cmd, a))
            tickets.append((i, self._rid))
        return tickets

    def wait(self, tickets: Sequence[tuple[int, int]], timeout: float) -> list[Any]:
        """The results for ``tickets``, in order. Raises LoadError on a failure or after ``timeout``."""
        end = time.monotonic() + timeout
        want = {rid for _, rid in tickets}
        while not want.issubset(self._ready):
            left = end - time.monotonic()
            if left <= 0:
                raise LoadError(f"load processes did not answer within {timeout:.0f}s")
            pipes = [self.pipes[i] for i, rid in tickets if rid not in self._ready]
            for pipe in multiprocessing.connection.wait(pipes, timeout=min(left, 1.0)):
                assert isinstance(pipe, Connection)
                try:
                    rid, status, result = pipe.recv()
                except (EOFError, OSError) as exc:
                    i = self.pipes.index(pipe)
                    self.procs[i].join(1.0)
                    raise LoadError(f"load process {i} died (exit code {self.procs[i].exitcode})") from exc
                self._ready[rid] = (status, result)
            for i, rid in tickets:
                if rid not in self._ready and not self.procs[i].is_alive():
                    raise LoadError(f"load process {i} died (exit code {self.procs[i].exitcode})")
        out = []
        for _, rid in tickets:
            status, result = self._ready.pop(rid)
            if status != "ok":
                raise LoadError(str(result))
            out.append(result)
        return out

    def call(self, cmd: str, args: dict[str, Any] | Sequence[dict[str, Any]], timeout: float,
             only: Sequence[int] | None = None) -> list[Any]:
        return self.wait(self.submit(cmd, args, only), timeout)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send((0, "quit", {}))
        end = time.monotonic() + 3.0
        for p in self.procs:
            p.join(max(0.05, end - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(2.0)
        for pipe in self.pipes:
            pipe.close()
        self.procs = []
        self.pipes = []

    def __enter__(self) -> LoadPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
