"""An application with handlers, for ``python -m bench.ab`` (does registering handlers cost the fast paths
anything?): two actions, no hooks; ping/pong and broadcasts never call them."""

from __future__ import annotations

from typing import Any

from server import App, Context

app = App()


@app.action("bid")
def bid(ctx: Context, data: Any) -> Any:
    return {"accepted": True}


@app.action("slow")
async def slow(ctx: Context, data: Any) -> Any:
    return None
