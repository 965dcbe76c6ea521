"""A deliberately faulty WebSocket server for the harness's own tests: the load generator must notice.

``python -m tests.bench.faulty_server --port P --fault drop|error|close|skip --every N``:

- ``drop``: an echo server that answers every message except each N-th (lost replies);
- ``error``: answers each N-th message with a fanwire-style error frame instead (unexpected replies);
- ``close``: closes the connection with 1011 at its N-th message (a connection closed under the load);
- ``skip``: relays every message to every connection, except that each N-th one skips the connection
  that connected first (a fan-out receiver that misses deliveries).

Answers pings; prints ``faulty: ready on ws://... (pid N)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, serve


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fault", choices=("drop", "error", "close", "skip"), required=True)
    p.add_argument("--every", type=int, default=10)
    ns = p.parse_args(argv)
    clients: list[ServerConnection] = []
    count = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        clients.append(ws)
        n = 0
        try:
            async for message in ws:
                n += 1
                count += 1
                if ns.fault == "skip":
                    for c in list(clients):
                        if not (count % ns.every == 0 and c is clients[0]):
                            await c.send(message)
                elif ns.fault == "close":
                    if n == ns.every and ws is clients[0]:
                        await ws.close(1011, "fault")
                        return
                    await ws.send(message)
                elif count % ns.every:
                    await ws.send(message)
                elif ns.fault == "error":
                    await ws.send(json.dumps({"type": "error", "code": "bad_message", "detail": "nope"}))
                # drop: no answer
        finally:
            clients.remove(ws)

    async def run() -> None:
        async with serve(handler, ns.host, ns.port, compression=None, max_size=None):
            print(f"faulty: ready on ws://{ns.host}:{ns.port} (pid {os.getpid()})", flush=True)
            await asyncio.Future()

    asyncio.run(run())


if __name__ == "__main__":
    main()
