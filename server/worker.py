"""A worker process: binds its own SO_REUSEPORT listener, runs the event loop, serves connections.

Wires the pure parts (protocol, codecs, metrics) to the event loop: the hub for fan-out, the bus for the
other workers, HTTP routes on the same port, heartbeats, and a staged shutdown (stop accepting, close
clients with 1001 -- or 1012 for a restart --, wait up to the deadline, abort what is left).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from . import codecs, metrics
from .bus import Bus, BusHandler, Publication
from .config import Config
from .connection import Conn
from .hub import Hub
from .metrics import Metrics
from .protocol import ALLOW_ALL, Policy, Publish, QueryStats, Session, welcome_msg
from .wsframe import build_frame

log = logging.getLogger("fanwire.worker")

EXIT_BOOT = 3  # a worker that cannot boot exits with this; the supervisor halts instead of restarting

HTTP_ROUTES = ("/healthz", "/metrics")


def bind_listener(cfg: Config) -> socket.socket:
    """The worker's own listening socket, bound with SO_REUSEPORT on the shared address."""
    infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(cfg.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


SUBPROTOCOLS = [Subprotocol(p) for p in codecs.SUBPROTOCOLS]
_NO_HEADERS = Headers()


class FanwireServerProtocol(ServerProtocol):
    """websockets' server state machine with fanwire's subprotocol choice (a method, not a per-connection
    bound callable: it saves memory on every connection)."""

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        chosen = codecs.select_subprotocol(subprotocols)
        return None if chosen is None else Subprotocol(chosen)


class Worker(BusHandler):
    def __init__(self, cfg: Config, worker_id: int, sock: socket.socket, bus: Bus, metrics: Metrics,
                 status_fd: int | None = None, node: str = "") -> None:
        self.cfg = cfg
        self.id = worker_id
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.sock = sock
        self.bus = bus
        self.status_fd = status_fd
        self.node = node
        self.metrics = metrics
        self.hub: Hub[Conn] = Hub(self.metrics, cfg.max_queue)
        self.echo = cfg.mode == "echo"
        self.max_rooms = cfg.max_rooms
        self.policy: Policy = ALLOW_ALL
        self.started = time.monotonic()
        self.started_ms = int(time.time() * 1000)
        self.handshaking: set[Conn] = set()
        self.client_seq = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping: str | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._stop_code = 1001
        self._stopped: asyncio.Future[None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._extensions: list[Any] | None = None
        if cfg.compression:
            from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

            self._extensions = [ServerPerMessageDeflateFactory()]

    # --- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.hub.loop = loop
        self._stopped = loop.create_future()
        await self.bus.start(self)
        self._server = await loop.create_server(lambda: Conn(self), sock=self.sock, backlog=self.cfg.backlog)
        for sig, code in ((signal.SIGTERM, 1001), (signal.SIGINT, 1001), (signal.SIGHUP, 1012)):
            loop.add_signal_handler(sig, self.stop, code)
        print(f"fanwire: worker {self.id} pid {self.pid} listening on {self.cfg.url}"
              f" ({self.cfg.mode}, bus {self.bus.name})", flush=True)
        self._status(b"R")
        tick = max(0.05, min(self.cfg.ping_interval, self.cfg.ping_timeout, 1.0) / 2)
        loop.call_later(tick, self._heartbeat, tick)
        loop.call_later(0.5, self._liveness)
        await self._stopped
        await self._shutdown()

    def stop(self, code: int = 1001) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stop_code = code
            self._stopped.set_result(None)

    async def _shutdown(self) -> None:
        code = self._stop_code
        self.stopping = "restart" if code == 1012 else "shutdown"
        reason = "server restarting" if code == 1012 else "server shutting down"
        if self._server is not None:
            self._server.close()
        for conn in list(self.handshaking):
            conn.close(code, reason, self.stopping)
        for conn in list(self.hub.conns):
            conn.close(code, reason, self.stopping)
        self.hub.flush()
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        while (self.hub.conns or self.handshaking) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.hub.conns) + list(self.handshaking):
            conn.abort()
        await self.bus.close()
        for task in list(self.tasks):
            task.cancel()
        log.info("worker %d pid %d stopped", self.id, self.pid)

    def _status(self, msg: bytes) -> None:
        if self.status_fd is not None:
            try:
                os.write(self.status_fd, msg)
            except OSError:
                pass

    def _liveness(self) -> None:
        """Prove to the supervisor, from inside the loop, that the loop runs; exit if it is gone."""
        if os.getppid() != self.ppid and self.status_fd is not None:
            log.warning("worker %d: supervisor gone, stopping", self.id)
            self.stop(1001)
            return
        self._status(b"H")
        if self._stopped is not None and not self._stopped.done():
            self.loop.call_later(0.5, self._liveness)

    def _heartbeat(self, tick: float) -> None:
        now = time.monotonic()
        interval, timeout = self.cfg.ping_interval, self.cfg.ping_timeout
        for c in list(self.hub.conns):
            if c.closing is not None:
                continue
            if c.ping_at:
                if c.last_rx > c.ping_at:
                    c.ping_at = 0.0
                elif now - c.ping_at > timeout:
                    self.metrics.heartbeat_timeouts += 1
                    c.close(1011, "heartbeat timeout", "heartbeat_timeout")
                continue
            if now - c.last_rx >= interval:
                c.ping_at = now
                c.proto.send_ping(b"fanwire")
                c.drain()
        if self._stopped is not None and not self._stopped.done():
            self.loop.call_later(tick, self._heartbeat, tick)

    # --- connections --------------------------------------------------------------------------------

    def new_protocol(self) -> ServerProtocol:
        return FanwireServerProtocol(
            subprotocols=SUBPROTOCOLS,
            extensions=self._extensions,
            max_size=self.cfg.max_message_size,
            logger=logging.getLogger("websockets.server"),
        )

    def on_connect(self, conn: Conn) -> None:
        if self.stopping:
            conn.transport.abort()  # type: ignore[union-attr]
            return
        self.handshaking.add(conn)
        conn.timer = self.loop.call_later(self.cfg.handshake_timeout, self._handshake_expired, conn)

    def _handshake_expired(self, conn: Conn) -> None:
        conn.timer = None
        if not conn.is_open and conn.transport is not None:
            self.metrics.inc(self.metrics.handshakes_failed, "timeout")  # type: ignore[arg-type]
            conn.transport.abort()

    def on_request(self, conn: Conn, request: Request) -> None:
        path = request.path.partition("?")[0]
        proto = conn.proto
        if path in HTTP_ROUTES and "Upgrade" not in request.headers:
            self.metrics.inc(self.metrics.http_requests, path)
            if path == "/healthz":
                self._respond(conn, 200, "application/json", orjson.dumps(self.health()))
            else:
                self._spawn(self._metrics_response(conn))
            return
        response = proto.accept(request)
        if response.status_code != 101:
            self.metrics.inc(self.metrics.handshakes_failed, response.status_code)  # type: ignore[arg-type]
            proto.send_response(response)
            conn.drain()
            return
        proto.send_response(response)
        conn.drain()
        # websockets' parser generator keeps the request alive for the life of the connection: drop its
        # headers (~1.4 KB per idle connection)
        request.headers = _NO_HEADERS
        self.open(conn)

    def open(self, conn: Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.handshaking.discard(conn)
        conn.is_open = True
        conn.raw = not conn.proto.extensions
        conn.codec = codecs.codec_for_subprotocol(conn.proto.subprotocol)
        self.client_seq += 1
        conn.client_id = f"{self.id}-{self.client_seq:x}"
        conn.opened_at = time.monotonic()
        self.metrics.opened += 1
        self.hub.add(conn, conn.rooms)
        if not self.echo:
            conn.reply(welcome_msg(conn, self.id, self.node, int(time.time() * 1000), self.cfg.ping_interval,
                                   self.cfg.max_message_size))

    def on_disconnect(self, conn: Conn) -> None:
        self.handshaking.discard(conn)
        if conn.is_open:
            conn.is_open = False
            self.hub.remove(conn, conn.rooms)
            self.metrics.inc(self.metrics.closed, conn.close_code())  # type: ignore[arg-type]

    def _respond(self, conn: Conn, status: int, ctype: str, body: bytes) -> None:
        if conn.transport is None:
            return
        import email.utils
        import http

        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                           ("Content-Length", str(len(body))), ("Content-Type", ctype)])
        conn.proto.send_response(Response(status, http.HTTPStatus(status).phrase, headers, body))
        conn.drain()

    async def _metrics_response(self, conn: Conn) -> None:
        snaps = [self.stats_snapshot()] + await self.bus.gather_stats(self.cfg.stats_timeout)
        merged = metrics.merge(s.get("metrics", {}) for s in snaps)
        self._respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render(merged).encode())

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "worker": self.id, "pid": self.pid, "clients": len(self.hub.conns),
                "bus": "ok" if self.bus.healthy() else "degraded", "peers": self.bus.peer_count(),
                "mode": self.cfg.mode, "node": self.node}

    # --- messages -----------------------------------------------------------------------------------

    def echo_message(self, conn: Conn, data: bytes, text: bool) -> None:
        if text:
            try:
                data.decode()
            except UnicodeDecodeError:
                conn.fail(1007, "invalid UTF-8 in a text frame")
                return
        if conn.raw:
            self.hub.push(conn, build_frame(1 if text else 2, data))
        elif text:
            conn.proto.send_text(data)
            conn.drain()
        else:
            conn.proto.send_binary(data)
            conn.drain()
        conn.msgs_out += 1
        self.metrics.count_in("echo", len(data))
        self.metrics.count_out("echo", 1, len(data))

    def publish(self, conn: Conn, action: Publish) -> None:
        msg = action.msg
        try:
            payload = codecs.encode_json(msg)
        except Exception as exc:
            detail = getattr(exc, "detail", "value not representable in JSON")
            conn.reply({"type": "error", "code": "bad_message", "detail": detail})
            return
        room = action.room
        m = self.metrics
        m.inc(m.publishes, "room" if room is not None else "all")
        self.hub.deliver(room, payload, msg["type"])
        self.bus.publish(Publication(room, payload, msg["ts"], str(self.id)))

    def on_publication(self, pub: Publication) -> None:
        self.hub.deliver(pub.room, pub.payload, "chat" if pub.room is not None else "broadcast")

    # --- stats --------------------------------------------------------------------------------------

    def stats_snapshot(self) -> dict[str, Any]:
        m = self.metrics
        uptime = time.monotonic() - self.started
        rooms = self.hub.room_counts()
        return {
            "id": self.id,
            "pid": self.pid,
            "node": self.node,
            "clients": len(self.hub.conns),
            "messages_in": m.total_in(),
            "messages_out": m.total_out(),
            "rooms": rooms,
            "uptime_s": round(uptime, 3),
            "metrics": m.snapshot(len(self.hub.conns), len(rooms), self.id, round(uptime, 3),
                                  self.bus.healthy()),
        }

    def query_stats(self, conn: Conn, q: QueryStats) -> None:
        self._spawn(self._stats_reply(conn, q))

    async def _stats_reply(self, conn: Session, q: QueryStats) -> None:
        snaps = [self.stats_snapshot()] + await self.bus.gather_stats(self.cfg.stats_timeout)
        snaps.sort(key=lambda s: (str(s.get("node", "")), int(s.get("id", 0))))
        rooms: dict[str, int] = {}
        for s in snaps:
            for room, n in s.get("rooms", {}).items():
                rooms[room] = rooms.get(room, 0) + n
        c: Conn = conn  # type: ignore[assignment]
        reply: dict[str, Any] = {
            "type": "stats",
            "clients": sum(int(s.get("clients", 0)) for s in snaps),
            "workers": [{"id": s.get("id"), "pid": s.get("pid"), "node": s.get("node"),
                         "clients": s.get("clients"), "messages_in": s.get("messages_in"),
                         "messages_out": s.get("messages_out"), "rooms": len(s.get("rooms", {}))}
                        for s in snaps],
            "rooms": rooms,
            "uptime_s": max(float(s.get("uptime_s", 0)) for s in snaps),
            "partial": len(snaps) < self.cfg.worker_count,
            "you": {"client_id": c.client_id, "messages_in": c.msgs_in, "messages_out": c.msgs_out,
                    "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
                    "connected_s": round(time.monotonic() - c.opened_at, 3), "rooms": list(c.rooms)},
        }
        if q.data is not None:
            reply["data"] = q.data
        if q.id is not None:
            reply["id"] = q.id
        c.reply(reply)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def worker_main(cfg: Config, worker_id: int, endpoint: int, bus_socks: dict[int, socket.socket],
                status_fd: int | None, node: str) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    from .logs import setup_logging
    from .pipebus import PipeBus

    setup_logging(cfg.log_level, f"worker {worker_id}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        sock = bind_listener(cfg)
    except OSError as exc:
        msg = f"worker {worker_id} cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
        print(f"fanwire: error: {msg}", file=sys.stderr, flush=True)
        if status_fd is not None:
            try:
                os.write(status_fd, b"E" + msg.encode()[:400] + b"\n")
            except OSError:
                pass
        return EXIT_BOOT
    m = Metrics()
    bus: Bus = PipeBus(endpoint, worker_id, bus_socks, m)
    worker = Worker(cfg, worker_id, sock, bus, m, status_fd, node)
    if cfg.loop == "uvloop":
        import uvloop

        uvloop.run(worker.run())
    else:
        asyncio.run(worker.run())
    return 0
