"""``python -m client stress``: round-trip load against a running server.

Each connection sends ``ping`` messages carrying ``ts = [send time in ns, padding]`` and an ``id``, keeps
``inflight`` of them outstanding, and matches every ``pong`` by its ``id``; the round trip is measured from
the timestamp the pong echoes (timestamps in the payload, so no table of send times is needed). One
*message* is one ping and its pong.

Connections are spread over ``processes`` load processes (forked), each with its own event loop (uvloop
when installed) and its own :class:`~client.histogram.Histogram`; the parent starts them together,
draws the progress bar from shared counters, merges the histograms and prints a table or JSON.

Every loop is bounded: by ``messages`` per connection or by ``duration``, by a per-reply ``timeout``, by
``max_time`` for the whole run, and the parent kills load processes that outlive the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import multiprocessing
import multiprocessing.sharedctypes
import os
import platform
import queue
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from . import protocol
from .histogram import Histogram

__all__ = ["StressConfig", "format_table", "redact_argv", "run_stress", "split"]

# Connections opened at once per process: a connection storm beyond the listen backlog only adds SYN retries.
_CONNECT_CONCURRENCY = 200
# Above this many connections per process, another process is added (file descriptors, one core each).
_CONNS_PER_PROCESS = 1000
_PROGRESS_EVERY_S = 0.1
_ERROR_KINDS = ("connect", "timeout", "closed", "server", "mismatch", "crash")


@dataclass(frozen=True, slots=True)
class StressConfig:
    url: str
    codec: str = "json"
    connections: int = 10
    messages: int | None = 100  # per connection; None when duration is set
    duration: float | None = None  # seconds; None when messages is set
    size: int = 64  # approximate bytes per ping (the pong carries the same payload back)
    processes: int = 0  # 0: one per _CONNS_PER_PROCESS connections, at most the CPU count
    inflight: int = 1
    timeout: float = 5.0  # seconds to wait for any one reply, and to open a connection
    max_time: float = 600.0  # hard bound on the load phase
    user: str | None = None
    cafile: str | None = None  # CA file for wss:// URLs (None: the system CAs)
    token: str | None = field(default=None, repr=False)  # sent as Authorization: Bearer; never reported

    def connect_options(self) -> dict[str, Any]:
        """TLS and authentication options for websockets' ``connect``."""
        opts: dict[str, Any] = {}
        if self.cafile is not None:
            opts["ssl"] = ssl.create_default_context(cafile=self.cafile)
        if self.token is not None:
            opts["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
        return opts

    def process_count(self) -> int:
        if self.processes > 0:
            return min(self.processes, self.connections)
        wanted = math.ceil(self.connections / _CONNS_PER_PROCESS)
        return max(1, min(wanted, os.cpu_count() or 1, self.connections))

    def deadline_s(self) -> float:
        return min(self.duration, self.max_time) if self.duration is not None else self.max_time


@dataclass(slots=True)
class _Tally:
    opened: int = 0
    sent: int = 0
    received: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_ERROR_KINDS, 0))
    hist: Histogram = field(default_factory=Histogram)
    elapsed_s: float = 0.0
    connect_error: str = ""  # why the first failed connection failed

    def connect_failed(self, exc: BaseException) -> None:
        self.errors["connect"] += 1
        if not self.connect_error:
            detail = str(exc) or "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            self.connect_error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__

    def to_dict(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "sent": self.sent,
            "received": self.received,
            "errors": dict(self.errors),
            "hist": self.hist.to_dict(),
            "elapsed_s": self.elapsed_s,
            "connect_error": self.connect_error,
        }


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as possible over ``parts`` (the first ones get the remainder)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def padding_for(codec: protocol.Codec, size: int) -> str:
    """Padding that brings an encoded ping to about ``size`` bytes."""
    sample = {"type": "ping", "id": 10**6, "ts": [time.perf_counter_ns() + 10**12, ""]}
    return "x" * max(0, size - len(codec.encode(sample)))


# ---------------------------------------------------------------------------------------------------
# One load process


