"""Presence on a real two-worker server: who asked for it is listed and announced, across workers; leaving
the room or the connection ends it; the bounds and the rights hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from ..helpers import ServerProcess, T, connect, connect_spread, recv_until, request, send


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(2, extra_args=["--presence-max-members", "3", "--log-level", "warning"]) as s:
        yield s


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def is_presence(room: str, event: str, client_id: str) -> Any:
    return lambda m: (m.get("type") == "presence" and m.get("room") == room and m.get("event") == event
                      and m.get("client_id") == client_id)


def cid(ws: ClientConnection) -> str:
    return str(ws.welcome["client_id"])  # type: ignore[attr-defined]


async def join(ws: ClientConnection, room: str, presence: bool = True) -> dict[str, Any]:
    reply = await request(ws, {"type": "join", "room": room, "presence": presence})
    assert reply["type"] == "joined", reply
    return reply  # type: ignore[no-any-return]


def test_presence_is_listed_and_announced_across_workers(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, 1)
        a, b = by_worker[0][0], by_worker[1][0]
        await send(a, {"type": "chat", "room": "lobby", "text": "x", "user": "alice"})  # name the session
        assert (await join(a, "p1"))["presence"] is True
        await recv_until(a, is_presence("p1", "join", cid(a)))  # a tracked member hears its own arrival
        assert (await join(b, "p1"))["presence"] is True
        got = await recv_until(a, is_presence("p1", "join", cid(b)))  # b is on the other worker
        assert got["node"] and "offset" in got
        listing = await request(a, {"type": "get_presence", "room": "p1"})
        assert listing["type"] == "presence_list" and listing["count"] == 2 and listing["truncated"] is False
        assert {(m["client_id"], m["user"]) for m in listing["members"]} == {(cid(a), "alice"), (cid(b), None)}
        # leaving the room ends presence, announced to the others
        await request(b, {"type": "leave", "room": "p1"})
        await recv_until(a, is_presence("p1", "leave", cid(b)))
        assert (await request(a, {"type": "get_presence", "room": "p1"}))["count"] == 1
        # so does closing the connection
        await join(b, "p1")
        await recv_until(a, is_presence("p1", "join", cid(b)))
        await b.close()
        await recv_until(a, is_presence("p1", "leave", cid(b)))
        assert [m["client_id"] for m in (await request(a, {"type": "get_presence", "room": "p1"}))["members"]] \
            == [cid(a)]
        await a.close()

    run(main())


def test_members_without_presence_are_neither_listed_nor_told(srv: ServerProcess) -> None:
    async def main() -> None:
        watcher, quiet = await connect(srv.url), await connect(srv.url)
        await join(watcher, "p2")
        reply = await join(quiet, "p2", presence=False)
        assert "presence" not in reply
        listing = await request(quiet, {"type": "get_presence", "room": "p2"})  # any member may list
        assert [m["client_id"] for m in listing["members"]] == [cid(watcher)]
        await send(quiet, {"type": "publish", "room": "p2", "data": "after"})
        got = await recv_until(quiet, lambda m: m.get("type") in ("presence", "publication"))
        assert got["type"] == "publication"  # no presence event reached the untracked member
        for ws in (watcher, quiet):
            await ws.close()

    run(main())


def test_presence_can_start_for_a_member_and_a_repeat_is_not_announced_twice(srv: ServerProcess) -> None:
    async def main() -> None:
        a, b = await connect(srv.url), await connect(srv.url)
        await join(a, "p3")
        await join(b, "p3", presence=False)
        assert (await join(b, "p3"))["presence"] is True  # already a member: presence starts now
        await recv_until(a, is_presence("p3", "join", cid(b)))
        assert (await join(b, "p3"))["presence"] is True
        await send(b, {"type": "publish", "room": "p3", "data": "marker"})
        got = await recv_until(a, lambda m: m.get("type") in ("presence", "publication"))
        assert got["type"] == "publication"  # no second join event before the marker
        for ws in (a, b):
            await ws.close()

    run(main())


def test_a_full_room_says_presence_false_and_lists_only_whom_it_tracks(srv: ServerProcess) -> None:
    async def main() -> None:
        conns = [await connect(srv.url) for _ in range(8)]
        granted = [(await join(ws, "p4"))["presence"] for ws in conns]
        # at most 3 tracked per worker: with 2 workers, between 3 and 6 of the 8 are tracked
        assert 3 <= sum(granted) <= 6 and not all(granted)
        listing = await request(conns[0], {"type": "get_presence", "room": "p4"})
        assert listing["count"] == sum(granted)
        tracked = {cid(ws) for ws, g in zip(conns, granted) if g}
        assert {m["client_id"] for m in listing["members"]} == tracked
        for ws in conns:
            await ws.close()

    run(main())


def test_only_members_may_list_a_room_and_only_rooms_have_presence(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        reply = await request(ws, {"type": "get_presence", "room": "secret"})
        assert (reply["type"], reply["code"]) == ("error", "not_in_room")
        reply = await request(ws, {"type": "join", "room": "$stats", "presence": True})
        assert (reply["type"], reply["code"]) == ("error", "bad_room")
        reply = await request(ws, {"type": "join", "room": "$presence:lobby"})
        assert (reply["type"], reply["code"]) == ("error", "forbidden")  # nobody listens in from outside
        await ws.close()

    run(main())
