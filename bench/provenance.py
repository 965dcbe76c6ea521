"""Where a result comes from: the commit, whether the tree was clean, how the run was invoked, and how
busy the machine was when it started.

A results set comes from one clean commit. ``python -m bench run`` refuses a tree with uncommitted changes
(outside ``results/``, which the run itself writes) unless told ``--allow-dirty``, and then every result,
chart and table says so. Every result also says which run it belongs to (:func:`run_info`): a scenario
re-run alone is marked as such next to the others. At the start of every scenario the load average, the
machine's busy and stolen CPU over a short sample are recorded, and a busy machine is flagged.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["BUSY_CPU_PCT", "BUSY_STEAL_PCT", "DirtyTree", "GitState", "busy_reasons", "git_state",
           "machine_state", "require_clean", "run_info"]

BUSY_LOAD_PER_CORE: Final = 0.5  # load average above half the core count (before our own run)
BUSY_CPU_PCT: Final = 25.0  # % of the whole machine busy while nothing of ours runs
BUSY_STEAL_PCT: Final = 5.0  # % of the machine stolen by the hypervisor
IGNORED_PREFIXES: Final = ("results/",)  # what the run writes itself


class DirtyTree(RuntimeError):
    """The working tree has uncommitted changes and the run was not told to allow them."""


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: tuple[str, ...] = field(default=())  # `git status --porcelain` lines outside results/
    is_repo: bool = True

    @property
    def clean(self) -> bool:
        return self.is_repo and not self.dirty


def _git(root: Path, *args: str) -> tuple[int, str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    return out.returncode, out.stdout


def git_state(root: Path) -> GitState:
    """The commit checked out in ``root`` and the uncommitted changes (untracked files included; changes
    under ``results/`` left out)."""
    rc, head = _git(root, "rev-parse", "HEAD")
    if rc != 0:
        return GitState("unknown", (), False)
    rc, status = _git(root, "status", "--porcelain=v1", "--untracked-files=all")
    lines = [line for line in status.splitlines() if line.strip()]
    dirty = tuple(line for line in lines if not line[3:].strip('"').startswith(IGNORED_PREFIXES))
    return GitState(head.strip(), dirty if rc == 0 else ("(git status failed)",), True)


def require_clean(state: GitState, allow_dirty: bool) -> None:
    """Raise :class:`DirtyTree` unless the tree is clean or dirt was allowed."""
    if state.clean or allow_dirty:
        return
    if not state.is_repo:
        raise DirtyTree("not a git checkout: a results set must come from a commit (or pass --allow-dirty)")
    shown = "\n".join(f"  {line}" for line in state.dirty[:15])
    more = f"\n  ... and {len(state.dirty) - 15} more" if len(state.dirty) > 15 else ""
    raise DirtyTree(
        f"the working tree has uncommitted changes ({len(state.dirty)} paths):\n{shown}{more}\n"
        "A results set comes from one clean commit: commit or stash them, or pass --allow-dirty "
        "(every result, chart and table will then say 'uncommitted changes').")


def _proc_stat() -> tuple[float, float, float]:
    """Machine-wide (busy, steal, total) clock ticks since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return float(busy), float(steal), float(busy + idle + iowait + steal)


def busy_reasons(loadavg1: float | None, ncores: int, busy_pct: float | None, steal_pct: float | None,
                 check_load: bool = True) -> list[str]:
    """Why the machine counts as busy (empty: quiet). ``check_load`` is off once our own run has started:
    the one-minute load average then still holds the previous scenario."""
    why = []
    if check_load and loadavg1 is not None and loadavg1 > BUSY_LOAD_PER_CORE * ncores:
        why.append(f"load average {loadavg1:.2f} on {ncores} cores")
    if busy_pct is not None and busy_pct > BUSY_CPU_PCT:
        why.append(f"{busy_pct:.0f} % of the CPU busy before the scenario started")
    if steal_pct is not None and steal_pct > BUSY_STEAL_PCT:
        why.append(f"{steal_pct:.0f} % of the CPU stolen by the hypervisor")
    return why


def machine_state(sample_s: float = 0.5, check_load: bool = True) -> dict[str, Any]:
    """Load average, and the machine's busy and stolen CPU (in % of all cores) over ``sample_s``."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    ncores = os.cpu_count() or 1
    b0, s0, t0 = _proc_stat()
    time.sleep(sample_s)
    b1, s1, t1 = _proc_stat()
    total = t1 - t0
    busy = round(100 * (b1 - b0) / total, 1) if total > 0 else None
    steal = round(100 * (s1 - s0) / total, 1) if total > 0 else None
    why = busy_reasons(load[0] if load else None, ncores, busy, steal, check_load)
    return {"loadavg": load, "busy_pct": busy, "steal_pct": steal, "sample_s": sample_s, "busy": bool(why),
            "why": why}


def run_info(state: GitState, *, scenarios: Sequence[str], default: Sequence[str], quick: bool,
             allow_dirty: bool, targets: Sequence[str], overrides: Sequence[str], repeats: int | None,
             argv: Sequence[str]) -> dict[str, Any]:
    """What this invocation of ``bench run`` was: a whole results set, or a part re-run alone."""
    started = datetime.datetime.now(datetime.UTC)
    partial = []
    if set(scenarios) != set(default):
        partial.append("only " + ", ".join(scenarios))
    if targets:
        partial.append("only targets " + ", ".join(targets))
    if overrides:
        partial.append("settings changed: " + ", ".join(overrides))
    if repeats is not None:
        partial.append(f"repeats set to {repeats}")
    return {
        "id": f"{started.strftime('%Y%m%dT%H%M%SZ')}-{state.commit[:10]}",
        "started": started.isoformat(timespec="seconds"),
        "commit": state.commit,
        "clean": state.clean,
        "dirty_paths": list(state.dirty[:50]),
        "allow_dirty": allow_dirty,
        "quick": quick,
        "scenarios": list(scenarios),
        "complete": not partial,
        "partial": partial,
        "argv": list(argv),
    }
