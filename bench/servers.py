"""The servers under test, as child processes: fanwire (``python -m server``) and the baseline.

The harness sees a server only as a process: it starts it on a free port, waits for its ready line,
learns the pids that do the work (fanwire's workers, from their ``listening`` lines), pins them to their
cores, reads their CPU time and memory from /proc, and stops it with SIGTERM (SIGKILL after a deadline).
Output goes to log files under ``results/tmp/``, never to a pipe, so no thread has to drain it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .procstat import CorePlan, pin, rss_bytes

ROOT = Path(__file__).resolve().parent.parent

_WORKER_RE = re.compile(r"fanwire: worker (\d+) pid (\d+) listening")
_READY_RE = re.compile(r"(?:fanwire: ready, .*supervisor pid (\d+)|baseline: ready on .*\(pid (\d+)\))")

TARGETS = ("fanwire", "baseline")


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (a SO_REUSEPORT group cannot bind port 0 together)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """One server under test. ``kind`` is ``fanwire`` or ``baseline``; ``workers`` is ignored for the
    baseline (always one process). Use as a context manager: it always stops what it started."""

    def __init__(self, kind: str, workers: int = 1, *, mode: str = "chat", host: str = "127.0.0.1",
                 extra_args: Sequence[str] = (), log_dir: Path | None = None, plan: CorePlan | None = None,
                 start_timeout: float = 30.0) -> None:
        if kind not in TARGETS:
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        self.workers = workers if kind == "fanwire" else 1
        self.mode = mode
        self.host = host
        self.port = 0
        self.extra_args = list(extra_args)
        self.log_dir = log_dir or ROOT / "results" / "tmp"
        self.plan = plan
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: list[int] = []
        self.log_path: Path | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def command(self) -> list[str]:
        if self.kind == "fanwire":
            return [sys.executable, "-m", "server", "--host", self.host, "--port", str(self.port),
                    "--workers", str(self.workers), "--mode", self.mode, "--log-level", "warning",
                    *self.extra_args]
        return [sys.executable, "-m", "bench.baseline_server", "--host", self.host, "--port", str(self.port),
                *self.extra_args]

    def start(self) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        last_exc: Exception | None = None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port(self.host)
            self.log_path = self.log_dir / f"{self.kind}-{self.port}.log"
            try:
                self._spawn()
                break
            except ServerError as exc:
                last_exc = exc
                self.stop()
        else:
            raise ServerError(f"{self.kind} did not start: {last_exc}")
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
            m = _READY_RE.search(text)
            if m:
                if self.kind == "fanwire":
                    self.worker_pids = [int(pid) for _, pid in sorted(
                        ((int(w), p) for w, p in _WORKER_RE.findall(text)))]
                    if len(self.worker_pids) != self.workers:
                        raise ServerError(f"expected {self.workers} workers, saw {len(self.worker_pids)}")
                else:
                    self.worker_pids = [self.proc.pid]
                return
            if self.proc.poll() is not None:
                raise ServerError(f"exited with {self.proc.returncode}: {text[-800:]}")
            time.sleep(0.02)
        raise ServerError(f"not ready after {self.start_timeout:.0f}s")

    def apply_plan(self, plan: CorePlan) -> None:
        for pid, cpus in zip(self.worker_pids, plan.server):
            pin(pid, cpus)
        if self.kind == "fanwire" and self.proc is not None:
            pin(self.proc.pid, plan.server[0])  # the supervisor is idle; keep it off the load cores

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
        return {"kind": self.kind, "workers": self.workers, "mode": self.mode,
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
