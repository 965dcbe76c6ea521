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
