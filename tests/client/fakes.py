"""Helpers for the client tests: a bounded ``run`` for async bodies, ``wait_for`` (poll a condition with a
bound scaled by ``tests.helpers.T``, instead of sleeping and hoping), ``Lines`` (a child process's output
read by a thread, waited on line by line), and a tiny in-test WebSocket server for behaviour the real
server does not show on demand (odd close codes, HTTP 401/403/503, going silent)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import IO, Any, TypeVar

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


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` until it is true; fail after ``T(timeout)`` seconds."""
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {T(timeout):g} s")
        time.sleep(0.01)


async def async_wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """:func:`wait_for` for coroutines."""
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {T(timeout):g} s")
        await asyncio.sleep(0.01)


class Lines:
    """The lines of a text stream (a child's stdout), read by a thread as they come.

    A thread, not ``select()`` plus ``readline()``: the file object reads ahead, so lines already in its
    buffer are invisible to ``select()`` on the descriptor, and a test waiting that way stalls although
    the line it wants has arrived.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[tuple[float, str] | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._q.put((time.monotonic(), line.rstrip("\n")))
        finally:
            self._q.put(None)

    def until(self, needle: str, timeout: float = 10.0, since: float | None = None) -> str:
        """The first line (from here on) containing ``needle``; with ``since`` (a ``time.monotonic()``
        value), one that arrived after that moment."""
        deadline = time.monotonic() + T(timeout)
        while True:
            try:
                item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{needle!r} not seen in {T(timeout):g} s; output so far:\n"
                                     + "\n".join(self.seen)) from None
            if item is None:
                raise AssertionError(f"{needle!r} not seen before the output ended:\n" + "\n".join(self.seen))
            when, line = item
            self.seen.append(line)
            if needle in line and (since is None or when >= since):
                return line


def welcome(worker: int = 0, n: int = 1) -> dict[str, Any]:
    return {"type": "welcome", "client_id": f"{worker}-{n:x}", "worker": worker, "node": "fake", "codec": "json",
            "rooms": ["lobby"], "server_ts": 0, "protocol": 1, "heartbeat_s": 20.0, "max_message_size": 1 << 20}


Behaviour = Callable[[ServerConnection, int], Awaitable[None]]


class FakeServer:
    """A websockets server on 127.0.0.1 in its own thread. ``behaviour(ws, n)`` runs for the n-th
    connection (from 1) after the welcome; ``status`` makes the handshake answer that HTTP status, with
    ``status_headers`` (for the next ``refuse_count`` handshakes only, when that is set).
    ``requests`` keeps every handshake's headers; ``attempt_times`` when they came."""

    def __init__(self, behaviour: Behaviour | None = None, status: int | None = None,
                 status_headers: Mapping[str, str] | None = None) -> None:
        self.behaviour = behaviour
        self.status = status
        self.status_headers = dict(status_headers or {})
        self.refuse_count: int | None = None
        self.requests: list[Headers] = []
        self.attempt_times: list[float] = []
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
        self.requests.append(request.headers)
        self.attempt_times.append(time.monotonic())
        self.attempts += 1
        status = self.status
        if status is None:
            return None
        if self.refuse_count is not None:
            self.refuse_count -= 1
            if self.refuse_count <= 0:
                self.status = self.refuse_count = None
        headers: Iterable[tuple[str, str]] = [("Content-Length", "4"), *self.status_headers.items()]
        return Response(status, "Nope", Headers(headers), b"nope")

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
