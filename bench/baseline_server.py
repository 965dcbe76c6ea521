"""The baseline: the server a user would write instead of fanwire, the way websockets' documentation shows.

One process, ``websockets.asyncio.server.serve``, a handler with ``async for message in websocket``, the
standard library's ``json`` per message (msgpack when the client asks for ``fanwire.msgpack``), and
``websockets.asyncio.server.broadcast`` for fan-out, as in the documentation's broadcast guide. It speaks
just enough of the fanwire protocol for the benchmark scenarios:

- ``ping`` -> ``pong`` with the ping's ``ts`` and a ``server_ts``;
- ``broadcast`` and ``chat`` -> delivered to every connected client (every fanwire client starts in the
  ``lobby`` room, so for the benchmarks the two are the same), encoded once per codec.

The one deliberate departure from the documentation's defaults is ``compression=None``: fanwire runs
without permessage-deflate by default, and websockets' own documentation recommends turning it off when
memory per connection matters. ``--compression`` restores the default.

Run: ``python -m bench.baseline_server --port 8766``; prints ``baseline: ready ...`` when listening and
stops on SIGTERM / SIGINT, closing connections with 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.typing import Subprotocol

SUBPROTOCOLS = [Subprotocol("fanwire.msgpack"), Subprotocol("fanwire.json")]

JSON_CLIENTS: set[ServerConnection] = set()
MSGPACK_CLIENTS: set[ServerConnection] = set()


def select_subprotocol(connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    for p in SUBPROTOCOLS:
        if p in subprotocols:
            return p
    return None  # a plain client gets JSON


async def handler(websocket: ServerConnection) -> None:
    use_msgpack = websocket.subprotocol == "fanwire.msgpack"
    clients = MSGPACK_CLIENTS if use_msgpack else JSON_CLIENTS
    clients.add(websocket)
    try:
        async for message in websocket:
            msg: dict[str, Any] = msgpack.unpackb(message) if use_msgpack else json.loads(message)
            mtype = msg.get("type")
            if mtype == "ping":
                reply: dict[str, Any] = {"type": "pong", "server_ts": int(time.time() * 1000)}
                if "ts" in msg:
                    reply["ts"] = msg["ts"]
                if use_msgpack:
                    await websocket.send(msgpack.packb(reply))
                else:
                    await websocket.send(json.dumps(reply))
            elif mtype in ("broadcast", "chat"):
                out: dict[str, Any] = {"type": mtype, "from": str(websocket.id)}
                if "text" in msg:
                    out["text"] = msg["text"]
                if "data" in msg:
                    out["data"] = msg["data"]
                out["ts"] = int(time.time() * 1000)
                broadcast(JSON_CLIENTS, json.dumps(out))
                if MSGPACK_CLIENTS:
                    broadcast(MSGPACK_CLIENTS, msgpack.packb(out))
    finally:
        clients.discard(websocket)


async def main(host: str, port: int, compression: bool) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with serve(handler, host, port, subprotocols=SUBPROTOCOLS, select_subprotocol=select_subprotocol,
                     compression="deflate" if compression else None, backlog=4096):
        print(f"baseline: ready on ws://{host}:{port} (pid {os.getpid()})", flush=True)
        await stop


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.baseline_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--compression", action="store_true", help="permessage-deflate, websockets' default")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop (default asyncio, as in the documentation)")
    ns = p.parse_args(argv)
    coro = main(ns.host, ns.port, ns.compression)
    if ns.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    cli()
