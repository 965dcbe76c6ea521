"""The harness notices when a server misbehaves: against a deliberately faulty server, a closed-loop window
with lost replies, error frames instead of replies, or a connection closed under it is marked invalid, and
so is a fan-out window where a receiver missed a delivery. The same load against a server that does not
misbehave gives a valid window (no false alarm). A few seconds, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.loadgen import LoadPool, echo_expect, echo_payload, new_marker
from bench.procstat import CorePlan
from bench.scenarios.common import open_conns, pingpong
from bench.scenarios.fanout import fanout_window
from bench.servers import free_port
from bench.wsproto import OP_TEXT, masked_frame

ROOT = Path(__file__).resolve().parent.parent.parent
NEVER = 10**9

pytestmark = pytest.mark.timeout(60)


def start_faulty(fault: str, every: int) -> tuple[subprocess.Popen[bytes], Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.faulty_server", "--port", str(port), "--fault", fault,
                             "--every", str(every)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "ready" in line, line
    stub = SimpleNamespace(port=port, pids=[proc.pid], mode="echo", target="faulty", kind="faulty",
                           spec=SimpleNamespace(welcome=False), workers=1)
    return proc, stub


@pytest.fixture
def pool() -> Iterator[LoadPool]:
    p = LoadPool(1).start()
    try:
        yield p
    finally:
        p.close()


def closed_loop(fault: str, every: int, pool: LoadPool) -> dict[str, Any]:
    proc, srv = start_faulty(fault, every)
    try:
        open_conns(pool, srv, 8, None)
        payload = echo_payload(64, new_marker())
        frame = masked_frame(OP_TEXT, payload, os.urandom(4))
        return pingpong(pool, srv, frame, echo_expect(payload, OP_TEXT), 4, 1, 0.1, 0.3,
                        CorePlan.make(1), drain=0.5)
    finally:
        pool.call("close", {}, timeout=10)
        proc.kill()
        proc.wait(5)


def test_a_well_behaved_server_gives_a_valid_window(pool: LoadPool) -> None:
    r = closed_loop("drop", NEVER, pool)
    assert r["valid"] is True, r["verdict"]
    assert r["verdict"]["lost"] == 0 and r["verdict"]["unexpected"] == 0 and r["received"] > 0


def test_lost_replies_make_the_window_invalid(pool: LoadPool) -> None:
    r = closed_loop("drop", 7, pool)
    assert r["valid"] is False
    assert r["verdict"]["lost"] > 0
    assert r["verdict"]["unexpected"] == 0
    assert any("not answered" in reason for reason in r["verdict"]["reasons"])


def test_error_frames_are_not_counted_as_round_trips(pool: LoadPool) -> None:
    r = closed_loop("error", 5, pool)
    assert r["valid"] is False
    v = r["verdict"]
    assert v["unexpected"] > 0
    # every request was answered by something, but only the echoes count as round trips
    assert v["ok"] + v["unexpected"] == v["expected"]
    assert v["lost"] == v["unexpected"]


def test_a_connection_closed_under_the_load_makes_the_window_invalid(pool: LoadPool) -> None:
    r = closed_loop("close", 5, pool)
    assert r["valid"] is False
    assert r["verdict"]["closed"] >= 1
    assert r["close_codes"].get("1011", 0) >= 1


@pytest.mark.parametrize(("every", "valid"), [(NEVER, True), (3, False)])
def test_a_missed_delivery_makes_a_fanout_window_invalid(pool: LoadPool, every: int, valid: bool) -> None:
    proc, srv = start_faulty("skip", every)
    try:
        open_conns(pool, srv, 6, None)
        p = {"warmup": 0.1, "duration": 0.3, "drain": 0.3, "size": 100, "saturation_p99_ms": 1000.0}
        r = fanout_window(pool, srv.pids, p, 40, 6, 2, False, 1)
    finally:
        pool.call("close", {}, timeout=10)
        proc.kill()
        proc.wait(5)
    assert r["valid"] is valid, r["verdict"]
    if not valid:
        assert r["verdict"]["lost"] > 0
    else:
        assert r["verdict"]["expected"] == r["published"] * 6 > 0
