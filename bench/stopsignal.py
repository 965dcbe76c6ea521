"""The one way the benchmark's own servers stop: a future that SIGTERM or SIGINT completes."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Future[None]:
    """A future of the running loop, done at the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return stop
