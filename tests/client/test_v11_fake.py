"""Protocol v1.1 in the client against the in-test v1.1 server (tests.client.fakes.FakeV11Server) and a
chaos proxy: the portable scenarios of tests/client/scenarios.py, plus what only a fake shows on demand."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from client import (
    Ack,
    AckTimeout,
    AsyncClient,
    Client,
    NotConnected,
    OutboxFull,
    PublishFailed,
    RecoveryEvent,
    ServerError,
    State,
    Unavailable,
)
from tests.client import scenarios
from tests.client.fakes import ChaosProxy, FakeServer, FakeV11Server, Lines, async_wait_for, run, wait_for
from tests.client.scenarios import FAST, Seen
from tests.helpers import ROOT, T

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> Iterator[FakeV11Server]:
    with FakeV11Server() as srv:
        yield srv


@pytest.fixture
def proxy(fake: FakeV11Server) -> Iterator[ChaosProxy]:
    with ChaosProxy(fake.port) as p:
        yield p


CODECS = ["json", "msgpack"]


@pytest.mark.parametrize("codec", CODECS)
def test_recovery_after_cut(fake: FakeV11Server, proxy: ChaosProxy, codec: str) -> None:
    async def body() -> None:
        sub, _ = await scenarios.recovery_after_cut(fake.url, proxy, codec)
        assert sub.codec == codec
        await sub.disconnect()

    run(body())


@pytest.mark.parametrize("codec", CODECS)
def test_exactly_once_after_cut(fake: FakeV11Server, proxy: ChaosProxy, codec: str) -> None:
    run(scenarios.exactly_once_after_cut(fake.url, proxy, codec=codec))
    assert fake.texts("auction") == [{"n": 0}, {"n": 1}, {"n": 2}]


@pytest.mark.parametrize("codec", CODECS)
def test_queued_while_down_is_sent_once(fake: FakeV11Server, proxy: ChaosProxy, codec: str) -> None:
    run(scenarios.queued_while_down_is_sent_once(fake.url, proxy, codec=codec))
    assert fake.texts("queue") == ["while down", "after"]


# ---------------------------------------------------------------------------------------------------
# What only the fake shows on demand


async def _away(client: AsyncClient, proxy: ChaosProxy) -> None:
    """Cut ``client`` off and keep it off until :func:`_back`."""
    proxy.hold()
    proxy.cut()
    await async_wait_for(lambda: client.state is State.RECONNECTING, 10, "the cut was noticed")


async def _back(client: AsyncClient, proxy: ChaosProxy, reconnects: int = 1) -> None:
    proxy.release()
    await async_wait_for(lambda: client.state is State.CONNECTED and client.reconnects == reconnects, 15,
                         "reconnected")


def _joins(fake: FakeV11Server, n: int) -> list[tuple[str, Any]]:
    return [(m["room"], m.get("since")) for c, m in fake.received if c == n and m["type"] == "join"]


def test_first_connect_joins_the_autojoin_streams_then_reconnects_with_session_and_since(
    fake: FakeV11Server, proxy: ChaosProxy
) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST)
        welcome = await c.connect()
        assert welcome["autojoin"] == ["$broadcast", "lobby"] and welcome["rooms"] == []
        assert c.rooms == ["lobby"] and c.server_version == (1, 1)
        assert set(c.positions) == {"$broadcast", "lobby"}
        assert _joins(fake, 1) == [("$broadcast", None), ("lobby", None)]
        session = c.session
        assert session is not None and fake.paths[-1] == "/?autojoin=0"
        fake.server_publish("lobby", "x")
        await async_wait_for(lambda: c.positions["lobby"].offset == 1, 5, "position moved")
        await _away(c, proxy)
        await _back(c, proxy)
        assert fake.paths[-1] == f"/?autojoin=0&session={session}" and c.session == session
        epoch = c.positions["lobby"].epoch
        assert _joins(fake, fake.connections) == [
            ("$broadcast", {"offset": 0, "epoch": c.positions["$broadcast"].epoch}),
            ("lobby", {"offset": 1, "epoch": epoch}),
        ]
        await c.disconnect()

    run(body())


def test_recover_off_is_a_v1_client(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST, recover=False)
        seen = Seen(c)
        await c.connect()
        assert fake.paths[-1] == "/" and c.rooms == ["lobby"] and c.positions == {}
        fake.server_publish("lobby", "one")
        await async_wait_for(lambda: seen.texts("chat") == ["one"], 5)
        fake.send_raw(1, seen.messages[-1])  # a duplicate: a v1 client does not look at offsets
        await async_wait_for(lambda: seen.texts("chat") == ["one", "one"], 5)
        await _away(c, proxy)
        await _back(c, proxy)
        assert _joins(fake, 1) == [] and _joins(fake, 2) == [] and seen.events == [] and c.duplicates == 0
        await c.disconnect()

    run(body())


def test_history_trimmed_while_away_is_a_reported_gap(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST)
        seen = Seen(c)
        await c.connect()
        await c.join("games")
        fake.server_publish("games", "g0")
        await async_wait_for(lambda: seen.texts("chat") == ["g0"], 5)
        await _away(c, proxy)
        for i in range(1, 7):
            fake.server_publish("games", f"g{i}")
        fake.trim("games", 2)  # g1..g4 have left the history
        await _back(c, proxy)
        event = seen.event("games")
        assert (event.recovered, event.reason, event.replayed, event.missed) == (False, "gap", 2, 4)
        assert seen.texts("chat") == ["g0", "g5", "g6"] and c.history_lost
        assert seen.event("lobby").recovered  # the other streams are fine
        c.history_lost = False
        fake.server_publish("games", "g7")
        await async_wait_for(lambda: seen.texts("chat")[-1] == "g7", 5)
        assert not c.history_lost
        await c.disconnect()

    run(body())


def test_epoch_change_while_away_and_live(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST)
        seen = Seen(c)
        await c.connect()
        await c.join("games")
        fake.server_publish("games", "old")
        await async_wait_for(lambda: seen.texts("chat") == ["old"], 5)
        old_epoch = c.positions["games"].epoch
        await _away(c, proxy)
        fake.lose_history("games")
        fake.server_publish("games", "new1")
        fake.server_publish("games", "new2")
        await _back(c, proxy)
        event = seen.event("games")
        assert (event.recovered, event.reason, event.replayed, event.missed) == (False, "epoch_changed", 2, None)
        assert seen.texts("chat") == ["old", "new1", "new2"]  # the new epoch's history is replayed
        assert c.positions["games"].epoch != old_epoch and c.positions["games"].offset == 2

        # live: the stream loses its history while we are connected; the next message shows it
        fake.lose_history("games")
        fake.server_publish("games", "newer")
        await async_wait_for(lambda: len([e for e in seen.events if e.room == "games"]) == 2, 5, "live event")
        live = seen.events[-1]
        assert live.live and not live.recovered and live.reason == "epoch_changed"
        assert seen.texts("chat")[-1] == "newer"
        await c.disconnect()

    run(body())


def test_duplicates_are_dropped_and_late_messages_are_not_lost(fake: FakeV11Server) -> None:
    async def body() -> None:
        c = AsyncClient(fake.url)
        seen = Seen(c)
        await c.connect()
        for i in range(1, 4):
            fake.server_publish("lobby", f"m{i}")
        await async_wait_for(lambda: len(seen.texts("chat")) == 3, 5)
        epoch = c.positions["lobby"].epoch

        def msg(offset: int) -> dict[str, Any]:
            return {"type": "chat", "from": "9-x", "room": "lobby", "text": f"m{offset}", "offset": offset,
                    "epoch": epoch, "ts": 0}

        for offset in (2, 6, 4, 4, 5, 3, 7):  # a duplicate, a jump, the missing ones late (one twice), next
            fake.send_raw(1, msg(offset))
        await async_wait_for(lambda: seen.texts("chat")[-1:] == ["m7"], 5)
        assert seen.texts("chat") == ["m1", "m2", "m3", "m6", "m4", "m5", "m7"]
        assert c.duplicates == 3
        gap = seen.event("lobby")
        assert gap.live and gap.reason == "gap" and gap.missed == 2  # reported when m6 came, before it
        await c.disconnect()

    run(body())


@pytest.mark.parametrize("room", ["games", "lobby"])
def test_bad_since_rejoins_without_and_reports(fake: FakeV11Server, proxy: ChaosProxy, room: str) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST)
        seen = Seen(c)
        await c.connect()
        await c.join("games")
        for i in range(5):
            fake.server_publish(room, f"x{i}")
        await async_wait_for(lambda: len(seen.texts("chat")) == 5, 5)
        await _away(c, proxy)
        fake.rewind(room, 2)  # the server went back: our offset 5 is ahead of it
        await _back(c, proxy)
        event = seen.event(room)
        assert (event.recovered, event.reason) == (False, "bad_since") and c.history_lost
        assert c.rooms == ["lobby", "games"]  # re-joined, and games is the current room again
        assert c.positions[room].offset == 2
        fake.server_publish(room, "after")  # offset 3 again: delivered, not taken for a duplicate
        await async_wait_for(lambda: seen.texts("chat")[-1:] == ["after"], 5)
        await c.send_chat("current?", ack=True)
        assert fake.texts("games")[-1] == "current?"
        await c.disconnect()

    run(body())


def test_unavailable_is_resent_with_the_same_id(fake: FakeV11Server) -> None:
    async def body() -> None:
        c = AsyncClient(fake.url)
        await c.connect()
        fake.unavailable_next = 3
        ack = await c.publish("room1", {"bid": 120}, ack=True, timeout=10)
        assert ack is not None and ack.offset == 1 and not ack.duplicate
        sent = [m for _, m in fake.received if m["type"] == "publish"]
        assert len(sent) == 4 and len({m["id"] for m in sent}) == 1
        assert fake.texts("room1") == [{"bid": 120}]
        fake.unavailable_next = 1000
        with pytest.raises(AckTimeout) as info:
            await c.publish("room1", {"bid": 130}, ack=True, timeout=0.3)
        assert isinstance(info.value.error, Unavailable) and info.value.retryable and info.value.code == "unavailable"
        assert c.unacked == 0
        await c.disconnect()

    run(body())


def test_ack_timeout_then_a_retry_with_the_same_id_publishes_once(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST)
        await c.connect()
        proxy.swallow = True
        with pytest.raises(AckTimeout) as info:
            await c.send_chat("maybe", "games", ack=True, timeout=0.3)
        exc = info.value
        assert exc.retryable and exc.id is not None and exc.message["text"] == "maybe" and c.unacked == 0
        await async_wait_for(lambda: fake.texts("games") == ["maybe"], 5, "the server has it")
        proxy.swallow = False
        ack = await c.send_chat("maybe", "games", ack=True, msg_id=exc.id)
        assert ack is not None and ack.duplicate and ack.offset == 1
        assert fake.texts("games") == ["maybe"]
        await c.disconnect()

    run(body())


def test_outbox_is_bounded(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST, max_unacked=2)
        await c.connect()
        proxy.swallow = True
        waiting = [asyncio.ensure_future(c.publish("r", i, ack=True)) for i in range(2)]
        await async_wait_for(lambda: c.unacked == 2, 5)
        with pytest.raises(OutboxFull) as info:
            await c.publish("r", 2, ack=True)
        assert info.value.retryable and "max_unacked" in str(info.value)
        proxy.cut()  # the acks were lost: both are re-sent after the reconnect, answered as duplicates
        proxy.swallow = False
        acks = await asyncio.wait_for(asyncio.gather(*waiting), 15)
        assert [a.duplicate for a in acks if a is not None] == [True, True]
        assert fake.texts("r") == [0, 1] and c.unacked == 0
        await c.disconnect()

    run(body())


def test_refusals_raise_publish_failed(fake: FakeV11Server) -> None:
    async def body() -> None:
        c = AsyncClient(fake.url)
        await c.connect()
        with pytest.raises(PublishFailed) as info:
            await c.publish("$stats", {"x": 1}, ack=True)
        assert info.value.code == "bad_room" and not info.value.retryable
        assert isinstance(info.value.__cause__, ServerError)
        await c.leave("lobby")
        with pytest.raises(PublishFailed) as info:
            await c.send_chat("nowhere", ack=True)
        assert info.value.code == "no_room"
        with pytest.raises(ValueError):
            await c.send_message({"type": "ping"}, ack=True)
        assert c.unacked == 0
        await c.disconnect()
        with pytest.raises(NotConnected):
            await c.publish("r", 1, ack=True)

    run(body())


def test_against_a_v1_server(tmp_path: Any) -> None:
    async def body(url: str) -> None:
        c = AsyncClient(url)
        await c.connect()
        assert c.server_version == (1, 0) and c.rooms == ["lobby"] and c.session is None
        with pytest.raises(PublishFailed, match="protocol v1"):
            await c.send_chat("hi", ack=True)
        await c.send_chat("hi")  # without ack: as ever
        await c.disconnect()

    with FakeServer() as v1:
        run(body(v1.url))
        assert v1.requests  # connected with ?autojoin=0, which a v1 server ignores


def test_join_with_a_saved_position(fake: FakeV11Server) -> None:
    async def body() -> None:
        first = AsyncClient(fake.url)
        await first.connect()
        await first.join("news")
        fake.server_publish("news", "n1")
        await async_wait_for(lambda: first.positions["news"].offset == 1, 5)
        saved = first.positions["news"]
        await first.disconnect()
        for i in (2, 3, 4):
            fake.server_publish("news", f"n{i}")

        later = AsyncClient(fake.url)
        seen = Seen(later)
        await later.connect()
        assert await later.join("news", since=saved) == ["lobby", "news"]
        assert seen.texts("chat") == ["n2", "n3", "n4"]
        event = seen.event("news")
        assert event.recovered and event.replayed == 3
        await later.leave("news")
        await later.join("news", since={"offset": 99, "epoch": saved.epoch})  # ahead: bad_since
        assert seen.events[-1].reason == "bad_since" and later.rooms == ["lobby", "news"]
        await later.disconnect()

    run(body())


def test_blocking_client(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    events: list[RecoveryEvent] = []
    chats: list[dict[str, Any]] = []
    with Client(proxy.url, backoff=FAST) as c:
        c.on_recovery(events.append)
        c.on("chat", chats.append)
        ack = c.send_chat("hello", ack=True)
        assert isinstance(ack, Ack) and ack.room == "lobby" and ack.offset == 1
        ack2 = c.publish("feed", [1, 2], ack=True)
        assert ack2 is not None and ack2.room == "feed"
        ack3 = c.send_broadcast("all", ack=True)
        assert ack3 is not None and ack3.room == "$broadcast"
        assert c.send_chat_message("plain") is None
        assert c.send_chat_message("acked", ack=True) is not None
        assert c.server_version == (1, 1) and c.session is not None
        proxy.hold()
        proxy.cut()
        wait_for(lambda: c.state is State.RECONNECTING, 10)
        fake.server_publish("lobby", "missed")
        proxy.release()
        wait_for(lambda: c.state is State.CONNECTED and c.reconnects == 1, 15)
        wait_for(lambda: any(e.room == "lobby" for e in events), 5)
        lobby = next(e for e in events if e.room == "lobby")
        assert lobby.recovered and lobby.replayed == 1
        assert [m["text"] for m in chats] == ["hello", "plain", "acked", "missed"]
        assert not c.history_lost and c.positions["lobby"].offset == 4


def test_chat_command_shows_recovery_and_losses(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    p = subprocess.Popen([sys.executable, "-m", "client", "chat", "--url", proxy.url, "--user", "carol"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    out = Lines(p.stdout)
    try:
        out.until("protocol 1.1", 20)
        p.stdin.write("/join games\nbefore\n")
        p.stdin.flush()
        out.until("[games] carol: before")
        for rounds, lose in ((1, False), (2, True)):
            proxy.hold()
            proxy.cut()
            out.until("reconnecting...")
            if lose:
                fake.lose_history("games")
            for i in range(3):
                fake.server_publish("games", f"missed {rounds}.{i}")
            proxy.release()
            if lose:
                line = out.until("history lost", 15)
                assert line == "! games: history lost, some messages may be missing (the server lost its history; " \
                               "recovered 3)", line
            else:
                assert out.until("recovered", 15) == "* games: recovered 3 missed messages"
            out.until("reconnected")
        p.stdin.write("after\n/exit\n")
        p.stdin.flush()
        out.until("[games] carol: after")
        assert p.wait(T(10)) == 0
        seen = "\n".join(out.seen)
        for rounds in (1, 2):
            assert all(f"[games] srv: missed {rounds}.{i}" in seen for i in range(3)), seen
        assert "* ack" not in seen and "did not come back" not in seen
        assert fake.texts("games")[-1] == "after" and fake.texts("games").count("after") == 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("recover", [True, False])
def test_rooms_joined_at_connect(fake: FakeV11Server, recover: bool) -> None:
    async def body() -> None:
        c = AsyncClient(fake.url, rooms=["games", "news"], recover=recover)
        await c.connect()
        assert c.rooms == ["lobby", "games", "news"]  # news, the last one, is the current room
        joins = [m["room"] for _, m in fake.received if m["type"] == "join"]
        assert joins == (["$broadcast", "lobby", "games", "news"] if recover else ["games", "news"])
        await c.disconnect()
        refused = AsyncClient(fake.url, rooms=["games", "$nope"], recover=recover)
        with pytest.raises(ServerError) as info:
            await refused.connect()
        assert info.value.code == "bad_room" and refused.state is State.CLOSED

    run(body())


def test_unavailable_at_a_rejoin_retries_the_restore(fake: FakeV11Server, proxy: ChaosProxy) -> None:
    async def body() -> None:
        c = AsyncClient(proxy.url, backoff=FAST, rooms=["games"])
        seen = Seen(c)
        await c.connect()
        await _away(c, proxy)
        fake.server_publish("games", "missed")
        fake.unavailable_joins_next = 1  # the re-join of $broadcast fails: the connection is dropped, and again
        await _back(c, proxy, reconnects=1)
        assert fake.connections == 3  # first, the one whose restore failed, the good one
        assert seen.texts("chat") == ["missed"] and not c.history_lost and c.rooms == ["lobby", "games"]
        assert all(e.recovered for e in seen.events)
        await c.disconnect()

    run(body())


def test_demo_against_a_v11_server(fake: FakeV11Server) -> None:
    p = subprocess.run([sys.executable, "-m", "client", "demo", "--url", fake.url], cwd=ROOT, capture_output=True,
                       text=True, timeout=T(30))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "protocol 1.1); rooms: lobby" in p.stdout and "all features shown" in p.stdout
