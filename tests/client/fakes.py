"""Helpers for the client tests: a bounded ``run`` for async bodies, ``wait_for`` (poll a condition with a
bound scaled by ``tests.helpers.T``, instead of sleeping and hoping), ``Lines`` (a child process's output
read by a thread, waited on line by line), a tiny in-test WebSocket server for behaviour the real
server does not show on demand (odd close codes, HTTP 401/403/503, going silent), :class:`FakeV11Server`
(a small protocol v1.1 server: offsets, history, ``since``, acks, dedup, sessions, with faults on demand)
and :class:`ChaosProxy` (a TCP proxy that cuts connections without a close frame, holds reconnects and
swallows what the server sends; it works in front of any server, the real one included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgpack
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
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

    def __enter__(self) -> Self:
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


# ---------------------------------------------------------------------------------------------------
# Protocol v1.1


@dataclass
class FakeStream:
    """One stream of the fake: its epoch, its latest offset, its history (oldest first)."""

    epoch: str
    offset: int = 0
    history: deque[dict[str, Any]] = field(default_factory=deque)


@dataclass
class FakeConn:
    n: int
    ws: ServerConnection
    session: str
    client_id: str
    rooms: list[str]
    broadcast: bool  # receives $broadcast
    user: str | None = None
    codec: str = "json"

    def encode(self, msg: dict[str, Any]) -> str | bytes:
        return json.dumps(msg) if self.codec == "json" else msgpack.packb(msg, use_bin_type=True)

    def decode(self, raw: str | bytes) -> Any:
        return json.loads(raw) if self.codec == "json" else msgpack.unpackb(raw, raw=False)


_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_epoch() -> str:
    return secrets.token_hex(3)


class FakeV11Server(FakeServer):
    """The server side of protocol v1.1 (docs/protocol.md, "Protocol v1.1: nothing lost"), small and
    single-threaded, JSON or msgpack: ``welcome`` with ``version``, ``session`` and (with ``autojoin=0``)
    ``autojoin``; offsets and epochs per stream (rooms and ``$broadcast``), a history of
    ``history_size`` messages, ``join`` with ``since`` (replay, ``recovered``, ``replayed``,
    ``bad_since``), acks for ``chat`` / ``broadcast`` / ``publish`` with an ``id``, and the dedup of ids
    per (session, stream).

    Faults and states on demand, from any thread: :meth:`server_publish` (a message from elsewhere),
    :meth:`lose_history` (a new epoch), :meth:`trim` (history shorter than what a client missed),
    :meth:`rewind` (offsets going back without an epoch change: ``bad_since``), :meth:`send_raw` (any
    frame to a connection: duplicates, disorder), ``unavailable_next`` (answer that many acknowledged
    sends with ``unavailable``, publishing nothing), ``unavailable_joins_next`` (the same for joins).
    Rooms starting with ``$`` other than ``$broadcast`` are refused with ``bad_room``. ``received``
    lists every client message as ``(connection number, message)``; ``paths`` every handshake path.
    """

    def __init__(self, history_size: int = 256, autojoin: Iterable[str] = ("$broadcast", "lobby")) -> None:
        super().__init__()
        self.history_size = history_size
        self.autojoin = list(autojoin)
        self.streams: dict[str, FakeStream] = {}
        self.conns: dict[int, FakeConn] = {}
        self.dedup: dict[tuple[str, str, Any], dict[str, Any]] = {}
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.paths: list[str] = []
        self.unavailable_next = 0
        self.unavailable_joins_next = 0
        self._lock: asyncio.Lock | None = None

    # -- control, from the test's thread ----------------------------------------------------------

    def call(self, fn: Callable[[], Awaitable[R]]) -> R:
        """Run ``fn()`` on the fake's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(self._locked(fn), self._loop).result(10)

    async def _locked(self, fn: Callable[[], Awaitable[R]]) -> R:
        assert self._lock is not None
        async with self._lock:
            return await fn()

    def server_publish(self, room: str, text: str, user: str = "srv") -> int:
        """A chat published in ``room`` by someone else (another worker, node...); returns its offset."""
        async def go() -> int:
            out = await self._append(room, {"type": "chat", "from": "9-srv", "user": user, "room": room, "text": text})
            return int(out["offset"])
        return self.call(go)

    def lose_history(self, room: str) -> str:
        """The stream's history is gone: a new epoch, offsets from 1 again. Returns the new epoch."""
        async def go() -> str:
            self.streams[room] = FakeStream(new_epoch())
            return self.streams[room].epoch
        return self.call(go)

    def trim(self, room: str, keep: int) -> None:
        """Keep only the last ``keep`` messages of the stream's history."""
        async def go() -> None:
            hist = self._stream(room).history
            while len(hist) > keep:
                hist.popleft()
        self.call(go)

    def rewind(self, room: str, offset: int) -> None:
        """Set the stream's latest offset back to ``offset`` in the same epoch (a broken server): a
        client whose position is beyond it gets ``bad_since``."""
        async def go() -> None:
            stream = self._stream(room)
            stream.offset = offset
            stream.history = deque(m for m in stream.history if m["offset"] <= offset)
        self.call(go)

    def send_raw(self, n: int, msg: dict[str, Any]) -> None:
        """Send ``msg`` as is to connection ``n``."""
        async def go() -> None:
            await self.conns[n].ws.send(self.conns[n].encode(msg))
        self.call(go)

    def history(self, room: str) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            return list(self._stream(room).history)
        return self.call(go)

    def texts(self, room: str) -> list[Any]:
        """What the stream's history holds: the ``text`` (or ``data``) of each message."""
        return [m.get("text", m.get("data")) for m in self.history(room)]

    # -- the server -------------------------------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        session = dict(parse_qsl(urlsplit(request.path).query)).get("session")
        if session is not None and not _SESSION_RE.fullmatch(session):
            return Response(400, "Bad Request", Headers([("Content-Length", "11")]), b"bad session")
        return super()._process_request(ws, request)

    async def _start(self) -> None:
        self._lock = asyncio.Lock()
        self._server = await serve(self._handler, "127.0.0.1", 0,
                                   subprotocols=["fanwire.msgpack", "fanwire.json"],  # type: ignore[list-item]
                                   process_request=self._process_request, close_timeout=0.5)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    def _stream(self, room: str) -> FakeStream:
        if room not in self.streams:
            self.streams[room] = FakeStream(new_epoch())
        return self.streams[room]

    def _members(self, room: str) -> list[FakeConn]:
        if room == "$broadcast":
            return [c for c in self.conns.values() if c.broadcast]
        return [c for c in self.conns.values() if room in c.rooms]

    async def _send(self, conn: FakeConn, msg: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(conn.encode(msg))

    async def _append(self, room: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Give ``msg`` the stream's next offset, keep it in history, send it to every member."""
        stream = self._stream(room)
        stream.offset += 1
        out = {**msg, "ts": 0, "offset": stream.offset, "epoch": stream.epoch}
        if self.history_size:
            stream.history.append(out)
            while len(stream.history) > self.history_size:
                stream.history.popleft()
        for member in self._members(room):
            await self._send(member, out)
        return out

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        n = self.connections
        query = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "/").query))
        explicit = query.get("autojoin") == "0"
        session = query.get("session") or secrets.token_urlsafe(16)[:22]
        codec = "msgpack" if ws.subprotocol == "fanwire.msgpack" else "json"
        conn = FakeConn(n, ws, session, f"0-{n:x}", [] if explicit else ["lobby"], not explicit, codec=codec)
        hello = {**welcome(n=n), "version": "1.1", "session": session, "rooms": list(conn.rooms), "codec": codec}
        if explicit:
            hello["autojoin"] = list(self.autojoin)
        assert self._lock is not None
        async with self._lock:
            self.conns[n] = conn
            await ws.send(conn.encode(hello))
        try:
            async for raw in ws:
                msg = conn.decode(raw)
                self.received.append((n, msg))
                async with self._lock:
                    await self._handle(conn, msg)
        except ConnectionClosed:
            pass
        finally:
            async with self._lock:
                self.conns.pop(n, None)

    async def _handle(self, conn: FakeConn, msg: dict[str, Any]) -> None:
        kind, rid = msg.get("type"), msg.get("id")

        async def reply(answer: dict[str, Any]) -> None:
            await self._send(conn, {**answer, "id": rid} if rid is not None else answer)

        async def error(code: str, detail: str = "") -> None:
            await reply({"type": "error", "code": code, "detail": detail})

        if kind == "ping":
            await reply({"type": "pong", "ts": msg.get("ts"), "server_ts": 0})
        elif kind == "join":
            await self._join(conn, msg, reply, error)
        elif kind == "leave":
            room = msg.get("room")
            if room == "$broadcast":
                conn.broadcast = False
            elif room in conn.rooms:
                conn.rooms.remove(room)
            else:
                await error("not_in_room", f"not in {room!r}")
                return
            await reply({"type": "left", "room": room, "rooms": list(conn.rooms)})
        elif kind in ("chat", "broadcast", "publish"):
            await self._publish(conn, msg, reply, error)
        elif kind == "custom":
            await reply({"type": "stats", "clients": len(self.conns), "workers": [], "rooms": {}, "uptime_s": 0})
        else:
            await error("unknown_type", f"unknown type {kind!r}")

    async def _join(self, conn: FakeConn, msg: dict[str, Any], reply: Any, error: Any) -> None:
        room, since = msg.get("room"), msg.get("since")
        if not isinstance(room, str) or not room or (room.startswith("$") and room != "$broadcast"):
            await error("bad_room", f"cannot join {room!r}")
            return
        if self.unavailable_joins_next > 0:
            self.unavailable_joins_next -= 1
            await error("unavailable", "the stream's sequencer is gone")
            return
        stream = self._stream(room)
        joined: dict[str, Any] = {"type": "joined", "room": room}
        member = conn.broadcast if room == "$broadcast" else room in conn.rooms
        if not member and since is not None:
            ok = isinstance(since, dict) and isinstance(since.get("offset"), int) and isinstance(since.get("epoch"), str)
            if not ok or (since["epoch"] == stream.epoch and since["offset"] > stream.offset):
                await error("bad_since", f"since {since!r} is ahead of {room!r}")
                return
            if since["epoch"] == stream.epoch:
                replay = [m for m in stream.history if m["offset"] > since["offset"]]
                recovered = since["offset"] >= stream.offset or bool(
                    stream.history and stream.history[0]["offset"] <= since["offset"] + 1)
            else:
                replay, recovered = list(stream.history), False
            for m in replay:
                await self._send(conn, m)
            joined |= {"recovered": recovered, "replayed": len(replay)}
        if room == "$broadcast":
            conn.broadcast = True
        else:
            if room in conn.rooms:
                conn.rooms.remove(room)
            conn.rooms.append(room)
        await reply({**joined, "rooms": list(conn.rooms), "offset": stream.offset, "epoch": stream.epoch})

    async def _publish(self, conn: FakeConn, msg: dict[str, Any], reply: Any, error: Any) -> None:
        kind, rid = msg["type"], msg.get("id")
        if isinstance(msg.get("user"), str):
            conn.user = msg["user"]
        room = msg.get("room")
        if kind == "broadcast":
            room = "$broadcast"
        elif kind == "chat" and room is None:
            room = conn.rooms[-1] if conn.rooms else None
            if room is None:
                await error("no_room", "not in any room")
                return
        if not isinstance(room, str) or not room or (room.startswith("$") and kind != "broadcast"):
            await error("bad_room", f"cannot publish to {room!r}")
            return
        key = (conn.session, room, rid)
        if rid is not None and key in self.dedup:
            await reply({**self.dedup[key], "duplicate": True})
            return
        if rid is not None and self.unavailable_next > 0:
            self.unavailable_next -= 1
            await error("unavailable", "the stream's sequencer is gone")
            return
        base: dict[str, Any] = {"from": conn.client_id, "user": conn.user}
        if kind == "chat":
            out = {"type": "chat", **base, "room": room, "text": msg.get("text")}
        elif kind == "broadcast":
            body = {"text": msg["text"]} if "text" in msg else {"data": msg.get("data")}
            out = {"type": "broadcast", **base, **body}
        else:
            out = {"type": "publication", **base, "room": room, "data": msg.get("data")}
        published = await self._append(room, out)
        if rid is not None:
            ack = {"type": "ack", "room": room, "offset": published["offset"], "epoch": published["epoch"]}
            self.dedup[key] = ack
            await reply(ack)


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port``, in its own thread.

    :meth:`cut` aborts every connection on both sides (no close frame: the client sees 1006, like a
    network drop). While :attr:`holding`, new connections are accepted and dropped at once (the client
    keeps retrying). While :attr:`swallow` is set, what the server sends is dropped (so an ack never
    arrives) while what the client sends still goes through. Works in front of the fake or a real
    server."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.holding = False
        self.swallow = False
        self.accepted = 0
        self.cuts = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False

    def cut(self) -> int:
        """Abort every proxied connection now; returns how many."""
        async def go() -> int:
            pairs = list(self._pairs)
            for down, up in pairs:
                down.transport.abort()
                up.transport.abort()
            self.cuts += len(pairs)
            return len(pairs)
        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
        try:
            while data := await src.read(65536):
                if downstream and self.swallow:
                    continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.holding:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer, False), self._pump(up_reader, writer, True))
        finally:
            self._pairs.discard(pair)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for down, up in list(self._pairs):
                down.transport.abort()
                up.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
