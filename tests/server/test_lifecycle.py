"""Lifecycle and faults: heartbeats, slow consumers, SIGKILL, SIGTERM, boot failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest
import websockets

from server import metrics as prom

from ..helpers import (
    HANDSHAKE,
    FrameReader,
    ServerProcess,
    T,
    connect,
    connect_spread,
    free_port,
    http_get,
    mask_frame,
    proc_rss_kb,
    raw_connect,
    recv,
    recv_until,
    request,
    send,
)


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def scrape(port: int) -> dict[str, float]:
    return prom.parse(http_get(port, "/metrics")[2].decode())


def test_heartbeat_drops_silent_clients_and_keeps_live_ones() -> None:
    args = ["--ping-interval", "0.3", "--ping-timeout", "0.4"]
    with ServerProcess(workers=1, extra_args=args) as srv:
        sock, rest = raw_connect(srv.port)  # never answers pings
        reader = FrameReader(sock, rest)

        async def live() -> None:
            ws = await connect(srv.url)  # websockets answers pings by itself
            await asyncio.sleep(T(2.0))
            await send(ws, {"type": "ping"})
            assert (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"
            await ws.close()

        t0 = time.monotonic()
        code, frames = reader.read_until_close(timeout=5)
        elapsed = time.monotonic() - t0
        assert code == 1011
        assert any(op == 0x9 for op, _ in frames), "no ping before the close"
        assert elapsed < T(3.0)
        sock.close()
        run(live())
        m = scrape(srv.port)
        assert m["fanwire_heartbeat_timeouts_total"] >= 1
        assert m.get('fanwire_connections_closed_total{code="1011"}', 0) >= 1


def test_slow_consumer_is_closed_and_memory_stays_bounded() -> None:
    """1,000 clients are flooded with broadcasts; one of them never reads and is also sent a private flood
    far beyond what the kernel buffers absorb. It is closed with 1013 and counted, the worker's memory
    stays bounded, and every reading client receives every broadcast."""
    n_readers = 1000
    n_msgs = 100
    size = 2048
    with ServerProcess(workers=1, extra_args=["--max-queue", "65536"]) as srv:
        worker_pid = srv.worker_pids()[0]
        slow, rest = raw_connect(srv.port, rcvbuf=4096)
        slow.sendall(mask_frame(0x1, b'{"type":"join","room":"slowroom"}'))

        async def main() -> None:
            sender = await connect(srv.url)
            got = [0] * n_readers

            async def reader(i: int) -> None:
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(HANDSHAKE.format(path="/", extra="").encode())
                tail = b""
                while got[i] < n_msgs:
                    chunk = await r.read(262144)
                    if not chunk:
                        break
                    data = tail + chunk
                    got[i] += data.count(b"FLOOD-")
                    tail = data[-5:]
                w.close()

            tasks = [asyncio.create_task(reader(i)) for i in range(n_readers)]
            deadline = time.monotonic() + T(30)
            while True:
                stats = await request(sender, {"type": "custom", "action": "get_stats"})
                if stats["clients"] >= n_readers + 2:
                    break
                assert time.monotonic() < deadline, f"only {stats['clients']} clients connected"
                await asyncio.sleep(0.1)
            rss_before = proc_rss_kb(worker_pid)
            body = "FLOOD-" + "x" * (size - 6)
            private = "p" * 65536
            for i in range(n_msgs):
                await send(sender, {"type": "broadcast", "text": body})
                await send(sender, {"type": "chat", "room": "slowroom", "text": private})  # 6.5 MB in all
                if i % 10 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(asyncio.gather(*tasks), T(60))
            assert min(got) >= n_msgs, f"a reading client missed messages: min {min(got)}"
            rss_after = proc_rss_kb(worker_pid)
            assert rss_after - rss_before < 100_000, (rss_before, rss_after)
            await sender.close()

        run(main(), timeout=120)
        # the slow client was closed by the server: its close frame (1013) is somewhere in the backlog,
        # or the connection was aborted after the close timeout
        code, _ = FrameReader(slow, rest).read_until_close(timeout=10)
        assert code in (1013, None)
        m = scrape(srv.port)
        assert m["fanwire_slow_consumers_total"] == 1
        assert m['fanwire_dropped_messages_total{reason="slow_consumer"}'] >= 1
        slow.close()




def test_sigkilled_worker_is_replaced_and_others_keep_going() -> None:
    with ServerProcess(workers=2) as srv:
        async def main() -> None:
            by_worker = await connect_spread(srv.url, 2)
            a, b = by_worker[0][0], by_worker[1][0]
            old = srv.worker_pids()[1]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new = await asyncio.to_thread(srv.wait_worker_replaced, 1, old, 5.0)
            assert time.monotonic() - t0 < T(1.0), "worker not replaced within 1 s"
            assert new != old
            with pytest.raises(websockets.ConnectionClosed):
                await recv(b, timeout=5)
            # a (worker 0) still connected
            await send(a, {"type": "ping"})
            assert (await recv_until(a, lambda m: m["type"] == "pong"))["type"] == "pong"
            # a client of the new worker 1 and a client of worker 0 reach each other
            c = None
            for _ in range(200):
                ws = await connect(srv.url)
                if ws.welcome["worker"] == 1:  # type: ignore[attr-defined]
                    c = ws
                    break
                await ws.close()
            assert c is not None, "no connection reached the new worker"
            await asyncio.sleep(0.05)
            await send(a, {"type": "chat", "text": "to the new one"})
            assert (await recv_until(c, lambda m: m["type"] == "chat"))["text"] == "to the new one"
            await send(c, {"type": "broadcast", "text": "from the new one"})
            assert (await recv_until(a, lambda m: m["type"] == "broadcast"))["text"] == "from the new one"
            stats = await request(a, {"type": "custom", "action": "get_stats"})
            assert {w["pid"] for w in stats["workers"]} == {srv.worker_pids()[0], new}
            assert stats["partial"] is False
            await a.close()
            await c.close()

        run(main())
        assert "SIGKILL" in srv.output()


def test_a_restarted_worker_does_not_hand_out_the_ids_of_the_clients_it_lost() -> None:
    # Presence lists and the HTTP API's disconnect name clients by id: a replacement worker must not give a
    # new client the id of one its predecessor had (which may still be listed, or be named by a back end).
    with ServerProcess(workers=1) as srv:
        async def main() -> None:
            before = [await connect(srv.url) for _ in range(3)]
            ids_before = {ws.welcome["client_id"] for ws in before}  # type: ignore[attr-defined]
            old = srv.worker_pids()[0]
            os.kill(old, signal.SIGKILL)
            await asyncio.to_thread(srv.wait_worker_replaced, 0, old, 5.0)
            after = []
            deadline = time.monotonic() + T(10)
            while len(after) < 3 and time.monotonic() < deadline:
                try:
                    after.append(await connect(srv.url))
                except OSError:
                    await asyncio.sleep(0.05)  # the new worker is still binding its listener
            assert len(after) == 3
            ids_after = {ws.welcome["client_id"] for ws in after}  # type: ignore[attr-defined]
            assert len(ids_after) == 3 and not ids_after & ids_before, (ids_before, ids_after)
            assert all(i.startswith("0-") for i in ids_before | ids_after)
            for ws in after:
                await ws.close()

        run(main())


def test_sigterm_closes_clients_with_1001_and_exits_0() -> None:
    srv = ServerProcess(workers=2, extra_args=["--shutdown-timeout", "3"])
    srv.start()
    try:
        async def main() -> list[int | None]:
            by_worker = await connect_spread(srv.url, 2, per_worker=2)
            conns = [c for cs in by_worker.values() for c in cs]
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            codes: list[int | None] = []
            for ws in conns:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    while True:
                        await recv(ws, timeout=5)
                codes.append(info.value.rcvd.code if info.value.rcvd else None)
            assert time.monotonic() - t0 < T(3.0)
            return codes

        codes = run(main())
        assert codes == [1001] * len(codes)
        assert srv.proc is not None and srv.proc.wait(T(10)) == 0
    finally:
        srv.kill()


def test_sigterm_deadline_with_unresponsive_client() -> None:
    """A client that never completes the closing handshake does not hold the shutdown past its deadline."""
    srv = ServerProcess(workers=1, extra_args=["--shutdown-timeout", "1", "--close-timeout", "5"])
    srv.start()
    try:
        sock, rest = raw_connect(srv.port)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code, _ = FrameReader(sock, rest).read_until_close(timeout=5)
        assert code == 1001
        assert srv.proc is not None and srv.proc.wait(T(10)) == 0
        assert time.monotonic() - t0 < T(4.0)
        sock.close()
    finally:
        srv.kill()


def test_port_in_use_halts_with_clear_message() -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        srv = ServerProcess(workers=2, port=port)
        srv.start(wait=False)
        assert srv.proc is not None
        code = srv.proc.wait(T(15))
        time.sleep(0.2)
        out = srv.output()
        assert code != 0
        assert "cannot listen" in out and "failed to boot" in out
        assert out.count("failed to boot") == 1, out
        assert "restarting" not in out
    finally:
        blocker.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_second_server_on_the_same_port_refuses_to_start(host: str) -> None:
    """SO_REUSEPORT would let it bind and silently split the clients between two servers."""
    with ServerProcess(workers=2) as first:
        second = ServerProcess(workers=1, port=first.port, host=host)
        second.start(wait=False)
        assert second.proc is not None
        try:
            code = second.proc.wait(T(15))
        finally:
            second.kill()
        out = second.output()
        assert code != 0
        assert "already in use" in out and str(first.port) in out, out
        assert "fanwire: ready" not in out

        async def main() -> None:  # the first server still holds every client
            ws = await connect(first.url)
            await request(ws, {"type": "ping"})
            await ws.close()

        run(main())


def test_the_supervisor_names_its_own_liveness_kill() -> None:
    """A worker whose loop is stuck is killed by the supervisor, which says so (not 'out of memory?')."""
    srv = ServerProcess(workers=1, env={"FANWIRE_WORKER_LIVENESS_TIMEOUT": "1"})
    srv.start()
    try:
        pid = srv.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)  # a stuck loop: no liveness beats
        srv.wait_worker_replaced(0, pid, timeout=10)
        time.sleep(T(0.3))
        out = srv.output()
        assert "unresponsive" in out
        killed = [line for line in out.splitlines() if f"pid {pid}" in line and "killed by signal" in line]
        assert killed and all("out of memory" not in line for line in killed), out
        assert any("killed by the supervisor" in line for line in killed), out
    finally:
        srv.kill()
