"""The supervisor: forks the workers, watches them, signals them, reaps them. Runs no event loop.

Signal handlers only enqueue the signal; the main loop wakes on a self-pipe (or a timeout), dispatches
``handle_<signal>`` and reads each worker's status pipe (R = ready, H = alive, E... = boot error).

- A worker that dies is replaced in the same slot at once (it reuses its bus endpoint).
- A worker that dies before it was ever ready, or exits with EXIT_BOOT, halts everything with a clear
  message and a non-zero exit: no restart loop. So does a slot that crashes too often.
- SIGINT/SIGTERM: stop. Workers get SIGTERM (close clients with 1001), then SIGKILL after the deadline.
- SIGHUP: rolling restart, one slot at a time: the new worker (on the spare bus endpoint) is ready before
  the old one is told to leave (SIGHUP: it closes its clients with 1012).

Why this module is long: forking, status pipes, reaping, rolling restarts and the stop sequence are one
loop over one process table; gunicorn's arbiter, the model, is three times as long.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from types import FrameType

from .application import App
from .bus import pipeframe as busframe
from .bus.pipebus import MAX_PACKET, make_mesh
from .bus.registry import is_cluster
from .config import Config
from .errors import BootError
from .listener import enable_migrate_req
from .logs import lifecycle
from .security.iptable import IpTable
from .security.portlock import lock_port
from .worker import EXIT_BOOT, worker_main

log = logging.getLogger("fanwire.supervisor")

CRASH_WINDOW_S = 30.0
CRASH_LIMIT = 10


@dataclass
class WorkerProc:
    slot: int
    endpoint: int
    pid: int
    status_fd: int
    started: float
    ready: bool = False
    last_beat: float = 0.0
    retiring: bool = False
    boot_error: str = ""
    killed: str = ""  # why the supervisor itself killed it, if it did
    buf: bytes = b""


@dataclass
class Supervisor:
    """Forks the workers, watches their status pipes, handles signals (stop, rolling restart), reaps and
    replaces them; holds the bus mesh and the per-address table they share. Runs no event loop."""

    cfg: Config
    node: str = ""
    app: App | None = None  # the application every worker runs (inherited through fork)
    ready_fd: int | None = None  # told "<url>\n" once every worker is ready (a Server in the background)
    procs: dict[int, WorkerProc] = field(default_factory=dict)  # by pid
    slots: dict[int, WorkerProc] = field(default_factory=dict)  # the current worker of each slot
    signals: deque[int] = field(default_factory=deque)
    crashes: dict[int, list[float]] = field(default_factory=dict)
    exit_code: int = 0
    announced: bool = False
    stopping: bool = False
    restart_queue: deque[int] = field(default_factory=deque)
    replacing: dict[int, WorkerProc] = field(default_factory=dict)  # slot -> old proc during a restart

    def __post_init__(self) -> None:
        self.n = self.cfg.worker_count
        self.endpoints = self.n + 1  # one spare for rolling restarts
        self.mesh = make_mesh(self.endpoints)
        self.free_endpoints = {self.n}
        # connections per client address, shared by all workers (one row per bus endpoint)
        self.ip_table = IpTable(self.endpoints) if self.cfg.max_conns_per_ip else None
        self.node = self.node or self.cfg.node_id or default_node_id(self.cfg.host, self.cfg.port, self.cfg.bus)
        self._lock: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- main loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        lock = None
        if self.cfg.port:
            try:
                lock = lock_port(self.cfg.port)
            except BootError as exc:
                lifecycle.error("%s; not starting", exc)
                return 1
        self._lock = lock
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._enqueue)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        log.info("supervisor pid %d starting %d workers on %s", os.getpid(), self.n, self.cfg.url)
        if self.cfg.tcp_migrate_req:
            log.info("net.ipv4.tcp_migrate_req: %s", enable_migrate_req())
        for slot in range(self.n):
            self.spawn(slot, slot)
        while True:
            fds = [self._wake_r] + [p.status_fd for p in self.procs.values()]
            try:
                readable, _, _ = select.select(fds, [], [], 0.25)
            except InterruptedError:
                readable = []
            if self._wake_r in readable:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            for p in list(self.procs.values()):
                if p.status_fd in readable:
                    self._read_status(p)
            while self.signals:
                signum = self.signals.popleft()
                getattr(self, f"handle_{signal.Signals(signum).name.lower()}")()
            self.reap()
            if self.stopping:
                break
            self._check_workers()
        return self._stop_all()

    def _enqueue(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def handle_sigint(self) -> None:
        log.info("SIGINT: stopping")
        self.stopping = True

    def handle_sigterm(self) -> None:
        log.info("SIGTERM: stopping")
        self.stopping = True

    def handle_sighup(self) -> None:
        log.info("SIGHUP: rolling restart of %d workers", self.n)
        for slot in range(self.n):
            if slot not in self.restart_queue and slot not in self.replacing:
                self.restart_queue.append(slot)
        self._next_restart()

    def handle_sigchld(self) -> None:
        pass  # reap() runs on every wake-up

    # --- workers ------------------------------------------------------------------------------------

    def spawn(self, slot: int, endpoint: int, takeover: bool = False) -> WorkerProc:
        """Fork the worker of ``slot`` on bus ``endpoint``; ``takeover``: a live predecessor hands its streams
        over to it (a rolling restart)."""
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                signal.set_wakeup_fd(-1)
                os.close(self._wake_r)
                os.close(self._wake_w)
                if self._lock is not None:
                    self._lock.close()
                for p in self.procs.values():
                    os.close(p.status_fd)
                for ep, socks in self.mesh.items():
                    if ep != endpoint:
                        for s in socks.values():
                            s.close()
                if self.ready_fd is not None:
                    os.close(self.ready_fd)
                code = worker_main(self.cfg, slot, endpoint, self.mesh[endpoint], w, self.node, self.ip_table,
                                   takeover, self.app)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        now = time.monotonic()
        proc = WorkerProc(slot, endpoint, pid, r, now, last_beat=now)
        self.procs[pid] = proc
        self.slots[slot] = proc
        log.debug("spawned worker %d pid %d (bus endpoint %d)", slot, pid, endpoint)
        return proc

    def _read_status(self, p: WorkerProc) -> None:
        try:
            data = os.read(p.status_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return
        p.buf += data
        while p.buf:
            c = p.buf[:1]
            if c == b"E":
                line, nl, rest = p.buf[1:].partition(b"\n")
                if not nl:
                    return
                p.boot_error = line.decode(errors="replace")
                p.buf = rest
                continue
            p.buf = p.buf[1:]
            if c == b"R":
                p.ready = True
                p.last_beat = time.monotonic()
                self._on_ready(p)
            elif c == b"H":
                p.last_beat = time.monotonic()

    def _on_ready(self, p: WorkerProc) -> None:
        old = self.replacing.pop(p.slot, None)
        if old is not None and old.pid in self.procs:
            log.info("worker %d: new pid %d ready, retiring pid %d", p.slot, p.pid, old.pid)
            old.retiring = True
            _kill(old.pid, signal.SIGHUP)
        if not self.announced and all(s.ready for s in self.slots.values()) and len(self.slots) == self.n:
            self.announced = True
            lifecycle.info("ready, %d worker%s on %s (supervisor pid %d)", self.n, "" if self.n == 1 else "s",
                           self.cfg.url, os.getpid())
            if self.ready_fd is not None:
                try:
                    os.write(self.ready_fd, f"{self.cfg.url}\n".encode())
                except OSError as exc:
                    log.debug("ready pipe: %s", exc)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            p = self.procs.pop(pid, None)
            if p is None:
                continue
            self._read_status(p)
            os.close(p.status_fd)
            if self.ip_table is not None:
                self.ip_table.clear(p.endpoint)  # its connections are gone with it
            self._say_bye(p)
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                how = f"killed by signal {signal.Signals(sig).name}"
                if p.killed:
                    how += f" (killed by the supervisor: {p.killed})"
                elif sig == signal.SIGKILL and not self.stopping:
                    how += " (not by the supervisor: perhaps out of memory?)"
                code = -sig
            else:
                code = os.WEXITSTATUS(status)
                how = f"exited with code {code}"
            if self.stopping:
                log.info("worker %d pid %d %s", p.slot, pid, how)
                continue
            if p.retiring:
                log.info("worker %d pid %d retired (%s)", p.slot, pid, how)
                self.free_endpoints.add(p.endpoint)
                self._next_restart()
                continue
            old = self.replacing.get(p.slot)
            if old is not None and self.slots.get(p.slot) is p and not p.ready:
                # a rolling restart's new worker failed to boot (bad new certificate...): keep the old one
                del self.replacing[p.slot]
                self.slots[p.slot] = old
                self.free_endpoints.add(p.endpoint)
                self.restart_queue.clear()
                lifecycle.error("rolling restart aborted: new worker %d failed to boot: %s; the running workers "
                                "keep serving", p.slot, p.boot_error or how)
                continue
            if code == EXIT_BOOT or not p.ready:
                reason = p.boot_error or how
                lifecycle.error("worker %d failed to boot: %s; stopping", p.slot, reason)
                self.exit_code = 1
                self.stopping = True
                continue
            log.warning("worker %d pid %d %s; restarting it", p.slot, pid, how)
            history = [t for t in self.crashes.get(p.slot, []) if time.monotonic() - t < CRASH_WINDOW_S]
            history.append(time.monotonic())
            self.crashes[p.slot] = history
            if len(history) > CRASH_LIMIT:
                lifecycle.error("worker %d crashed %d times in %.0fs; stopping", p.slot, len(history),
                                CRASH_WINDOW_S)
                self.exit_code = 1
                self.stopping = True
                continue
            if self.slots.get(p.slot) is p:
                self.spawn(p.slot, p.endpoint)
            else:
                self.free_endpoints.add(p.endpoint)

    def _say_bye(self, p: WorkerProc) -> None:
        """Tell the other workers at once that this one is gone, on its behalf: a BYE from its bus endpoint
        (the supervisor holds every end of the mesh). Without it they would keep sending to it."""
        pkts = list(busframe.packets([busframe.record(busframe.BYE, p.endpoint, int(time.time() * 1000))],
                                     MAX_PACKET))
        for peer, sock in self.mesh[p.endpoint].items():
            for pkt in pkts:
                try:
                    sock.send(pkt, socket.MSG_DONTWAIT)
                except OSError as exc:  # that peer's buffer is full: it will notice the HELLO of the successor
                    log.debug("bye to endpoint %d: %s", peer, exc)

    def _next_restart(self) -> None:
        if self.replacing or self.stopping or not self.restart_queue or not self.free_endpoints:
            return
        slot = self.restart_queue.popleft()
        old = self.slots.get(slot)
        endpoint = self.free_endpoints.pop()
        if old is not None:
            self.replacing[slot] = old
        self.spawn(slot, endpoint, takeover=old is not None)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for p in list(self.procs.values()):
            if not p.ready and now - p.started > self.cfg.worker_boot_timeout:
                log.error("worker %d pid %d not ready after %.0fs; killing it", p.slot, p.pid,
                          self.cfg.worker_boot_timeout)
                p.boot_error = f"not ready after {self.cfg.worker_boot_timeout:.0f}s"
                p.killed = p.boot_error
                _kill(p.pid, signal.SIGKILL)
            elif p.ready and not p.retiring and now - p.last_beat > self.cfg.worker_liveness_timeout:
                log.error("worker %d pid %d unresponsive for %.0fs; killing it", p.slot, p.pid,
                          now - p.last_beat)
                p.killed = f"unresponsive for {now - p.last_beat:.0f}s"
                _kill(p.pid, signal.SIGKILL)

    def _stop_all(self) -> int:
        for p in self.procs.values():
            _kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.shutdown_timeout + 2.0
        while self.procs and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        for p in list(self.procs.values()):
            log.warning("worker %d pid %d did not stop in time; killing it", p.slot, p.pid)
            _kill(p.pid, signal.SIGKILL)
        while self.procs:
            self.reap()
            time.sleep(0.01)
        log.info("supervisor stopped")
        return self.exit_code


def default_node_id(host: str, port: int, bus: str) -> str:
    """A node's name when ``--node-id`` is not given. Within a cluster it must be unique (a node drops what
    carries its own name, as the pipe bus delivered it already), hence the machine name and the pid."""
    if is_cluster(bus):
        return f"{socket.gethostname()}:{port}:{os.getpid()}"
    return f"{host}:{port}"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
