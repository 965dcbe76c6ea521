"""``python -m bench.conformance`` stopped by SIGTERM (a timeout) stops every process it started: the fanwire
server and its workers, websockets' echo server, wstest. The wstest here is a stand-in that only waits, so
the test needs no Python 2.7; the servers are the real ones."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.conformance import AUTOBAHN_VERSION, ROOT

from ..helpers import T, pid_state, wait_gone


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents[int(entry)] = ppid
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def test_sigterm_stops_every_process_a_conformance_run_started(tmp_path: Path) -> None:
    bindir = tmp_path / "ab27" / "bin"
    bindir.mkdir(parents=True)
    started = tmp_path / "wstest.pid"
    wstest = bindir / "wstest"
    wstest.write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 300\n")
    wstest.chmod(0o755)
    (tmp_path / "ab27" / ".installed").write_text(AUTOBAHN_VERSION)
    run = subprocess.Popen([sys.executable, "-m", "bench.conformance", "--workdir", str(tmp_path), "--no-deflate",
                            "--out", str(tmp_path / "out.json")], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + T(60)
        while not (started.exists() and started.read_text().strip()) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0].decode(errors="replace")
            time.sleep(0.05)
        assert started.exists(), "the stand-in wstest never ran"
        children = _descendants(run.pid)
        wstest_pid = int(started.read_text())
        assert wstest_pid in children
        assert len(children) >= 4, children  # wstest, websockets' echo, fanwire's supervisor and its worker
        run.send_signal(signal.SIGTERM)
        out = run.communicate(timeout=T(60))[0].decode(errors="replace")
        assert not wait_gone(children, 20), out
        assert run.returncode == 128 + signal.SIGTERM, out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in children:  # only what this test's run started
            if pid_state(pid) not in (None, "Z"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
