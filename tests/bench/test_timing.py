"""bench.timing and the early-start problem: a connection started before its scheduled time must be
counted, never turned into a 0 us handshake; the wait never returns early even when timers fire early."""

from __future__ import annotations

import asyncio

import pytest

from bench.hist import Histogram
from bench.timing import SPIN_NS, Starts, wait_until

pytestmark = pytest.mark.timeout(30)


class EarlyClock:
    """A fake monotonic clock whose timers fire early: ``sleep(d)`` advances it by a fraction of ``d``
    (and ``sleep(0)`` by a few microseconds), as uvloop's timers do up to ~1 ms early."""

    def __init__(self, fraction: float) -> None:
        self.t = 1_000_000_000
        self.fraction = fraction
        self.sleeps: list[float] = []

    def now(self) -> int:
        return self.t

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += int(d * 1e9 * self.fraction) if d > 0 else 3_000


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.999])
def test_wait_until_never_returns_before_the_due_time(fraction: float) -> None:
    clock = EarlyClock(fraction)
    due = clock.t + 50_000_000  # 50 ms ahead
    returned = asyncio.run(wait_until(due, now=clock.now, sleep=clock.sleep))
    assert returned >= due and clock.t >= due
    # it slept while far away and spun (sleep(0)) only in the last SPIN_NS
    assert clock.sleeps[0] > 0 and 0 in clock.sleeps
    assert returned - due < SPIN_NS + 1_000_000


def test_wait_until_a_past_due_time_returns_at_once() -> None:
    clock = EarlyClock(1.0)
    assert asyncio.run(wait_until(clock.t - 5, now=clock.now, sleep=clock.sleep)) == clock.t
    assert clock.sleeps == []


def test_wait_until_on_the_real_loop() -> None:
    import time

    async def main() -> tuple[int, int]:
        due = time.monotonic_ns() + 5_000_000
        return due, await wait_until(due)

    due, returned = asyncio.run(main())
    assert returned >= due


def test_an_early_start_is_counted_not_hidden() -> None:
    starts = Starts()
    assert starts.note(1_000_000, 1_250_000) == 250_000  # 250 us late
    assert starts.note(2_000_000, 1_999_100) == -900  # 0.9 us early
    assert starts.early == 1
    assert starts.lag.count == 1 and starts.lag.negative == 1
    d = starts.to_dict()
    assert d["early"] == 1 and d["lag_us"]["negative"] == 1
    merged = Histogram.merged([d["lag_us"], d["lag_us"]])
    assert merged.negative == 2 and merged.count == 2


def test_the_histogram_never_clamps_a_negative_value_silently() -> None:
    h = Histogram()
    h.record(-3)
    h.record(0)
    h.record(5)
    assert h.negative == 1
    assert h.count == 2 and h.min == 0 and h.counts[0] == 1  # the negative value is not a zero
    s = h.summary()
    assert s["negative"] == 1 and s["count"] == 2
    back = Histogram.from_dict(h.to_dict())
    assert back.negative == 1
