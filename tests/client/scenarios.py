"""Protocol v1.1 client scenarios that run against any v1.1 server: :class:`~tests.client.fakes.FakeV11Server`
today, the real server (``tests.helpers.ServerProcess``) once it speaks v1.1. Each takes ``url`` (direct
connections: publishers, observers) and a :class:`~tests.client.fakes.ChaosProxy` in front of the same
server (the client under test, whose connection is cut), and asserts what the application sees:

* :func:`recovery_after_cut`: a subscriber cut off (no close frame) while others publish in a room, in
  the lobby and to ``$broadcast`` gets, after it reconnects, every message of every stream exactly once,
  in order, the missed ones first, and one ``recovered=True`` event per stream with the right count.
* :func:`exactly_once_after_cut`: a publisher whose ack is lost and whose connection is then cut gets the
  first ack back (``duplicate``) after its reconnect; the room holds the message once.
* :func:`queued_while_down_is_sent_once`: an acknowledged send made while reconnecting goes out once,
  after the reconnect.

Against a real multi-worker server, pass the same ``url`` for every client: the workers they land on
differ, which is the point. ``codec`` is the codec of the client under test. Usage::

    with ServerProcess(workers=2) as srv, ChaosProxy(srv.port) as proxy:
        run(recovery_after_cut(srv.url, proxy))
"""

from __future__ import annotations

import asyncio
from typing import Any

from client import Ack, AsyncClient, Backoff, RecoveryEvent, State
from tests.client.fakes import ChaosProxy, async_wait_for

FAST = Backoff(base=0.05, cap=0.3)


class Seen:
    """Everything a client delivered to its application, and its recovery events."""

    def __init__(self, client: AsyncClient) -> None:
        self.messages: list[dict[str, Any]] = []
        self.events: list[RecoveryEvent] = []
        client.set_message_callback(self.messages.append)
        client.on_recovery(self.events.append)

    def texts(self, kind: str, room: str | None = None, user: str | None = None) -> list[Any]:
        """``text`` (or ``data``) of the delivered messages of ``kind`` (in ``room``, from ``user``)."""
        return [m.get("text", m.get("data")) for m in self.messages
                if m["type"] == kind and (room is None or m.get("room") == room)
                and (user is None or m.get("user") == user)]

    def offsets(self, kind: str, room: str | None = None) -> list[int]:
        return [m["offset"] for m in self.messages
                if m["type"] == kind and (room is None or m.get("room") == room) and "offset" in m]

    def event(self, room: str) -> RecoveryEvent:
        hits = [e for e in self.events if e.room == room]
        assert len(hits) == 1, (room, self.events)
        return hits[0]


async def recovery_after_cut(url: str, proxy: ChaosProxy, codec: str = "json") -> tuple[AsyncClient, Seen]:
    """Returns the (still connected) subscriber and what it saw; the caller disconnects it."""
    sub = AsyncClient(proxy.url, codec, backoff=FAST, user="sub")
    pub = AsyncClient(url, backoff=FAST, user="pub")
    seen = Seen(sub)
    await sub.connect()
    await pub.connect()
    try:
        assert sub.rooms == ["lobby"] and sub.session is not None
        await sub.join("games")
        for i in range(3):
            await pub.send_chat(f"g{i}", "games", ack=True)
        await pub.send_broadcast("b0", ack=True)
        await pub.send_chat("l0", "lobby", ack=True)
        await async_wait_for(lambda: "g2" in seen.texts("chat", "games") and "b0" in seen.texts("broadcast")
                             and "l0" in seen.texts("chat", "lobby"), 10, "messages before the cut")

        proxy.hold()
        assert proxy.cut() >= 1
        await async_wait_for(lambda: sub.state is State.RECONNECTING, 10, "the subscriber noticed the cut")
        for i in range(3, 8):
            await pub.send_chat(f"g{i}", "games", ack=True)
        await pub.send_broadcast("b1", ack=True)
        await pub.send_broadcast("b2", ack=True)
        await pub.send_chat("l1", "lobby", ack=True)
        proxy.release()
        await async_wait_for(lambda: sub.state is State.CONNECTED and sub.reconnects == 1, 15, "reconnected")

        await pub.send_chat("g8", "games", ack=True)
        await pub.send_broadcast("b3", ack=True)
        await pub.send_chat("l2", "lobby", ack=True)
        await async_wait_for(lambda: "g8" in seen.texts("chat", "games") and "b3" in seen.texts("broadcast")
                             and "l2" in seen.texts("chat", "lobby"), 10, "live messages after the reconnect")

        assert seen.texts("chat", "games", "pub") == [f"g{i}" for i in range(9)]
        assert seen.texts("broadcast", user="pub") == ["b0", "b1", "b2", "b3"]
        assert seen.texts("chat", "lobby", "pub") == ["l0", "l1", "l2"]
        for kind, room in (("chat", "games"), ("broadcast", None), ("chat", "lobby")):
            offsets = seen.offsets(kind, room)
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), (room, offsets)
        for room, replayed in (("games", 5), ("$broadcast", 2), ("lobby", 1)):
            event = seen.event(room)
            assert event.recovered and event.replayed == replayed and event.reason == "resumed", event
        assert sub.rooms == ["lobby", "games"]  # games is still the current room
        assert not sub.history_lost and sub.duplicates == 0
        return sub, seen
    except BaseException:
        await sub.disconnect()
        raise
    finally:
        await pub.disconnect()


