"""Small helpers shared by the application tests (on top of tests/helpers.py)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection

from ..helpers import T, pid_state, recv, send

_ids = itertools.count(1000)


def run(coro: Any) -> Any:
    """Run one test's coroutine with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, T(60)))


def unique(prefix: str) -> str:
    """A room or gate name no other test uses (the servers are shared by a module's tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def next_id() -> int:
    return next(_ids)


async def call(ws: ClientConnection, action: str, data: Any = None, mid: Any = None) -> Any:
    """Send ``custom`` ``action`` and return the first message carrying its id (a result or an error)."""
    mid = next_id() if mid is None else mid
    await send(ws, {"type": "custom", "action": action, "data": data, "id": mid})
    return await until_id(ws, mid)


async def until_id(ws: ClientConnection, mid: Any, timeout: float = 10.0) -> Any:
    return (await collect(ws, [mid], timeout))[-1]


async def collect(ws: ClientConnection, ids: Iterable[Any], timeout: float = 10.0) -> list[Any]:
    """Every message carrying an ``id``, in arrival order, until each of ``ids`` has been seen (others are
    skipped). Bounded by ``timeout`` in all."""
    want = set(ids)
    got: list[Any] = []
    deadline = time.monotonic() + T(timeout)
    while want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer for ids {sorted(map(str, want))}; got {got}")
        msg = await recv(ws, left)
        if isinstance(msg, dict) and "id" in msg:
            got.append(msg)
            want.discard(msg["id"])
    return got


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pid_state(pid) not in (None, "Z")
