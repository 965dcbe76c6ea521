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
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from . import cluster, codecs, metrics, migrate
from .admission import Gate, Refusal
from .bus import Bus, BusHandler, Publication
from .config import Config
from .connection import Conn
from .errors import BootError
from .hub import Hub
from .iptable import IpTable
from .metrics import Metrics
from .protocol import ALLOW_ALL, DEFAULT_ROOM, Policy, Publish, QueryStats, Session, error_msg, welcome_msg
from .ratelimit import KICK, RateLimiter
from .wsframe import build_frame

log = logging.getLogger("fanwire.worker")

EXIT_BOOT = 3  # a worker that cannot boot exits with this; the supervisor halts instead of restarting

HTTP_ROUTES = ("/healthz", "/metrics")
RESTART_HANDSHAKE_GRACE = 1.0  # seconds a stopping worker lets handshakes in flight finish (then 1012)


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
                 status_fd: int | None = None, node: str = "", ip_table: IpTable | None = None) -> None:
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
        if type(bus).interest is not Bus.interest:  # the bus routes by room: tell it which rooms are here
            self.hub.on_room = bus.interest
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
        # --- security and limits (docs/hardening.md), all off by default ---
        if cfg.max_conns_per_ip and ip_table is None:
            ip_table = IpTable(1)  # a worker started alone counts its own connections only
        self.ip_table = ip_table if cfg.max_conns_per_ip else None
        self.gate = Gate(cfg, self.ip_table)
        self.gated = self.gate.active
        self.rate_limited = bool(cfg.rate_limit or cfg.rate_limit_bytes)
        self.auth_on = bool(cfg.auth_secret)
        self.ssl: ssl.SSLContext | None = None
        if cfg.certfile and cfg.keyfile:
            from .tls import server_context

            self.ssl = server_context(cfg.certfile, cfg.keyfile)  # BootError: worker_main exits EXIT_BOOT
        self.tls_pending: dict[Conn, float] = {}  # accepted, TLS handshake not done yet -> accept time

    # --- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.hub.loop = loop
        self._stopped = loop.create_future()
        await self.bus.start(self)
        self._server = await loop.create_server(
            self._new_conn, sock=self.sock, backlog=self.cfg.backlog, ssl=self.ssl,
            ssl_handshake_timeout=self.cfg.handshake_timeout if self.ssl is not None else None)
        for sig, code in ((signal.SIGTERM, 1001), (signal.SIGINT, 1001), (signal.SIGHUP, 1012)):
            loop.add_signal_handler(sig, self.stop, code)
        # one write with its newline: workers share stdout, and an unbuffered print writes the newline apart
        print(f"fanwire: worker {self.id} pid {self.pid} listening on {self.cfg.url}"
              f" ({self.cfg.mode}, bus {self.bus.name})\n", end="", flush=True)
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
            # Closing a SO_REUSEPORT listener resets what its accept queue holds, unless the kernel
            # migrates it to another listener of the group (net.ipv4.tcp_migrate_req = 1). Without that,
            # accept the queue ourselves right before closing: those clients open, then get the close code.
            taken = 0 if migrate.migrate_req() else self._take_backlog()
            self._server.close()
            if taken:
                log.info("worker %d: took %d queued connections off the listener before closing it", self.id, taken)
        # handshakes in flight may finish (then they are closed like the others): nobody is refused
        grace = time.monotonic() + min(RESTART_HANDSHAKE_GRACE, self.cfg.shutdown_timeout / 2)
        while (self.handshaking or self.tls_pending) and time.monotonic() < grace:
            await asyncio.sleep(0.01)
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

    def _take_backlog(self) -> int:
        """Accept every connection queued on this worker's listener (bounded) and serve it."""
        n = 0
        while n < self.cfg.backlog:
            try:
                sock, _ = self.sock.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            sock.setblocking(False)
            self._spawn(self.loop.connect_accepted_socket(
                self._new_conn, sock, ssl=self.ssl,
                ssl_handshake_timeout=self.cfg.handshake_timeout if self.ssl is not None else None))
            n += 1
        return n

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
        wall = time.time() if self.auth_on else 0.0
        if self.tls_pending:
            self._sweep_tls(now)
        for c in list(self.hub.conns):
            if c.closing is not None:
                continue
            if wall and c.grant is not None and wall >= c.grant.expires:
                self.metrics.inc(self.metrics.policy_closes, "token_expired")
                c.close(1008, "token expired", "token_expired")
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

    def _new_conn(self) -> Conn:
        conn = Conn(self)
        if self.ssl is not None:
            self.tls_pending[conn] = time.monotonic()  # connection_made comes after the TLS handshake
        return conn

    def _sweep_tls(self, now: float) -> None:
        """Count TLS handshakes that never completed (the loop's TLS layer drops them silently)."""
        limit = now - self.cfg.handshake_timeout - 1.0
        stale = [c for c, t in self.tls_pending.items() if t < limit]
        for c in stale:
            del self.tls_pending[c]
            self.metrics.inc(self.metrics.refused, "tls_handshake")
            self.metrics.inc(self.metrics.handshakes_failed, "tls")  # type: ignore[arg-type]

    def on_connect(self, conn: Conn) -> None:
        # a stopping worker still serves what it accepted: the client opens, then gets 1001/1012
        if self.ip_table is not None:
            self.ip_table.add(conn.peer_ip, 1)
        timeout = self.cfg.handshake_timeout
        if self.ssl is not None:
            accepted = self.tls_pending.pop(conn, None)
            if accepted is not None:  # one deadline for the TLS and the WebSocket handshakes
                timeout = max(0.0, timeout - (time.monotonic() - accepted))
        self.handshaking.add(conn)
        conn.timer = self.loop.call_later(timeout, self._handshake_expired, conn)

    def _handshake_expired(self, conn: Conn) -> None:
        """Slowloris: no complete handshake in time. 408 if no request came at all, then close."""
        conn.timer = None
        if conn.is_open or conn.transport is None:
            return
        m = self.metrics
        if conn.proto.handshake_exc is None and not conn.eof and conn.closing is None:
            m.inc(m.refused, "handshake_timeout")
            m.inc(m.handshakes_failed, 408)  # type: ignore[arg-type]
            self._respond(conn, 408, "text/plain; charset=utf-8", b"handshake timeout\n")
            conn.closing = "handshake_timeout"
            conn.arm_abort()  # a client that does not read its 408 is dropped after close_timeout
        else:
            conn.transport.abort()  # a response is out already and the client keeps the socket open

    def on_request(self, conn: Conn, request: Request) -> None:
        path = request.path.partition("?")[0]
        proto = conn.proto
        if path in HTTP_ROUTES and "Upgrade" not in request.headers:
            self.metrics.inc(self.metrics.http_requests, path)
            conn.closing = "http"  # answered (maybe later: /metrics); the handshake timer only aborts it
            if path == "/healthz":
                self._respond(conn, 200, "application/json", orjson.dumps(self.health()))
            else:
                self._spawn(self._metrics_response(conn))
            return
        response = proto.accept(request)
        if response.status_code != 101:
            self.metrics.inc(self.metrics.handshakes_failed, response.status_code)  # type: ignore[arg-type]
            self.metrics.inc(self.metrics.refused, "bad_request")
            proto.send_response(response)
            conn.drain()
            return
        if self.gated:
            headers = request.headers
            origin = headers.get_all("Origin")
            authorization = headers.get_all("Authorization")
            if len(origin) > 1 or len(authorization) > 1:
                refusal: Refusal | None = Refusal(400, "bad_request", "duplicate Origin or Authorization header\n")
            else:
                refusal, conn.grant = self.gate.check(request.path, origin[0] if origin else None,
                                                      authorization[0] if authorization else None,
                                                      conn.peer_ip, len(self.hub.conns))
            if refusal is not None:
                self.refuse(conn, refusal)
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
        conn.opened_at = now = time.monotonic()
        grant = conn.grant
        if grant is not None:  # auth is on: the token decides the name and the rooms
            from .auth import GrantPolicy

            conn.policy = GrantPolicy(grant)
            conn.user = grant.user
            conn.user_fixed = True
            if not grant.may_use(DEFAULT_ROOM):
                conn.rooms = []
        if self.rate_limited:
            cfg = self.cfg
            conn.rl = RateLimiter(cfg.rate_limit, cfg.rate_limit_bytes, cfg.rate_burst, now)
        self.metrics.opened += 1
        self.hub.add(conn, conn.rooms)
        if not self.echo:
            welcome = welcome_msg(conn, self.id, self.node, int(time.time() * 1000), self.cfg.ping_interval,
                                  self.cfg.max_message_size)
            if grant is not None:
                welcome["user"] = grant.user
            conn.reply(welcome)
        if self.stopping:  # accepted while stopping (drained backlog, handshake in flight): send it on
            conn.close(self._stop_code, "server restarting" if self._stop_code == 1012 else "server shutting down",
                       self.stopping)

    def refuse(self, conn: Conn, refusal: Refusal) -> None:
        """Answer a handshake with an HTTP error saying why; counted by reason and by status."""
        m = self.metrics
        m.inc(m.refused, refusal.reason)
        m.inc(m.handshakes_failed, refusal.status)  # type: ignore[arg-type]
        response = conn.proto.reject(refusal.status, refusal.detail)
        for name, value in refusal.headers:
            response.headers[name] = value
        conn.proto.send_response(response)
        conn.drain()

    def over_rate(self, conn: Conn, verdict: int, data: bytes) -> None:
        """A message refused by the rate limit: an error reply (with the message's id), and a 1008 close
        if the client keeps going."""
        m = self.metrics
        rl = conn.rl
        assert rl is not None
        m.inc(m.rate_limited, rl.limit)
        if conn.closing is not None:  # already on its way out (kicked): drop quietly, count once
            return
        mid = None
        try:
            msg = codecs.decode(conn.codec, data)
            if type(msg) is dict and type(msg.get("id")) in (str, int):
                mid = msg["id"]
        except Exception:
            pass
        if rl.limit == "messages":
            detail = f"over the rate limit of {self.cfg.rate_limit:g} messages/s; message dropped"
        else:
            detail = f"over the rate limit of {self.cfg.rate_limit_bytes:g} bytes/s; message dropped"
        conn.reply(error_msg("rate_limited", detail, mid))
        if verdict == KICK:
            m.inc(m.policy_closes, "rate_limited")
            conn.close(1008, "rate limit exceeded", "rate_limited")

    def on_disconnect(self, conn: Conn) -> None:
        self.handshaking.discard(conn)
        if self.ip_table is not None:
            self.ip_table.add(conn.peer_ip, -1)
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
        merged = metrics.merge(s.get("metrics", {}) for s in snaps)  # this node's (others carry none)
        if self.cfg.bus == "redis":
            merged.update(cluster.metric_families(snaps))
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
            **cluster.stats_fields(snaps, self.node, self.cfg.worker_count, self.cfg.bus == "redis",
                                   self.bus.healthy()),
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
                status_fd: int | None, node: str, ip_table: IpTable | None = None) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    from .logs import setup_logging
    from .pipebus import PipeBus

    setup_logging(cfg.log_level, f"worker {worker_id}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        sock = bind_listener(cfg)
    except OSError as exc:
        return _boot_failed(f"worker {worker_id} cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                            status_fd)
    m = Metrics()
    bus: Bus = PipeBus(endpoint, worker_id, bus_socks, m)
    if cfg.bus == "redis":
        from .nodebus import cluster_bus

        bus = cluster_bus(cfg, node, worker_id, bus, m)
    if ip_table is not None:
        ip_table.bind(endpoint)
    try:
        worker = Worker(cfg, worker_id, sock, bus, m, status_fd, node, ip_table)
    except BootError as exc:
        return _boot_failed(f"worker {worker_id}: {exc}", status_fd)
    if cfg.loop == "uvloop":
        import uvloop

        uvloop.run(worker.run())
    else:
        asyncio.run(worker.run())
    return 0


def _boot_failed(msg: str, status_fd: int | None) -> int:
    """Say why this worker cannot boot (stderr, and the supervisor's status pipe); the exit code to use."""
    print(f"fanwire: error: {msg}", file=sys.stderr, flush=True)
    if status_fd is not None:
        try:
            os.write(status_fd, b"E" + msg.encode()[:400] + b"\n")
        except OSError:
            pass
    return EXIT_BOOT
