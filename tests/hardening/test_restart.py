"""Rolling restart (SIGHUP) under a connect/ping hammer: no refused connection, no lost pong.

The probe (restart_probe.py) runs in a fresh network namespace when this process may create one (root),
so ``net.ipv4.tcp_migrate_req`` can be on in one run and off in the other without touching the host:

- migrate: the server turns the sysctl on; the kernel hands a closing listener's queue to the new worker.
- drain: the sysctl stays off; the stopping worker accepts its own queue right before closing the
  listener. This narrows the window to the few microseconds between the last accept and the close, so
  under a hammer it can, rarely, still lose one connection (measured: 1 in ~49,000 connects).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..helpers import PYTHON, ROOT, T

SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@functools.cache
def can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        return subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def probe(*server_args: str, netns: bool) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "tests.hardening.restart_probe", "--restarts", "2", "--concurrency", "20", "--",
           *server_args]
    if netns:
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=T(90))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    return result


def check(result: dict[str, Any], max_refused: int = 0) -> None:
    assert result["restarts"] == 2 and not result["aborted"]
    assert result["refused"] <= max_refused, result
    assert result.get("lost_pongs", 0) == 0, result
    assert result.get("connects", 0) > 200 and result.get("steady_pongs", 0) > 50, result
    assert not any(k.startswith("dropped_after_open") for k in result), result
    assert result.get("steady_close:1012", 0) >= 4, result  # the old workers said "restart"


def test_rolling_restart_with_tcp_migrate_req() -> None:
    if not SYSCTL.exists():
        pytest.skip("no net.ipv4.tcp_migrate_req (Linux < 5.14)")
    result = probe(netns=can_unshare())  # the server turns the setting on at start
    if result["tcp_migrate_req"] != "1":
        pytest.skip("tcp_migrate_req is off and this user cannot turn it on")
    check(result)
    assert result["taken_from_backlog"] == 0  # the kernel did it


def test_rolling_restart_without_it_drains_the_queue() -> None:
    netns = can_unshare()
    if not netns and not (SYSCTL.exists() and SYSCTL.read_text().strip() == "0"):
        pytest.skip("tcp_migrate_req is on here; a private network namespace (root) would be needed")
    result = probe("--no-tcp-migrate-req", netns=netns)
    assert result["tcp_migrate_req"] == "0"
    check(result, max_refused=2)
