"""The sharded server as users see it: real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
import websockets

from server import metrics as prom

from ..helpers import (
    ServerProcess,
    T,
    connect,
    connect_spread,
    http_get,
    recv,
    recv_until,
    request,
    send,
)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2) as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(60)))


def test_connections_spread_over_workers_and_welcome(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2)
        for w, conns in by_worker.items():
            welcome = conns[0].welcome  # type: ignore[attr-defined]
            assert welcome["worker"] == w
            assert welcome["codec"] == "json"
            assert welcome["rooms"] == ["lobby"]
            assert isinstance(welcome["server_ts"], int)
            assert welcome["client_id"].startswith(f"{w}-")
        ids = {c.welcome["client_id"] for cs in by_worker.values() for c in cs}  # type: ignore[attr-defined]
        assert len(ids) == 2
        for cs in by_worker.values():
            for c in cs:
                await c.close()

    run(main())


def test_no_subprotocol_means_json_and_msgpack_is_chosen(srv: ServerProcess) -> None:
    async def main() -> None:
        plain = await connect(srv.url, "none")
        assert plain.subprotocol is None and plain.welcome["codec"] == "json"  # type: ignore[attr-defined]
        both = await websockets.connect(srv.url, subprotocols=["fanwire.json", "fanwire.msgpack"])  # type: ignore[list-item]
        assert both.subprotocol == "fanwire.msgpack"
        raw = await both.recv()
        assert isinstance(raw, bytes) and msgpack.unpackb(raw)["codec"] == "msgpack"
        await plain.close()
        await both.close()

    run(main())


def test_ping_pong(srv: ServerProcess) -> None:
    async def main() -> None:
        for codec in ("json", "msgpack"):
            ws = await connect(srv.url, codec)
            await send(ws, {"type": "ping", "ts": 12345})
            pong = await recv(ws)
            assert pong["type"] == "pong" and pong["ts"] == 12345 and isinstance(pong["server_ts"], int)
            await ws.close()

    run(main())


def test_chat_and_broadcast_cross_workers_with_codec_interop(srv: ServerProcess) -> None:
    async def main() -> None:
        js = await connect_spread(srv.url, 2, codec="json")
        mp = await connect_spread(srv.url, 2, codec="msgpack")
        a = js[0][0]
        everyone = [js[0][0], js[1][0], mp[0][0], mp[1][0]]
        await send(a, {"type": "chat", "text": "hello all", "user": "alice"})
        for ws in everyone:
            msg = await recv_until(ws, lambda m: m["type"] == "chat")
            assert msg["text"] == "hello all" and msg["user"] == "alice" and msg["room"] == "lobby"
            assert msg["from"] == a.welcome["client_id"]  # type: ignore[attr-defined]
            assert isinstance(msg["ts"], int)
        # a msgpack sender on worker 1 broadcasts structured data; JSON clients get it as JSON
        await send(mp[1][0], {"type": "broadcast", "data": {"n": [1, 2.5, None], "s": "é"}})
        for ws in everyone:
            msg = await recv_until(ws, lambda m: m["type"] == "broadcast")
            assert msg["data"] == {"n": [1, 2.5, None], "s": "é"}
            assert msg["from"] == mp[1][0].welcome["client_id"]  # type: ignore[attr-defined]
        # frame types follow each receiver's codec
        await send(a, {"type": "broadcast", "text": "frames"})
        raw_j = await asyncio.wait_for(js[1][0].recv(), T(5))
        raw_m = await asyncio.wait_for(mp[0][0].recv(), T(5))
        assert isinstance(raw_j, str) and isinstance(raw_m, bytes)
        for ws in everyone:
            await ws.close()

    run(main())


def test_rooms_cross_workers(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=2)
        a, outsider = by_worker[0]
        b, _ = by_worker[1]
        for ws in (a, b):
            reply = await request(ws, {"type": "join", "room": "games"})
            assert reply["type"] == "joined" and reply["rooms"] == ["lobby", "games"]
        await send(a, {"type": "chat", "text": "gg"})  # current room is now games
        for ws in (a, b):
            msg = await recv_until(ws, lambda m: m["type"] == "chat")
            assert msg["room"] == "games" and msg["text"] == "gg"
        # the outsider (lobby only) gets nothing from games, but does get lobby chat
        await send(b, {"type": "chat", "text": "lobby talk", "room": "lobby"})
        msg = await recv_until(outsider, lambda m: m["type"] == "chat")
        assert msg["text"] == "lobby talk"
        reply = await request(b, {"type": "leave", "room": "games"})
        assert reply == {"type": "left", "room": "games", "rooms": ["lobby"], "id": reply["id"]}
        await send(a, {"type": "chat", "text": "only a", "room": "games"})
        assert (await recv_until(a, lambda m: m["type"] == "chat" and m["room"] == "games"))["text"] == "only a"
        await send(b, {"type": "ping", "ts": "marker"})
        msg = await recv_until(b, lambda m: m["type"] == "pong" or m.get("room") == "games")
        assert msg["type"] == "pong", "b left games but still received its chat"
        err = await request(b, {"type": "leave", "room": "games"})
        assert err["type"] == "error" and err["code"] == "not_in_room"
        for ws in (a, b, outsider):
            await ws.close()

    run(main())


def test_get_stats_totals_across_workers(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=2)
        conns = [c for cs in by_worker.values() for c in cs]
        await request(conns[0], {"type": "join", "room": "statsroom"})
        await request(conns[3], {"type": "join", "room": "statsroom"})
        await request(conns[1], {"type": "join", "room": "statsroom"})
        stats = await request(conns[1], {"type": "custom", "action": "get_stats", "data": {"k": 1}})
        assert stats["type"] == "stats" and stats["data"] == {"k": 1}
        assert stats["partial"] is False
        assert len(stats["workers"]) == 2
        assert {w["id"] for w in stats["workers"]} == {0, 1}
        assert stats["clients"] == sum(w["clients"] for w in stats["workers"])
        assert stats["clients"] >= 4
        assert all(w["clients"] >= 2 for w in stats["workers"])
        assert stats["rooms"]["statsroom"] == 3  # counted on both workers; only rooms the asker is in
        assert stats["rooms"]["lobby"] >= 4
        assert set(stats["rooms"]) == {"lobby", "statsroom"}
        assert stats["uptime_s"] > 0
        assert stats["you"]["client_id"] == conns[1].welcome["client_id"]  # type: ignore[attr-defined]
        assert stats["you"]["messages_in"] == 2
        pids = set(srv.worker_pids().values())
        assert {w["pid"] for w in stats["workers"]} == pids
        err = await request(conns[0], {"type": "custom", "action": "reboot"})
        assert err["code"] == "unknown_action"
        for ws in conns:
            await ws.close()

    run(main())


def test_metrics_aggregated_across_workers(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, per_worker=3)
        for cs in by_worker.values():
            await send(cs[0], {"type": "nonsense"})
            await recv_until(cs[0], lambda m: m["type"] == "error")
        status, headers, body = await asyncio.to_thread(http_get, srv.port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        m = prom.parse(body.decode())
        assert m["fanwire_workers"] == 2
        assert m["fanwire_connections"] >= 6
        assert m['fanwire_worker_connections{worker="0"}'] >= 3
        assert m['fanwire_worker_connections{worker="1"}'] >= 3
        assert m['fanwire_errors_total{code="unknown_type"}'] >= 2
        assert m["fanwire_connections_opened_total"] >= 6
        assert "fanwire_bus_frames_out_total" in m and "fanwire_heartbeat_timeouts_total" in m
        assert m["fanwire_bus_up"] == 1
        for cs in by_worker.values():
            for c in cs:
                await c.close()

    run(main())


def test_http_routes(srv: ServerProcess) -> None:
    status, headers, body = http_get(srv.port, "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["worker"] in (0, 1) and health["bus"] == "ok"
    status, headers, _ = http_get(srv.port, "/")  # the chat page (tests/server/http/test_static.py)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert http_get(srv.port, "/anything?x=1")[0] == 404  # a plain GET of an unknown path: not found
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert http_get(srv.port, "", raw=raw)[0] == 405
    assert http_get(srv.port, "", raw=b"GARBAGE\r\n\r\n")[0] == 400
    assert http_get(srv.port, "", raw=b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 10000 + b"\r\n\r\n")[0] == 431
    # the worker is still fine
    assert http_get(srv.port, "/healthz")[0] == 200


def test_malformed_input_gets_errors_and_connection_stays(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url, "json")
        cases: list[tuple[Any, str]] = [
            ("{not json", "bad_encoding"),
            ("[1,2]", "bad_message"),
            ('{"no_type": 1}', "bad_message"),
            ('{"type": "teleport"}', "unknown_type"),
            ('{"type": "chat", "text": 42}', "bad_message"),
            ('{"type": "chat"}', "bad_message"),
            ('{"type": "join", "room": ""}', "bad_room"),
            (b'{"type":"ping"', "bad_encoding"),
        ]
        for payload, code in cases:
            await ws.send(payload)
            msg = await recv(ws)
            assert msg["type"] == "error" and msg["code"] == code, (payload, msg)
            assert msg["detail"]
        mp = await connect(srv.url, "msgpack")
        for payload in (b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"type": "ping"}) + b"junk"):
            await mp.send(payload)
            msg = await recv(mp)
            assert msg["type"] == "error" and msg["code"] in ("bad_encoding", "bad_message"), msg
        # data that JSON clients could not receive is refused
        await mp.send(msgpack.packb({"type": "broadcast", "data": b"\x00\x01"}, use_bin_type=True))
        msg = await recv(mp)
        assert msg["code"] == "bad_message"
        for c in (ws, mp):
            await send(c, {"type": "ping", "ts": 1})
            assert (await recv(c))["type"] == "pong"
            await c.close()

    run(main())


def test_invalid_utf8_text_frame_closes_1007(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url, "json")
        # websockets refuses to send invalid UTF-8 as text; build the frame by hand
        await ws.send(b"\xff\xfe", text=True)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1007

    run(main())


def test_oversize_message_closes_1009() -> None:
    async def main(url: str) -> None:
        ws = await connect(url)
        await ws.send("x" * 5000)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        ok = await connect(url)
        await ws.close()
        await send(ok, {"type": "ping"})
        assert (await recv(ok))["type"] == "pong"
        await ok.close()

    with ServerProcess(workers=1, extra_args=["--max-message-size", "4096"]) as s:
        run(main(s.url))


def test_compression_can_be_enabled() -> None:
    async def main(url: str) -> None:
        ws = await connect(url, compression="deflate")
        assert ws.protocol.extensions, "permessage-deflate was not negotiated"
        plain = await connect(url, compression=None)
        await send(ws, {"type": "broadcast", "text": "z" * 2000})
        for c in (ws, plain):
            assert (await recv_until(c, lambda m: m["type"] == "broadcast"))["text"] == "z" * 2000
        await ws.close()
        await plain.close()

    with ServerProcess(workers=1, extra_args=["--compression"]) as s:
        run(main(s.url))


def test_compression_off_by_default(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url, compression="deflate")
        assert not ws.protocol.extensions
        await ws.close()

    run(main())


def test_echo_mode() -> None:
    async def main(url: str) -> None:
        async with websockets.connect(url) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
            big = orjson.dumps(list(range(20000)))
            await ws.send(big)
            assert await ws.recv() == big

    with ServerProcess(workers=1, extra_args=["--mode", "echo"]) as s:
        run(main(s.url))
