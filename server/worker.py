"""A worker process: binds its own SO_REUSEPORT listener, runs the event loop, serves connections.

The worker is the wiring and the lifecycle; each concern lives in its own module:

- :mod:`.conns` (:class:`~server.conns.ConnHost`): accept, admit, open and close connections;
- :mod:`.http.routes`: what a request head leads to (a WebSocket, ``/healthz``, ``/metrics``);
- :mod:`.handlers` and :mod:`.messaging`: what a message does (one handler per ``--mode``);
- :mod:`.hub`: rooms and fan-out; :mod:`.bus`: the other workers and nodes;
- :mod:`.heartbeat`: pings, heartbeat timeouts, token expiry.

Lifecycle: boot (listen, bus, ready), serve, and a staged shutdown (stop accepting, close clients with
1001 -- or 1012 for a restart --, wait up to the deadline, abort what is left).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from . import listener, loops, tuning
from .application import App
from .bus import Bus
from .bus import registry as buses
from .config import Config
from .connection import Conn
from .conns import ConnHost
from .errors import BootError
from .handlers import MODES
from .heartbeat import Heartbeat
from .http.api import Api
from .http.routes import Router
from .http.static import Files
from .hub import Hub
from .logs import lifecycle
from .looplag import LoopLag
from .messaging import Messaging
from .metrics import Metrics
from .security.iptable import IpTable
from .statsfeed import StatsFeed

log = logging.getLogger("fanwire.worker")

EXIT_BOOT = 3  # a worker that cannot boot exits with this; the supervisor halts instead of restarting

RESTART_HANDSHAKE_GRACE = 1.0  # seconds a stopping worker lets handshakes in flight finish (then 1012)


class Worker:
    """One worker process: its listener, its connections (:class:`ConnHost`), its hub and bus, its
    heartbeat, and its lifecycle (run, stop, staged shutdown)."""

    def __init__(self, cfg: Config, worker_id: int, sock: socket.socket, bus: Bus, metrics: Metrics,
                 status_fd: int | None = None, node: str = "", ip_table: IpTable | None = None,
                 app: App | None = None) -> None:
        self.cfg = cfg
        self.id = worker_id
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.sock = sock
        self.bus = bus
        self.status_fd = status_fd
        self.node = node
        self.metrics = metrics
        self.hub: Hub[Conn] = Hub(metrics, cfg.max_queue)
        self.hub.on_members = bus.room_members
        self.hub.before_flush = bus.send_now
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._stopped: asyncio.Future[None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self.started = time.monotonic()
        self.host = ConnHost(cfg, worker_id, node, self.hub, metrics, ip_table)
        self.messaging = Messaging(self.hub, bus, metrics, worker_id=worker_id, node=node,
                                   max_rooms=cfg.max_rooms, stats_timeout=cfg.stats_timeout,
                                   worker_count=cfg.worker_count, cluster_bus=buses.is_cluster(cfg.bus),
                                   spawn=self.spawn, app=app if app is not None and not app.empty else None,
                                   presence_max_members=cfg.presence_max_members)
        self.messaging.pid = self.pid
        self.host.messaging = self.messaging
        self.host.on_message = MODES[cfg.mode](self.messaging)
        self.extension_factories: list[Any] | None = None
        if cfg.compression:
            from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

            self.extension_factories = [ServerPerMessageDeflateFactory()]
        self.host.router = Router(self, Api(cfg, self.messaging, metrics, self.spawn), Files.load())
        self.ssl: ssl.SSLContext | None = None
        if cfg.certfile and cfg.keyfile:
            from .security.tls import server_context

            self.ssl = server_context(cfg.certfile, cfg.keyfile)  # BootError: worker_main exits EXIT_BOOT
            self.host.with_tls = True
        self.heartbeat: Heartbeat | None = None
        self.release_memory = tuning.MemoryRelease()

    # --- the router's owner ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "worker": self.id, "pid": self.pid, "clients": len(self.hub.conns),
                "bus": "ok" if self.bus.healthy() else "degraded", "peers": self.bus.peer_count(),
                "mode": self.cfg.mode, "node": self.node}

    async def metrics_text(self) -> str:
        return await self.messaging.metrics_text()

    def admit(self, conn: Conn, request: Any) -> Any:
        return self.host.admit(conn, request)

    def open(self, conn: Conn, request: Any) -> None:
        self.host.open(conn, request)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.hub.loop = loop
        self.host.loop = loop
        self._stopped = loop.create_future()
        await self.bus.start(self.messaging)
        self._server = await loop.create_server(
            self.host.new_conn, sock=self.sock, backlog=self.cfg.backlog, ssl=self.ssl,
            ssl_handshake_timeout=self.cfg.handshake_timeout if self.ssl is not None else None)
        for sig, code in ((signal.SIGTERM, 1001), (signal.SIGINT, 1001), (signal.SIGHUP, 1012)):
            loop.add_signal_handler(sig, self.stop, code)
        lifecycle.info("worker %d pid %d listening on %s (%s, bus %s)", self.id, self.pid, self.cfg.url,
                       self.cfg.mode, self.bus.name)
        self._status(b"R")
        self.heartbeat = Heartbeat(loop, self.hub.conns, self.metrics, self.cfg.ping_interval,
                                   self.cfg.ping_timeout, bool(self.cfg.auth_secret), self._periodic)
        self.heartbeat.start()
        self.messaging.looplag = looplag = LoopLag(loop)
        looplag.start()
        self.messaging.statsfeed = statsfeed = StatsFeed(self.messaging, loop, self.spawn)
        statsfeed.start()
        loop.call_later(0.5, self._liveness)
        await self._stopped
        await self._shutdown()

    def _periodic(self, now: float) -> None:
        """Upkeep on each heartbeat tick: TLS handshakes that never completed, the bus's history and dedup,
        the free heap given back now and then (see server/tuning.py)."""
        self.host.sweep_tls(now)
        self.bus.prune(now)
        self.release_memory(now)

    def stop(self, code: int = 1001) -> None:
        if self._stopped is not None and not self._stopped.done():
            self.host.stop_code = code
            self._stopped.set_result(None)

    async def _shutdown(self) -> None:
        host = self.host
        code = host.stop_code
        host.stopping = "restart" if code == 1012 else "shutdown"
        if code == 1012:  # a rolling restart: the streams this worker sequences go to its successor first
            try:
                await self.bus.hand_over()
            except Exception:
                log.exception("worker %d: handing its streams over failed; they will start new epochs", self.id)
        reason = "server restarting" if code == 1012 else "server shutting down"
        if self._server is not None:
            # Closing a SO_REUSEPORT listener resets what its accept queue holds, unless the kernel
            # migrates it to another listener of the group (net.ipv4.tcp_migrate_req = 1). Without that,
            # accept the queue ourselves right before closing: those clients open, then get the close code.
            taken = 0 if listener.migrate_req() else self._take_backlog()
            self._server.close()
            if taken:
                log.info("worker %d: took %d queued connections off the listener before closing it", self.id, taken)
        # handshakes in flight may finish (then they are closed like the others): nobody is refused
        grace = time.monotonic() + min(RESTART_HANDSHAKE_GRACE, self.cfg.shutdown_timeout / 2)
        while (host.handshaking or host.tls_pending) and time.monotonic() < grace:
            await asyncio.sleep(0.01)
        for conn in list(host.handshaking):
            conn.close(code, reason, host.stopping)
        for conn in list(self.hub.conns):
            conn.close(code, reason, host.stopping)
        self.hub.flush()
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        while (self.hub.conns or host.handshaking) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.hub.conns) + list(host.handshaking):
            conn.abort()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.messaging.statsfeed is not None:
            self.messaging.statsfeed.stop()
        if self.messaging.looplag is not None:
            self.messaging.looplag.stop()
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
            self.spawn(self._serve_accepted(sock))
            n += 1
        return n

    async def _serve_accepted(self, sock: socket.socket) -> None:
        await self.loop.connect_accepted_socket(
            self.host.new_conn, sock, ssl=self.ssl,
            ssl_handshake_timeout=self.cfg.handshake_timeout if self.ssl is not None else None)

    def _status(self, msg: bytes) -> None:
        if self.status_fd is not None:
            try:
                os.write(self.status_fd, msg)
            except OSError as exc:
                log.debug("status pipe: %s", exc)

    def _liveness(self) -> None:
        """Prove to the supervisor, from inside the loop, that the loop runs; exit if it is gone."""
        if os.getppid() != self.ppid and self.status_fd is not None:
            log.warning("worker %d: supervisor gone, stopping", self.id)
            self.stop(1001)
            return
        self._status(b"H")
        if self._stopped is not None and not self._stopped.done():
            self.loop.call_later(0.5, self._liveness)


def worker_main(cfg: Config, worker_id: int, endpoint: int, bus_socks: dict[int, socket.socket],
                status_fd: int | None, node: str, ip_table: IpTable | None = None, takeover: bool = False,
                app: App | None = None) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    from .logs import setup_logging

    setup_logging(cfg.log_level, f"worker {worker_id}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        sock = listener.bind_listener(cfg)
    except OSError as exc:
        return _boot_failed(f"worker {worker_id} cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                            status_fd)
    m = Metrics()
    try:
        bus = buses.make(cfg.bus, cfg.bus_settings(node, worker_id, endpoint, takeover), bus_socks, m)
        if ip_table is not None:
            ip_table.bind(endpoint)
        worker = Worker(cfg, worker_id, sock, bus, m, status_fd, node, ip_table, app)
    except BootError as exc:
        return _boot_failed(f"worker {worker_id}: {exc}", status_fd)
    tuning.tune_worker(cfg.loop)  # the allocator and the collector (see server/tuning.py)
    loops.run(cfg.loop, worker.run())
    return 0


def _boot_failed(msg: str, status_fd: int | None) -> int:
    """Say why this worker cannot boot (stderr, and the supervisor's status pipe); the exit code to use."""
    lifecycle.error("%s", msg)
    if status_fd is not None:
        try:
            os.write(status_fd, b"E" + msg.encode()[:400] + b"\n")
        except OSError:
            pass  # the supervisor is gone too: nobody to tell
    return EXIT_BOOT
