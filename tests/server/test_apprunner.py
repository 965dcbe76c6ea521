"""The application runner without sockets: dispatch of actions (sync, async, unknown, failing, bounded),
the hooks, and what a handler's context does, against a fake host."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from server.application import MAX_RUNNING, App, Context
from server.apprunner import AppRunner
from server.metrics import Metrics
from server.protocol import Custom, Join, Session


class FakeConn(Session):
    __slots__ = ("closed", "policy")

    def __init__(self, client_id: str = "0-1") -> None:
        super().__init__(client_id)
        from server.protocol import ALLOW_ALL

        self.policy = ALLOW_ALL
        self.closed: list[tuple[int, str, str]] = []

    def close(self, code: int, reason: str, why: str) -> None:
        self.closed.append((code, reason, why))


class FakeHost:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.max_rooms = 4
        self.worker_id = 3
        self.replies: list[tuple[FakeConn, dict[str, Any]]] = []
        self.injected: list[tuple[str, str | None, dict[str, Any]]] = []
        self.joins: list[Join] = []
        self.left: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def reply(self, conn: FakeConn, msg: dict[str, Any]) -> None:
        self.replies.append((conn, msg))

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> asyncio.Future[dict[str, Any]]:
        self.injected.append((stream, room, msg))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.set_result({"room": stream, "offset": len(self.injected), "epoch": "e"})
        return fut

    def join(self, conn: FakeConn, join: Join) -> None:
        self.joins.append(join)

    def unsubscribe(self, conn: FakeConn, room: str) -> None:
        self.left.append(room)

    def msgs(self) -> list[dict[str, Any]]:
        return [m for _, m in self.replies]


def make(app: App) -> tuple[AppRunner, FakeHost]:
    host = FakeHost()
    return AppRunner(app, host), host  # type: ignore[arg-type]


def test_a_sync_action_answers_inline_with_its_id_and_a_none_result_answers_nothing() -> None:
    app = App()
    seen: list[Context] = []

    @app.action("add")
    def add(ctx: Context, data: Any) -> Any:
        seen.append(ctx)
        return data["a"] + data["b"]

    @app.action("quiet")
    def quiet(ctx: Context, data: Any) -> None:
        return None

    runner, host = make(app)
    conn = FakeConn()
    conn.user = "ann"
    runner.call(conn, Custom("add", {"a": 1, "b": 2}, 9))  # type: ignore[arg-type]
    assert host.msgs() == [{"type": "result", "action": "add", "data": 3, "id": 9}]
    ctx = seen[0]
    assert (ctx.client_id, ctx.user, ctx.rooms, ctx.codec, ctx.worker, ctx.id) == ("0-1", "ann", ["lobby"], "json", 3, 9)
    runner.call(conn, Custom("quiet", None, 10))  # type: ignore[arg-type]
    assert len(host.replies) == 1


def test_unknown_failing_and_unsendable_actions_cost_only_their_request() -> None:
    app = App()

    @app.action("boom")
    def boom(ctx: Context, data: Any) -> Any:
        raise RuntimeError("x")

    @app.action("bytes")
    def unsendable(ctx: Context, data: Any) -> Any:
        return b"\x00"

    runner, host = make(app)
    conn = FakeConn()
    runner.call(conn, Custom("nope", None, 1))  # type: ignore[arg-type]
    runner.call(conn, Custom("boom", None, 2))  # type: ignore[arg-type]
    runner.call(conn, Custom("bytes", None, 3))  # type: ignore[arg-type]
    codes = [(m["code"], m.get("id")) for m in host.msgs()]
    assert codes == [("unknown_action", 1), ("internal_error", 2), ("internal_error", 3)]
    assert "known: get_stats, boom, bytes" in host.msgs()[0]["detail"]
    assert host.metrics.app_errors == {"action": 2}


def test_async_actions_run_as_tasks_at_most_max_running_per_connection() -> None:
    app = App()
    gate = asyncio.Event()

    @app.action("wait")
    async def wait(ctx: Context, data: Any) -> Any:
        await gate.wait()
        return ctx.id

    async def main() -> None:
        runner, host = make(app)
        a, b = FakeConn("0-1"), FakeConn("0-2")
        for i in range(MAX_RUNNING + 1):
            runner.call(a, Custom("wait", None, i))  # type: ignore[arg-type]
        runner.call(b, Custom("wait", None, "b"))  # type: ignore[arg-type]  # another connection's own bound
        assert host.msgs() == [{"type": "error", "code": "too_many_requests",
                                "detail": f"at most {MAX_RUNNING} actions running per connection",
                                "id": MAX_RUNNING}]
        assert runner.running == {a: MAX_RUNNING, b: 1}
        gate.set()
        await asyncio.gather(*host.tasks)
        assert runner.running == {}
        assert sorted(str(m["data"]) for m in host.msgs()[1:]) == sorted([*map(str, range(MAX_RUNNING)), "b"])

    asyncio.run(main())


def test_hooks_run_in_order_each_protected_and_async_ones_as_tasks() -> None:
    app = App()
    calls: list[str] = []

    @app.on_connect
    def first(ctx: Context) -> None:
        calls.append("first")
        raise ValueError("broken hook")

    @app.on_connect
    async def second(ctx: Context) -> None:
        calls.append("second")
        raise ValueError("broken async hook")

    @app.on_disconnect
    def bye(ctx: Context) -> None:
        calls.append(f"bye {ctx.client_id}")

    async def main() -> None:
        runner, host = make(app)
        conn = FakeConn()
        runner.connected(conn)  # type: ignore[arg-type]
        await asyncio.gather(*host.tasks)
        runner.disconnected(conn)  # type: ignore[arg-type]
        assert calls == ["first", "second", "bye 0-1"]
        assert host.metrics.app_errors == {"hook": 2}

    asyncio.run(main())


def test_a_context_publishes_joins_leaves_replies_and_closes_through_the_host() -> None:
    app = App()
    results: list[Any] = []

    @app.action("all")
    async def everything(ctx: Context, data: Any) -> Any:
        results.append(await ctx.publish("news", {"n": 1}))
        ctx.join("games")
        ctx.join("$stats-not-a-room")  # refused as if the client had asked: an error reply, no join
        ctx.leave("lobby")
        ctx.reply({"type": "note", "text": "hi"})
        ctx.close(4001, "done")
        return "ok"

    async def main() -> None:
        runner, host = make(app)
        conn = FakeConn()
        runner.call(conn, Custom("all", None, 1))  # type: ignore[arg-type]
        await asyncio.gather(*host.tasks)
        stream, room, msg = host.injected[0]
        assert (stream, room, msg["type"], msg["data"], msg["from"]) == ("news", "news", "publication", {"n": 1}, "0-1")
        assert results == [{"room": "news", "offset": 1, "epoch": "e"}]
        assert [j.stream for j in host.joins] == ["games"] and host.left == ["lobby"]
        types = [m["type"] for m in host.msgs()]
        assert types == ["error", "left", "note", "result"]
        assert conn.closed == [(4001, "done", "app")]

    asyncio.run(main())


@pytest.mark.parametrize(("code", "reason"), [(1005, ""), (1006, ""), (999, ""), (2999, ""), (5000, ""),
                                              (70000, ""), (1000, "é" * 62)])
def test_ctx_close_refuses_what_may_not_go_on_the_wire(code: int, reason: str) -> None:
    app = App()

    @app.action("kick")
    def kick(ctx: Context, data: Any) -> None:
        ctx.close(code, reason)

    runner, host = make(app)
    conn = FakeConn()
    runner.call(conn, Custom("kick", None, "k"))  # type: ignore[arg-type]
    assert conn.closed == [] and host.msgs()[0]["code"] == "internal_error"


def test_app_registration_rules() -> None:
    app = App()
    assert app.empty
    with pytest.raises(ValueError):
        app.action("get_stats")
    with pytest.raises(ValueError):
        app.action("")
    with pytest.raises(ValueError):
        app.action("x" * 65)  # the protocol refuses longer names: such an action could never be called
    app.action("x" * 64)(lambda ctx, data: None)
    assert not app.empty