async def _one_connection(
    cfg: StressConfig,
    options: dict[str, Any],
    codec: protocol.Codec,
    pad: str,
    go: asyncio.Event,
    connected: Callable[[], None],
    tally: _Tally,
    start_ref: list[float],
) -> None:
    try:
        ws: ClientConnection = await asyncio.wait_for(
            ws_connect(
                cfg.url,
                subprotocols=[Subprotocol(codec.subprotocol)],
                compression=None,
                open_timeout=None,
                ping_interval=None,
                proxy=None,
                max_size=None,
                **options,
            ),
            cfg.timeout,
        )
        await asyncio.wait_for(ws.recv(decode=False), cfg.timeout)  # the welcome
    except Exception as exc:
        tally.connect_failed(exc)
        connected()
        return
    tally.opened += 1
    connected()
    try:
        await go.wait()
        await _load(ws, cfg, codec, pad, tally, start_ref[0])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2.0)


async def _load(
    ws: ClientConnection, cfg: StressConfig, codec: protocol.Codec, pad: str, tally: _Tally, start: float
) -> None:
    deadline = start + cfg.deadline_s()
    limit = cfg.messages if cfg.messages is not None else 2**62  # duration mode: bounded by time
    encode, text = codec.encode, codec.text
    seq = 0
    outstanding: set[int] = set()

    async def send_one() -> None:
        nonlocal seq
        seq += 1
        outstanding.add(seq)
        tally.sent += 1
        await ws.send(encode({"type": "ping", "id": seq, "ts": [time.perf_counter_ns(), pad]}), text=text)

    try:
        while seq < min(cfg.inflight, limit):
            await send_one()
        while outstanding:
            try:
                raw = await asyncio.wait_for(ws.recv(decode=False), cfg.timeout)
            except TimeoutError:
                tally.errors["timeout"] += len(outstanding)
                return
            now = time.perf_counter_ns()
            try:
                msg = codec.decode(raw)
            except protocol.DecodeError:
                tally.errors["server"] += 1
                continue
            kind, rid = msg["type"], msg.get("id")
            if kind not in ("pong", "error"):
                continue  # a chat or broadcast from someone else: not ours to count
            if not isinstance(rid, int) or rid not in outstanding:
                tally.errors["mismatch"] += 1
                continue
            outstanding.discard(rid)
            tally.received += 1
            if kind == "error":
                tally.errors["server"] += 1
            else:
                ts = msg.get("ts")
                if isinstance(ts, list) and ts and isinstance(ts[0], int):
                    tally.hist.record((now - ts[0]) // 1000)
                else:
                    tally.errors["mismatch"] += 1
            if seq < limit and time.monotonic() < deadline:
                await send_one()
    except ConnectionClosed:
        tally.errors["closed"] += 1


async def _process_main(
    cfg: StressConfig,
    n_conns: int,
    progress: Any,
    slot: int,
    go_flag: Any,
    events: Any,
) -> _Tally:
    codec = protocol.get_codec(cfg.codec)
    pad = padding_for(codec, cfg.size)
    options = cfg.connect_options()  # one SSLContext for all of this process's connections
    tally = _Tally()
    go = asyncio.Event()
    start_ref = [0.0]
    remaining = [n_conns]
    all_connected = asyncio.Event()
    sem = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    def connected() -> None:
        sem.release()
        remaining[0] -= 1
        if remaining[0] == 0:
            all_connected.set()

    async def spawn() -> list[asyncio.Task[None]]:
        tasks = []
        for _ in range(n_conns):
            await sem.acquire()
            tasks.append(
                asyncio.create_task(_one_connection(cfg, options, codec, pad, go, connected, tally, start_ref))
            )
        return tasks

    tasks = await spawn()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_connected.wait(), cfg.timeout * 2 + 1)
    events.put(("ready", slot, tally.opened))

    loop = asyncio.get_running_loop()
    got_go = await loop.run_in_executor(None, go_flag.wait, cfg.timeout * 4 + 10)
    start_ref[0] = time.monotonic()
    t0 = time.perf_counter()
    if not got_go:  # the parent is gone or gave up: no load
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return tally
    go.set()

    async def report() -> None:
        while True:
            progress[slot] = tally.received
            await asyncio.sleep(_PROGRESS_EVERY_S)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), cfg.deadline_s() + cfg.timeout + 5)
    except TimeoutError:
        tally.errors["timeout"] += 1
    finally:
        reporter.cancel()
        for t in tasks:
            t.cancel()
    tally.elapsed_s = time.perf_counter() - t0
    progress[slot] = tally.received
    return tally


