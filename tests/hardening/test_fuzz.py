"""Property-based tests (hypothesis) of the pure protocol layer and the codecs with hostile input.

Whatever arrives -- arbitrary bytes, arbitrary JSON or msgpack values, messages shaped almost right --
``handle_payload`` never raises, answers only with known actions and error codes, keeps the session's
invariants, and never lets a token holder act outside its grant.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server import codecs
from server.errors import BadEncoding, BadMessage
from server.protocol import (
    ALLOW_ALL,
    DEFAULT_ROOM,
    MAX_ACTION_LEN,
    MAX_USER_LEN,
    MESSAGE_TYPES,
    Custom,
    Join,
    Publish,
    QueryPresence,
    QueryStats,
    Reply,
    Session,
    Unsubscribe,
    handle_payload,
)
from server.security.auth import Grant, GrantPolicy

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ERROR_CODES = {"bad_encoding", "bad_message", "unknown_type", "unknown_action", "bad_room", "too_many_rooms",
               "not_in_room", "no_room", "forbidden", "bad_since"}
REPLY_TYPES = {"pong", "joined", "left", "error"}
MAX_ROOMS = 4

# JSON-representable values (what both codecs can carry)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                  allow_infinity=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
# what msgpack can carry beyond JSON: bytes, non-string keys, NaN
msgpack_values = st.recursive(scalars | st.binary(max_size=20) | st.floats(),
                              lambda inner: st.lists(inner, max_size=5)
                              | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=5),
                              max_leaves=20)
rooms = st.sampled_from(["lobby", "games", "admin", "x" * 128, "x" * 129, "", "$broadcast", "$stats",
                         "$other"]) | st.text(max_size=8)
since_values = st.none() | st.fixed_dictionaries({"offset": st.integers(-2, 2**63 - 1), "epoch": st.text(max_size=9)})
ints = st.integers(-(2**63), 2**63 - 1)
field_values = st.none() | ints | st.text(max_size=70) | rooms | st.lists(ints, max_size=2)
# messages that are almost right: a known type and a few of the fields it could carry
messages = st.fixed_dictionaries(
    {"type": st.sampled_from([*MESSAGE_TYPES, "nope", ""]) | ints},
    optional={"room": field_values, "text": field_values, "user": field_values, "id": field_values,
              "presence": st.booleans() | field_values,
              "ts": json_values, "data": json_values, "action": st.sampled_from(["get_stats", "other"]) | field_values,
              "since": since_values},
)


def check_actions(session: Session, mtype: str, actions: list[Any], policy: Any = ALLOW_ALL) -> None:
    assert mtype == "invalid" or mtype in MESSAGE_TYPES
    assert len(set(session.rooms)) == len(session.rooms)
    assert len(session.rooms) <= max(MAX_ROOMS, 1)
    assert all(not r.startswith("$") for r in session.rooms)  # the server's streams are never listed
    for a in actions:
        assert type(a) in (Reply, Publish, Join, Unsubscribe, QueryStats, QueryPresence, Custom)
        if type(a) is Custom:  # for the application: a bounded name, data any JSON client could receive
            assert isinstance(a.action, str) and 0 < len(a.action) <= MAX_ACTION_LEN and a.action != "get_stats"
        if type(a) is QueryPresence:  # only a member (or an admin) lists a room
            assert a.room in session.rooms or policy.is_admin(session)
        if type(a) is Reply:
            assert a.msg["type"] in REPLY_TYPES
            if a.msg["type"] == "error":
                assert a.msg["code"] in ERROR_CODES and isinstance(a.msg["detail"], str)
                assert type(a.msg.get("id", 0)) in (str, int)
        elif type(a) is Publish:
            assert a.msg["type"] in ("chat", "broadcast", "publication")
            assert a.msg["from"] == session.client_id and a.msg["user"] == session.user
            if a.room is None:
                assert policy.may_broadcast(session) and a.stream == "$broadcast"
            else:
                assert policy.may_publish(session, a.room) and a.stream == a.room
                assert not a.room.startswith("$")
        elif type(a) is Join:
            assert policy.may_join(session, a.stream)


@SETTINGS
@given(codec=st.sampled_from(list(codecs.CODECS.values())), payload=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(codec: codecs.Codec, payload: bytes) -> None:
    s = Session("0-1", codec)
    mtype, actions = handle_payload(s, payload, 0, MAX_ROOMS)
    check_actions(s, mtype, actions)


@SETTINGS
@given(codec=st.sampled_from(list(codecs.CODECS.values())), value=json_values | msgpack_values)
def test_arbitrary_values_never_raise(codec: codecs.Codec, value: Any) -> None:
    try:
        payload = orjson.dumps(value) if codec is codecs.JSON else msgpack.packb(value, use_bin_type=True)
    except (TypeError, OverflowError, ValueError):
        return  # the test cannot encode it either
    s = Session("0-1", codec)
    mtype, actions = handle_payload(s, payload, 0, MAX_ROOMS)
    check_actions(s, mtype, actions)


@SETTINGS
@given(codec=st.sampled_from(list(codecs.CODECS.values())), msgs=st.lists(messages, min_size=1, max_size=12))
def test_message_sequences_keep_session_invariants(codec: codecs.Codec, msgs: list[dict[str, Any]]) -> None:
    s = Session("0-1", codec)
    for msg in msgs:
        payload = codec.encode(msg) if codec is codecs.MSGPACK else orjson.dumps(msg)
        mtype, actions = handle_payload(s, payload, 0, MAX_ROOMS)
        check_actions(s, mtype, actions)
        for a in actions:
            if type(a) is Publish:
                user = a.msg["user"]
                assert user is None or (isinstance(user, str) and 0 < len(user) <= MAX_USER_LEN)


@SETTINGS
@given(codec=st.sampled_from(list(codecs.CODECS.values())), msgs=st.lists(messages, min_size=1, max_size=12),
       allowed=st.frozensets(st.sampled_from(["lobby", "games", "admin"]), max_size=3),
       may_broadcast=st.booleans())
def test_a_token_holder_never_acts_outside_its_grant(codec: codecs.Codec, msgs: list[dict[str, Any]],
                                                     allowed: frozenset[str], may_broadcast: bool) -> None:
    policy = GrantPolicy(Grant("alice", allowed, may_broadcast, 0.0))
    s = Session("0-1", codec, user="alice")
    s.rooms = [DEFAULT_ROOM] if DEFAULT_ROOM in allowed else []
    for msg in msgs:
        payload = codec.encode(msg) if codec is codecs.MSGPACK else orjson.dumps(msg)
        mtype, actions = handle_payload(s, payload, 0, MAX_ROOMS, policy)
        check_actions(s, mtype, actions, policy)
        assert s.user == "alice"  # the client's 'user' never replaces the token's
        assert set(s.rooms) <= allowed
        for a in actions:
            if type(a) is Publish:
                assert a.msg["user"] == "alice"
                assert a.room in allowed if a.room is not None else may_broadcast


@SETTINGS
@given(value=json_values)
def test_codecs_round_trip_json_representable_values(value: Any) -> None:
    for codec in codecs.CODECS.values():
        payload = codec.encode(value)
        back = codec.decode(payload)
        assert back == value or (codec is codecs.JSON and isinstance(value, float))  # float repr
    try:
        j = codecs.encode_json(value)
    except BadMessage:
        return
    assert msgpack.unpackb(codecs.json_to_msgpack(j), raw=False) == orjson.loads(j)


@SETTINGS
@given(codec=st.sampled_from(list(codecs.CODECS.values())), payload=st.binary(max_size=300))
def test_decode_raises_only_bad_encoding(codec: codecs.Codec, payload: bytes) -> None:
    try:
        codec.decode(payload)
    except BadEncoding:
        pass


@SETTINGS
@given(value=msgpack_values)
def test_values_json_cannot_carry_are_refused_not_crashed(value: Any) -> None:
    assume(value is not None)
    try:
        codecs.encode_json({"type": "broadcast", "data": value})
    except BadMessage as exc:
        assert exc.code == "bad_message"


@pytest.mark.parametrize("codec", list(codecs.CODECS.values()), ids=list(codecs.CODECS))
def test_deeply_nested_input_is_refused_cleanly(codec: codecs.Codec) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000 if codec is codecs.JSON else b"\x91" * 100_000 + b"\xc0"
    s = Session("0-1", codec)
    _, actions = handle_payload(s, deep, 0)
    assert type(actions[0]) is Reply and actions[0].msg["code"] in ("bad_encoding", "bad_message")
