"""The servers under test, as child processes: fanwire (``python -m server``) and its peers.

The harness sees a server only as a process: it starts it on a free port, waits for its ready line,
learns the pids that do the work (fanwire's workers, from their ``listening`` lines), pins them to their
cores, reads their CPU time and memory from /proc, and stops it with SIGTERM (SIGKILL after a deadline).
Output goes to log files under ``<out>/tmp/``, never to a pipe, so no thread has to drain it.

:data:`TARGETS` is the table of everything a scenario can start, by short name. ``server`` is the name a
figure is filed under in a result's ``summary`` (fanwire in echo mode is still "fanwire"; websockets'
echo server on uvloop is the informed-user baseline), ``protocol`` says what the load may send it:

- ``chat``: the fanwire protocol (ping/pong, broadcast): fanwire, and the two websockets baselines;
- ``echo``: a plain WebSocket echo: ``fanwire --mode echo``, websockets' echo on uvloop, picows;
- ``relay``: every data message goes to every connection, as is: the raw-socket floor of fan-out.

``ceiling`` (the same module as the floor, ``--mode pong``) answers the chat protocol's ping only: the
raw-socket ceiling of JSON ping/pong, which the throughput scenario runs for its 64 B JSON figure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procstat import CorePlan, pin, rss_bytes

ROOT = Path(__file__).resolve().parent.parent

_WORKER_RE = re.compile(r"fanwire: worker (\d+) pid (\d+) listening")
_FANWIRE_READY_RE = re.compile(r"fanwire: ready, .*supervisor pid (\d+)")
_PEER_READY_RE = re.compile(r"(\S+): ready on ws://\S+ \(pid (\d+)\)")


@dataclass(frozen=True, slots=True)
class Target:
    """One server the harness can start."""

    name: str
    server: str  # the name its figures are filed under in a summary
    label: str  # for charts and tables
    argv: Callable[[str, int, int], list[str]]  # (host, port, workers) -> arguments after the interpreter
    protocol: str  # "chat", "echo" or "relay"
    multi: bool = False  # honours the worker count (else: always one process)
    welcome: bool = False  # sends a welcome message that names the worker
    needs: str = ""  # a module that must be importable (an optional peer)

    def missing(self) -> str:
        """Why this target cannot run here ("" when it can)."""
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed (pip install -e '.[bench]')"
        return ""


def _fanwire(mode: str) -> Callable[[str, int, int], list[str]]:
    def argv(host: str, port: int, workers: int) -> list[str]:
        return ["-m", "server", "--host", host, "--port", str(port), "--workers", str(workers), "--mode", mode,
                "--log-level", "warning"]
    return argv


def _module(module: str, *extra: str) -> Callable[[str, int, int], list[str]]:
    def argv(host: str, port: int, workers: int) -> list[str]:
        return ["-m", module, "--host", host, "--port", str(port), *extra]
    return argv


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("fanwire", "fanwire", "fanwire", _fanwire("chat"), "chat", multi=True, welcome=True),
    Target("fanwire-echo", "fanwire", "fanwire --mode echo", _fanwire("echo"), "echo", multi=True),
    Target("baseline", "baseline", "websockets, as documented (asyncio, json)",
           _module("bench.baseline_server"), "chat"),
    Target("baseline-uvloop", "baseline-uvloop", "websockets + uvloop + orjson",
           _module("bench.baseline_server", "--loop", "uvloop", "--json", "orjson"), "chat"),
    Target("websockets-echo", "baseline-uvloop", "websockets echo on uvloop",
           _module("bench.baseline_server", "--loop", "uvloop", "--mode", "echo"), "echo"),
    Target("picows-echo", "picows", "picows echo (uvloop)", _module("bench.picows_server"), "echo",
           needs="picows"),
    Target("floor", "floor", "raw-socket floor (no validation)", _module("bench.floor_server"), "relay"),
    Target("ceiling", "ceiling", "raw-socket ceiling (a JSON pong, no validation)",
           _module("bench.floor_server", "--mode", "pong"), "chat"),
)}

# the order of every chart's legend and table column
SERVER_ORDER = ("fanwire", "baseline", "baseline-uvloop", "picows", "floor", "ceiling")
SERVER_LABELS = {"fanwire": "fanwire", "baseline": "websockets, as documented",
                 "baseline-uvloop": "websockets + uvloop + orjson", "picows": "picows", "floor": "raw-socket floor",
                 "ceiling": "raw-socket ceiling"}


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (a SO_REUSEPORT group cannot bind port 0 together)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """One server under test, by target name (:data:`TARGETS`); ``workers`` only counts for a target that
    honours it. Use as a context manager: it always stops what it started."""

    def __init__(self, target: str, workers: int = 1, *, mode: str | None = None, host: str = "127.0.0.1",
                 extra_args: Sequence[str] = (), log_dir: Path | None = None, plan: CorePlan | None = None,
                 start_timeout: float = 30.0) -> None:
        if mode is not None and mode != "chat":  # the older spelling: Server("fanwire", mode="echo")
            target = f"{target}-{mode}"
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
        self.spec = TARGETS[target]
        self.target = target
        self.workers = workers if self.spec.multi else 1
        self.host = host
        self.port = 0
        self.extra_args = list(extra_args)
        self.log_dir = log_dir or ROOT / "results" / "tmp"
        self.plan = plan
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: list[int] = []
        self.log_path: Path | None = None

    @property
    def mode(self) -> str:
        """What the load may send it: "chat", "echo" or "relay"."""
        return self.spec.protocol

    @property
    def kind(self) -> str:
        """The server this target's figures are filed under ("fanwire", "baseline", ...)."""
        return self.spec.server

    # --- lifecycle --------------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, *self.spec.argv(self.host, self.port, self.workers), *self.extra_args]

    def start(self) -> Server:
        missing = self.spec.missing()
        if missing:
            raise ServerError(f"{self.target}: {missing}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        last_exc: Exception | None = None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port(self.host)
            self.log_path = self.log_dir / f"{self.target}-{self.port}.log"
            try:
                self._spawn()
                break
            except ServerError as exc:
                last_exc = exc
                self.stop()
        else:
            raise ServerError(f"{self.target} did not start: {last_exc}")
        if self.plan is not None:
            self.apply_plan(self.plan)
        return self

    def _spawn(self) -> None:
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if self.spec.server == "fanwire":
                if _FANWIRE_READY_RE.search(text):
                    self.worker_pids = [int(pid) for _, pid in sorted(
                        ((int(w), p) for w, p in _WORKER_RE.findall(text)))]
                    if len(self.worker_pids) != self.workers:
                        raise ServerError(f"expected {self.workers} workers, saw {len(self.worker_pids)}")
                    return
            elif _PEER_READY_RE.search(text):
                self.worker_pids = [self.proc.pid]
                return
            if self.proc.poll() is not None:
                raise ServerError(f"exited with {self.proc.returncode}: {text[-800:]}")
            time.sleep(0.02)
        raise ServerError(f"not ready after {self.start_timeout:.0f}s")

    def apply_plan(self, plan: CorePlan) -> None:
        for pid, cpus in zip(self.worker_pids, plan.server):
            pin(pid, cpus)
        if self.proc is not None and self.proc.pid not in self.worker_pids:
            pin(self.proc.pid, plan.server[0])  # fanwire's supervisor is idle; keep it off the load cores

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in [*self.worker_pids, proc.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(5)
        # a worker that outlived its supervisor would hold the port: make sure none is left
        for pid in self.worker_pids:
            if pid != proc.pid and _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None
        return proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what it is doing -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def pids(self) -> list[int]:
        """Every process of the server (fanwire: workers and supervisor)."""
        out = list(self.worker_pids)
        if self.proc is not None and self.proc.pid not in out:
            out.append(self.proc.pid)
        return out

    def rss(self) -> int:
        """Summed resident memory of the processes that hold connections (fanwire: the workers)."""
        return sum(rss_bytes(pid) or 0 for pid in self.worker_pids)

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "server": self.kind, "workers": self.workers,
                "command": " ".join(self.command()[1:]).replace(str(self.port), "<port>")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of someone else still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ")[1][:1] != b"Z"
    except OSError:
        return False
