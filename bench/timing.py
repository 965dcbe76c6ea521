"""Starting things on schedule, and saying how well it went. No sockets.

An event loop's timers are coarse: uvloop fires a timer up to ~1 ms *early* (measured on the 2-vCPU machine:
about 44 % of the wake-ups at 1,000 connections/s), and ``asyncio.sleep`` can fire late under load. A
generator that sleeps until a connection's scheduled start and then measures "handshake time" from the
schedule gets times that are too short by up to a millisecond, and negative ones when the reply beats a
start that was early. So:

- :func:`wait_until` never returns before the due time: it sleeps until :data:`SPIN_NS` before it, then
  yields to the loop (``sleep(0)``, so I/O keeps being served) until the clock says it is due;
- durations are measured from the *real* start, taken after the wait;
- :class:`Starts` records how late each real start was against its schedule and counts the early ones
  (zero unless something is wrong), so a reader sees both the lateness of the generator and any clock
  problem instead of a run of 0 us handshakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .hist import Histogram

__all__ = ["SPIN_NS", "Starts", "wait_until"]

SPIN_NS: Final = 2_000_000  # the last 2 ms before a due time are spun (timers fire up to ~1 ms early)


async def wait_until(due_ns: int, *, now: Callable[[], int] = time.monotonic_ns,
                     sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, spin_ns: int = SPIN_NS) -> int:
    """Return at or after ``due_ns`` (``CLOCK_MONOTONIC`` ns), never before; returns the time it returned.

    Sleeps while the due time is more than ``spin_ns`` (+ 1 ms) away (a timer that fires early only costs
    another round), then yields to the loop until it is due.
    """
    while True:
        t = now()
        left = due_ns - t
        if left <= 0:
            return t
        # a sleep shorter than a timer's resolution (1 ms) is not worth it: spin instead
        await sleep((left - spin_ns) / 1e9 if left > spin_ns + 1_000_000 else 0)


class Starts:
    """Real starts against their schedule: a histogram of the lateness (us) and the count of early starts.

    An early start (``start < due``) is counted in :attr:`early` and appears in the histogram as a negative
    value (:attr:`~bench.hist.Histogram.negative`), never as a zero.
    """

    __slots__ = ("early", "lag")

    def __init__(self) -> None:
        self.lag = Histogram()
        self.early = 0

    def note(self, due_ns: int, start_ns: int) -> int:
        """Record one start; returns its lateness in ns (negative: early)."""
        d = start_ns - due_ns
        if d < 0:
            self.early += 1
            self.lag.negative += 1
        else:
            self.lag.record(d // 1000)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"early": self.early, "lag_us": self.lag.to_dict()}
