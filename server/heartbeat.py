"""Heartbeats: ping silent connections, close those that do not answer, enforce token expiry.

One sweep per tick over the worker's open connections (cheaper than a timer per connection), spread over
the tick in slices of about ``SLICE`` seconds: with 10,000 connections a whole sweep is a few milliseconds
of work (and, after a quiet spell, a burst of pings, one write each) that would stall every message in
flight at once; in slices it costs a fraction of a millisecond at a time. Each connection is still checked
once per tick. A sweep never dies of one connection: an error on one is logged, counted and costs that
connection only, and the next slice is scheduled whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .metrics import Metrics

if TYPE_CHECKING:
    from .connection import Conn

log = logging.getLogger("fanwire.worker")

SLICE = 0.05  # seconds between two slices of a sweep


class Heartbeat:
    __slots__ = ("auth_on", "conns", "extra", "handle", "interval", "left", "loop", "metrics", "pos", "queue",
                 "slices", "step", "tick", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: Collection[Conn], metrics: Metrics,
                 interval: float, timeout: float, auth_on: bool,
                 extra: Callable[[float], None] | None = None) -> None:
        self.loop = loop
        self.conns = conns
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.auth_on = auth_on
        self.extra = extra  # more periodic work, run with the same protection
        self.tick = max(0.05, min(interval, timeout, 1.0) / 2)  # every connection is checked once per tick
        self.slices = max(1, round(self.tick / SLICE))
        self.step = self.tick / self.slices
        self.queue: list[Conn] = []  # the sweep in progress: the connections it has not checked yet
        self.pos = 0
        self.left = 0  # slices left in the sweep in progress
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.handle = self.loop.call_later(self.step, self._run)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _run(self) -> None:
        try:
            now = time.monotonic()
            if self.left <= 0:  # a new sweep: the periodic work, then a snapshot of the connections
                self.left = self.slices
                self.pos = 0
                self.queue = []
                if self.extra is not None:
                    try:
                        self.extra(now)
                    except Exception:
                        log.exception("periodic task failed")
                        self.metrics.inc(self.metrics.errors, "internal_error")
                self.queue = list(self.conns)
            queue, pos = self.queue, self.pos
            n = math.ceil((len(queue) - pos) / self.left)
            self.left -= 1
            self.pos = pos + n
            if self.left <= 0:
                self.queue = []
            self.check_all(queue[pos : pos + n], now, time.time() if self.auth_on else 0.0)
        finally:
            if self.handle is not None:
                self.handle = self.loop.call_later(self.step, self._run)

    def sweep(self, now: float, wall: float) -> None:
        """Check every connection at once."""
        self.check_all(list(self.conns), now, wall)

    def check_all(self, conns: list[Conn], now: float, wall: float) -> None:
        for c in conns:
            try:
                self.check(c, now, wall)
            except Exception:
                log.exception("heartbeat failed on connection %s", c.client_id)
                self.metrics.inc(self.metrics.errors, "internal_error")
                try:
                    c.abort()
                except Exception:
                    log.exception("aborting connection %s failed too", c.client_id)

    def check(self, c: Conn, now: float, wall: float) -> None:
        if c.close_reason is not None:
            return
        if wall and c.grant is not None and wall >= c.grant.expires:
            self.metrics.inc(self.metrics.policy_closes, "token_expired")
            c.close(1008, "token expired", "token_expired")
            return
        if c.ping_at:
            if c.last_rx > c.ping_at:
                c.ping_at = 0.0
            elif now - c.ping_at > self.timeout:
                self.metrics.heartbeat_timeouts += 1
                c.close(1011, "heartbeat timeout", "heartbeat_timeout")
            return
        if now - c.last_rx >= self.interval:
            c.ping_at = now
            c.send_ping()
