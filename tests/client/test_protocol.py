"""Message building and codecs, without sockets."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from client import protocol

pytestmark = pytest.mark.timeout(30)


def test_chat_builder() -> None:
    assert protocol.chat("hi") == {"type": "chat", "text": "hi"}
    assert protocol.chat("hi", "alice", "games") == {"type": "chat", "text": "hi", "user": "alice", "room": "games"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text": 3}, "text must be a string"),
        ({"text": "x", "user": ""}, "user must not be empty"),
        ({"text": "x", "user": "u" * 65}, "at most 64"),
        ({"text": "x", "room": ""}, "room must not be empty"),
        ({"text": "x", "room": "r" * 129}, "at most 128"),
    ],
)
def test_chat_builder_refuses_what_the_server_would(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        protocol.chat(**kwargs)  # type: ignore[arg-type]


def test_other_builders() -> None:
    assert protocol.broadcast("all") == {"type": "broadcast", "text": "all"}
    assert protocol.broadcast(data={"k": [1]}, user="bo") == {"type": "broadcast", "data": {"k": [1]}, "user": "bo"}
    with pytest.raises(ValueError):
        protocol.broadcast()
    assert protocol.ping() == {"type": "ping"}
    assert protocol.ping(12) == {"type": "ping", "ts": 12}
    assert protocol.join("g") == {"type": "join", "room": "g"}
    assert protocol.leave("g") == {"type": "leave", "room": "g"}
    assert protocol.custom("get_stats") == {"type": "custom", "action": "get_stats"}
    with pytest.raises(ValueError):
        protocol.join("x" * 129)


def test_codecs_round_trip_and_frame_kinds() -> None:
    msg = {"type": "chat", "text": "héllo ✓", "room": "lobby", "n": [1, 2.5, None, True]}
    js, mp = protocol.get_codec("json"), protocol.get_codec("msgpack")
    assert (js.subprotocol, js.text) == ("fanwire.json", True)
    assert (mp.subprotocol, mp.text) == ("fanwire.msgpack", False)
    assert orjson.loads(js.encode(msg)) == msg
    assert msgpack.unpackb(mp.encode(msg), raw=False) == msg
    for codec in (js, mp):
        assert codec.decode(codec.encode(msg)) == msg
    assert js.decode(js.encode(msg).decode()) == msg  # text frames arrive as str


@pytest.mark.parametrize(
    ("codec", "data"),
    [("json", b"{nope"), ("json", b"[1,2]"), ("json", b'{"type": 3}'), ("msgpack", b"\xc1"),
     ("msgpack", msgpack.packb([1]))],
)
def test_decode_errors(codec: str, data: bytes) -> None:
    with pytest.raises(protocol.DecodeError):
        protocol.get_codec(codec).decode(data)


def test_codec_lookup() -> None:
    with pytest.raises(ValueError, match="unknown codec 'xml'"):
        protocol.get_codec("xml")
    assert protocol.codec_for_subprotocol("fanwire.msgpack").name == "msgpack"
    assert protocol.codec_for_subprotocol(None).name == "json"  # no subprotocol in the answer: JSON


# ---------------------------------------------------------------------------------------------------
# Protocol v1.1


def test_v11_builders() -> None:
    since = protocol.Position("k3v9x", 41)
    assert protocol.join("games", since) == {"type": "join", "room": "games", "since": {"offset": 41, "epoch": "k3v9x"}}
    assert protocol.publish("auction-7", {"bid": 120}) == {"type": "publish", "room": "auction-7", "data": {"bid": 120}}
    assert protocol.check_msg_id("c1") == "c1" and protocol.check_msg_id(3) == 3
    for bad in (True, 1.5, "", None):
        with pytest.raises(ValueError):
            protocol.check_msg_id(bad)


def test_positions() -> None:
    assert protocol.Position.of({"offset": 3, "epoch": "e"}) == protocol.Position("e", 3)
    for bad in ({"offset": -1, "epoch": "e"}, {"offset": 1, "epoch": ""}, {"offset": True, "epoch": "e"}, 3):
        with pytest.raises(ValueError):
            protocol.Position.of(bad)  # type: ignore[arg-type]
    assert protocol.position_of({"type": "chat", "offset": 4, "epoch": "e"}) == protocol.Position("e", 4)
    assert protocol.position_of({"type": "chat"}) is None
    assert protocol.position_of({"type": "chat", "offset": "4", "epoch": "e"}) is None


def test_streams_of_messages() -> None:
    assert protocol.stream_of({"type": "chat", "room": "games"}) == "games"
    assert protocol.stream_of({"type": "publication", "room": "feed"}) == "feed"
    assert protocol.stream_of({"type": "broadcast", "text": "x"}) == "$broadcast"
    assert protocol.stream_of({"type": "pong"}) is None
    assert protocol.stream_of({"type": "chat"}) is None


def test_acks() -> None:
    ack = protocol.parse_ack({"type": "ack", "id": 12, "room": "games", "offset": 58, "epoch": "k3v9x"})
    assert ack == protocol.Ack(12, "games", 58, "k3v9x", False)
    assert ack.position == protocol.Position("k3v9x", 58)
    dup = protocol.parse_ack({"type": "ack", "id": "c1", "room": "$broadcast", "offset": 1, "epoch": "b",
                              "duplicate": True})
    assert dup is not None and dup.duplicate
    assert protocol.parse_ack({"type": "ack", "id": 1, "room": "r"}) is None
    assert protocol.parse_ack({"type": "pong", "id": 1}) is None


def test_server_version() -> None:
    assert protocol.server_version({"type": "welcome", "protocol": 1, "version": "1.1"}) == (1, 1)
    assert protocol.server_version({"type": "welcome", "protocol": 1}) == (1, 0)
    assert protocol.server_version({"type": "welcome"}) == (1, 0)
    assert protocol.server_version({"type": "welcome", "version": "2"}) == (2, 0)
    assert protocol.server_version(None) == (0, 0)


def test_connect_url() -> None:
    session = "AbCdEfGhIjKlMnOpQrStUv"
    assert protocol.connect_url("ws://h:1") == "ws://h:1"
    assert protocol.connect_url("ws://h:1", autojoin=False) == "ws://h:1/?autojoin=0"
    assert protocol.connect_url("wss://h/x?token=t&session=old", autojoin=False, session=session) == \
        f"wss://h/x?token=t&autojoin=0&session={session}"
    assert protocol.connect_url("ws://h:1/", session=session) == f"ws://h:1/?session={session}"
    for bad in ("short", "x" * 65, "has space in it!!!!"):
        with pytest.raises(ValueError):
            protocol.connect_url("ws://h", session=bad)
    assert protocol.check_session("a_b-C" * 4) == "a_b-C" * 4