def _process_entry(cfg: StressConfig, n_conns: int, progress: Any, slot: int, go_flag: Any, events: Any) -> None:
    try:
        try:
            import uvloop

            tally = uvloop.run(_process_main(cfg, n_conns, progress, slot, go_flag, events))
        except ImportError:
            tally = asyncio.run(_process_main(cfg, n_conns, progress, slot, go_flag, events))
        events.put(("result", slot, tally.to_dict()))
    except BaseException as exc:  # report, then let the parent count it
        events.put(("crash", slot, repr(exc)))


# ---------------------------------------------------------------------------------------------------
# The parent


class _Progress:
    def __init__(self, stream: TextIO | None, total: int | None, duration: float | None) -> None:
        self.stream, self.total, self.duration = stream, total, duration
        self.drawn = False

    def draw(self, done: int, elapsed: float) -> None:
        if self.stream is None:
            return
        if self.total:
            frac = min(1.0, done / self.total)
            what = f"{done}/{self.total} msgs"
        elif self.duration:
            frac = min(1.0, elapsed / self.duration)
            what = f"{done} msgs"
        else:
            return
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        self.stream.write(f"\r[{bar}] {frac * 100:5.1f}% {what} {elapsed:6.1f} s")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.stream is not None and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def run_stress(cfg: StressConfig, *, progress_stream: TextIO | None = None) -> dict[str, Any]:
    """Run the load described by ``cfg`` and return the result as a JSON-ready dict."""
    nproc = cfg.process_count()
    shares = split(cfg.connections, nproc)
    ctx = multiprocessing.get_context("fork")
    progress = ctx.Array("q", nproc, lock=False)
    go_flag = ctx.Event()
    events = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_entry,
            args=(cfg, shares[i], progress, i, go_flag, events),
            name=f"fanwire-stress-{i}",
            daemon=True,
        )
        for i in range(nproc)
    ]
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for p in procs:
        p.start()

    results: dict[int, dict[str, Any]] = {}
    crashes: dict[int, str] = {}
    ready: set[int] = set()
    connect_deadline = time.monotonic() + cfg.timeout * 2 + 10
    while len(ready) + len(crashes) < nproc and time.monotonic() < connect_deadline:
        _collect(events, 0.1, ready, results, crashes)
    go_flag.set()
    t0 = time.monotonic()
    bar = _Progress(progress_stream, cfg.messages * cfg.connections if cfg.messages else None, cfg.duration)
    hard_deadline = t0 + cfg.deadline_s() + cfg.timeout + 10
    while len(results) + len(crashes) < nproc and time.monotonic() < hard_deadline:
        _collect(events, _PROGRESS_EVERY_S, ready, results, crashes)
        bar.draw(sum(progress), time.monotonic() - t0)
    bar.draw(sum(progress), time.monotonic() - t0)
    bar.finish()
    wall = time.monotonic() - t0
    for i, p in enumerate(procs):
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)
            crashes.setdefault(i, "did not finish in time")
    events.close()
    return _summarize(cfg, nproc, results, crashes, wall, started_at)


def _collect(
    events: Any, timeout: float, ready: set[int], results: dict[int, dict[str, Any]], crashes: dict[int, str]
) -> None:
    try:
        kind, slot, payload = events.get(timeout=timeout)
    except queue.Empty:
        return
    if kind == "ready":
        ready.add(slot)
    elif kind == "result":
        results[slot] = payload
    else:
        crashes[slot] = str(payload)


