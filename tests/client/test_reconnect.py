"""Reconnect: server restart on the same port, worker SIGKILL, do-not-retry closes, heartbeats."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from client import (
    AsyncClient,
    Backoff,
    Client,
    ConnectionLost,
    FatalClose,
    NotConnected,
    SendQueueFull,
    State,
)
from tests.client.fakes import FakeServer, async_wait_for, run, wait_for
from tests.helpers import ServerProcess, T

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(base=0.05, cap=0.5)


def test_server_stopped_and_started_on_the_same_port(tmp_path: Any) -> None:
    srv = ServerProcess(workers=2)
    with srv:
        states: list[State] = []
        chats: list[dict[str, Any]] = []
        c = Client(srv.url, backoff=FAST)
        c.on_state_change(lambda s, e: states.append(s))
        c.on("chat", chats.append)
        small = Client(srv.url, backoff=FAST, max_pending=2)
        c.connect()
        small.connect()
        try:
            c.join("games")
            assert c.join("news") == ["lobby", "games", "news"]

            srv.stop()  # clients get 1001 going away
            wait_for(lambda: c.state is State.RECONNECTING and small.state is State.RECONNECTING, 5, "reconnecting")
            c.send_chat_message("sent while the server was down", room="games")  # queued, not refused
            small.send_chat_message("1")
            small.send_chat_message("2")
            with pytest.raises(SendQueueFull):
                small.send_chat_message("3")

            srv.start()
            # (>= 1: the workers stop one after the other, so a client may first have reconnected to one
            # that was still up, then lost that too; while the server is down it cannot be CONNECTED)
            wait_for(lambda: c.state is State.CONNECTED and c.reconnects >= 1, 15, "reconnected")
            assert c.rooms == ["lobby", "games", "news"]  # re-joined, in order: news is the current room
            wait_for(lambda: any(m["text"] == "sent while the server was down" for m in chats), 5, "queued chat")
            assert states[:4] == [State.CONNECTING, State.CONNECTED, State.RECONNECTING, State.CONNECTED]

            with Client(srv.url) as other:
                other.send_chat_message("for news", room="news")
                wait_for(lambda: any(m["text"] == "for news" for m in chats), 5, "chat in a re-joined room")
            c.send_chat_message("current room")
            wait_for(lambda: any(m["text"] == "current room" and m["room"] == "news" for m in chats), 5)
            stats = c.get_stats()
            assert stats["rooms"]["games"] >= 1 and stats["rooms"]["news"] >= 1
        finally:
            c.disconnect()
            small.disconnect()


def test_worker_sigkill_is_survived() -> None:
    with ServerProcess(workers=2) as srv:
        chats: list[dict[str, Any]] = []
        c = Client(srv.url, backoff=FAST)
        c.on("chat", chats.append)
        c.connect()
        try:
            c.join("games")
            assert c.welcome is not None
            worker = c.welcome["worker"]
            pid = srv.worker_pids()[worker]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: c.reconnects == 1 and c.state is State.CONNECTED, 15, "reconnected after SIGKILL")
            assert c.rooms == ["lobby", "games"]
            assert c.ping() > 0
            with Client(srv.url) as other:
                other.send_chat_message("still here?", room="games")
                wait_for(lambda: any(m["text"] == "still here?" for m in chats), 5, "chat after SIGKILL")
        finally:
            c.disconnect()


def close_with(code: int) -> Any:
    async def behaviour(ws: ServerConnection, n: int) -> None:
        await ws.close(code, "fake says bye")

    return behaviour


def close_then_refuse(fake: list[FakeServer], code: int, status: int) -> Any:
    """Close the first connection with ``code``, refusing every later handshake with ``status``. The
    refusal is switched on *before* the close, so a fast reconnect cannot slip in between."""

    async def behaviour(ws: ServerConnection, n: int) -> None:
        fake[0].status = status
        await ws.close(code, "fake says bye")

    return behaviour


@pytest.mark.parametrize("code", [1002, 1007, 1008, 1009])
def test_no_retry_after_a_do_not_retry_close(code: int) -> None:
    with FakeServer(close_with(code)) as fake:
        c = Client(fake.url, backoff=Backoff(0.01, 0.02))
        c.connect()
        wait_for(lambda: c.state is State.CLOSED, 5, "closed")
        time.sleep(0.3)  # dozens of retries would fit in this window with that backoff
        assert fake.connections == 1 and fake.attempts == 1
        reason = c.closed_reason
        assert isinstance(reason, FatalClose) and reason.code == code
        with pytest.raises(NotConnected) as info:
            c.send_chat_message("anyone?")
        assert info.value.__cause__ is reason
        c.disconnect()


@pytest.mark.parametrize("status", [401, 403])
def test_no_retry_after_http_401_or_403_during_a_reconnect(status: int) -> None:
    holder: list[FakeServer] = []
    with FakeServer(close_then_refuse(holder, 1012, status)) as fake:
        holder.append(fake)
        c = Client(fake.url, backoff=Backoff(0.01, 0.02))
        c.connect()
        wait_for(lambda: c.state is State.CLOSED, 5, "closed")
        time.sleep(0.3)
        assert fake.attempts == 2
        assert getattr(c.closed_reason, "status", None) == status
        c.disconnect()


@pytest.mark.parametrize("code", [1011, 1012, 1013])
def test_retry_after_a_retryable_close(code: int) -> None:
    async def first_closes(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close(code)
        else:
            async for _ in ws:
                pass

    with FakeServer(first_closes) as fake:
        c = Client(fake.url, backoff=Backoff(0.01, 0.02))
        c.connect()
        wait_for(lambda: c.reconnects == 1 and c.state is State.CONNECTED, 5, "reconnected")
        assert fake.connections == 2
        c.disconnect()


def test_attempt_limit_gives_up() -> None:
    holder: list[FakeServer] = []
    with FakeServer(close_then_refuse(holder, 1012, 503)) as fake:  # 503: retryable, but never succeeds
        holder.append(fake)
        c = Client(fake.url, backoff=Backoff(0.01, 0.02, max_attempts=3))
        c.connect()
        wait_for(lambda: c.state is State.CLOSED, 5, "gave up")
        assert fake.attempts == 1 + 3
        c.disconnect()


def test_a_request_in_flight_fails_with_connection_lost_then_the_client_reconnects() -> None:
    async def close_on_first_message(ws: ServerConnection, n: int) -> None:
        async for _ in ws:
            if n == 1:
                await ws.close(1012)
                return

    async def body(url: str) -> None:
        c = AsyncClient(url, backoff=Backoff(0.01, 0.02))
        await c.connect()
        with pytest.raises(ConnectionLost) as info:
            await c.ping()
        assert info.value.code == 1012 and not isinstance(info.value, FatalClose)
        await async_wait_for(lambda: c.state is State.CONNECTED, 5, "reconnected")
        assert c.reconnects == 1
        await c.disconnect()

    with FakeServer(close_on_first_message) as fake:
        run(body(fake.url))


def test_a_silent_server_is_detected_by_the_heartbeat() -> None:
    async def go_silent_first_time(ws: ServerConnection, n: int) -> None:
        if n == 1:
            ws.transport.pause_reading()  # pings are never read, so never answered
        async for _ in ws:
            pass

    lost: list[float] = []
    with FakeServer(go_silent_first_time) as fake:
        c = Client(fake.url, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.2, backoff=Backoff(0.01, 0.02))
        c.on_state_change(lambda s, e: lost.append(time.monotonic()) if s is State.RECONNECTING else None)
        c.connect()
        connected = time.monotonic()
        wait_for(lambda: c.reconnects == 1 and c.state is State.CONNECTED, 5, "reconnected")
        # interval + timeout + close_timeout = 0.7 s, plus scheduling slack; far below the 21 s default
        assert lost and lost[0] - connected < T(0.2 + 0.3 + 0.2 + 1.5)
        c.disconnect()
