"""The event-loop lag probe (server/looplag.py): windows on a clock of the test's own, then a real loop held
on purpose. (A real server's figures, a worker blocked by an application's action: tests/server/test_statsfeed.py.)"""

from __future__ import annotations

import asyncio
import time

from server.looplag import LoopLag


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def probe(clock: Clock, loop: asyncio.AbstractEventLoop) -> LoopLag:
    lag = LoopLag(loop, interval=0.05, window=1.0, clock=clock)
    lag.start()  # schedules on a loop that never runs: the test drives record() itself
    return lag


def test_the_worst_lateness_lasts_one_to_two_windows() -> None:
    clock = Clock()
    loop = asyncio.new_event_loop()
    lag = probe(clock, loop)
    lag._due = 1e18  # nothing overdue: only what record() notes counts
    assert lag.seconds() == 0.0
    clock.t += 0.3
    lag.record(0.25, clock.t)
    lag.record(0.01, clock.t)
    assert lag.seconds() == 0.25
    clock.t += 0.8  # the next window begins: the stall is in the previous one, still shown
    lag.record(0.002, clock.t)
    assert lag.seconds() == 0.25
    clock.t += 1.0  # two windows on: gone
    lag.record(0.003, clock.t)
    assert lag.seconds() == 0.003
    clock.t += 5.0  # no tick for long (the loop was held that long): the old windows count for nothing
    lag.record(4.9, clock.t)
    assert lag.seconds() == 4.9
    lag.stop()
    assert lag.seconds() == 0.0
    loop.close()


def test_an_overdue_tick_counts_before_it_runs() -> None:
    clock = Clock()
    loop = asyncio.new_event_loop()
    lag = probe(clock, loop)
    lag._due = clock.t + 0.05
    clock.t += 0.45  # held: the tick is 0.4 s late and has not run yet
    assert abs(lag.seconds() - 0.4) < 1e-9
    lag.stop()
    loop.close()


def test_a_held_loop_shows_its_stall_and_an_idle_one_does_not() -> None:
    async def main() -> tuple[float, float]:
        lag = LoopLag(asyncio.get_running_loop())
        lag.start()
        await asyncio.sleep(0.3)
        idle = lag.seconds()
        time.sleep(0.3)  # the point: hold the loop
        await asyncio.sleep(0.06)  # let the late tick run
        held = lag.seconds()
        lag.stop()
        return idle, held

    idle, held = asyncio.run(main())
    assert idle < 0.1, idle
    assert 0.24 <= held < 1.0, held
