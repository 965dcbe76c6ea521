"""Origin checks, rate limits and connection caps against real server processes."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from ..helpers import ServerProcess, T, connect, raw_connect, recv, scrape_metrics, send

RATE = 40.0  # messages/s
BURST = 0.25  # s -> a bucket of 10 messages
BYTES = 20_000.0  # bytes/s -> a bucket of 5,000 bytes


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def test_origin_allow_list() -> None:
    args = ["--allowed-origins", "https://chat.example.com,http://localhost:3000"]
    with ServerProcess(workers=1, extra_args=args) as srv:
        async def main() -> None:
            for origin in ("https://chat.example.com", "http://localhost:3000"):
                ws = await connect(srv.url, origin=origin)
                await ws.close()
            ws = await connect(srv.url)  # no Origin: not a browser
            await ws.close()
            for origin in ("https://evil.example", "null", "https://chat.example.com.evil.example"):
                with pytest.raises(websockets.InvalidStatus) as info:
                    await connect(srv.url, origin=origin)
                assert info.value.response.status_code == 403
                assert b"not allowed" in info.value.response.body

        run(main())
        m = scrape_metrics(srv.port)
        assert m['fanwire_handshakes_refused_total{reason="origin"}'] == 3
        assert m['fanwire_handshakes_failed_total{status="403"}'] == 3
        assert m["fanwire_connections_opened_total"] == 3


@pytest.fixture(scope="module")
def limited() -> Any:
    args = ["--rate-limit", str(RATE), "--rate-burst", str(BURST), "--rate-limit-bytes", str(BYTES)]
    with ServerProcess(workers=1, extra_args=args) as s:
        yield s


async def tally(ws: ClientConnection, quiet: float = 0.5) -> tuple[dict[str, int], int | None]:
    """Count replies (by type, errors by code) until ``quiet`` seconds of silence or a close."""
    counts: dict[str, int] = {}
    code = None
    try:
        while True:
            msg = await recv(ws, timeout=quiet)
            key = msg.get("code", msg["type"])
            counts[key] = counts.get(key, 0) + 1
    except TimeoutError:
        pass
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    return counts, code


def test_rate_limit_does_not_trip_below_the_rate(limited: ServerProcess) -> None:
    """0.8x the rate for 1.5 s, paced (never catching up in bursts): not one message refused."""
    async def main() -> None:
        ws = await connect(limited.url)
        interval = 1 / (0.8 * RATE)
        n = int(1.5 / interval)
        t0 = time.monotonic()
        for i in range(n):
            await send(ws, {"type": "ping", "id": i})
            delay = t0 + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                t0 = time.monotonic() - (i + 1) * interval  # late: do not catch up
        counts, code = await tally(ws)
        assert code is None
        assert counts == {"pong": n}, counts
        await ws.close()

    run(main())


def test_rate_limit_trips_at_the_rate_and_closes_1008_if_it_keeps_going(limited: ServerProcess) -> None:
    before = scrape_metrics(limited.port)

    async def main() -> None:
        ws = await connect(limited.url)
        # 1.25x the rate, paced: the bucket (10) drains at 10 msg/s, so refusals start after about 1 s
        interval = 1 / (1.25 * RATE)
        t0 = time.monotonic()
        first_error = None
        sent = 0
        while time.monotonic() - t0 < T(3) and first_error is None:
            await send(ws, {"type": "ping", "id": sent})
            sent += 1
            await asyncio.sleep(interval)
            while True:
                try:
                    msg = await recv(ws, timeout=0.001)
                except TimeoutError:
                    break
                if msg["type"] == "error":
                    assert msg["code"] == "rate_limited" and "messages/s" in msg["detail"]
                    assert isinstance(msg["id"], int)  # says which message was dropped
                    first_error = time.monotonic() - t0
                    break
        assert first_error is not None, "1.25x the rate never tripped the limit"
        assert 0.5 < first_error < T(2.0), first_error
        # keeps going, flat out: closed with 1008
        for i in range(200):
            try:
                await send(ws, {"type": "ping", "id": 10_000 + i})
            except websockets.ConnectionClosed:
                break
        counts, code = await tally(ws, quiet=2)
        assert code == 1008, (counts, code)
        assert counts.get("rate_limited", 0) >= 16

    run(main())
    m = scrape_metrics(limited.port)
    assert m['fanwire_rate_limited_total{limit="messages"}'] > before.get('fanwire_rate_limited_total{limit="messages"}', 0)
    assert m['fanwire_policy_closes_total{reason="rate_limited"}'] == before.get(
        'fanwire_policy_closes_total{reason="rate_limited"}', 0) + 1
    assert m['fanwire_connections_closed_total{code="1008"}'] >= 1
    assert m['fanwire_errors_total{code="rate_limited"}'] >= 16


def test_burst_passes_exactly_the_bucket_and_bytes_are_limited_too(limited: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(limited.url)
        t0 = time.monotonic()
        for i in range(20):  # small messages: the message bucket (10) decides
            await send(ws, {"type": "ping", "id": i})
        elapsed = time.monotonic() - t0
        counts, code = await tally(ws)
        assert code is None
        allowed = RATE * BURST + RATE * elapsed
        assert RATE * BURST <= counts["pong"] <= allowed + 1, (counts, elapsed)
        assert counts["pong"] + counts["rate_limited"] == 20
        await ws.close()
        # 1,000-byte messages: the byte bucket (5,000) decides
        ws = await connect(limited.url)
        pad = "x" * 960
        t0 = time.monotonic()
        for i in range(8):
            await send(ws, {"type": "ping", "id": i, "ts": pad})
        elapsed = time.monotonic() - t0
        errors = []
        counts = {}
        for _ in range(8):
            msg = await recv(ws)
            counts[msg.get("code", msg["type"])] = counts.get(msg.get("code", msg["type"]), 0) + 1
            if msg["type"] == "error":
                errors.append(msg)
        assert 4 <= counts["pong"] <= 5 + BYTES * elapsed / 1000, (counts, elapsed)
        assert errors and all("bytes/s" in e["detail"] for e in errors)
        await ws.close()

    run(main())
    m = scrape_metrics(limited.port)
    assert m['fanwire_rate_limited_total{limit="bytes"}'] >= 3


def test_max_conns_per_worker_refuses_with_503() -> None:
    with ServerProcess(workers=1, extra_args=["--max-conns", "3"]) as srv:
        async def main() -> None:
            conns = [await connect(srv.url) for _ in range(3)]
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(srv.url)
            assert info.value.response.status_code == 503
            assert info.value.response.headers["Retry-After"] == "1"
            await conns.pop().close()
            await asyncio.sleep(0.1)
            conns.append(await connect(srv.url))  # room again
            for c in conns:
                await c.close()

        run(main())
        m = scrape_metrics(srv.port)
        assert m['fanwire_handshakes_refused_total{reason="max_conns"}'] == 1
        assert m['fanwire_handshakes_failed_total{status="503"}'] == 1


def test_max_conns_per_ip_holds_across_workers() -> None:
    cap = 4
    with ServerProcess(workers=2, extra_args=["--max-conns-per-ip", str(cap)]) as srv:
        async def main() -> None:
            # two connections on each worker: each worker alone holds fewer than the cap, so every
            # refusal below proves that the workers count together
            conns: list[ClientConnection] = []
            per_worker = {0: 0, 1: 0}
            for _ in range(100):
                if len(conns) == cap:
                    break
                try:
                    ws = await connect(srv.url)
                except websockets.InvalidStatus:  # a connection we just closed is still counted
                    await asyncio.sleep(0.05)
                    continue
                w = ws.welcome["worker"]  # type: ignore[attr-defined]
                if per_worker[w] < cap // 2:
                    per_worker[w] += 1
                    conns.append(ws)
                else:
                    await ws.close()
            assert per_worker == {0: cap // 2, 1: cap // 2}
            refused = 0
            for _ in range(6):  # whichever worker each lands on
                try:
                    extra = await connect(srv.url)
                except websockets.InvalidStatus as exc:
                    assert exc.response.status_code == 503
                    assert b"too many connections from your address" in exc.response.body
                    refused += 1
                else:
                    await extra.close()
                    raise AssertionError("a connection over the per-IP cap was accepted")
            assert refused == 6
            # another address is not affected
            other = await websockets.connect(srv.url, subprotocols=["fanwire.json"],  # type: ignore[list-item]
                                             family=socket.AF_INET, local_addr=("127.0.0.2", 0))
            await other.recv()
            await other.close()
            await conns.pop().close()
            deadline = time.monotonic() + T(3)
            while True:  # the server notices the close a moment later
                try:
                    conns.append(await connect(srv.url))
                    break
                except websockets.InvalidStatus:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            for c in conns:
                await c.close()

        run(main())
        m = scrape_metrics(srv.port)
        assert m['fanwire_handshakes_refused_total{reason="max_conns_per_ip"}'] >= 6


def test_a_slowloris_holding_sockets_counts_against_its_address() -> None:
    """Half-open handshakes count too: one address cannot pile up sockets while staying under the cap."""
    with ServerProcess(workers=1, extra_args=["--max-conns-per-ip", "3"]) as srv:
        lurkers = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            with pytest.raises(ConnectionError) as info:
                raw_connect(srv.port)
            assert b"503" in str(info.value).encode()
        finally:
            for s in lurkers:
                s.close()
        deadline = time.monotonic() + T(3)
        while True:
            try:
                s, _ = raw_connect(srv.port)
                s.close()
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
