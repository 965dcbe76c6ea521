"""Rolling-restart probe: hammer a server with connects and pings while it restarts; print JSON counts.

``python -m tests.hardening.restart_probe [--restarts N] [--concurrency N] [-- server options...]``

Runs standalone (no pytest) so the test can run it inside a fresh network namespace, where
``net.ipv4.tcp_migrate_req`` can be set or left off without touching the host's setting.

- *hammer* tasks open a connection, complete the handshake, send one ``ping`` and wait for its ``pong``
  (or a close), over and over. A connect refused or reset, an EOF or error before the ``101``, or a
  non-``101`` answer is a *refused* connection.
- *steady* clients keep one connection each and ping it every 20 ms; a ping with neither a ``pong`` nor
  a close within 2 s is a *lost pong*. On 1012 they reconnect after 0-50 ms of jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import websockets

from tests.helpers import HANDSHAKE, ServerProcess, T, mask_frame
from tests.helpers import decode as decode_msg

PING = mask_frame(0x1, b'{"type":"ping"}')
REQUEST = HANDSHAKE.format(path="/", extra="Sec-WebSocket-Protocol: fanwire.json\r\n").encode()


async def hammer_once(port: int, stats: Counter[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        stats[f"refused:connect:{type(exc).__name__}"] += 1
        return
    try:
        writer.write(REQUEST)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T(5))
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            stats[f"refused:handshake:{type(exc).__name__}"] += 1
            return
        if not head.startswith(b"HTTP/1.1 101"):
            stats[f"refused:status:{head[9:12].decode(errors='replace')}"] += 1
            return
        stats["connects"] += 1
        writer.write(PING)
        while True:
            h = await asyncio.wait_for(reader.readexactly(2), T(5))
            n = h[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)
            if h[0] & 0x0F == 0x8:
                stats[f"close:{struct.unpack('!H', payload[:2])[0]}"] += 1
                return
            if b'"pong"' in payload:
                stats["pongs"] += 1
                return
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        stats[f"dropped_after_open:{type(exc).__name__}"] += 1
    finally:
        writer.close()


async def steady(url: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    while not stop.is_set():
        try:
            ws = await websockets.connect(url, subprotocols=["fanwire.json"],  # type: ignore[list-item]
                                          open_timeout=T(5))
        except Exception as exc:
            stats[f"refused:steady:{type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        stats["steady_connects"] += 1
        try:
            await ws.recv()  # welcome
            seq = 0
            while not stop.is_set():
                seq += 1
                await ws.send(json.dumps({"type": "ping", "id": seq}))
                deadline = time.monotonic() + T(2)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        stats["lost_pongs"] += 1
                        break
                    try:
                        msg = decode_msg(await asyncio.wait_for(ws.recv(), left))
                    except TimeoutError:
                        continue
                    if msg.get("type") == "pong" and msg.get("id") == seq:
                        stats["steady_pongs"] += 1
                        break
                await asyncio.sleep(0.02)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            stats[f"steady_close:{code}"] += 1
            await asyncio.sleep(random.random() * 0.05)  # reconnect with jitter
        finally:
            await ws.close()


async def probe(srv: ServerProcess, restarts: int, concurrency: int, n_steady: int) -> Counter[str]:
    stats: Counter[str] = Counter()
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            await hammer_once(srv.port, stats)

    tasks = [asyncio.create_task(hammer()) for _ in range(concurrency)]
    tasks += [asyncio.create_task(steady(srv.url, stop, stats)) for _ in range(n_steady)]
    await asyncio.sleep(0.5)
    for _ in range(restarts):
        pids = srv.worker_pids()
        os.kill(srv.pid, signal.SIGHUP)
        for worker, pid in pids.items():
            await asyncio.to_thread(srv.wait_worker_replaced, worker, pid, 15.0)
        await asyncio.sleep(0.3)
        stats["restarts"] += 1
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), T(20))
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--steady", type=int, default=4)
    p.add_argument("server_args", nargs="*")
    ns = p.parse_args(argv)
    sysctl = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    with ServerProcess(workers=ns.workers, extra_args=ns.server_args) as srv:
        stats = asyncio.run(probe(srv, ns.restarts, ns.concurrency, ns.steady))
        out = srv.output()
    result: dict[str, Any] = dict(stats)
    result["refused"] = sum(v for k, v in stats.items() if k.startswith("refused:"))
    result["taken_from_backlog"] = sum(int(n) for n in re.findall(r"took (\d+) queued connections", out))
    result["tcp_migrate_req"] = sysctl.read_text().strip() if sysctl.exists() else None
    result["aborted"] = "rolling restart aborted" in out
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
