"""An application loaded by import string: ``python -m server --app tests.app.sampleapp:app`` on 2 workers,
driven by plain WebSocket clients (the library's promises as a user sees them).

The held actions (``hold``/``release``, see sampleapp.py) replace sleeps: the tests assert the order in
which answers arrive, never how long something took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from ..helpers import (
    PYTHON,
    ROOT,
    ServerProcess,
    T,
    connect,
    connect_spread,
    free_port,
    recv,
    recv_until,
    send,
)
from .common import call, collect, next_id, run, unique

APP = "tests.app.sampleapp:app"


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2, extra_args=["--app", APP, "--log-level", "warning"]) as s:
        yield s


def test_results_carry_the_request_id_for_sync_and_async_actions(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        welcome = ws.welcome  # type: ignore[attr-defined]
        me = await call(ws, "whoami", None, "who-1")
        assert me == {"type": "result", "action": "whoami", "id": "who-1",
                      "data": {"client_id": welcome["client_id"], "user": None, "rooms": ["lobby"],
                               "codec": "json", "worker": welcome["worker"], "id": "who-1"}}
        assert await call(ws, "add", {"a": 2, "b": 3}, 7) == {"type": "result", "action": "add", "id": 7,
                                                               "data": {"sum": 5}}
        assert await call(ws, "echo", [1, "x"], 8) == {"type": "result", "action": "echo", "id": 8,
                                                        "data": {"echo": [1, "x"]}}
        # None is no answer at all: the ping sent after it is the next thing carrying an id
        await send(ws, {"type": "custom", "action": "silent", "id": 9})
        await send(ws, {"type": "ping", "id": 10})
        got = await collect(ws, [10])
        assert [m["id"] for m in got] == [10] and got[0]["type"] == "pong"
        err = await call(ws, "nosuch", None, 11)
        assert err["type"] == "error" and err["code"] == "unknown_action" and err["id"] == 11
        assert "add" in err["detail"] and "get_stats" in err["detail"]
        stats = await call(ws, "get_stats", None, 12)  # the built-in action still answers
        assert stats["type"] == "stats"
        await ws.close()

    run(main())


def test_a_failing_handler_costs_only_that_request(srv: ServerProcess) -> None:
    pids_before = srv.worker_pids()

    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=2)
        a, b = by_worker[0]
        other = by_worker[1][0]
        for action, mid in (("boom", "s1"), ("aboom", "a1")):
            err = await call(a, action, None, mid)
            assert err["type"] == "error" and err["code"] == "internal_error" and err["id"] == mid, err
            assert action in err["detail"]
        # the same connection, a neighbour on the same worker and a client of the other worker carry on
        assert (await call(a, "add", {"a": 1, "b": 1}))["data"] == {"sum": 2}
        assert (await call(a, "echo", "still here"))["data"] == {"echo": "still here"}
        assert (await call(b, "add", {"a": 2, "b": 2}))["data"] == {"sum": 4}
        assert (await call(other, "echo", 1))["data"] == {"echo": 1}
        for ws in (a, b, other):
            await ws.close()

    run(main())
    assert srv.worker_pids() == pids_before  # no worker was replaced
    deadline = time.monotonic() + T(5)
    while not ("sync handler failed on purpose" in srv.output() and "async handler failed on purpose"
               in srv.output()):
        assert time.monotonic() < deadline, f"the tracebacks were not logged:\n{srv.output()}"
        time.sleep(0.05)


def test_a_slow_async_handler_blocks_neither_the_connection_nor_the_worker(srv: ServerProcess) -> None:
    gate = unique("gate")

    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=2)
        a, b = by_worker[0]  # the same worker
        await send(a, {"type": "custom", "action": "hold", "data": {"gate": gate}, "id": "held"})
        await send(a, {"type": "ping", "id": "p"})
        await send(a, {"type": "custom", "action": "add", "data": {"a": 1, "b": 2}, "id": "sum"})
        got = await collect(a, ["p", "sum"])
        assert [m["id"] for m in got] == ["p", "sum"]  # answered while "held" is still running
        assert (await call(b, "echo", "neighbour"))["data"] == {"echo": "neighbour"}
        assert (await call(b, "add", {"a": 5, "b": 5}))["data"] == {"sum": 10}
        await send(a, {"type": "custom", "action": "release", "data": {"gate": gate}, "id": "rel"})
        got = await collect(a, ["held", "rel"])
        assert {m["id"]: m["data"] for m in got} == {"rel": {"opened": gate}, "held": {"released": gate}}
        for ws in (a, b, *by_worker[1]):
            await ws.close()

    run(main())


def test_the_17th_running_async_action_of_a_connection_is_refused(srv: ServerProcess) -> None:
    gate = unique("gate")

    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=2)
        a, b = by_worker[0]
        held = [f"h{i}" for i in range(16)]
        for mid in held:
            await send(a, {"type": "custom", "action": "hold", "data": {"gate": gate}, "id": mid})
        await send(a, {"type": "custom", "action": "hold", "data": {"gate": gate}, "id": "h16"})
        got = await collect(a, ["h16"])
        assert [m["id"] for m in got] == ["h16"]  # none of the 16 has finished
        assert got[0]["type"] == "error" and got[0]["code"] == "too_many_requests", got
        # the bound is per connection and counts async actions only
        assert (await call(a, "add", {"a": 1, "b": 1}))["data"] == {"sum": 2}
        await send(b, {"type": "custom", "action": "hold", "data": {"gate": gate}, "id": "b-held"})
        # opening the gate (a sync action, allowed at the bound) finishes all 16, and the count goes down
        await send(a, {"type": "custom", "action": "release", "data": {"gate": gate}, "id": "rel"})
        got = await collect(a, [*held, "rel"])
        assert all(m["type"] == "result" for m in got), got
        assert (await collect(b, ["b-held"]))[-1]["data"] == {"released": gate}
        assert (await call(a, "echo", "again"))["data"] == {"echo": "again"}
        for ws in (a, b, *by_worker[1]):
            await ws.close()

    run(main())


def test_ctx_publish_reaches_a_member_on_the_other_worker(srv: ServerProcess) -> None:
    room = unique("news")

    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2)
        publisher, member = by_worker[0][0], by_worker[1][0]
        await send(member, {"type": "join", "room": room, "id": "j"})
        assert (await collect(member, ["j"]))[-1]["type"] == "joined"
        res = await call(publisher, "announce", {"room": room, "data": {"headline": "hi"}}, "pub")
        assert res["type"] == "result" and res["id"] == "pub", res
        pos = res["data"]
        assert pos["room"] == room and pos["offset"] == 1 and isinstance(pos["epoch"], str)
        msg = await recv_until(member, lambda m: m.get("type") == "publication")
        assert msg["room"] == room and msg["data"] == {"headline": "hi"}
        assert (msg["offset"], msg["epoch"]) == (pos["offset"], pos["epoch"])
        assert msg["from"] == publisher.welcome["client_id"]  # type: ignore[attr-defined]
        for ws in (publisher, member):
            await ws.close()

    run(main())


def test_ctx_join_makes_the_caller_a_member(srv: ServerProcess) -> None:
    room = unique("joined")

    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2)
        a, b = by_worker[0][0], by_worker[1][0]
        await send(a, {"type": "custom", "action": "enter", "data": {"room": room}, "id": "e"})
        joined = await recv_until(a, lambda m: m.get("type") == "joined")
        assert joined["room"] == room and room in joined["rooms"]
        await send(b, {"type": "chat", "room": room, "text": "welcome in", "id": "c"})
        assert (await collect(b, ["c"]))[-1]["type"] == "ack"
        chat = await recv_until(a, lambda m: m.get("type") == "chat")
        assert chat["room"] == room and chat["text"] == "welcome in"
        assert room in (await call(a, "whoami"))["data"]["rooms"]
        for ws in (a, b):
            await ws.close()

    run(main())


def test_ctx_close_closes_with_the_code_and_reason_given(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        other = await connect(srv.url)
        await send(ws, {"type": "custom", "action": "kick", "data": {"code": 4001, "reason": "go away"}, "id": 1})
        with pytest.raises(websockets.ConnectionClosed) as info:
            for _ in range(10):
                await recv(ws)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "go away")
        assert (await call(other, "add", {"a": 0, "b": 0}))["data"] == {"sum": 0}
        await other.close()

    run(main())


@pytest.mark.parametrize("what", ["set", "int-keys", "bytes", "object"])
def test_a_result_json_cannot_carry_is_an_internal_error(srv: ServerProcess, what: str) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        err = await call(ws, "unsendable", what, "u")
        assert err["type"] == "error" and err["code"] == "internal_error" and err["id"] == "u", err
        assert (await call(ws, "add", {"a": 1, "b": 2}))["data"] == {"sum": 3}
        await ws.close()

    run(main())


def test_many_clients_interleave_sync_and_async_actions(srv: ServerProcess) -> None:
    """Answers never cross connections: each client gets exactly its own ids back."""

    async def client(k: int) -> None:
        ws = await connect(srv.url)
        ids = [next_id() for _ in range(10)]
        for i, mid in enumerate(ids):
            action = "add" if i % 2 else "echo"
            data = {"a": k, "b": i} if i % 2 else [k, i]
            await send(ws, {"type": "custom", "action": action, "data": data, "id": mid})
        got = await collect(ws, ids)
        assert sorted(m["id"] for m in got) == sorted(ids)
        for i, m in enumerate(sorted(got, key=lambda m: ids.index(m["id"]))):
            assert m["data"] == ({"sum": k + i} if i % 2 else {"echo": [k, i]})
        await ws.close()

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(6)))

    run(main())


# --- --app errors: usage errors, before anything starts ----------------------------------------------------


def _serve_fails(app_spec: str) -> tuple[int, str]:
    proc = subprocess.Popen([PYTHON, "-m", "server", "--port", str(free_port()), "--workers", "1", "--app",
                             app_spec], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=T(30))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own process group (start_new_session)
        proc.communicate()
        raise AssertionError(f"--app {app_spec} started a server instead of failing") from None
    return proc.returncode, err


@pytest.mark.parametrize(("spec", "says"), [
    ("nosuch:app", "cannot import 'nosuch'"),
    ("tests.app.sampleapp:missing", "has no attribute 'missing'"),
    ("tests.app.sampleapp:NOT_AN_APP", "not a server.App"),
    ("tests.app.sampleapp", "must be 'module:attribute'"),
])
def test_a_bad_app_is_a_usage_error(spec: str, says: str) -> None:
    code, err = _serve_fails(spec)
    assert code == 2, err
    assert says in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("code", [999, 1005, 1006, 2999, 70000])
def test_ctx_close_with_an_invalid_code_is_the_handlers_error(srv: ServerProcess, code: int) -> None:
    """Expected: like any handler exception, the caller gets internal_error with its id and its connection
    carries on (the valid codes: 1000-1003, 1007-1014, 3000-4999)."""

    async def main() -> None:
        ws = await connect(srv.url, close_timeout=1)
        try:
            await send(ws, {"type": "custom", "action": "kick", "data": {"code": code, "reason": "r"}, "id": "k"})
            err = (await collect(ws, ["k"], timeout=3))[-1]
            assert err["type"] == "error" and err["code"] == "internal_error", err
            await send(ws, {"type": "ping", "id": "p"})
            assert (await collect(ws, ["p"], timeout=3))[-1]["type"] == "pong"
        finally:
            ws.transport.abort()

    run(main())


class ConsoleScriptServer(ServerProcess):
    """The ``fanwire`` console script (pyproject's ``[project.scripts]``) instead of ``python -m server``."""

    def args(self) -> list[str]:
        return [str(FANWIRE), *super().args()[3:]]


FANWIRE = Path(PYTHON).parent / "fanwire"


@pytest.mark.skipif(not FANWIRE.exists(), reason="the fanwire console script is not installed in this environment")
def test_the_fanwire_command_loads_an_app_from_the_current_directory() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with ConsoleScriptServer(workers=1, extra_args=["--app", APP, "--log-level", "warning"], env=env) as srv:
        async def main() -> None:
            ws = await connect(srv.url)
            assert (await call(ws, "add", {"a": 1, "b": 1}))["data"] == {"sum": 2}
            await ws.close()

        run(main())
