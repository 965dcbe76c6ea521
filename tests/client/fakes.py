"""Helpers for the client tests: a bounded ``run`` for async bodies, and a tiny in-test WebSocket server
for behaviour the real server does not show on demand (odd close codes, HTTP 401/403, going silent)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.helpers import T

R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R], timeout: float = 20.0) -> R:
    """Run an async test body with a hard time bound."""

    async def bounded() -> R:
        return await asyncio.wait_for(coro, T(timeout))

    return asyncio.run(bounded())


def welcome(worker: int = 0, n: int = 1) -> dict[str, Any]:
    return {"type": "welcome", "client_id": f"{worker}-{n:x}", "worker": worker, "node": "fake", "codec": "json",
            "rooms": ["lobby"], "server_ts": 0, "protocol": 1, "heartbeat_s": 20.0, "max_message_size": 1 << 20}


Behaviour = Callable[[ServerConnection, int], Awaitable[None]]


class FakeServer:
    """A websockets server on 127.0.0.1 in its own thread. ``behaviour(ws, n)`` runs for the n-th
    connection (from 1) after the welcome; ``status`` makes the handshake answer that HTTP status."""

    def __init__(self, behaviour: Behaviour | None = None, status: int | None = None) -> None:
        self.behaviour = behaviour
        self.status = status
        self.attempts = 0  # handshakes seen, rejected ones included
        self.connections = 0  # connections that got a welcome
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.attempts += 1
        if self.status is not None:
            return Response(self.status, "Nope", Headers({"Content-Length": "0"}), b"")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        n = self.connections
        await ws.send(json.dumps(welcome(n=n)))
        if self.behaviour is not None:
            await self.behaviour(ws, n)
        else:
            async for _ in ws:
                pass

    async def _start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", 0, subprotocols=["fanwire.json"],  # type: ignore[list-item]
                                   process_request=self._process_request, close_timeout=0.5)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