async def exactly_once_after_cut(url: str, proxy: ChaosProxy, room: str = "auction", codec: str = "json") -> list[Ack]:
    """Returns the three acks (the middle one came back after the reconnect)."""
    pub = AsyncClient(proxy.url, codec, backoff=FAST, user="pub")
    obs = AsyncClient(url, backoff=FAST)
    seen = Seen(obs)
    await obs.connect()
    await pub.connect()
    try:
        await obs.join(room)
        first = await pub.publish(room, {"n": 0}, ack=True)
        assert first is not None and not first.duplicate and first.room == room
        proxy.swallow = True  # the server's answers (the ack) are lost from here on
        pending = asyncio.ensure_future(pub.publish(room, {"n": 1}, ack=True))
        await async_wait_for(lambda: {"n": 1} in seen.texts("publication", room), 10, "the server published it")
        assert not pending.done()
        proxy.cut()
        proxy.swallow = False
        second = await asyncio.wait_for(pending, 15)
        assert second is not None and second.duplicate, second
        assert (second.room, second.epoch, second.offset) == (room, first.epoch, first.offset + 1)
        third = await pub.publish(room, {"n": 2}, ack=True)
        assert third is not None and not third.duplicate and third.offset == first.offset + 2
        await async_wait_for(lambda: {"n": 2} in seen.texts("publication", room), 10, "the last one")
        assert seen.texts("publication", room) == [{"n": 0}, {"n": 1}, {"n": 2}]  # published once each
        assert pub.reconnects == 1 and pub.unacked == 0
        return [first, second, third]
    finally:
        await pub.disconnect()
        await obs.disconnect()


async def queued_while_down_is_sent_once(url: str, proxy: ChaosProxy, room: str = "queue", codec: str = "json") -> Ack:
    pub = AsyncClient(proxy.url, codec, backoff=FAST, user="pub")
    obs = AsyncClient(url, backoff=FAST)
    seen = Seen(obs)
    await obs.connect()
    await pub.connect()
    try:
        await obs.join(room)
        proxy.hold()
        proxy.cut()
        await async_wait_for(lambda: pub.state is State.RECONNECTING, 10, "the publisher noticed the cut")
        pending = asyncio.ensure_future(pub.send_chat("while down", room, ack=True))
        await asyncio.sleep(0.05)
        assert not pending.done() and pub.unacked == 1
        proxy.release()
        ack = await asyncio.wait_for(pending, 15)
        assert ack is not None and not ack.duplicate and ack.room == room
        await async_wait_for(lambda: "while down" in seen.texts("chat", room), 10, "delivered")
        await pub.send_chat("after", room, ack=True)
        await async_wait_for(lambda: "after" in seen.texts("chat", room), 10, "delivered")
        assert seen.texts("chat", room) == ["while down", "after"]
        return ack
    finally:
        await pub.disconnect()
        await obs.disconnect()
