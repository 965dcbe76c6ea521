"""bench.wsproto: the load generator's frames must be what a real server accepts, and its counters must
count what a real server sends, however the stream is cut into chunks."""

from __future__ import annotations

import os
import random

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from bench.loadgen import TS_PARSERS, ping_payload
from bench.wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameCounter,
    FrameReader,
    expected_accept,
    handshake_request,
    masked_frame,
    new_key,
    server_frame,
)

pytestmark = pytest.mark.timeout(30)


def open_server_protocol() -> tuple[ServerProtocol, bytes]:
    key = new_key()
    proto = ServerProtocol(subprotocols=["fanwire.json"], max_size=1 << 20)  # type: ignore[list-item]
    proto.receive_data(handshake_request("127.0.0.1", 8765, key, "fanwire.json"))
    (request,) = proto.events_received()
    assert isinstance(request, Request)
    proto.send_response(proto.accept(request))
    (response,) = proto.data_to_send()
    return proto, response + b"|" + expected_accept(key)


def test_handshake_is_accepted_and_accept_value_matches() -> None:
    _, out = open_server_protocol()
    response, accept = out.rsplit(b"|", 1)
    assert response.startswith(b"HTTP/1.1 101")
    assert accept in response
    assert b"Sec-WebSocket-Protocol: fanwire.json" in response


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_masked_frames_decode_in_websockets(size: int) -> None:
    proto, _ = open_server_protocol()
    payload = os.urandom(size)
    proto.receive_data(masked_frame(OP_BINARY, payload, os.urandom(4)))
    (frame,) = proto.events_received()
    assert isinstance(frame, Frame) and frame.opcode is Opcode.BINARY and frame.data == payload


def server_stream(rng: random.Random) -> tuple[bytes, int, list[tuple[int, bytes]]]:
    parts, msgs, controls = [], 0, []
    for _ in range(300):
        kind = rng.random()
        if kind < 0.1:
            payload = os.urandom(rng.randrange(0, 126))
            parts.append(server_frame(OP_PING, payload))
            controls.append((OP_PING, payload))
        else:
            size = rng.choice([0, 5, 64, 125, 126, 200, 16384, 70000])
            parts.append(server_frame(OP_TEXT if kind < 0.6 else OP_BINARY, b"y" * size))
            msgs += 1
    return b"".join(parts), msgs, controls


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 3, 7, 100, 1000, 20000])
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("seed", range(5))
def test_counter_counts_every_message_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    stream, msgs, controls = server_stream(rng)
    c = FrameCounter()
    assert sum(c.feed(chunk) for chunk in chunks(stream, rng)) == msgs
    assert c.control == controls
    assert c.skip == 0 and c.partial == b""


@pytest.mark.parametrize("seed", range(5))
def test_reader_returns_every_frame_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    stream, msgs, controls = server_stream(rng)
    r = FrameReader()
    data_frames, ctl = 0, []
    for chunk in chunks(stream, rng):
        for op, s, e in r.feed(chunk):
            if op & 0x08:
                ctl.append((op, bytes(r.buf[s:e])))
            else:
                data_frames += 1
        r.consume()
    assert data_frames == msgs and ctl == controls and not r.buf


def test_reader_takes_over_from_a_counter_mid_frame() -> None:
    """Switching a connection from counting to reading carries the half-read frame over."""
    stream = server_frame(OP_TEXT, b"a" * 300) + server_frame(OP_TEXT, b'{"ts":[42,"x"]}')
    c = FrameCounter()
    assert c.feed(stream[:10]) == 1
    r = FrameReader(c.skip, c.partial)
    frames = r.feed(stream[10:])
    assert [bytes(r.buf[s:e]) for _, s, e in frames] == [b'{"ts":[42,"x"]}']


def test_close_frame_is_a_control_frame() -> None:
    c = FrameCounter()
    assert c.feed(server_frame(OP_CLOSE, b"\x03\xe9bye")) == 0
    assert c.control == [(OP_CLOSE, b"\x03\xe9bye")]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_ping_payload_sizes_and_timestamps(codec: str) -> None:
    for size in (64, 200, 16384):
        assert abs(len(ping_payload(codec, size)) - size) <= 2
    stamped = ping_payload(codec, 64, ts=1234567890123)
    buf = bytearray(b"..." + stamped)
    assert TS_PARSERS[("pong", codec)](buf, 3, len(buf)) == 1234567890123


