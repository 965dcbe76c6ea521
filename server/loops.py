"""The event loops a worker can run on, by short name (``--loop``): a registry, resolved lazily."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final


def _uvloop(main: Coroutine[Any, Any, None]) -> None:
    import uvloop

    uvloop.run(main)


def _asyncio(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


LOOPS: Final[dict[str, Callable[[Coroutine[Any, Any, None]], None]]] = {
    "uvloop": _uvloop,
    "asyncio": _asyncio,
}


def run(name: str, main: Coroutine[Any, Any, None]) -> None:
    LOOPS[name](main)
