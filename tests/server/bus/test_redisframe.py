"""The Redis bus's framing and names: envelopes, channels, keys. Pure."""

from __future__ import annotations

import random

import pytest

from server.bus import redisframe as rf
from server.errors import BusFrameError


def test_envelope_round_trip() -> None:
    for room in ("lobby", "ĉambro 🎲", None):
        env = rf.header(b"node-a", 3, room) + b'{"offset":1,"epoch":"e","a":1}'
        assert rf.parse_envelope(env) == (b"node-a", 3, room, b'{"offset":1,"epoch":"e","a":1}')


@pytest.mark.parametrize("env", [
    b"", b"\xfa", b"\xfa\x02" + b"\x00" * 3, b"\xfa\x02\x00\x05ab",
    b"\xfa\x01" + rf.header(b"n", 0, None)[2:] + b"{}",  # the old batched format
    rf.header(b"n", 0, "room")[:-2],  # room cut short
    rf.header(b"n", 0, None),  # no payload
    b"\xfa\x02\x00\x01n\x00\x00\x00\x02\xff\xfe{}",  # room not UTF-8
])
def test_malformed_envelopes_raise(env: bytes) -> None:
    with pytest.raises(BusFrameError):
        rf.parse_envelope(env)


def test_random_bytes_never_crash_the_parser() -> None:
    rng = random.Random(7)
    good = rf.header(b"node", 1, "r") + b'{"offset":1,"epoch":"e","type":"chat"}'
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))]
        try:
            rf.parse_envelope(bytes(data))
        except BusFrameError:
            pass


def test_stream_and_dedup_keys() -> None:
    assert rf.stream_keys(b"p:", "games") == (b"p:s:games:m", b"p:s:games:h")
    a = rf.dedup_key(b"p:", "r", "alice/tok", 7)
    assert a != rf.dedup_key(b"p:", "r", "alice/tok", "7")  # an int id and a string id differ
    assert a != rf.dedup_key(b"p:", "r:alice", "tok", 7)  # lengths keep the parts apart
    assert a == rf.dedup_key(b"p:", "r", "alice/tok", 7)


def test_names() -> None:
    assert rf.broadcast_channel(b"p:") == b"p:all"
    assert rf.room_channel(b"p:", "a b") == b"p:room:a b"
    m = rf.member("host:8765:12", 4, 99)
    assert m == b"4.99:host:8765:12" and rf.member_node(m) == b"host:8765:12"
    assert rf.member_node(b"garbage") == b""
    assert rf.stats_key(b"p:", m) == b"p:stats:4.99:host:8765:12"
    with pytest.raises(BusFrameError):
        rf.header(b"n" * 70000, 0, None)
