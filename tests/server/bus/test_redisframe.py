"""The Redis bus's framing and names: envelopes, records, channels, keys. Pure."""

from __future__ import annotations

import random

import pytest

from server.bus import redisframe as rf
from server.errors import BusFrameError


def test_envelope_round_trip() -> None:
    for room in ("lobby", "ĉambro 🎲", None):
        env = rf.header(b"node-a", 3, room) + rf.record(17, b'{"a":1}') + rf.record(18, b"") + rf.record(19, b"z")
        node, worker, got_room, pos = rf.parse_header(env)
        assert (node, worker, got_room) == (b"node-a", 3, room)
        recs, skipped = rf.records(env, pos, 100)
        assert recs == [(17, b'{"a":1}'), (18, b""), (19, b"z")] and skipped == 0


def test_envelope_oversized_records_are_skipped_not_fatal() -> None:
    env = rf.header(b"n", 0, "r") + rf.record(1, b"x" * 50) + rf.record(2, b"ok")
    _, _, _, pos = rf.parse_header(env)
    assert rf.records(env, pos, 10) == ([(2, b"ok")], 1)


@pytest.mark.parametrize("env", [
    b"", b"\xfa", b"\xfa\x02" + b"\x00" * 10, b"\xfa\x01\x00\x05ab",
    rf.header(b"n", 0, "room")[:-2],  # room cut short
    rf.header(b"n", 0, None),  # no records
    rf.header(b"n", 0, None) + rf.record(1, b"abc")[:-1],  # record cut short
    rf.header(b"n", 0, None) + b"\x00" * 5,  # truncated record header
    b"\xfa\x01\x00\x01n\x00\x00\x00\x02\xff\xfe" + rf.record(1, b"x"),  # room not UTF-8
])
def test_malformed_envelopes_raise(env: bytes) -> None:
    with pytest.raises(BusFrameError):
        _, _, _, pos = rf.parse_header(env)
        rf.records(env, pos, 1 << 20)


def test_random_bytes_never_crash_the_parser() -> None:
    rng = random.Random(7)
    good = rf.header(b"node", 1, "r") + rf.record(5, b'{"type":"chat"}')
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))]
        try:
            _, _, _, pos = rf.parse_header(bytes(data))
            rf.records(bytes(data), pos, 1 << 20)
        except BusFrameError:
            pass


def test_names() -> None:
    assert rf.broadcast_channel(b"p:") == b"p:all"
    assert rf.room_channel(b"p:", "a b") == b"p:room:a b"
    m = rf.member("host:8765:12", 4, 99)
    assert m == b"4.99:host:8765:12" and rf.member_node(m) == b"host:8765:12"
    assert rf.member_node(b"garbage") == b""
    assert rf.stats_key(b"p:", m) == b"p:stats:4.99:host:8765:12"
    with pytest.raises(BusFrameError):
        rf.header(b"n" * 70000, 0, None)
