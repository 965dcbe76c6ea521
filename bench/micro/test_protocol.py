"""The server's pure hot paths: parse and route one message, build a frame, re-encode for msgpack
receivers, and the frame reader every incoming message goes through first (fanwire's own, next to
websockets' sans-I/O parser that it replaced after the handshake)."""

from __future__ import annotations

import os

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from bench.wsproto import handshake_request, masked_frame, new_key
from server import codecs
from server.protocol import Session, handle_payload
from server.ws.frames import Reader, build_frame

PING = {"type": "ping", "ts": 1764125000123, "id": 17}
CHAT = {"type": "chat", "text": "hello everyone, how is it going today?", "user": "alice"}
JOIN = {"type": "join", "room": "games"}


@pytest.mark.parametrize("codec", list(codecs.CODECS))
@pytest.mark.parametrize("msg", [PING, CHAT, JOIN], ids=["ping", "chat", "join"])
def test_handle_payload(benchmark: BenchmarkFixture, codec: str, msg: dict[str, object]) -> None:
    session = Session("0-1", codecs.CODECS[codec])
    payload = codecs.CODECS[codec].encode(msg)

    def route() -> object:
        session.rooms = ["lobby"]
        return handle_payload(session, payload, 1764125000000)

    mtype, actions = benchmark(route)
    assert mtype == msg["type"] and actions


@pytest.mark.parametrize("size", [64, 16384])
def test_build_frame(benchmark: BenchmarkFixture, size: int) -> None:
    payload = b"x" * size
    assert len(benchmark(build_frame, 1, payload)) > size


def test_json_to_msgpack(benchmark: BenchmarkFixture) -> None:
    payload = orjson.dumps({"type": "chat", "from": "1-a", "user": "alice", "room": "lobby",
                            "text": "hello everyone", "ts": 1764125000124})
    benchmark(codecs.json_to_msgpack, payload)


@pytest.mark.parametrize("size", [64, 16384])
def test_websockets_parse_frame(benchmark: BenchmarkFixture, size: int) -> None:
    """websockets' sans-I/O parser on one masked client frame, as fanwire's worker feeds it."""
    proto = ServerProtocol(max_size=1 << 20)
    proto.receive_data(handshake_request("127.0.0.1", 8765, new_key()))
    (request,) = proto.events_received()
    assert isinstance(request, Request)
    proto.send_response(proto.accept(request))
    proto.data_to_send()
    assert proto.state is State.OPEN
    data = masked_frame(1, b"x" * size, os.urandom(4))

    def parse() -> list[object]:
        proto.receive_data(data)
        return proto.events_received()  # type: ignore[return-value]

    events = benchmark(parse)
    assert len(events) == 1 and isinstance(events[0], Frame) and events[0].opcode is Opcode.TEXT


@pytest.mark.parametrize("size", [64, 16384])
def test_fanwire_read_frame(benchmark: BenchmarkFixture, size: int) -> None:
    """fanwire's frame reader (server/ws/frames.py) on one masked client frame."""
    reader = Reader(1 << 20, 4096)
    data = masked_frame(1, b"x" * size, os.urandom(4))

    def parse() -> list[tuple[int, bytes]]:
        reader.feed(data)
        return reader.read(256)

    events = benchmark(parse)
    assert events == [(1, b"x" * size)]
