"""The auction example, end to end on a real server (``Server`` in the background, one worker as its
README says): two bidders, accepted and refused bids with their answers, the back end's announcements
over the HTTP API seen by both, and the guard against running it on several workers."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from server import Server

from . import backend
from .app import make_app

KEY = "auction-example-api-key-0123"
BIDDERS = "bidders-pass"
HAMMER = "auctioneer-pass"
NO_API = importlib.util.find_spec("server.http.api") is None


def new_server(workers: int = 1) -> Server:
    app = make_app(BIDDERS, HAMMER, "a teapot", 100)  # a fresh lot for each server
    return Server(app=app, port=0, workers=workers, api_key=KEY, log_level="warning")


@pytest.fixture
def url() -> Iterator[str]:
    with new_server() as srv:
        assert srv.url is not None
        yield srv.url


class Bidder:
    """A WebSocket client that keeps what it skipped: a bid's result and its publication may arrive in
    either order (the publication travels through the room's stream), so nothing read is thrown away."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[Any] = []
        self.ids = 0

    async def recv_until(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        for i, msg in enumerate(self.inbox):
            if pred(msg):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.001, deadline - time.monotonic())))
            if pred(msg):
                return msg
            self.inbox.append(msg)

    async def send_call(self, action: str, data: Any = None) -> int:
        self.ids += 1
        await self.ws.send(json.dumps({"type": "custom", "action": action, "data": data, "id": self.ids}))
        return self.ids

    async def answer(self, mid: int) -> Any:
        return await self.recv_until(lambda m: m.get("id") == mid)

    async def call(self, action: str, data: Any = None) -> Any:
        return await self.answer(await self.send_call(action, data))

    async def close(self) -> None:
        await self.ws.close()


async def bidder(url: str, name: str) -> tuple[Bidder, dict[str, Any]]:
    """A bidder, seated: returns its client and the lot it was shown on arrival."""
    ws = await websockets.connect(f"{url}/?name={name}&passcode={BIDDERS}", open_timeout=10)
    b = Bidder(ws)
    welcome = await b.recv_until(lambda m: True)
    assert welcome["type"] == "welcome" and welcome["user"] == name
    lot = await b.recv_until(lambda m: m.get("type") == "lot")  # on_connect's reply and join, in any order
    joined = await b.recv_until(lambda m: m.get("type") == "joined")
    assert joined["room"] == "auction"
    return b, lot


def bid_seen(amount: int) -> Callable[[Any], bool]:
    return lambda m: m.get("type") == "publication" and m["data"].get("amount") == amount


def test_bids_are_decided_one_at_a_time_and_everyone_sees_the_accepted_ones(url: str) -> None:
    async def main() -> None:
        alice, lot = await bidder(url, "alice")
        assert lot == {"type": "lot", "item": "a teapot", "price": 100, "winner": None, "bids": 0, "open": True}
        bob, _ = await bidder(url, "bob")

        ok = await alice.call("bid", {"amount": 120})
        assert ok["type"] == "result" and ok["data"]["accepted"] is True and ok["data"]["amount"] == 120
        for ws in (alice, bob):
            seen = await ws.recv_until(bid_seen(120))
            assert seen["data"]["bidder"] == "alice" and seen["offset"] == ok["data"]["offset"]

        for amount in (110, 120):  # lower, and equal: both refused, nothing published
            no = await bob.call("bid", {"amount": amount})
            assert no["data"] == {"accepted": False, "reason": "a bid must be higher than 120", "price": 120}
        for bad in ({"amount": "130"}, {"amount": True}, {"amount": 1.5e2}, None):
            no = await bob.call("bid", bad)
            assert no["data"]["accepted"] is False and no["data"]["reason"] == "amount must be an integer"

        ok = await bob.call("bid", {"amount": 150})
        assert ok["data"]["accepted"] is True
        nxt = await alice.recv_until(lambda m: m.get("type") == "publication")
        assert nxt["data"] == {"kind": "bid", "amount": 150, "bidder": "bob"}  # not 110, not 130

        shown = await alice.call("lot")
        assert shown["data"] == {"item": "a teapot", "price": 150, "winner": "bob", "bids": 2, "open": True}
        denied = await alice.call("hammer")
        assert denied["type"] == "error" and denied["code"] == "forbidden"

        # both bidders bid 151..155 without waiting for answers: for each amount the first to arrive wins
        # (each bidder's amounts arrive in the order sent, so the first arrivals come in increasing order)
        async def bid_all(b: Bidder) -> list[Any]:
            ids = [await b.send_call("bid", {"amount": amount}) for amount in range(151, 156)]
            return [await b.answer(mid) for mid in ids]

        answers = [a for got in await asyncio.gather(bid_all(alice), bid_all(bob)) for a in got]
        assert sorted(a["data"]["amount"] for a in answers if a["data"]["accepted"]) == [151, 152, 153, 154, 155]
        for b in (alice, bob):  # everyone sees the accepted bids, once each, in order
            seen = [(await b.recv_until(lambda m: m.get("type") == "publication"
                                        and m["data"]["amount"] > 150))["data"]["amount"] for _ in range(5)]
            assert seen == [151, 152, 153, 154, 155]
        assert (await bob.call("lot"))["data"]["bids"] == 7
        await alice.close()
        await bob.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_passcode_and_the_names(url: str) -> None:
    async def main() -> None:
        for query, status in (("name=eve&passcode=guess", 403), ("name=eve", 403),
                              (f"name=auctioneer&passcode={BIDDERS}", 403), (f"name=a%20b&passcode={BIDDERS}", 400)):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"{url}/?{query}", open_timeout=10)
            assert info.value.response.status_code == status, query

    asyncio.run(asyncio.wait_for(main(), 60))


