"""A fake fanwire server speaking protocol v1.1 (docs/protocol.md, "nothing lost") and the `$stats` room,
for the browser tests of what the real server does not do yet.

It also serves the pages itself, on the same origin as its WebSockets, the way the real server is meant
to (``/``, ``/dashboard``, ``/fanwire.js``, ``/static/<file>``, ``/test/<file>``, with the CSP), plus
``/healthz`` and ``/connect-check`` (the status a handshake with the same credentials would get).

One asyncio loop in a thread of the test process; the test-facing methods are thread-safe. Every
stream (room, ``$broadcast``) has an epoch, offsets without gaps and a bounded history; ``join`` with
``since`` replays; ``chat``/``broadcast``/``publish`` with an ``id`` are acknowledged and deduplicated per
session. It is deliberately simple: one process pretending to be ``workers`` workers, no bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.browser import site
from tests.helpers import T, free_port

SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
BROADCAST = "$broadcast"
STATS = "$stats"


def _epoch() -> str:
    return secrets.token_urlsafe(4)[:5]


@dataclass
class Stream:
    name: str
    size: int
    epoch: str = field(default_factory=_epoch)
    offset: int = 0
    history: deque[dict[str, Any]] = field(default_factory=deque)
    members: set[Conn] = field(default_factory=set)

    def append(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.offset += 1
        out = {**msg, "offset": self.offset, "epoch": self.epoch}
        if self.size:
            self.history.append(out)
            while len(self.history) > self.size:
                self.history.popleft()
        return out


@dataclass(eq=False)
class Conn:
    ws: ServerConnection
    client_id: str
    worker: int
    session: str
    admin: bool
    user: str | None = None
    rooms: list[str] = field(default_factory=list)  # in join order; the last is the current room
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)


class FakeServer:
    """``with FakeServer() as fake: fake.url, fake.http``. Test controls: :meth:`publish_chat`,
    :meth:`drop_all`, :meth:`refuse`, :meth:`reset_epoch`, :attr:`hold_acks`, :meth:`received`."""

    def __init__(self, *, token: str | None = None, admin_token: str | None = None, history_size: int = 256,
                 stats_interval: float = 1.0, workers: int = 2, node: str = "fake") -> None:
        self.port = free_port()
        self.token = token
        self.admin_token = admin_token
        self.history_size = history_size
        self.stats_interval = stats_interval
        self.workers = workers
        self.node = node
        self.hold_acks = False
        self.refuse_status: int | None = None
        self.handshakes = 0
        self.streams: dict[str, Stream] = {}
        self.conns: set[Conn] = set()
        self.dedup: dict[tuple[str, str, Any], dict[str, Any]] = {}
        self.log: list[tuple[str, dict[str, Any]]] = []  # (session, message) as received
        self.m_in: Counter[str] = Counter()
        self.m_out: Counter[str] = Counter()
        self.b_in: Counter[str] = Counter()
        self.b_out: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.snapshots: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_ts = time.time()

    # --- life ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._thread = threading.Thread(target=self._run, name="fake-fanwire", daemon=True)
        self._thread.start()
        if not self._ready.wait(T(10)):
            raise TimeoutError("the fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(T(10))

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, process_request=self._process_request,
                         select_subprotocol=self._select_subprotocol, ping_interval=None) as server:
            self._server = server
            stats = asyncio.create_task(self._stats_loop())
            self._ready.set()
            await self._stop.wait()
            stats.cancel()
            for c in list(self.conns):
                c.ws.transport.abort()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result (thread-safe)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(T(10))

    # --- HTTP ----------------------------------------------------------------------------------------

    @staticmethod
    def _select_subprotocol(conn: ServerConnection, offered: Any) -> Any:
        return "fanwire.json" if "fanwire.json" in offered else None

    def _token_of(self, request: Request) -> str | None:
        auth = request.headers.get("Authorization")
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip()
        for k, v in parse_qsl(urlsplit(request.path).query):
            if k == "token":
                return v
        return None

    def _gate(self, request: Request) -> tuple[int, str, dict[str, str]] | None:
        """The refusal a handshake with these credentials gets (status, text, headers), or None."""
        if self.refuse_status is not None:
            return self.refuse_status, "refused by the test\n", {"Retry-After": "1"}
        query = dict(parse_qsl(urlsplit(request.path).query))
        session = query.get("session")
        if session is not None and not SESSION_RE.match(session):
            return 400, "malformed session\n", {}
        if self.token or self.admin_token:
            token = self._token_of(request)
            if token is None:
                return 401, "a token is required\n", {"WWW-Authenticate": 'Bearer realm="fanwire"'}
            if token not in (self.token, self.admin_token):
                return 401, "invalid token\n", {"WWW-Authenticate": 'Bearer realm="fanwire", error="invalid_token"'}
        return None

    def _respond(self, conn: ServerConnection, status: int, body: bytes, ctype: str,
                 headers: dict[str, str] | None = None) -> Response:
        r = conn.respond(status, "")
        r.body = body
        h = Headers()
        h["Date"] = r.headers.get("Date", "")
        h["Connection"] = "close"
        h["Content-Type"] = ctype
        h["Content-Length"] = str(len(body))
        for k, v in (headers or {}).items():
            h[k] = v
        r.headers = h
        return r

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not upgrade:
            if path == "/healthz":
                return self._respond(conn, 200, b'{"status":"ok"}', "application/json")
            if path == "/connect-check":
                refusal = self._gate(request)
                if refusal is None:
                    return self._respond(conn, 204, b"", "text/plain", {"Cache-Control": "no-store"})
                status, text, headers = refusal
                return self._respond(conn, status, text.encode(), "text/plain; charset=utf-8",
                                     {**headers, "Cache-Control": "no-store"})
            f = site.resolve(request.path)
            if f is None:
                return self._respond(conn, 404, b"not found\n", "text/plain; charset=utf-8")
            body = f.read_bytes()
            return self._respond(conn, 200, body, site.content_type(f),
                                 {"Content-Security-Policy": site.CSP, "ETag": site.etag(body),
                                  "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        self.handshakes += 1
        refusal = self._gate(request)
        if refusal is not None:
            status, text, headers = refusal
            self.refused[str(status)] += 1
            return self._respond(conn, status, text.encode(), "text/plain; charset=utf-8", headers)
        return None

    # --- WebSocket -----------------------------------------------------------------------------------

    def stream(self, name: str) -> Stream:
        s = self.streams.get(name)
        if s is None:
            s = self.streams[name] = Stream(name, 0 if name == STATS else self.history_size)
        return s

    def _send(self, c: Conn, msg: dict[str, Any]) -> None:
        data = json.dumps(msg)
        self.m_out[msg["type"]] += 1
        self.b_out[msg["type"]] += len(data)
        c.queue.put_nowait(data)

    async def _writer(self, c: Conn) -> None:
        while True:
            data = await c.queue.get()
            if data is None:
                return
            try:
                await c.ws.send(data)
            except Exception:
                return

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        token = self._token_of(ws.request)
        session = query.get("session") or secrets.token_urlsafe(16)[:22]
        n = next(self._ids)
        c = Conn(ws, f"{n % self.workers}-{n:x}", n % self.workers, session,
                 admin=self.admin_token is not None and token == self.admin_token)
        autojoin = query.get("autojoin") != "0"
        self.conns.add(c)
        writer = asyncio.create_task(self._writer(c))
        try:
            if autojoin:
                c.rooms = ["lobby"]
                self.stream("lobby").members.add(c)
                self.stream(BROADCAST).members.add(c)
            self._send(c, {"type": "welcome", "client_id": c.client_id, "worker": c.worker, "node": self.node,
                           "codec": "json", "rooms": list(c.rooms), "server_ts": int(time.time() * 1000),
                           "protocol": 1, "version": "1.1", "session": session,
                           "autojoin": [BROADCAST, "lobby"], "heartbeat_s": 20.0,
                           "max_message_size": 1048576})
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self._error(c, "bad_encoding", "not JSON", None)
                    continue
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    self._error(c, "bad_message", "not a map with a type", None)
                    continue
                self.m_in[msg["type"]] += 1
                self.b_in[msg["type"]] += len(raw)
                self.log.append((c.session, msg))
                self._handle(c, msg)
        except Exception:
            pass
        finally:
            self.conns.discard(c)
            for s in self.streams.values():
                s.members.discard(c)
            c.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer

    def _error(self, c: Conn, code: str, detail: str, mid: Any) -> None:
        self.errors[code] += 1
        msg: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
        if mid is not None:
            msg["id"] = mid
        self._send(c, msg)

    def _handle(self, c: Conn, msg: dict[str, Any]) -> None:
        t = msg["type"]
        mid = msg.get("id")
        reply_id = {"id": mid} if mid is not None else {}
        if t == "ping":
            pong: dict[str, Any] = {"type": "pong", "server_ts": int(time.time() * 1000), **reply_id}
            if "ts" in msg:
                pong["ts"] = msg["ts"]
            self._send(c, pong)
        elif t == "join":
            self._join(c, msg, reply_id)
        elif t == "leave":
            room = msg.get("room")
            if room == BROADCAST:
                self.stream(BROADCAST).members.discard(c)
                self._send(c, {"type": "left", "room": room, "rooms": list(c.rooms), **reply_id})
            elif room not in c.rooms:
                self._error(c, "not_in_room", f"not in {room!r}", mid)
            else:
                c.rooms.remove(room)
                self.stream(room).members.discard(c)
                self._send(c, {"type": "left", "room": room, "rooms": list(c.rooms), **reply_id})
        elif t in ("chat", "broadcast", "publish"):
            self._publish(c, msg)
        elif t == "custom" and msg.get("action") == "get_stats":
            self._send(c, {"type": "stats", "clients": len(self.conns), "workers": [], "rooms": {}, **reply_id})
        else:
            self._error(c, "unknown_type", f"unknown type {t!r}", mid)

    def _join(self, c: Conn, msg: dict[str, Any], reply_id: dict[str, Any]) -> None:
        room = msg.get("room")
        mid = msg.get("id")
        if not isinstance(room, str) or not 0 < len(room) <= 128:
            self._error(c, "bad_room", "bad room name", mid)
            return
        if room.startswith("$") and room not in (BROADCAST, STATS):
            self._error(c, "bad_room", "reserved room name", mid)
            return
        if room == STATS and (self.token or self.admin_token) and not c.admin:
            self._error(c, "forbidden", "the $stats room needs an admin token", mid)
            return
        s = self.stream(room)
        already = c in s.members
        answer: dict[str, Any] = {"type": "joined", "room": room}
        since = msg.get("since")
        if not already and since is not None:
            if not (isinstance(since, dict) and isinstance(since.get("offset"), int)
                    and isinstance(since.get("epoch"), str)):
                self._error(c, "bad_since", "malformed since", mid)
                return
            if since["epoch"] == s.epoch and since["offset"] > s.offset:
                self._error(c, "bad_since", "since is ahead of the stream", mid)
                return
            if since["epoch"] == s.epoch:
                replay = [m for m in s.history if m["offset"] > since["offset"]]
                recovered = since["offset"] >= s.offset or (bool(replay) and replay[0]["offset"] == since["offset"] + 1)
            else:
                replay = list(s.history)
                recovered = False
            for m in replay:  # replayed, then the answer, then live messages (this is all synchronous)
                self._send(c, m)
            answer.update(recovered=recovered, replayed=len(replay))
        s.members.add(c)
        if room != BROADCAST:
            if room in c.rooms:
                c.rooms.remove(room)
            c.rooms.append(room)
        answer.update(rooms=list(c.rooms), offset=s.offset, epoch=s.epoch, **reply_id)
        self._send(c, answer)

    def _publish(self, c: Conn, msg: dict[str, Any]) -> None:
        t = msg["type"]
        mid = msg.get("id")
        if isinstance(msg.get("user"), str):
            c.user = msg["user"]
        if t == "broadcast":
            room = BROADCAST
        else:
            room = msg.get("room") or (c.rooms[-1] if c.rooms else None)
            if room is None:
                self._error(c, "no_room", "in no room", mid)
                return
            if not isinstance(room, str) or room.startswith("$"):
                self._error(c, "bad_room", "cannot publish to this room", mid)
                return
        key = (c.session, room, mid)
        if mid is not None and key in self.dedup:
            self._send(c, {**self.dedup[key], "duplicate": True})
            return
        s = self.stream(room)
        base: dict[str, Any] = {"from": c.client_id, "user": c.user or c.client_id, "ts": int(time.time() * 1000)}
        if t == "chat":
            out = {"type": "chat", **base, "room": room, "text": msg.get("text", "")}
        elif t == "broadcast":
            out = {"type": "broadcast", **base}
            if "text" in msg:
                out["text"] = msg["text"]
            else:
                out["data"] = msg.get("data")
        else:
            out = {"type": "publication", **base, "room": room, "data": msg.get("data")}
        out = s.append(out)
        for m in list(s.members):
            self._send(m, out)
        if mid is not None:
            ack = {"type": "ack", "id": mid, "room": room, "offset": out["offset"], "epoch": out["epoch"]}
            self.dedup[key] = ack
            if not self.hold_acks:
                self._send(c, ack)

    # --- $stats ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        def lab(name: str, counter: Counter[str]) -> dict[str, float]:
            return {f'{name}="{k}"': v for k, v in counter.items()}

        per_worker = Counter(c.worker for c in self.conns)
        workers = [{"id": w, "node": self.node, "pid": os.getpid() * 10 + w, "connections": per_worker.get(w, 0),
                    "loop_lag_ms": round(random.uniform(0.05, 0.6), 3)} for w in range(self.workers)]
        return {
            "ts_ms": int(time.time() * 1000), "node": self.node,
            "bus": {"name": "pipe", "up": True, "nodes": [self.node]},
            "workers": workers,
            "families": {
                "fanwire_connections": {"": len(self.conns)},
                "fanwire_worker_connections": {f'worker="{w["id"]}"': w["connections"] for w in workers},
                "fanwire_messages_in_total": lab("type", self.m_in),
                "fanwire_messages_out_total": lab("type", self.m_out),
                "fanwire_bytes_in_total": lab("type", self.b_in),
                "fanwire_bytes_out_total": lab("type", self.b_out),
                "fanwire_bus_frames_in_total": {"": sum(self.m_in.values()) // 2},
                "fanwire_bus_frames_out_total": {"": sum(self.m_in.values()) // 2},
                "fanwire_dropped_messages_total": lab("reason", self.dropped),
                "fanwire_errors_total": lab("code", self.errors),
                "fanwire_slow_consumers_total": {"": self.dropped.get("slow_consumer", 0)},
                "fanwire_heartbeat_timeouts_total": {"": 0},
                "fanwire_handshakes_refused_total": lab("reason", Counter({f"status_{k}": v for k, v in self.refused.items()})),
                "fanwire_workers": {"": self.workers},
                "fanwire_future_family_total": {'shape="unknown",x="1"': 7},  # unknown families must not break
                "fanwire_bus_up": {"": 1},
            },
        }

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            s = self.stream(STATS)
            if not s.members:
                continue
            snap = self.snapshot()
            self.snapshots.append(snap)
            out = s.append({"type": "publication", "room": STATS, "data": snap})
            for m in list(s.members):
                self._send(m, out)

    # --- test controls (thread-safe) -----------------------------------------------------------------

    def publish_chat(self, room: str, text: str, user: str = "server") -> int:
        """A chat published in ``room`` by nobody connected; returns its offset."""

        def go() -> int:
            s = self.stream(room)
            out = s.append({"type": "chat", "from": "0-0", "user": user, "room": room, "text": text,
                            "ts": int(time.time() * 1000)})
            for m in list(s.members):
                self._send(m, out)
            return int(out["offset"])

        return int(self.call(go))

    def drop_all(self, code: int | None = None, reason: str = "") -> None:
        """Drop every connection: abort the TCP connection (the browser sees 1006), or close with ``code``."""

        async def go() -> None:
            for c in list(self.conns):
                if code is None:
                    c.ws.transport.abort()
                else:
                    await c.ws.close(code, reason)

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(go(), self._loop).result(T(10))

    def refuse(self, status: int | None) -> None:
        """Refuse every handshake (and /connect-check) with ``status`` from now on; None accepts again."""
        self.refuse_status = status

    def reset_epoch(self, room: str) -> None:
        """The stream's history is lost: a new epoch, offsets from 1 again."""

        def go() -> None:
            s = self.stream(room)
            s.epoch, s.offset = _epoch(), 0
            s.history.clear()

        self.call(go)

    def reset_counters(self) -> None:
        """Fake a worker restart: every counter drops."""

        def go() -> None:
            for c in (self.m_in, self.m_out, self.b_in, self.b_out, self.errors, self.dropped):
                c.clear()

        self.call(go)

    def count_drop(self, reason: str, n: int = 1) -> None:
        self.call(lambda: self.dropped.update({reason: n}))

    def received(self, type_: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return self.call(lambda: [(s, m) for s, m in self.log if type_ is None or m["type"] == type_])

    def members(self, room: str) -> int:
        return int(self.call(lambda: len(self.stream(room).members)))
