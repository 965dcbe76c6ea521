"""``Server`` as a library: applications defined right here (they reach the workers by fork), run in the
background with ``with Server(app=..., port=0) as srv``; hooks, ``authenticate`` (sync and async), the
context manager's processes, and the options it checks."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from server import Accept, App, Context, Refuse, Request, Server
from server.errors import ConfigError

from ..helpers import PYTHON, ServerProcess, T, connect, connect_spread, recv_until, send, wait_gone
from .common import alive, call, collect, run, unique

# --- an application with hooks and its own authentication ---------------------------------------------------

PASS = "sesame"
hall = App()


@hall.authenticate
def let_in(request: Request) -> Accept | Refuse:
    """A shared pass in the query string; the name becomes the user. Members may use the hall only."""
    if request.query.get("pass") != PASS:
        return Refuse(403, "wrong pass")
    return Accept(request.query.get("name", "anonymous"), rooms=("hall",))


@hall.on_connect
def enter_hall(ctx: Context) -> None:
    ctx.join("hall")


@hall.on_disconnect
def say_goodbye(ctx: Context) -> Any:
    return ctx.publish("hall", {"left": ctx.user, "was_in": ctx.rooms})  # an awaitable: the server awaits it


@hall.action("whoami")
def whoami(ctx: Context, data: Any) -> Any:
    return {"user": ctx.user, "rooms": ctx.rooms}


@hall.action("pid")
def pid(ctx: Context, data: Any) -> Any:
    return os.getpid()


@pytest.fixture(scope="module")
def hall_url() -> Iterator[str]:
    with Server(app=hall, port=0, workers=2, log_level="warning") as srv:
        assert srv.url is not None
        yield srv.url


def test_authenticate_accepts_names_the_user_and_restricts_the_rooms(hall_url: str) -> None:
    async def main() -> None:
        alice = await connect(f"{hall_url}/?pass={PASS}&name=alice")
        assert alice.welcome["user"] == "alice"  # type: ignore[attr-defined]
        assert alice.welcome["rooms"] == []  # type: ignore[attr-defined]  # lobby is not allowed
        joined = await recv_until(alice, lambda m: m.get("type") == "joined")  # on_connect's join
        assert joined["room"] == "hall"
        me = await call(alice, "whoami")
        assert me["data"] == {"user": "alice", "rooms": ["hall"]}
        await send(alice, {"type": "join", "room": "vault", "id": "v"})
        err = (await collect(alice, ["v"]))[-1]
        assert err["type"] == "error" and err["code"] == "forbidden", err
        await alice.close()

    run(main())


def test_chat_shows_the_authenticated_name_to_members_on_both_workers(hall_url: str) -> None:
    async def main() -> None:
        by_worker = await connect_spread(f"{hall_url}/?pass={PASS}&name=alice", 2)
        bob = await connect(f"{hall_url}/?pass={PASS}&name=bob")
        await recv_until(bob, lambda m: m.get("type") == "joined")
        for conns in by_worker.values():
            await recv_until(conns[0], lambda m: m.get("type") == "joined")
        text = unique("hello")
        await send(bob, {"type": "chat", "room": "hall", "text": text, "user": "mallory", "id": "c"})
        assert (await collect(bob, ["c"]))[-1]["type"] == "ack"
        for conns in by_worker.values():
            chat = await recv_until(conns[0], lambda m: m.get("type") == "chat" and m.get("text") == text)
            assert chat["user"] == "bob" and chat["room"] == "hall"
        for ws in (bob, *(c for cs in by_worker.values() for c in cs)):
            await ws.close()

    run(main())


def test_on_disconnect_publishes_what_another_member_sees(hall_url: str) -> None:
    async def main() -> None:
        by_worker = await connect_spread(f"{hall_url}/?pass={PASS}&name=watcher", 2)
        leaver_name = unique("carol")
        leaver = await connect(f"{hall_url}/?pass={PASS}&name={leaver_name}")
        await recv_until(leaver, lambda m: m.get("type") == "joined")
        await leaver.close()
        for conns in by_worker.values():  # one of them is on the leaver's worker, one is not
            msg = await recv_until(conns[0], lambda m: m.get("type") == "publication"
                                   and m.get("data") == {"left": leaver_name, "was_in": ["hall"]})
            assert msg["room"] == "hall" and msg["user"] == leaver_name
        for cs in by_worker.values():
            for ws in cs:
                await ws.close()

    run(main())


def test_authenticate_refuses_with_its_status_and_reason(hall_url: str) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"{hall_url}/?pass=guess&name=eve", open_timeout=T(10))
        assert info.value.response.status_code == 403
        assert b"wrong pass" in info.value.response.body

    run(main())


# --- an asynchronous authenticate hook ----------------------------------------------------------------------

gate = App()


@gate.authenticate
async def check_team(request: Request) -> Any:
    await asyncio.sleep(0.01)  # e.g. a look-up in another service
    team = request.headers.get("x-team")
    if team == "crash":
        raise RuntimeError("the look-up failed")
    if team == "odd":
        return "neither Accept nor Refuse"
    if team == "ok-status":
        return Refuse(200, "a refusal must be a 4xx or 5xx")
    if team == "nameless":
        return Accept("")
    if team != "blue":
        return Refuse(401, "blue team only")
    return Accept(f"{team}-{request.query.get('n', '0')}", rooms=("*",), broadcast=True)


@gate.action("whoami")
async def gate_whoami(ctx: Context, data: Any) -> Any:
    return {"user": ctx.user, "rooms": ctx.rooms}


@pytest.fixture(scope="module")
def gate_url() -> Iterator[str]:
    with Server(app=gate, port=0, workers=1, log_level="error") as srv:
        assert srv.url is not None
        yield srv.url


def test_an_async_authenticate_accepts(gate_url: str) -> None:
    async def main() -> None:
        ws = await connect(f"{gate_url}/?n=7", additional_headers={"X-Team": "blue"})
        assert ws.welcome["user"] == "blue-7"  # type: ignore[attr-defined]
        assert (await call(ws, "whoami"))["data"] == {"user": "blue-7", "rooms": ["lobby"]}
        await ws.close()

    run(main())


@pytest.mark.parametrize(("team", "status"), [("red", 401), ("crash", 500), ("odd", 500), ("ok-status", 500),
                                            ("nameless", 500)])
def test_an_async_authenticate_refuses(gate_url: str, team: str, status: int) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(gate_url, additional_headers={"X-Team": team}, open_timeout=T(10))
        assert info.value.response.status_code == status
        # the server is still there for the next client
        ws = await connect(gate_url, additional_headers={"X-Team": "blue"})
        await ws.close()

    run(main())


# --- the Server object itself -------------------------------------------------------------------------------


def test_unknown_options_and_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown_option"):
        Server(unknown_option=1)
    with pytest.raises(ConfigError, match="history_ttl"):
        Server(history_ttl=0)


def test_the_context_manager_serves_on_a_picked_port_and_stops_every_process() -> None:
    srv = Server(app=hall, port=0, workers=2, log_level="warning")
    with srv:
        assert srv.url is not None and srv.pid is not None
        m = re.fullmatch(r"ws://127\.0\.0\.1:(\d+)", srv.url)
        assert m is not None and int(m.group(1)) > 0, srv.url
        supervisor = srv.pid
        assert alive(supervisor)

        async def worker_pids() -> set[int]:
            by_worker = await connect_spread(f"{srv.url}/?pass={PASS}&name=p", 2)
            pids = {(await call(cs[0], "pid"))["data"] for cs in by_worker.values()}
            for cs in by_worker.values():
                for ws in cs:
                    await ws.close()
            return pids

        workers = run(worker_pids())
        assert len(workers) == 2 and supervisor not in workers
        assert all(alive(p) for p in workers)
    assert srv.pid is None and srv.url is None
    assert not alive(supervisor)
    assert wait_gone(workers) == []


FOREGROUND = """
import sys
from server import Server
from tests.app.sampleapp import app
sys.exit(Server(app=app, host="127.0.0.1", port={port}, workers=1, log_level="warning").start())
"""


class ForegroundServer(ServerProcess):
    """``Server(...).start()`` in a script of its own: the foreground form, stopped by SIGTERM."""

    def args(self) -> list[str]:
        return [PYTHON, "-c", FOREGROUND.format(port=self.port)]


def test_start_runs_in_the_foreground_until_sigterm() -> None:
    with ForegroundServer(workers=1) as srv:
        async def main() -> None:
            ws = await connect(srv.url)
            assert (await call(ws, "add", {"a": 20, "b": 22}))["data"] == {"sum": 42}
            await ws.close()

        run(main())
        assert srv.stop() == 0
