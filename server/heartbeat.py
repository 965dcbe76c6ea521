"""Heartbeats: ping silent connections, close those that do not answer, enforce token expiry.

One sweep per tick over the worker's open connections (cheaper than a timer per connection). A sweep
never dies of one connection: an error on one is logged, counted and costs that connection only, and the
next tick is scheduled whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .metrics import Metrics

if TYPE_CHECKING:
    from .connection import Conn

log = logging.getLogger("fanwire.worker")


class Heartbeat:
    __slots__ = ("auth_on", "conns", "extra", "handle", "interval", "loop", "metrics", "tick", "timeout")

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
        self.tick = max(0.05, min(interval, timeout, 1.0) / 2)
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.handle = self.loop.call_later(self.tick, self._run)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _run(self) -> None:
        try:
            now = time.monotonic()
            if self.extra is not None:
                try:
                    self.extra(now)
                except Exception:
                    log.exception("periodic task failed")
                    self.metrics.inc(self.metrics.errors, "internal_error")
            self.sweep(now, time.time() if self.auth_on else 0.0)
        finally:
            if self.handle is not None:
                self.handle = self.loop.call_later(self.tick, self._run)

    def sweep(self, now: float, wall: float) -> None:
        for c in list(self.conns):
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
