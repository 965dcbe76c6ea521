"""Bounded soak: churn for ``FANWIRE_SOAK_SECONDS`` (default 40) and check that nothing leaks.

Clients join, chat, leave and close properly; others are killed mid-message (half a frame, then a TCP
reset or a plain FIN), mid-handshake, or vanish without a close frame; everybody reconnects. Afterwards the
workers hold exactly the file descriptors they held before, their memory has stopped growing, every
well-behaved client got back every chat it sent, and the server still serves.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

import pytest

from ..helpers import (
    HANDSHAKE,
    ServerProcess,
    T,
    connect,
    mask_frame,
    proc_fd_count,
    proc_rss_kb,
    recv,
    recv_until,
    scrape_metrics,
    send,
)

SECONDS = float(os.environ.get("FANWIRE_SOAK_SECONDS", "40"))
CONCURRENCY = 24
ROOMS = [f"room{i}" for i in range(5)]


async def well_behaved(url: str, rng: random.Random, stats: dict[str, int]) -> None:
    ws = await connect(url, rng.choice(["json", "msgpack"]))
    room = rng.choice(ROOMS)
    await send(ws, {"type": "join", "room": room})
    await recv_until(ws, lambda m: m["type"] == "joined")
    tag = f"{id(ws)}-{rng.random()}"
    n = rng.randint(1, 20)
    for i in range(n):
        await send(ws, {"type": "chat", "text": f"{tag}/{i}", "user": "soak"})
        if rng.random() < 0.2:
            await asyncio.sleep(rng.random() * 0.05)
    got = 0
    deadline = time.monotonic() + T(10)
    while got < n and time.monotonic() < deadline:
        msg = await recv(ws, timeout=10)
        if msg["type"] == "chat" and msg["text"].startswith(tag):
            got += 1
    stats["chats_sent"] += n
    stats["chats_back"] += got
    await send(ws, {"type": "leave", "room": room})
    await recv_until(ws, lambda m: m["type"] == "left")
    await ws.close()
    stats["clean"] += 1


async def raw_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE.format(path="/", extra="").encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T(5))
    return reader, writer


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST
    writer.transport.abort()


async def killed_mid_message(port: int, rng: random.Random, stats: dict[str, int]) -> None:
    _reader, writer = await raw_open(port)
    writer.write(mask_frame(0x1, b'{"type":"join","room":"' + rng.choice(ROOMS).encode() + b'"}'))
    frame = mask_frame(0x1, b'{"type":"chat","text":"' + b"z" * rng.randint(10, 3000) + b'"}')
    writer.write(frame[: rng.randint(1, len(frame) - 1)])
    await writer.drain()
    await asyncio.sleep(rng.random() * 0.05)
    if rng.random() < 0.5:
        reset(writer)
    else:
        writer.close()
    stats["killed"] += 1


async def killed_mid_handshake(port: int, rng: random.Random, stats: dict[str, int]) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = HANDSHAKE.format(path="/", extra="").encode()
    writer.write(req[: rng.randint(0, len(req) - 1)])
    await writer.drain()
    reset(writer) if rng.random() < 0.5 else writer.close()
    stats["handshake_killed"] += 1


async def vanished(port: int, rng: random.Random, stats: dict[str, int]) -> None:
    _reader, writer = await raw_open(port)
    writer.write(mask_frame(0x1, b'{"type":"join","room":"' + rng.choice(ROOMS).encode() + b'"}'))
    await asyncio.sleep(rng.random() * 0.3)  # receives chats meanwhile, reads nothing
    writer.close()  # no close frame
    stats["vanished"] += 1


async def churn(srv: ServerProcess, seconds: float, seed: int, stats: dict[str, int]) -> None:
    async def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r = rng.random()
            try:
                if r < 0.55:
                    await well_behaved(srv.url, rng, stats)
                elif r < 0.75:
                    await killed_mid_message(srv.port, rng, stats)
                elif r < 0.85:
                    await killed_mid_handshake(srv.port, rng, stats)
                else:
                    await vanished(srv.port, rng, stats)
            except Exception as exc:  # counted, and the assertion below shows them
                stats[f"error:{type(exc).__name__}"] = stats.get(f"error:{type(exc).__name__}", 0) + 1

    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


def snapshot(srv: ServerProcess) -> dict[int, tuple[int, int]]:
    return {w: (proc_fd_count(pid), proc_rss_kb(pid)) for w, pid in srv.worker_pids().items()}


def wait_idle(srv: ServerProcess, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + T(timeout)
    while True:
        m = scrape_metrics(srv.port)
        if m["fanwire_connections"] == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


@pytest.mark.slow
def test_soak_no_leaks_and_nothing_lost() -> None:
    args = ["--ping-interval", "1", "--ping-timeout", "1", "--close-timeout", "0.5", "--handshake-timeout", "2"]
    with ServerProcess(workers=2, extra_args=args) as srv:
        pids = srv.worker_pids()
        time.sleep(0.3)
        wait_idle(srv)
        base = snapshot(srv)
        stats: dict[str, int] = {"chats_sent": 0, "chats_back": 0, "clean": 0, "killed": 0,
                                 "handshake_killed": 0, "vanished": 0}
        # warm-up: allocator pools, caches, room dicts reach their working size
        warm = max(4.0, SECONDS * 0.2)
        asyncio.run(churn(srv, warm, 1, stats))
        rss: list[dict[int, int]] = []
        phases = 4
        for phase in range(phases):
            asyncio.run(churn(srv, (SECONDS - warm) / phases, 2 + phase, stats))
            wait_idle(srv)
            rss.append({w: kb for w, (_, kb) in snapshot(srv).items()})
        m = wait_idle(srv)
        after = snapshot(srv)
        print("stats", stats)
        print("fds/rss before", base, "after", after)
        print("rss per phase", rss)
        assert srv.worker_pids() == pids, "a worker died during the soak"
        assert not any(k.startswith("error:") for k in stats), stats
        assert stats["clean"] > 100 and stats["killed"] > 30 and stats["vanished"] > 10, stats
        assert stats["chats_back"] == stats["chats_sent"], stats
        assert m["fanwire_connections"] == 0
        for w, (fds, _) in base.items():
            assert after[w][0] == fds, f"worker {w}: {fds} fds before, {after[w][0]} after"
        for w in base:
            growth_late = rss[-1][w] - rss[1][w]
            assert growth_late < 1024, f"worker {w} still growing: {[r[w] for r in rss]} KB"
        # every connection that opened was closed and counted under a close code
        closed = sum(v for k, v in m.items() if k.startswith("fanwire_connections_closed_total"))
        assert closed == m["fanwire_connections_opened_total"]

        async def still_serves() -> None:
            ws = await connect(srv.url)
            await send(ws, {"type": "ping"})
            assert (await recv(ws))["type"] == "pong"
            await ws.close()

        asyncio.run(asyncio.wait_for(still_serves(), T(10)))


