"""A sequenced message's position at the front of its JSON payload (server/streams/stamp.py): the stamp and
position() round trip, what position() refuses, and the epochs new_epoch() makes. No sockets."""

from __future__ import annotations

import string
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.streams import stamp

pytestmark = pytest.mark.timeout(60)

EPOCH_CHARS = string.digits + string.ascii_lowercase

epochs = st.text(alphabet=EPOCH_CHARS, min_size=1, max_size=32)
offsets = st.integers(min_value=0, max_value=2**63 - 1)
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
# a message the server sequences: a JSON object with at least one member, never already positioned
objects = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in ("offset", "epoch")), json_values,
                          min_size=1, max_size=6)


def header(offset: int, epoch: str) -> bytes:
    return b'{"offset":%d,"epoch":"%s",' % (offset, epoch.encode())


# ---------------------------------------------------------------------------------------------------
# stamp / position


def test_stamp_splices_the_position_in_front() -> None:
    stamped = stamp.stamp(b'{"type":"chat","text":"hi"}', 12, "k3v9x")
    assert stamped == b'{"offset":12,"epoch":"k3v9x","type":"chat","text":"hi"}'
    assert stamp.position(stamped) == (12, "k3v9x")
    assert stamped.startswith(stamp.PREFIX)


@settings(max_examples=150, deadline=None)
@given(objects, offsets, epochs)
def test_stamp_position_round_trip_and_valid_json(obj: dict[str, Any], offset: int, epoch: str) -> None:
    payload = orjson.dumps(obj)
    stamped = stamp.stamp(payload, offset, epoch)
    assert stamp.position(stamped) == (offset, epoch)
    loaded = orjson.loads(stamped)
    assert loaded == {"offset": offset, "epoch": epoch, **obj}
    assert list(loaded)[:2] == ["offset", "epoch"]  # the position is at the front, where position() reads it
    assert stamped == header(offset, epoch) + payload[1:]  # the rest of the payload is untouched


@settings(max_examples=100, deadline=None)
@given(objects)
def test_an_unstamped_payload_has_no_position(obj: dict[str, Any]) -> None:
    assert stamp.position(orjson.dumps(obj)) is None


def test_a_position_further_in_the_payload_is_not_read() -> None:
    assert stamp.position(b'{"type":"chat","offset":3,"epoch":"abc","text":"x"}') is None
    assert stamp.position(b' {"offset":3,"epoch":"abc","text":"x"}') is None  # only at the very front


@pytest.mark.parametrize("payload", [
    b"",
    b"{",
    b"{}",
    b"[1,2]",
    b"null",
    b'{"offset":',
    b'{"offset":1}',
    b'{"offset":1,',
    b'{"offset":1,"epoch":"abc"',
    b'{"offset":1,"epoch":"abc,"a":1}',
    b'{"offset":-1,"epoch":"abc","a":1}',
    b'{"offset":1.5,"epoch":"abc","a":1}',
    b'{"offset":1e3,"epoch":"abc","a":1}',
    b'{"offset":"1","epoch":"abc","a":1}',
    b'{"offset":null,"epoch":"abc","a":1}',
    b'{"offset": 1,"epoch":"abc","a":1}',
    b'{"offset":1, "epoch":"abc","a":1}',
    b'{ "offset":1,"epoch":"abc","a":1}',
    b'{"offset":1,"epoch":"","a":1}',
    b'{"offset":1,"epoch":"ABC","a":1}',
    b'{"offset":1,"epoch":"a-b","a":1}',
    b'{"offset":1,"epoch":"a\\u0062","a":1}',
    b'{"offset":1,"epoch":"\xc3\xa9","a":1}',
    b'{"offset":1,"epoch":' + b'"' + b"a" * 33 + b'","a":1}',
    b'{"offset":1,"epoch":1,"a":1}',
    b'{"offset":' + b"1" * 20 + b',"epoch":"abc","a":1}',
    b'{"epoch":"abc","offset":1,"a":1}',
    b'{"Offset":1,"epoch":"abc","a":1}',
    b'\x82\xa6offset\x01\xa5epoch\xa3abc',  # msgpack
], ids=lambda p: repr(p)[:40])
def test_malformed_positions_are_none(payload: bytes) -> None:
    assert stamp.position(payload) is None


def test_an_offset_with_leading_zeros_is_malformed() -> None:
    assert stamp.position(b'{"offset":007,"epoch":"abc","a":1}') is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_have_a_position_only_behind_the_prefix(data: bytes) -> None:
    pos = stamp.position(data)
    if pos is not None:
        assert data.startswith(stamp.PREFIX)
    assert stamp.position(b"x" + data) is None


@settings(max_examples=60, deadline=None)
@given(objects, offsets, epochs)
def test_a_truncated_position_is_none(obj: dict[str, Any], offset: int, epoch: str) -> None:
    stamped = stamp.stamp(orjson.dumps(obj), offset, epoch)
    head = header(offset, epoch)
    for cut in range(len(head)):  # anything short of the comma after the epoch carries no position
        assert stamp.position(stamped[:cut]) is None, stamped[:cut]
    assert stamp.position(stamped[:len(head)]) == (offset, epoch)


@pytest.mark.parametrize("offset", [0, 1, 9, 10, 2**31, 2**63 - 1, 10**19 - 1])
def test_offsets_at_the_edges_round_trip(offset: int) -> None:
    assert stamp.position(stamp.stamp(b'{"a":1}', offset, "e")) == (offset, "e")


# ---------------------------------------------------------------------------------------------------
# epochs


@pytest.mark.parametrize(("epoch", "ok"), [
    ("a", True), ("0", True), ("k3v9x", True), ("z" * 32, True), (EPOCH_CHARS[:32], True),
    ("", False), ("a" * 33, False), ("A", False), ("k3-9x", False), ("é", False), (" a", False),
    ("a\n", False), ("٣", False),  # a unicode digit is no [0-9]
    (5, False), (None, False), (b"abc", False), (["a"], False),
])
def test_valid_epoch(epoch: object, ok: bool) -> None:
    assert stamp.valid_epoch(epoch) is ok


@settings(max_examples=100, deadline=None)
@given(epochs)
def test_every_valid_epoch_round_trips(epoch: str) -> None:
    assert stamp.valid_epoch(epoch)
    assert stamp.position(stamp.stamp(b'{"a":1}', 1, epoch)) == (1, epoch)


def test_new_epoch_is_valid_unique_and_uses_the_whole_alphabet() -> None:
    draws = [stamp.new_epoch() for _ in range(5000)]
    for e in draws:
        assert stamp.valid_epoch(e) and len(e) == stamp.EPOCH_LEN == 8, e
        assert stamp.position(stamp.stamp(b'{"a":1}', 7, e)) == (7, e)
    assert len(set(draws)) == len(draws)  # 36**8 (about 2.8e12) names: a collision in 5000 is ~4.5e-6
    assert set("".join(draws)) == set(EPOCH_CHARS)  # 40,000 characters: each of the 36 appears
    for i in range(stamp.EPOCH_LEN):  # no fixed position (every place varies)
        assert len({e[i] for e in draws}) > 30
