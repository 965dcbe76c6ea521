"""A worker's event-loop lag: how late a periodic timer fires, the worst of the last second or two.

Why a timer: whatever holds the loop (a sync application action, a long fan-out, the garbage collector, a
starved CPU) delays every callback alike, and a timer is a callback whose due time is known. Every
``interval`` (50 ms) the probe notes how much later than due it ran; the figure reported is the largest
lateness of the current window and the one before it (windows of ``window`` seconds), so one stall stays
visible for at least a window and fades within two. A stall of *d* seconds shows as at least
*d* - ``interval``.

Cost: one timer callback per interval per worker (a clock read and two comparisons), whether anybody looks
or not; nothing is allocated. The figure travels in the worker's snapshot (``loop_lag_ms``, and the gauge
``fanwire_loop_lag_seconds{worker}`` of ``/metrics``) and so reaches ``$stats``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

INTERVAL_S: Final = 0.05
WINDOW_S: Final = 1.0


class LoopLag:
    """The probe of one event loop (see the module docstring)."""

    __slots__ = ("_clock", "_current", "_due", "_handle", "_loop", "_previous", "_window_end", "interval",
                 "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL_S, window: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self.interval = interval
        self.window = window
        self._clock = clock
        self._current = 0.0  # the worst lateness of the window in progress
        self._previous = 0.0  # ... of the window before
        self._window_end = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        now = self._clock()
        self._window_end = now + self.window
        self._schedule(now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock()
        self.record(now - self._due, now)
        self._schedule(now)

    def record(self, late: float, now: float) -> None:
        """Note one lateness (seconds) observed at ``now``."""
        if now >= self._window_end:
            # a window passed: the one in progress becomes the previous one (or, after a gap of more than
            # a window with no tick at all, nothing of it is recent any more)
            self._previous = self._current if now < self._window_end + self.window else 0.0
            self._current = 0.0
            self._window_end = now + self.window
        if late > self._current:
            self._current = late

    def seconds(self, now: float | None = None) -> float:
        """The worst lateness of the last one or two windows, in seconds (>= 0); a tick overdue right now
        counts too (a snapshot taken right after a stall, before the probe's own tick has run)."""
        if self._handle is None:
            return 0.0
        if now is None:
            now = self._clock()
        if now >= self._window_end + self.window:
            recent = 0.0  # no tick for two windows: the overdue one below says how late
        elif now >= self._window_end:
            recent = self._current
        else:
            recent = max(self._current, self._previous)
        return max(recent, now - self._due, 0.0)
