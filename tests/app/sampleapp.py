"""The application ``tests/app/test_cli_app.py`` loads with ``python -m server --app tests.app.sampleapp:app``.

Each action exists to make one behaviour of the library observable from a WebSocket client:

- ``add`` (sync) and ``echo`` (async): a result with the request's id;
- ``boom`` / ``aboom``: a sync / async handler that raises (the caller gets ``internal_error``);
- ``hold`` / ``release``: an async handler that waits on a named gate until a ``release`` of the same name
  (on the same worker) opens it. Tests use it instead of a sleep, so they assert the order in which answers
  arrive rather than timings; the wait is still bounded (``HOLD_LIMIT_S``) so nothing can hang;
- ``announce``: ``ctx.publish`` to a room, returning the stream position;
- ``enter``: ``ctx.join`` on the caller's behalf;
- ``kick``: ``ctx.close`` with the code and reason asked for;
- ``whoami``: what the context says about the caller;
- ``unsendable`` / ``silent``: a result JSON cannot carry; a handler that returns None (no result at all).

``NOT_AN_APP`` exists so that ``--app tests.app.sampleapp:NOT_AN_APP`` has something that is not an App.
"""

from __future__ import annotations

import asyncio
from typing import Any

from server import App, Context

HOLD_LIMIT_S = 20.0  # a held action gives up (and raises: internal_error) after this long

app = App()
NOT_AN_APP = {"an": "ordinary dict"}

_gates: dict[str, asyncio.Event] = {}  # per worker process: each worker imports its own copy


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


@app.action("add")
def add(ctx: Context, data: Any) -> Any:
    return {"sum": data["a"] + data["b"]}


@app.action("echo")
async def echo(ctx: Context, data: Any) -> Any:
    await asyncio.sleep(0)
    return {"echo": data}


@app.action("boom")
def boom(ctx: Context, data: Any) -> Any:
    raise RuntimeError("sync handler failed on purpose")


@app.action("aboom")
async def aboom(ctx: Context, data: Any) -> Any:
    await asyncio.sleep(0)
    raise ValueError("async handler failed on purpose")


@app.action("hold")
async def hold(ctx: Context, data: Any) -> Any:
    await asyncio.wait_for(_gate(data["gate"]).wait(), HOLD_LIMIT_S)
    return {"released": data["gate"]}


@app.action("release")
def release(ctx: Context, data: Any) -> Any:
    _gate(data["gate"]).set()
    return {"opened": data["gate"]}


@app.action("announce")
async def announce(ctx: Context, data: Any) -> Any:
    return await ctx.publish(data["room"], data["data"])


@app.action("enter")
def enter(ctx: Context, data: Any) -> Any:
    ctx.join(data["room"])
    return {"entering": data["room"]}


@app.action("kick")
def kick(ctx: Context, data: Any) -> None:
    ctx.close(data["code"], data["reason"])


@app.action("whoami")
def whoami(ctx: Context, data: Any) -> Any:
    return {"client_id": ctx.client_id, "user": ctx.user, "rooms": ctx.rooms, "codec": ctx.codec,
            "worker": ctx.worker, "id": ctx.id}


@app.action("unsendable")
def unsendable(ctx: Context, data: Any) -> Any:
    return {"set": {"a set": {1, 2, 3}}, "int-keys": {1: "one"}, "bytes": b"raw"}.get(data, object())


@app.action("silent")
def silent(ctx: Context, data: Any) -> None:
    return None
