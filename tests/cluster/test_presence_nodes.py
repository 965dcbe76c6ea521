"""Presence and the HTTP API across two nodes sharing one Redis: lists and events span the nodes, a dead
node's members leave the list by themselves, and the API reaches clients of the other node."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ..helpers import NO_REDIS_REASON, RedisServer, T, connect, recv_until, redis_server_binary, request, send
from ..server.http.test_api import KEY, api
from .nodes import node

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason=NO_REDIS_REASON)


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def test_presence_spans_nodes_and_a_dead_nodes_members_vanish(redis_server: RedisServer) -> None:
    a = node(redis_server.url, "pa", 2, "--api-key", KEY)
    b = node(redis_server.url, "pb", 2, "--api-key", KEY)
    with a, b:
        async def main() -> None:
            on_a, on_b = await connect(a.url), await connect(b.url)
            # each node's first client of its worker: the same worker number and counter, not the same id
            assert on_a.welcome["client_id"] != on_b.welcome["client_id"]  # type: ignore[attr-defined]
            await send(on_b, {"type": "chat", "room": "lobby", "text": "hi", "user": "bob"})
            assert (await request(on_a, {"type": "join", "room": "px", "presence": True}))["presence"] is True
            assert (await request(on_b, {"type": "join", "room": "px", "presence": True}))["presence"] is True
            got = await recv_until(on_a, lambda m: m.get("type") == "presence" and m.get("node") == "pb")
            assert got["event"] == "join" and got["user"] == "bob"

            async def listing(ws: Any) -> dict[str, Any]:
                return await request(ws, {"type": "get_presence", "room": "px"})  # type: ignore[no-any-return]

            deadline = time.monotonic() + T(10)  # the other node's list is written to Redis as it changes
            while (await listing(on_a))["count"] < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            members = (await listing(on_a))["members"]
            assert {(m["node"], m["user"]) for m in members} == {("pa", None), ("pb", "bob")}
            status, _, res = await asyncio.to_thread(api, b, "GET", "/api/rooms/px/presence")
            assert status == 200 and res["count"] == 2

            # the API of node a closes a client of node b (a's workers relay it through Redis)
            other = await connect(b.url)
            status, _, res = await asyncio.to_thread(
                api, a, "POST", f"/api/clients/{other.welcome['client_id']}/disconnect",  # type: ignore[attr-defined]
                {"code": 4010, "reason": "bye"})
            assert status == 200 and res["other_nodes"] == 1
            await asyncio.wait_for(other.wait_closed(), T(5))
            assert other.close_code == 4010

            # node b dies without a goodbye: its members leave a's list once its entries expire
            b.kill()
            deadline = time.monotonic() + T(15)
            while (await listing(on_a))["count"] != 1:
                assert time.monotonic() < deadline, "the dead node's members stayed listed"
                await asyncio.sleep(0.2)
            assert [m["node"] for m in (await listing(on_a))["members"]] == ["pa"]
            await on_a.close()

        run(main())
