"""What the harness reads from /proc, and how it places processes on cores.

- :func:`cpu_seconds`: user + system CPU time of a process, from ``/proc/<pid>/stat`` (clock ticks).
- :func:`rss_bytes`: resident set size, from ``/proc/<pid>/statm``.
- :func:`cpu_model`, :func:`cores`: the machine, for the result JSON.
- :class:`CorePlan`: server processes on their own cores and load processes on the rest when there are
  enough cores; when there are not, everything shares and the plan says so (``shared``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CorePlan", "CpuWindow", "cores", "cpu_model", "cpu_seconds", "machine_cpu", "others_pct", "pin",
           "raise_open_files", "rss_bytes"]

MAX_LOAD_PROCESSES = 8  # more only adds context switches for the loads here (100 connections)

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(b")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


def pin(pid: int, cpus: Iterable[int]) -> bool:
    try:
        os.sched_setaffinity(pid, set(cpus))
    except (OSError, AttributeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class CorePlan:
    """Which cores each server process and the load processes get."""

    server: tuple[tuple[int, ...], ...]  # one entry per server process (worker)
    load: tuple[int, ...]
    shared: bool  # True when server and load share cores (not enough cores to separate them)

    @classmethod
    def make(cls, server_procs: int, available: Sequence[int] | None = None) -> CorePlan:
        cpus = list(available) if available is not None else cores()
        if server_procs < len(cpus):
            server = tuple((cpus[i],) for i in range(server_procs))
            return cls(server, tuple(cpus[server_procs:]), False)
        server = tuple((cpus[i % len(cpus)],) for i in range(server_procs))
        return cls(server, tuple(cpus), True)

    def load_processes(self, wanted: int = 0) -> int:
        """How many load processes to run: one per load core unless ``wanted`` says otherwise."""
        if wanted > 0:
            return wanted
        if self.shared:
            return max(1, min(MAX_LOAD_PROCESSES, len(self.load) // 2))
        return max(1, min(MAX_LOAD_PROCESSES, len(self.load)))

    def describe(self) -> dict[str, Any]:
        return {"server_cores": [list(c) for c in self.server], "load_cores": list(self.load),
                "shared": self.shared}


def machine_cpu() -> tuple[float, float]:
    """Machine-wide (busy, steal) CPU seconds since boot, summed over cores, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / _CLK_TCK, steal / _CLK_TCK


class CpuWindow:
    """CPU seconds used by a set of processes between :meth:`start` and :meth:`stop`, and by the whole
    machine (so a reader can tell how much went to processes that are not part of the run)."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self.t0 = 0.0
        self.t1 = 0.0
        self.c0: dict[int, float] = {}
        self.c1: dict[int, float] = {}
        self.m0 = (0.0, 0.0)
        self.m1 = (0.0, 0.0)

    def _read(self) -> dict[int, float]:
        out = {}
        for pid in self.pids:
            s = cpu_seconds(pid)
            if s is not None:
                out[pid] = s
        return out

    def start(self) -> None:
        self.c0 = self._read()
        self.m0 = machine_cpu()
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.c1 = self._read()
        self.m1 = machine_cpu()
        self.t1 = time.monotonic()

    @property
    def machine_pct(self) -> float:
        """Machine-wide busy CPU in the window, in % of one core."""
        return round(100 * (self.m1[0] - self.m0[0]) / self.wall, 1)

    @property
    def steal_pct(self) -> float:
        """CPU stolen by the hypervisor in the window, in % of one core."""
        return round(100 * (self.m1[1] - self.m0[1]) / self.wall, 1)

    @property
    def seconds(self) -> float:
        """CPU seconds used in the window, summed over processes."""
        return sum(self.c1[p] - self.c0[p] for p in self.c1 if p in self.c0)

    @property
    def wall(self) -> float:
        return max(self.t1 - self.t0, 1e-9)

    def per_process_pct(self) -> dict[int, float]:
        return {p: round(100 * (self.c1[p] - self.c0[p]) / self.wall, 1) for p in self.c1 if p in self.c0}

    def report(self) -> dict[str, Any]:
        return {"cpu_s": round(self.seconds, 3), "wall_s": round(self.wall, 3),
                "cpu_pct": round(100 * self.seconds / self.wall, 1),
                "per_process_pct": list(self.per_process_pct().values()),
                "machine_busy_pct": self.machine_pct, "machine_steal_pct": self.steal_pct}


def others_pct(*windows: CpuWindow) -> float:
    """CPU (% of one core) the machine spent on processes outside ``windows`` during the first window:
    other people's work on a shared machine, or the kernel's on our behalf (softirq for loopback)."""
    if not windows:
        return 0.0
    ours = sum(100 * w.seconds / w.wall for w in windows)
    return round(max(0.0, windows[0].machine_pct - ours), 1)