def test_several_workers_are_refused_loudly() -> None:
    with new_server(workers=2) as srv:
        async def main() -> set[str]:
            reasons: set[str] = set()
            workers: set[int] = set()
            conns = []
            for i in range(40):  # SO_REUSEPORT spreads connections; stop once both workers answered
                ws = Bidder(await websockets.connect(f"{srv.url}/?name=b{i}&passcode={BIDDERS}", open_timeout=10))
                conns.append(ws)
                w = (await ws.recv_until(lambda m: m.get("type") == "welcome"))["worker"]
                if w in workers:
                    continue
                workers.add(w)
                answer = await ws.call("bid", {"amount": 1000 + i})
                if not answer["data"]["accepted"]:
                    reasons.add(answer["data"]["reason"])
                if len(workers) == 2:
                    break
            for ws in conns:
                await ws.close()
            assert workers == {0, 1}
            return reasons

        reasons = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(reasons) == 1 and "--workers 1" in reasons.pop()


@pytest.mark.skipif(NO_API, reason="the server's HTTP API (server/http/api.py) has not landed yet")
def test_the_back_end_announces_over_http_and_sells(url: str) -> None:
    async def main() -> None:
        alice, _ = await bidder(url, "alice")
        bob, _ = await bidder(url, "bob")
        assert (await bob.call("bid", {"amount": 300}))["data"]["accepted"] is True

        naps: list[float] = []
        sale = await asyncio.to_thread(backend.run, url, KEY, HAMMER, (5, 1), naps.append)
        assert sale == {"item": "a teapot", "price": 300, "winner": "bob", "bids": 1}
        assert naps == [4, 1]  # from 5 s left to 1 s left, then to 0
        for ws in (alice, bob):
            got: list[Any] = []
            while len(got) < 3:
                msg = await ws.recv_until(lambda m: m.get("type") == "publication"
                                          and m["data"].get("kind") in ("closing", "sold"))
                assert msg["from"] == "api" and msg["room"] == "auction"
                got.append(msg["data"])
            assert got == [{"kind": "closing", "in": 5}, {"kind": "closing", "in": 1},
                           {"kind": "sold", "item": "a teapot", "price": 300, "winner": "bob", "bids": 1}]

        late = await alice.call("bid", {"amount": 1000})
        assert late["data"] == {"accepted": False, "reason": "sold to bob for 300", "price": 300}
        again = await asyncio.to_thread(backend.announce, url, KEY, {"kind": "sold"}, "sold")
        assert again["duplicate"] is True  # a retried announcement is not announced twice
        with pytest.raises(backend.AnnounceError, match="401"):
            await asyncio.to_thread(backend.announce, url, "not-the-key-0123456789", {"kind": "x"})
        await alice.close()
        await bob.close()

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.skipif(NO_API, reason="the server's HTTP API (server/http/api.py) has not landed yet")
def test_a_lot_nobody_bid_on_is_announced_unsold(url: str) -> None:
    async def main() -> None:
        alice, _ = await bidder(url, "alice")
        sale = await asyncio.to_thread(backend.run, url, KEY, HAMMER, (1,), lambda s: None)
        assert sale == {"item": "a teapot", "price": 100, "winner": None, "bids": 0}
        msg = await alice.recv_until(lambda m: m.get("type") == "publication" and m["data"]["kind"] != "closing")
        assert msg["data"] == {"kind": "unsold", **sale}
        await alice.close()

    asyncio.run(asyncio.wait_for(main(), 60))