def test_timestamp_parsers_read_fanwire_and_baseline_json() -> None:
    for text in (b'{"type":"pong","server_ts":1,"ts":[77,"xx"]}', b'{"type": "pong", "ts": [77, "xx"], "server_ts": 1}'):
        assert TS_PARSERS[("pong", "json")](bytearray(text), 0, len(text)) == 77
    for text in (b'{"type":"broadcast","from":"0-1","user":null,"text":"99 xxx","ts":1}',
                 b'{"type": "broadcast", "from": "x", "text": "99 xxx", "ts": 1}'):
        assert TS_PARSERS[("text", "json")](bytearray(text), 0, len(text)) == 99


# --- reply verification: only the replies we asked for count ------------------------------------------


def pong(marker: str, codec: str = "json", baseline: bool = False) -> bytes:
    """The pong a server sends back to our ping (fanwire: orjson order; baseline: json.dumps spacing)."""
    import json

    import msgpack
    import orjson

    ts = json.loads(ping_payload("json", 64, marker=marker))["ts"]
    reply = {"type": "pong", "server_ts": 1764125000125, "ts": ts}
    if codec == "msgpack":
        return server_frame(OP_BINARY, msgpack.packb(reply))
    return server_frame(OP_TEXT, json.dumps(reply).encode() if baseline else orjson.dumps(reply))


@pytest.mark.parametrize("seed", range(4))
def test_only_pongs_carrying_our_marker_count(seed: int) -> None:
    from bench.loadgen import new_marker, pong_expect
    from bench.wsproto import Expect

    rng = random.Random(seed)
    marker, other = new_marker(), new_marker()
    error = server_frame(OP_TEXT, b'{"type":"error","code":"bad_message","detail":"unknown type"}')
    parts, good, bad = [], 0, 0
    for _ in range(200):
        k = rng.random()
        if k < 0.6:
            parts.append(pong(marker, rng.choice(["json", "msgpack"]), baseline=rng.random() < 0.5))
            good += 1
        elif k < 0.75:
            parts.append(error)
            bad += 1
        elif k < 0.85:
            parts.append(pong(other))  # someone else's pong
            bad += 1
        else:
            parts.append(server_frame(OP_PING, b"hb"))
    c = FrameCounter(Expect(**pong_expect(marker)))
    assert sum(c.feed(chunk) for chunk in chunks(b"".join(parts), rng)) == good
    assert c.bad == bad
    assert all(op == OP_PING for op, _ in c.control)


@pytest.mark.parametrize("size", [10, 64, 16384, 70000])
def test_an_echo_must_have_our_size_and_our_first_bytes(size: int) -> None:
    from bench.loadgen import echo_expect, echo_payload, new_marker
    from bench.wsproto import Expect

    payload = echo_payload(size, new_marker())
    assert len(payload) == size
    exp = Expect(**echo_expect(payload, OP_TEXT))
    rng = random.Random(size)
    stream = (server_frame(OP_TEXT, payload) + server_frame(OP_TEXT, payload[:-1])  # short: not ours
              + server_frame(OP_BINARY, payload)  # wrong opcode
              + server_frame(OP_TEXT, b"z" * size)  # right size, not our bytes
              + server_frame(OP_TEXT, payload))
    c = FrameCounter(exp)
    assert sum(c.feed(chunk) for chunk in chunks(stream, rng)) == 2
    assert c.bad == 3


def test_a_fragment_is_never_a_round_trip() -> None:
    from bench.wsproto import Expect

    c = FrameCounter(Expect((b"m",)))
    first = bytes((0x01, 2)) + b"m1"  # text, FIN not set
    cont = bytes((0x80, 2)) + b"m2"  # continuation with FIN
    assert c.feed(first + cont) == 0 and c.bad == 2


def test_one_small_frame_shortcut_checks_the_marker() -> None:
    from bench.wsproto import Expect

    c = FrameCounter(Expect((b"fw12",)))
    assert c.one_small_frame(server_frame(OP_TEXT, b'{"text":"1 fw12 x"}'))
    assert not c.one_small_frame(server_frame(OP_TEXT, b'{"type":"error"}'))
    assert not c.one_small_frame(server_frame(OP_TEXT, b"a" * 200))  # not small: take the full path
    assert FrameCounter().one_small_frame(server_frame(OP_TEXT, b"anything"))
