"""A hostile client must not harm anyone: each test attacks a real 2-worker server as an outside review did.

Items of the review (docs/hardening.md, "Threat model"): frames pipelined behind a refused handshake or an
HTTP response are never executed (1); hub state holds open connections only (2); a half-closed reader
cannot grow its output or break the heartbeat (3); fragments are counted and cost memory near their size (4);
one client cannot stall its worker (5); the bus never drops other clients' messages for one client's flood
(6); stats stay small (7) and disclose only what the client may see (8).

Each test keeps well-behaved bystanders on both workers and checks what they got.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from server.security import auth
from server.streams.owner import owner_slot

from ..conftest import SECRET
from ..helpers import (
    HANDSHAKE,
    FrameReader,
    ServerProcess,
    T,
    connect,
    connect_spread,
    mask_frame,
    raw_connect,
    raw_http,
    recv,
    recv_until,
    request,
    scrape_metrics,
    send,
    status_of,
)


def run(coro: Any, timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def token(user: str, rooms: list[str], broadcast: bool = False, ttl: float = 600) -> str:
    return auth.issue(SECRET, user, rooms, ttl, broadcast)


def frames(*msgs: dict[str, Any]) -> bytes:
    return b"".join(mask_frame(0x1, orjson.dumps(m)) for m in msgs)


FORGED = (
    {"type": "broadcast", "text": "forged-broadcast", "user": "admin"},
    {"type": "chat", "room": "lobby", "text": "forged-chat", "user": "admin"},
    {"type": "join", "room": "ghost-room"},
    {"type": "chat", "room": "ghost-room", "text": "x"},
)


async def nothing_forged(listeners: list[ClientConnection], quiet: float = 0.6) -> None:
    """No listener received anything but what a well-behaved peer sends afterwards."""
    for ws in listeners:
        try:
            msg = await recv(ws, timeout=quiet)
        except TimeoutError:
            continue
        raise AssertionError(f"a listener received {msg!r}")


# --- 1 and 2: nothing behind a refused handshake or an HTTP response is executed ------------------------

@pytest.fixture(scope="module")
def gated() -> Iterator[ServerProcess]:
    args = ["--auth-secret", SECRET, "--allowed-origins", "https://good.example", "--max-conns", "50"]
    with ServerProcess(workers=2, extra_args=args) as s:
        yield s


def _bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


REFUSED_HEADS = {
    "401 no token": HANDSHAKE.format(path="/", extra=""),
    "401 bad token": HANDSHAKE.format(path="/", extra="Authorization: Bearer abc.def.ghi\r\n"),
    "403 origin": HANDSHAKE.format(path="/", extra="Origin: https://evil.example\r\n"),
    "200 chat page": "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "404 unknown path": "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    "401 connect-check": "GET /connect-check HTTP/1.1\r\nHost: x\r\n\r\n",
    "204 connect-check": (f"GET /connect-check?token={token('checker', ['*'], broadcast=True)} HTTP/1.1\r\n"
                          "Host: x\r\nOrigin: https://good.example\r\n\r\n"),
    "200 healthz": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "200 metrics": "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "400 bad version": ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 7\r\n\r\n"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_HEADS))
def test_frames_behind_a_refused_handshake_or_http_response_are_discarded(gated: ServerProcess,
                                                                          case: str) -> None:
    tok = token("listener", ["*"], broadcast=True)

    async def main() -> None:
        by_worker = await connect_spread(gated.url, 2, additional_headers=_bearer(tok))
        listeners = [ws for group in by_worker.values() for ws in group]
        before = scrape_metrics(gated.port)
        for _ in range(20):  # SO_REUSEPORT spreads these over both workers
            raw_http(gated.port, REFUSED_HEADS[case].encode() + frames(*FORGED))
        await nothing_forged(listeners)
        m = scrape_metrics(gated.port)
        assert m["fanwire_rooms"] == 2, m  # lobby on each worker: no ghost room
        for scope in ("all", "room"):
            key = f'fanwire_publishes_total{{scope="{scope}"}}'
            assert m.get(key, 0) == before.get(key, 0), key
        # the listeners do hear a legitimate broadcast
        speaker = await connect(gated.url, additional_headers=_bearer(tok))
        await send(speaker, {"type": "broadcast", "text": "real"})
        for ws in listeners:
            got = await recv_until(ws, lambda msg: msg.get("type") == "broadcast")
            assert got["text"] == "real"
        for ws in [*listeners, speaker]:
            await ws.close()

    run(main())


def test_no_ghost_members_and_memory_stays_flat(gated: ServerProcess) -> None:
    """Thousands of joins pipelined behind HTTP requests leave no trace in the hub."""
    body = b"".join(frames({"type": "join", "room": f"ghost-{i}"}) for i in range(40))
    deadline = time.monotonic() + T(5)  # the previous test's clients may still be closing
    while scrape_metrics(gated.port)["fanwire_connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(300):
        raw_http(gated.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + body)
    m = scrape_metrics(gated.port)
    assert m["fanwire_connections"] == 0, m
    assert m["fanwire_rooms"] == 0, m


# --- 3: a half-closed reader --------------------------------------------------------------------------

def test_half_closed_reader_is_bounded_and_heartbeats_survive() -> None:
    args = ["--ping-interval", "0.4", "--ping-timeout", "0.6", "--close-timeout", "0.5",
            "--max-queue", str(32 << 20)]
    with ServerProcess(workers=1, extra_args=args) as srv:
        # the half-closed reader: a tiny receive window that it lets fill, then FIN, then it never reads again
        hc, _ = raw_connect(srv.port, rcvbuf=4096)

        async def main() -> None:
            flooder = await connect(srv.url)
            text = "x" * 8000

            async def flood(n: int) -> None:
                for i in range(n):
                    await send(flooder, {"type": "chat", "text": f"{i:06d}{text}"})
                    if i % 50 == 0:
                        await asyncio.sleep(0)
                await recv_until(flooder, lambda m: m.get("type") == "chat" and m["text"].startswith(f"{n - 1:06d}"),
                                 timeout=30)

            await flood(800)  # ~6.4 MB toward the half-closed reader: its window and our buffers fill
            hc.shutdown(socket.SHUT_WR)
            await flood(300)
            # what cannot drain is aborted within the close timeout (plus a heartbeat tick)
            deadline = time.monotonic() + T(4)
            while time.monotonic() < deadline and scrape_metrics(srv.port)["fanwire_connections"] > 1:
                await asyncio.sleep(0.1)
            assert scrape_metrics(srv.port)["fanwire_connections"] == 1, "the half-closed reader is still held"
            # the heartbeat still runs: a client that stops answering pings is dropped
            silent, _ = raw_connect(srv.port)
            deadline = time.monotonic() + T(6)
            reader = FrameReader(silent)
            silent.settimeout(0.2)
            closed = False
            while time.monotonic() < deadline and not closed:
                try:
                    op, payload = reader.read()
                except TimeoutError:
                    continue
                except (EOFError, ConnectionResetError):
                    closed = True
                    break
                if op == 0x8:
                    assert struct.unpack("!H", payload[:2])[0] == 1011
                    closed = True
            assert closed, "the heartbeat no longer runs"
            silent.close()
            await flooder.close()

        run(main())
        m = scrape_metrics(srv.port)
        assert m["fanwire_heartbeat_timeouts_total"] >= 1
        assert m["fanwire_connections"] == 0
        hc.close()


# --- 4: fragments -------------------------------------------------------------------------------------

def test_empty_continuation_frames_are_capped() -> None:
    with ServerProcess(workers=1) as srv:
        s, _ = raw_connect(srv.port)
        s.sendall(mask_frame(0x1, b"{", fin=False))
        empty = mask_frame(0x0, b"", fin=False)
        try:
            for _ in range(40):
                s.sendall(empty * 5000)  # 200,000 empty fragments, ~1.2 MB of headers
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, _ = FrameReader(s).read_until_close(timeout=10)
        assert code in (1008, 1009), code
        s.close()
        m = scrape_metrics(srv.port)
        assert m["fanwire_connections"] == 0


def test_frames_count_against_the_byte_rate_limit() -> None:
    args = ["--rate-limit-bytes", "20000", "--rate-burst", "1"]
    with ServerProcess(workers=1, extra_args=args) as srv:
        s, _ = raw_connect(srv.port)
        ping = mask_frame(0x9, b"")
        try:
            for _ in range(20):
                s.sendall(ping * 2000)  # 40,000 empty pings: no payload, ~240 KB on the wire
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, _ = FrameReader(s).read_until_close(timeout=10)
        assert code == 1008, code
        s.close()


# --- 5: one client cannot stall its worker ------------------------------------------------------------

class Bystander:
    """A well-behaved client in a thread pinging all along; records its worst round trip."""

    def __init__(self, url: str, worker: int | None = None) -> None:
        self.url = url
        self.worker = worker
        self.worst = 0.0
        self.pongs = 0
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        try:
            for _ in range(50):
                ws = await connect(self.url)
                if self.worker is None or ws.welcome["worker"] == self.worker:  # type: ignore[attr-defined]
                    break
                await ws.close()
            self.ready.set()
            while not self._stop.is_set():
                t0 = time.monotonic()
                await send(ws, {"type": "ping"})
                await recv_until(ws, lambda m: m["type"] == "pong", timeout=30)
                self.worst = max(self.worst, time.monotonic() - t0)
                self.pongs += 1
                await asyncio.sleep(0.01)
            await ws.close()
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def __enter__(self) -> Bystander:
        self._thread.start()
        self.ready.wait(T(10))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(T(30))
        assert self.error is None, repr(self.error)


BURSTS = {
    "tiny text frames": mask_frame(0x1, b"{}"),
    "websocket pings": mask_frame(0x9, b""),
    "ping messages": mask_frame(0x1, b'{"type":"ping"}'),
}


@pytest.mark.parametrize("kind", sorted(BURSTS))
def test_one_burst_does_not_stall_the_worker(kind: str) -> None:
    with ServerProcess(workers=1) as srv:
        with Bystander(srv.url) as b:
            s, _ = raw_connect(srv.port)
            burst = BURSTS[kind] * (8_000_000 // len(BURSTS[kind]))
            sender = threading.Thread(target=_send_quietly, args=(s, burst), daemon=True)
            sender.start()
            sender.join(T(60))
            time.sleep(T(0.5))
            s.close()
        assert b.pongs > 0
        assert b.worst < T(0.25), f"a bystander waited {b.worst:.3f} s for its pong during the burst"


def _send_quietly(s: socket.socket, data: bytes) -> None:
    s.settimeout(T(30))
    try:
        s.sendall(data)
    except OSError:
        pass


# --- 6: the bus never drops other clients' messages -------------------------------------------------------

def test_a_stats_flood_costs_no_other_client_a_message() -> None:
    with ServerProcess(workers=2) as srv:
        async def main() -> None:
            by_worker = await connect_spread(srv.url, 2)
            sender, receiver = by_worker[0][0], by_worker[1][0]
            await request(receiver, {"type": "join", "room": "numbers"})
            flooders = []
            for _ in range(10):
                ws = await connect(srv.url)
                flooders.append(ws)
            query = orjson.dumps({"type": "custom", "action": "get_stats"}).decode()

            flood_until = time.monotonic() + T(6)

            async def flood(ws: ClientConnection) -> None:
                i = 0
                while time.monotonic() < flood_until:  # get_stats as fast as the client can send them
                    await ws.send(query)
                    i += 1
                    if i % 50 == 0:
                        await asyncio.sleep(0)

            async def drain(ws: ClientConnection) -> None:
                try:
                    while True:
                        await ws.recv()
                except Exception:
                    pass

            tasks = [asyncio.create_task(flood(ws)) for ws in flooders]
            tasks += [asyncio.create_task(drain(ws)) for ws in flooders]
            n = 400
            for i in range(n):  # spread over the flood
                await send(sender, {"type": "chat", "room": "numbers", "text": str(i)})
                await asyncio.sleep(0.012)
            got = []
            deadline = time.monotonic() + T(30)
            while len(got) < n and time.monotonic() < deadline:
                msg = await recv(receiver, timeout=30)
                if msg.get("type") == "chat":
                    got.append(int(msg["text"]))
            for t in tasks:
                t.cancel()
            assert got == list(range(n)), f"{n - len(got)} of {n} chats lost"
            for ws in [*flooders, sender, receiver]:
                await ws.close()

        run(main())
        m = scrape_metrics(srv.port)
        dropped = {k: v for k, v in m.items() if k.startswith("fanwire_bus_dropped_total")}
        assert not any(dropped.values()), dropped


def _blast(port: int, n: int, frame: bytes) -> None:
    s, _ = raw_connect(port)
    s.settimeout(T(60))
    try:
        for _ in range(n):
            s.sendall(frame)
        time.sleep(T(1))
    except OSError:
        pass
    finally:
        s.close()


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("rooms", [1, 2])
def test_big_chats_to_an_empty_room_cost_no_other_client_a_message(workers: int, rooms: int) -> None:
    """One empty room: its sequencing worker sends every chat back to every worker (with 3 workers, a third
    one's queue to the slow worker fills with what the others submit). Two empty rooms sequenced by two
    different workers: each worker also has big submissions in flight to the other."""
    with ServerProcess(workers=workers) as srv:
        async def main() -> None:
            by_worker = await connect_spread(srv.url, workers)
            sender, receiver = by_worker[0][0], by_worker[1][0]
            await request(receiver, {"type": "join", "room": "numbers"})
            names = ["nobody-here"] if rooms == 1 else [
                next(f"nobody-here-{i}" for i in range(1000) if owner_slot(f"nobody-here-{i}", workers) == slot)
                for slot in (0, 1)]
            bigs = [mask_frame(0x1, orjson.dumps({"type": "chat", "room": room, "text": "y" * ((1 << 20) - 100)}))
                    for room in names]
            blasters = [threading.Thread(target=_blast, args=(srv.port, 30, bigs[i % len(bigs)]), daemon=True)
                        for i in range(6)]
            for t in blasters:
                t.start()
            n = 300
            for i in range(n):
                await send(sender, {"type": "chat", "room": "numbers", "text": str(i)})
                await asyncio.sleep(0.005)
            got = []
            deadline = time.monotonic() + T(60)
            while len(got) < n and time.monotonic() < deadline:
                msg = await recv(receiver, timeout=60)
                if msg.get("type") == "chat":
                    got.append(int(msg["text"]))
            for t in blasters:
                t.join(T(60))
            assert got == list(range(n)), f"{n - len(got)} of {n} chats lost"

        run(main(), timeout=150)
        m = scrape_metrics(srv.port)
        dropped = {k: v for k, v in m.items() if k.startswith("fanwire_bus_dropped_total")}
        assert not any(dropped.values()), dropped


# --- 7 and 8: stats stay small and say only what the client may see -----------------------------------------

def test_many_long_room_names_keep_stats_and_metrics_working() -> None:
    with ServerProcess(workers=2, extra_args=["--max-rooms", "64"]) as srv:
        async def main() -> None:
            conns = []
            for c in range(40):
                ws = await connect(srv.url)
                conns.append(ws)
                for r in range(63):  # lobby + 63 = the 64 rooms a connection may be in
                    await send(ws, {"type": "join", "room": f"{c:03d}-{r:03d}-" + "r" * 120})
            for c, ws in enumerate(conns):
                last = f"{c:03d}-062"
                await recv_until(ws, lambda m, last=last: m.get("type") == "joined" and m["room"].startswith(last),
                                 timeout=30)
            before = scrape_metrics(srv.port)
            stats = await request(conns[0], {"type": "custom", "action": "get_stats"}, timeout=10)
            assert stats["type"] == "stats"
            assert len(stats["workers"]) == 2
            after = scrape_metrics(srv.port)
            # two scrapes and one get_stats: three stats rounds over the bus, whatever the rooms are called
            per_round = (after["fanwire_bus_bytes_out_total"] - before["fanwire_bus_bytes_out_total"]) / 3
            assert per_round < 32_000, f"{per_round:.0f} bus bytes per stats round"
            t0 = time.monotonic()
            m = scrape_metrics(srv.port)
            took = time.monotonic() - t0
            assert m["fanwire_workers"] == 2
            lobbies = len({ws.welcome["worker"] for ws in conns})  # type: ignore[attr-defined]
            assert m["fanwire_rooms"] == 40 * 63 + lobbies
            assert took < T(0.4), f"/metrics took {took:.2f} s"
            for ws in conns:
                await ws.close()

        run(main(), timeout=120)


def test_get_stats_shows_only_the_rooms_a_client_may_see() -> None:
    args = ["--auth-secret", SECRET]
    with ServerProcess(workers=2, extra_args=args) as srv:
        async def main() -> None:
            insider = await connect(srv.url, additional_headers=_bearer(token("bob", ["*"])))
            await request(insider, {"type": "join", "room": "secret-merger-talks"})
            limited = await connect(srv.url, additional_headers=_bearer(token("eve", ["a"])))
            await request(limited, {"type": "join", "room": "a"})
            stats = await request(limited, {"type": "custom", "action": "get_stats"})
            assert set(stats["rooms"]) == {"a"}, stats["rooms"]
            assert "secret-merger-talks" not in orjson.dumps(stats).decode()
            mine = await request(insider, {"type": "custom", "action": "get_stats"})
            assert set(mine["rooms"]) == {"lobby", "secret-merger-talks"}, mine["rooms"]
            assert "a" not in mine["rooms"]
            assert mine["rooms"]["secret-merger-talks"] == 1
            admin = await connect(srv.url, additional_headers=_bearer(
                auth.issue(SECRET, "root", ["*"], 600, True, admin=True)))
            everything = await request(admin, {"type": "custom", "action": "get_stats"})
            assert {"a", "lobby", "secret-merger-talks"} <= set(everything["rooms"])
            for ws in (insider, limited, admin):
                await ws.close()

        run(main())


def test_get_stats_without_auth_shows_the_clients_own_rooms() -> None:
    with ServerProcess(workers=2) as srv:
        async def main() -> None:
            a = await connect(srv.url)
            await request(a, {"type": "join", "room": "private-123"})
            b = await connect(srv.url)
            stats = await request(b, {"type": "custom", "action": "get_stats"})
            assert "private-123" not in stats["rooms"]
            assert stats["rooms"] == {"lobby": 2}
            wa, wb = a.welcome["worker"], b.welcome["worker"]  # type: ignore[attr-defined]
            assert stats["room_count"] == len({(wa, "lobby"), (wa, "private-123"), (wb, "lobby")})
            await a.close()
            await b.close()

        run(main())


# --- 9 and 11: HTTP edge cases -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    with ServerProcess(workers=1) as s:
        yield s


def test_pipelined_http_requests_are_quiet_and_counted(plain: ServerProcess) -> None:
    before = len(plain.err_lines)
    for _ in range(30):
        raw_http(plain.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw_http(plain.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01junk\r\n\r\n")
    time.sleep(T(0.3))
    tracebacks = [line for line in plain.err_lines[before:] if "Traceback" in line or "Error" in line]
    assert not tracebacks, "\n".join(plain.err_lines[before:])
    m = scrape_metrics(plain.port)
    assert m['fanwire_http_discarded_total{reason="pipelined"}'] >= 30
    assert m['fanwire_http_discarded_total{reason="junk"}'] >= 30


@pytest.mark.parametrize(("raw", "status"), [
    (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.0\r\n\r\n", 505),
])
def test_methods_and_versions_are_refused(plain: ServerProcess, raw: bytes, status: int) -> None:
    response = raw_http(plain.port, raw)
    assert status_of(response) == status, response[:200]
    if status == 405:
        assert b"\r\nallow: get\r\n" in response.lower()


def test_errors_keep_the_request_id(plain: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(plain.url)
        deep: Any = []
        for _ in range(300):
            deep = [deep]
        err = await request(ws, {"type": "broadcast", "data": deep})
        assert err["type"] == "error" and err["code"] == "bad_message", err
        mp = await connect(plain.url, codec="msgpack")
        import msgpack

        for value in (b"\x00bytes", msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 0)):
            for msg in ({"type": "ping", "ts": value}, {"type": "broadcast", "data": {"v": value}}):
                await mp.send(msgpack.packb({**msg, "id": 77}, use_bin_type=True))
                reply = await recv(mp)
                assert reply["type"] == "error" and reply["code"] == "bad_message", (msg, reply)
                assert reply["id"] == 77
        big = "a" * 100_000
        err = await request(ws, {"type": "custom", "action": big})
        assert err["code"] == "unknown_action"
        assert len(err["detail"]) < 300
        await ws.close()
        await mp.close()

    run(main())
