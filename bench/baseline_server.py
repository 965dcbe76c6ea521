"""The baselines: the server a user would write instead of fanwire, with websockets.

As documented (the default): one process, ``websockets.asyncio.server.serve``, a handler with
``async for message in websocket``, the standard library's ``json`` per message (msgpack when the client
asks for ``fanwire.msgpack``), ``websockets.asyncio.server.broadcast`` for fan-out, the default asyncio
loop, as in websockets' documentation and its broadcast guide.

As an informed user writes it (``--loop uvloop --json orjson``): the same handler on uvloop, with orjson
(text frames sent from bytes with ``text=True``, no decode/encode round trip). With ``--mode echo`` it is a
plain echo server (``await websocket.send(message)``), the websockets peer of ``fanwire --mode echo``.

It speaks just enough of the fanwire protocol for the benchmark scenarios:

- ``ping`` -> ``pong`` with the ping's ``ts`` and a ``server_ts``;
- ``broadcast`` and ``chat`` -> delivered to every connected client (every fanwire client starts in the
  ``lobby`` room, so for the benchmarks the two are the same), encoded once per codec.

The one deliberate departure from the documentation's defaults is ``compression=None``: fanwire runs
without permessage-deflate by default, and websockets' own documentation recommends turning it off when
memory per connection matters. ``--compression`` restores the default.

Run: ``python -m bench.baseline_server --port 8766 [--loop uvloop] [--json orjson] [--mode echo]``; prints
``baseline: ready ...`` when listening and stops on SIGTERM / SIGINT, closing connections with 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.typing import Subprotocol

from .stopsignal import stop_on_signals

SUBPROTOCOLS = [Subprotocol("fanwire.msgpack"), Subprotocol("fanwire.json")]

JSON_CLIENTS: set[ServerConnection] = set()
MSGPACK_CLIENTS: set[ServerConnection] = set()


def select_subprotocol(connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    for p in SUBPROTOCOLS:
        if p in subprotocols:
            return p
    return None  # a plain client gets JSON


def chat_handler(use_orjson: bool) -> Callable[[ServerConnection], Awaitable[None]]:
    loads: Callable[[Any], Any] = orjson.loads if use_orjson else json.loads

    def dumps(obj: Any) -> str | bytes:
        return orjson.dumps(obj) if use_orjson else json.dumps(obj)

    async def handler(websocket: ServerConnection) -> None:
        use_msgpack = websocket.subprotocol == "fanwire.msgpack"
        clients = MSGPACK_CLIENTS if use_msgpack else JSON_CLIENTS
        clients.add(websocket)
        try:
            async for message in websocket:
                msg: dict[str, Any] = msgpack.unpackb(message) if use_msgpack else loads(message)
                mtype = msg.get("type")
                if mtype == "ping":
                    reply: dict[str, Any] = {"type": "pong", "server_ts": int(time.time() * 1000)}
                    if "ts" in msg:
                        reply["ts"] = msg["ts"]
                    if use_msgpack:
                        await websocket.send(msgpack.packb(reply))
                    else:
                        await websocket.send(dumps(reply), text=True)
                elif mtype in ("broadcast", "chat"):
                    out: dict[str, Any] = {"type": mtype, "from": str(websocket.id)}
                    if "text" in msg:
                        out["text"] = msg["text"]
                    if "data" in msg:
                        out["data"] = msg["data"]
                    out["ts"] = int(time.time() * 1000)
                    broadcast(JSON_CLIENTS, dumps(out), text=True)
                    if MSGPACK_CLIENTS:
                        broadcast(MSGPACK_CLIENTS, msgpack.packb(out))
        finally:
            clients.discard(websocket)

    return handler


async def echo_handler(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def main(host: str, port: int, compression: bool, mode: str, use_orjson: bool) -> None:
    stop = stop_on_signals()
    handler = echo_handler if mode == "echo" else chat_handler(use_orjson)
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
    p.add_argument("--json", choices=("json", "orjson"), default="json",
                   help="JSON library (default json, as in the documentation)")
    p.add_argument("--mode", choices=("chat", "echo"), default="chat",
                   help="chat: the fanwire protocol subset; echo: plain echo (default chat)")
    ns = p.parse_args(argv)
    coro = main(ns.host, ns.port, ns.compression, ns.mode, ns.json == "orjson")
    if ns.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    cli()
