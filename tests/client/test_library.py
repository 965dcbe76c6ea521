"""The library against a real multi-worker server: the blocking facade, callbacks, both codecs, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from client import (
    AsyncClient,
    Client,
    ConnectionRefused,
    HandshakeRejected,
    NotConnected,
    RequestTimeout,
    ServerError,
    State,
)
from tests.client.fakes import FakeServer, run, wait_for
from tests.helpers import ServerProcess, T, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_blocking_facade_exactly_as_in_the_issue(
    server: ServerProcess, codec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from client import Client

    c = Client(server.url, codec=codec)  # the issue's example, with the test server's URL
    stats_seen = threading.Event()  # (not in the example) to know when the stats answer has been printed
    c.on("stats", lambda msg: stats_seen.set())  # per-type callbacks run after the message callback
    c.set_message_callback(lambda msg: print("Received:", msg))
    c.connect()
    c.send_chat_message("Hello World!", "alice")
    c.send_broadcast("to everyone")
    rtt = c.ping()  # returns the round-trip time in ms
    c.join("games"); c.send_message({"type": "custom", "action": "get_stats"})  # noqa: E702
    assert stats_seen.wait(T(10)), "no stats answer"  # (not in the example) wait for it before closing
    c.disconnect()

    assert isinstance(rtt, float) and 0 < rtt < T(1000)
    assert c.codec == codec
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Received: ")]
    kinds = [eval(line[len("Received: "):])["type"] for line in lines]  # the callback got plain dicts
    assert kinds[0] == "welcome"
    for kind in ("chat", "broadcast", "pong", "joined", "stats"):
        assert kind in kinds, (kind, kinds)
    assert "'text': 'Hello World!'" in out and "'user': 'alice'" in out and "'text': 'to everyone'" in out
    assert c.state is State.CLOSED


def test_per_type_callbacks_and_replies(server: ServerProcess) -> None:
    chats: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    everything: list[dict[str, Any]] = []
    threads: set[str] = set()
    with Client(server.url) as c:
        c.set_message_callback(everything.append)
        c.on("chat", chats.append)

        def on_stats(msg: dict[str, Any]) -> None:
            stats.append(msg)
            threads.add(threading.current_thread().name)

        c.on("stats", on_stats)
        assert c.client_id is not None and c.rooms == ["lobby"]
        assert c.join("games") == ["lobby", "games"]
        c.send_chat_message("in games")  # no room: the current room, the one joined last
        c.send_chat_message("to the lobby", room="lobby")
        stat = c.get_stats()
        wait_for(lambda: len(chats) == 2 and len(stats) == 1)
        assert [(m["room"], m["text"]) for m in chats] == [("games", "in games"), ("lobby", "to the lobby")]
        assert stats[0] == stat and stat["type"] == "stats" and stat["clients"] >= 1
        assert threads == {"fanwire-client-loop"}  # callbacks run on the client's thread
        assert {"joined", "chat", "stats"} <= {m["type"] for m in everything}
        assert c.leave("games") == ["lobby"]
        with pytest.raises(ServerError) as info:
            c.leave("games")
        assert info.value.code == "not_in_room"
        with pytest.raises(ValueError):
            c.join("")  # refused locally, before it reaches the server
        c.off("chat")
        c.send_chat_message("after off")
        wait_for(lambda: any(m.get("text") == "after off" for m in everything))
        assert len(chats) == 2


def test_json_and_msgpack_clients_share_rooms(server: ServerProcess) -> None:
    got: dict[str, list[dict[str, Any]]] = {"json": [], "msgpack": []}
    clients = {codec: Client(server.url, codec=codec) for codec in got}
    try:
        for codec, c in clients.items():
            c.on("chat", got[codec].append)
            c.connect()
            assert c.codec == codec and c.welcome is not None and c.welcome["codec"] == codec
            c.join("xcodec")
        clients["msgpack"].send_chat_message("from msgpack", "mp", room="xcodec")
        clients["json"].send_chat_message("from json", "js", room="xcodec")
        wait_for(lambda: all(len(v) == 2 for v in got.values()))
        for msgs in got.values():
            assert sorted(m["text"] for m in msgs) == ["from json", "from msgpack"]
    finally:
        for c in clients.values():
            c.disconnect()


def test_async_client_iteration_and_requests(server: ServerProcess) -> None:
    async def body() -> None:
        async with AsyncClient(server.url, codec="msgpack", user="ann") as c:
            assert c.state is State.CONNECTED
            await c.send_chat_message("one")
            await c.send_broadcast("two")
            rtt = await c.ping()
            assert rtt > 0
            seen = []
            async for msg in c:  # the chat and broadcast go through their streams' sequencers: any order
                seen.append(msg)
                if {"pong", "chat", "broadcast"} <= {m["type"] for m in seen}:
                    break
            kinds = [m["type"] for m in seen]
            assert kinds[0] == "welcome" and "chat" in kinds and "broadcast" in kinds
            chat = next(m for m in seen if m["type"] == "chat")
            assert (chat["user"], chat["text"], chat["from"]) == ("ann", "one", c.client_id)
            stats = await c.request({"type": "custom", "action": "get_stats", "data": {"k": 1}})
            assert stats["type"] == "stats" and stats["id"] is not None
            with pytest.raises(ServerError) as info:
                await c.request({"type": "custom", "action": "nope"})
            assert info.value.code == "unknown_action"
        assert c.state.value == "closed"
        with pytest.raises(NotConnected):
            await c.ping()

    run(body())


def test_concurrent_requests_are_matched_by_id(server: ServerProcess) -> None:
    async def body() -> None:
        async with AsyncClient(server.url) as c:
            joins = [c.join(f"r{i}") for i in range(10)]
            pings = [c.ping() for _ in range(10)]
            rooms, stats, rtts = await asyncio.gather(
                asyncio.gather(*joins), c.get_stats(), asyncio.gather(*pings)
            )
            for i in range(10):
                assert f"r{i}" in rooms[i]  # each join got its own reply
            assert stats["type"] == "stats"
            assert all(isinstance(r, float) and r > 0 for r in rtts)

    run(body())


def test_not_connected_before_connect_and_refused_on_a_closed_port() -> None:
    c = Client(f"ws://127.0.0.1:{free_port()}", open_timeout=T(2))
    with pytest.raises(NotConnected):
        c.send_chat_message("x")
    with pytest.raises(ConnectionRefused):
        c.connect()
    assert c.state is State.CLOSED


def test_handshake_rejected_is_its_own_error() -> None:
    with FakeServer(status=403) as fake:
        c = Client(fake.url)
        with pytest.raises(HandshakeRejected) as info:
            c.connect(retry=True)  # 403 is not retried even when asked to retry
        assert info.value.status == 403
        assert fake.attempts == 1


def test_request_timeout_when_the_server_never_answers() -> None:
    async def mute(ws: Any, n: int) -> None:
        async for _ in ws:  # reads, never answers
            pass

    async def body(url: str) -> None:
        async with AsyncClient(url, request_timeout=0.3) as c:
            start = time.monotonic()
            with pytest.raises(RequestTimeout):
                await c.ping()
            assert 0.25 < time.monotonic() - start < T(2)
            assert isinstance(RequestTimeout("x"), TimeoutError)

    with FakeServer(mute) as fake:
        run(body(fake.url))


def test_callback_errors_do_not_break_the_client(server: ServerProcess) -> None:
    def boom(msg: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    got: list[BaseException] = []

    def call_blocking(msg: dict[str, Any]) -> None:
        try:
            c.get_stats()  # a blocking call from the client's own thread would wait on itself
        except RuntimeError as exc:
            got.append(exc)

    with Client(server.url) as c:
        c.set_message_callback(boom)
        assert c.ping() > 0
        c.on("joined", call_blocking)
        c.join("cb")
        wait_for(lambda: bool(got))
        assert "from its own callback" in str(got[0])
        assert c.ping() > 0