def _summarize(
    cfg: StressConfig,
    nproc: int,
    results: dict[int, dict[str, Any]],
    crashes: dict[int, str],
    wall: float,
    started_at: str,
) -> dict[str, Any]:
    hist = Histogram()
    errors = dict.fromkeys(_ERROR_KINDS, 0)
    opened = sent = received = 0
    elapsed = 0.0
    connect_error = ""
    for r in results.values():
        connect_error = connect_error or r.get("connect_error", "")
        opened += r["opened"]
        sent += r["sent"]
        received += r["received"]
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        hist.merge(Histogram.from_dict(r["hist"]))
        elapsed = max(elapsed, r["elapsed_s"])
    errors["crash"] += len(crashes)
    duration = elapsed or wall

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value / 1000, 3)

    return {
        "tool": "fanwire-client-stress",
        "format": 1,
        "started_at": started_at,
        "config": {**asdict(cfg), "processes": nproc, "token": "(set)" if cfg.token else None},
        "connections": {"requested": cfg.connections, "opened": opened, "failed": cfg.connections - opened},
        "messages": {"sent": sent, "received": received},
        "errors": {**errors, "total": sum(errors.values())},
        "connect_error": connect_error or None,
        "crashes": {str(k): v for k, v in crashes.items()},
        "duration_s": round(duration, 4),
        "msg_per_s": round(received / duration, 1) if duration > 0 else 0.0,
        "latency_ms": {
            "count": hist.count,
            "min": ms(hist.min if hist.count else None),
            "mean": ms(hist.mean),
            "p50": ms(hist.percentile(50)),
            "p90": ms(hist.percentile(90)),
            "p99": ms(hist.percentile(99)),
            "p99.9": ms(hist.percentile(99.9)),
            "max": ms(hist.max if hist.count else None),
        },
        "histogram_us": hist.to_dict(),
        "platform": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "system": platform.system(),
            "cpus": os.cpu_count(),
            "argv": redact_argv(sys.argv),
        },
    }


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--token`` replaced: reports get shared, tokens must not be."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        is_token = len(name) >= 4 and "--token".startswith(name)  # argparse takes --tok for --token
        if hide_next:
            out.append("(set)")
            hide_next = False
        elif is_token and eq:
            out.append(f"{name}=(set)")
        else:
            out.append(arg)
            hide_next = is_token
    return out


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report: a header line and a two-column table."""
    cfg = result["config"]
    load = f"{cfg['messages']} messages each" if cfg["messages"] is not None else f"{cfg['duration']:g} s"
    head = (
        f"fanwire stress: {cfg['url']}  codec {cfg['codec']}  {cfg['connections']} connections x {load}  "
        f"{cfg['size']} B  {cfg['inflight']} in flight  {cfg['processes']} process(es)"
    )
    lat = result["latency_ms"]
    err = result["errors"]
    err_detail = ", ".join(f"{k} {v}" for k, v in err.items() if k != "total" and v)

    def fmt_ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} ms"

    rows = [
        ("connections", f"{result['connections']['opened']}/{result['connections']['requested']} opened"),
        ("messages", f"{result['messages']['sent']} sent, {result['messages']['received']} received"),
        ("duration", f"{result['duration_s']:.2f} s"),
        ("throughput", f"{result['msg_per_s']:.1f} msg/s"),
        ("errors", f"{err['total']}" + (f" ({err_detail})" if err_detail else "")),
        ("latency p50", fmt_ms(lat["p50"])),
        ("latency p90", fmt_ms(lat["p90"])),
        ("latency p99", fmt_ms(lat["p99"])),
        ("latency p99.9", fmt_ms(lat["p99.9"])),
        ("latency max", fmt_ms(lat["max"])),
    ]
    if result.get("connect_error"):
        rows.insert(5, ("connect error", f"{result['connect_error']} (is a server running at {cfg['url']}?)"))
    w1 = max(len(r[0]) for r in [*rows, ("metric", "")])
    w2 = max(len(r[1]) for r in [*rows, ("", "value")])
    lines = [head, "", f"  {'metric':<{w1}}  value", f"  {'-' * w1}  {'-' * w2}"]
    lines += [f"  {k:<{w1}}  {v:<{w2}}".rstrip() for k, v in rows]
    return "\n".join(lines)
