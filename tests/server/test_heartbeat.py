"""Heartbeats: pings after silence, 1011 when no answer comes, 1008 when a token expires, and a sweep that
survives a failing connection (and periodic work that raises)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import cast

import pytest

from server.connection import Conn
from server.heartbeat import Heartbeat
from server.metrics import Metrics
from server.security.auth import Grant

INTERVAL, TIMEOUT = 10.0, 5.0


class FakeConn:
    """What a sweep reads and calls on a connection."""

    def __init__(self, client_id: str = "0-1", last_rx: float = 0.0, ping_at: float = 0.0,
                 grant: Grant | None = None, close_reason: str | None = None, fail: bool = False,
                 abort_fails: bool = False) -> None:
        self.client_id = client_id
        self.last_rx = last_rx
        self.ping_at = ping_at
        self.grant = grant
        self.close_reason = close_reason
        self.fail = fail
        self.abort_fails = abort_fails
        self.pings = 0
        self.closes: list[tuple[int, str, str]] = []
        self.aborts = 0

    def send_ping(self) -> None:
        if self.fail:
            raise RuntimeError("broken connection")
        self.pings += 1

    def close(self, code: int, reason: str, label: str) -> None:
        self.closes.append((code, reason, label))
        self.close_reason = label

    def abort(self) -> None:
        self.aborts += 1
        if self.abort_fails:
            raise OSError("abort failed too")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def heartbeat(loop: asyncio.AbstractEventLoop, conns: list[FakeConn], auth_on: bool = False,
              interval: float = INTERVAL, timeout: float = TIMEOUT) -> Heartbeat:
    return Heartbeat(loop, cast("list[Conn]", conns), Metrics(), interval, timeout, auth_on)


def grant(expires: float) -> Grant:
    return Grant("ann", frozenset({"lobby"}), False, expires)


# --- pings and timeouts --------------------------------------------------------------------------------------


def test_a_connection_silent_for_an_interval_is_pinged(loop: asyncio.AbstractEventLoop) -> None:
    quiet, chatty = FakeConn(last_rx=100.0), FakeConn(last_rx=100.0 + 0.5)
    hb = heartbeat(loop, [quiet, chatty])
    hb.sweep(100.0 + INTERVAL - 0.01, 0.0)
    assert quiet.pings == 0 and quiet.ping_at == 0.0
    hb.sweep(100.0 + INTERVAL, 0.0)
    assert quiet.pings == 1 and quiet.ping_at == 100.0 + INTERVAL
    assert chatty.pings == 0 and chatty.ping_at == 0.0


def test_one_ping_while_waiting_for_its_answer(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0)
    hb = heartbeat(loop, [c])
    hb.sweep(INTERVAL, 0.0)
    hb.sweep(INTERVAL + 1, 0.0)
    hb.sweep(INTERVAL + TIMEOUT, 0.0)  # exactly the timeout: not past it
    assert c.pings == 1 and c.closes == [] and hb.metrics.heartbeat_timeouts == 0


def test_no_answer_within_the_timeout_closes_with_1011(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0)
    hb = heartbeat(loop, [c])
    hb.sweep(INTERVAL, 0.0)
    hb.sweep(INTERVAL + TIMEOUT + 0.01, 0.0)
    assert c.closes == [(1011, "heartbeat timeout", "heartbeat_timeout")]
    assert hb.metrics.heartbeat_timeouts == 1
    hb.sweep(INTERVAL + TIMEOUT + 5, 0.0)  # closing now: left alone
    assert len(c.closes) == 1 and hb.metrics.heartbeat_timeouts == 1 and c.pings == 1


def test_anything_received_after_the_ping_ends_the_wait(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0)
    hb = heartbeat(loop, [c])
    hb.sweep(INTERVAL, 0.0)
    c.last_rx = INTERVAL + 0.5  # a pong, or any frame
    hb.sweep(INTERVAL + TIMEOUT + 1, 0.0)
    assert c.ping_at == 0.0 and c.closes == []
    hb.sweep(INTERVAL + 0.5 + INTERVAL, 0.0)  # silent again for an interval: a new ping
    assert c.pings == 2 and c.ping_at == INTERVAL + 0.5 + INTERVAL


def test_a_pong_that_cleared_ping_at_lets_the_next_interval_count_from_it(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0)
    hb = heartbeat(loop, [c])
    hb.sweep(INTERVAL, 0.0)
    c.ping_at, c.last_rx = 0.0, INTERVAL + 1  # the connection saw the pong
    hb.sweep(INTERVAL + TIMEOUT + 1, 0.0)
    assert c.closes == [] and c.pings == 1


def test_closing_connections_are_left_alone(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0, ping_at=1.0, grant=grant(0.0), close_reason="shutdown")
    hb = heartbeat(loop, [c], auth_on=True)
    hb.sweep(1000.0, time.time())
    assert c.pings == 0 and c.closes == [] and c.aborts == 0 and hb.metrics.heartbeat_timeouts == 0


# --- token expiry --------------------------------------------------------------------------------------------


def test_an_expired_token_closes_with_1008(loop: asyncio.AbstractEventLoop) -> None:
    expired, valid, anonymous = FakeConn(grant=grant(1000.0)), FakeConn(grant=grant(1000.5)), FakeConn()
    for c in (expired, valid, anonymous):
        c.last_rx = 50.0
    hb = heartbeat(loop, [expired, valid, anonymous], auth_on=True)
    hb.sweep(51.0, 1000.0)
    assert expired.closes == [(1008, "token expired", "token_expired")]
    assert valid.closes == [] and anonymous.closes == []
    assert hb.metrics.policy_closes == {"token_expired": 1}
    assert expired.pings == 0 and hb.metrics.heartbeat_timeouts == 0


def test_expiry_comes_before_the_heartbeat(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0, ping_at=1.0, grant=grant(10.0))  # also past its pong timeout
    hb = heartbeat(loop, [c], auth_on=True)
    hb.sweep(100.0, 10.0)
    assert c.closes == [(1008, "token expired", "token_expired")] and hb.metrics.heartbeat_timeouts == 0


def test_without_a_wall_clock_expiry_is_not_checked(loop: asyncio.AbstractEventLoop) -> None:
    c = FakeConn(last_rx=0.0, grant=grant(0.0))
    hb = heartbeat(loop, [c])
    hb.sweep(1.0, 0.0)
    assert c.closes == [] and hb.metrics.policy_closes == {}


# --- failures ----------------------------------------------------------------------------------------------------


def test_a_connection_that_fails_is_aborted_counted_and_the_sweep_goes_on(
        loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    before, broken, after = FakeConn("0-1"), FakeConn("0-2", fail=True), FakeConn("0-3")
    hb = heartbeat(loop, [before, broken, after])
    with caplog.at_level(logging.ERROR, logger="fanwire.worker"):
        hb.sweep(INTERVAL, 0.0)
    assert broken.aborts == 1 and before.aborts == 0 and after.aborts == 0
    assert before.pings == 1 and after.pings == 1
    assert hb.metrics.errors == {"internal_error": 1}
    assert [r.getMessage() for r in caplog.records] == ["heartbeat failed on connection 0-2"]


def test_the_sweep_survives_a_connection_leaving_during_it(loop: asyncio.AbstractEventLoop) -> None:
    conns: list[FakeConn] = []

    class Leaving(FakeConn):
        def send_ping(self) -> None:
            super().send_ping()
            conns.remove(self)  # connection_lost ran from inside: the set changed under the sweep

    conns.extend([Leaving("0-1"), FakeConn("0-2")])
    second = conns[1]
    hb = heartbeat(loop, conns)
    hb.sweep(INTERVAL, 0.0)
    assert second.pings == 1 and hb.metrics.errors == {}


def test_a_sweep_never_dies_of_one_connection_even_if_its_abort_fails(loop: asyncio.AbstractEventLoop) -> None:
    broken, after = FakeConn("0-1", fail=True, abort_fails=True), FakeConn("0-2")
    hb = heartbeat(loop, [broken, after])
    hb.sweep(INTERVAL, 0.0)
    assert after.pings == 1


# --- the timer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "timeout", "tick"), [(30.0, 10.0, 0.5), (0.4, 10.0, 0.2), (5.0, 0.3, 0.15),
                                                          (0.01, 0.01, 0.05)])
def test_the_tick_is_half_the_shortest_period_within_bounds(loop: asyncio.AbstractEventLoop, interval: float,
                                                            timeout: float, tick: float) -> None:
    assert heartbeat(loop, [], interval=interval, timeout=timeout).tick == pytest.approx(tick)


def test_the_timer_is_rescheduled_even_when_the_periodic_work_raises(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[float] = []
    c = FakeConn(last_rx=0.0)  # long silent: the first sweep pings it

    def extra(now: float) -> None:
        calls.append(now)
        raise ValueError("periodic task broke")

    hb = Heartbeat(loop, cast("list[Conn]", [c]), Metrics(), 0.01, 0.01, False, extra)
    hb.start()
    assert hb.handle is not None and hb.handle.when() == pytest.approx(loop.time() + 0.05, abs=0.02)

    async def until_three_runs() -> None:
        while len(calls) < 3:
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(until_three_runs(), 2.0))
    assert hb.metrics.errors == {"internal_error": 3}
    # the sweep ran after each failing task: a ping, then (no answer within 0.01 s) the close
    assert c.pings == 1 and c.closes == [(1011, "heartbeat timeout", "heartbeat_timeout")]
    assert calls == sorted(calls) and hb.handle is not None and not hb.handle.cancelled()
    hb.stop()
    assert hb.handle is None
    loop.run_until_complete(asyncio.sleep(0.12))
    assert len(calls) == 3  # stopped: no more runs


def test_stop_before_start_is_harmless(loop: asyncio.AbstractEventLoop) -> None:
    hb = heartbeat(loop, [])
    hb.stop()
    assert hb.handle is None


# --- a sweep in slices ------------------------------------------------------------------------------------------


def test_a_sweep_is_spread_over_slices_and_checks_each_connection_once(loop: asyncio.AbstractEventLoop) -> None:
    conns = [FakeConn(client_id=f"0-{i}", last_rx=0.0) for i in range(95)]
    extra: list[float] = []
    hb = Heartbeat(loop, cast("list[Conn]", conns), Metrics(), 20.0, 20.0, False, extra.append)
    assert hb.tick == pytest.approx(0.5) and hb.slices == 10 and hb.step == pytest.approx(0.05)
    pinged: list[int] = []
    for _ in range(hb.slices):
        hb._run()
        pinged.append(sum(c.pings for c in conns))
    assert pinged == [10, 20, 30, 40, 50, 59, 68, 77, 86, 95]  # a tenth of them per slice
    assert len(extra) == 1  # the periodic work runs once per sweep
    hb._run()  # the next sweep starts from a fresh snapshot
    assert len(extra) == 2 and all(c.pings == 1 for c in conns)  # pinged once, waiting for the answer
    hb.stop()


def test_a_connection_that_arrives_during_a_sweep_waits_for_the_next(loop: asyncio.AbstractEventLoop) -> None:
    conns = [FakeConn(last_rx=0.0) for _ in range(20)]
    hb = Heartbeat(loop, cast("list[Conn]", conns), Metrics(), 20.0, 20.0, False)
    hb._run()
    late = FakeConn(last_rx=0.0)
    conns.append(late)
    for _ in range(hb.slices - 1):
        hb._run()
    assert late.pings == 0 and all(c.pings == 1 for c in conns[:20])
    for _ in range(hb.slices):
        hb._run()
    assert late.pings == 1
    hb.stop()
