"""The pure message protocol, without sockets."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest

from server import codecs
from server.protocol import (
    ALLOW_ALL,
    Custom,
    Join,
    Publish,
    QueryPresence,
    QueryStats,
    Reply,
    Session,
    Unsubscribe,
    ack_msg,
    handle,
    handle_payload,
    joined_msg,
    new_session_token,
    valid_session_token,
    welcome_msg,
)
from server.streams import BROADCAST

NOW = 1_700_000_000_000


def run(session: Session, msg: Any, max_rooms: int = 64) -> list[Any]:
    _, actions = handle_payload(session, orjson.dumps(msg), NOW, max_rooms)
    return actions


def error_code(actions: list[Any]) -> str:
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    assert actions[0].msg["type"] == "error", actions[0].msg
    return str(actions[0].msg["code"])


def test_ping_echoes_ts_and_id() -> None:
    s = Session("0-1")
    [reply] = run(s, {"type": "ping", "ts": {"any": [1, 2]}, "id": 7})
    assert isinstance(reply, Reply)
    assert reply.msg == {"type": "pong", "ts": {"any": [1, 2]}, "server_ts": NOW, "id": 7}


def test_ping_without_ts_has_no_ts() -> None:
    [reply] = run(Session("0-1"), {"type": "ping"})
    assert isinstance(reply, Reply) and "ts" not in reply.msg and reply.msg["server_ts"] == NOW


def test_chat_goes_to_current_room_with_sender_fields() -> None:
    s = Session("0-1")
    [pub] = run(s, {"type": "chat", "text": "hi", "user": "alice", "extra": "ignored"})
    assert isinstance(pub, Publish)
    assert pub.room == "lobby"
    assert pub.msg == {"type": "chat", "from": "0-1", "user": "alice", "room": "lobby", "text": "hi", "ts": NOW}
    # the user name sticks
    [pub2] = run(s, {"type": "chat", "text": "again"})
    assert isinstance(pub2, Publish) and pub2.msg["user"] == "alice"


def test_chat_explicit_room_and_current_room_follows_joins() -> None:
    s = Session("0-1")
    acts = run(s, {"type": "join", "room": "games"})
    assert acts == [Join("games", None)]
    assert s.rooms == ["lobby", "games"]
    assert joined_msg(s, acts[0], "e1", 0, None, 0) == {"type": "joined", "room": "games",
                                                         "rooms": ["lobby", "games"], "offset": 0, "epoch": "e1"}
    [pub] = run(s, {"type": "chat", "text": "x"})
    assert isinstance(pub, Publish) and pub.room == "games"
    [pub] = run(s, {"type": "chat", "text": "x", "room": "elsewhere"})
    assert isinstance(pub, Publish) and pub.room == "elsewhere"
    acts = run(s, {"type": "leave", "room": "games", "id": "a"})
    assert isinstance(acts[0], Unsubscribe) and acts[0].room == "games"
    assert acts[1].msg == {"type": "left", "room": "games", "rooms": ["lobby"], "id": "a"}
    [pub] = run(s, {"type": "chat", "text": "x"})
    assert isinstance(pub, Publish) and pub.room == "lobby"


def test_join_twice_does_not_subscribe_twice() -> None:
    s = Session("0-1")
    run(s, {"type": "join", "room": "a"})
    acts = run(s, {"type": "join", "room": "lobby", "since": {"offset": 3, "epoch": "abc"}})
    assert acts == [Join("lobby", (3, "abc"), already=True)]  # only an answer (since ignored)
    assert s.rooms == ["a", "lobby"]
    assert "recovered" not in joined_msg(s, acts[0], "abc", 9, None, 0)


def test_room_errors() -> None:
    s = Session("0-1")
    assert error_code(run(s, {"type": "join", "room": ""})) == "bad_room"
    assert error_code(run(s, {"type": "join", "room": "x" * 129})) == "bad_room"
    assert error_code(run(s, {"type": "join", "room": 5})) == "bad_room"
    assert error_code(run(s, {"type": "join"})) == "bad_room"
    assert error_code(run(s, {"type": "leave", "room": "nope"})) == "not_in_room"
    assert error_code(run(Session("0-2"), {"type": "join", "room": "b"}, max_rooms=1)) == "too_many_rooms"
    run(s, {"type": "leave", "room": "lobby"})
    assert error_code(run(s, {"type": "chat", "text": "alone"})) == "no_room"


def test_broadcast_text_or_data() -> None:
    [pub] = run(Session("0-1"), {"type": "broadcast", "text": "all"})
    assert isinstance(pub, Publish) and pub.room is None and pub.stream == BROADCAST
    assert pub.msg == {"type": "broadcast", "from": "0-1", "text": "all", "user": None, "ts": NOW}
    [pub] = run(Session("0-1"), {"type": "broadcast", "data": {"k": [1, None]}})
    assert isinstance(pub, Publish) and pub.msg["data"] == {"k": [1, None]}
    assert error_code(run(Session("0-1"), {"type": "broadcast"})) == "bad_message"


def test_get_stats_and_unknown_action() -> None:
    [q] = run(Session("0-1"), {"type": "custom", "action": "get_stats", "data": {"k": "v"}, "id": 3})
    assert isinstance(q, QueryStats) and q.id == 3 and q.data == {"k": "v"}
    # any other action is the application's to answer (unknown_action when it has none: see tests/app)
    [c] = run(Session("0-1"), {"type": "custom", "action": "nope", "data": [1], "id": "r"})
    assert c == Custom("nope", [1], "r")
    assert error_code(run(Session("0-1"), {"type": "custom", "action": "x" * 65})) == "unknown_action"
    assert error_code(run(Session("0-1"), {"type": "custom", "action": ""})) == "unknown_action"
    assert error_code(run(Session("0-1"), {"type": "custom"})) == "bad_message"


def test_presence_join_flag_and_get_presence() -> None:
    s = Session("0-1")
    [j] = run(s, {"type": "join", "room": "r", "presence": True, "id": 1})
    assert isinstance(j, Join) and j.presence and j.stream == "r" and not j.already
    [j] = run(s, {"type": "join", "room": "r", "presence": True})
    assert j.presence and j.already  # a member may start presence later
    [j] = run(s, {"type": "join", "room": "q"})
    assert not j.presence
    assert error_code(run(s, {"type": "join", "room": "q", "presence": 1})) == "bad_message"
    assert error_code(run(s, {"type": "join", "room": "$broadcast", "presence": True})) == "bad_room"
    [q] = run(s, {"type": "get_presence", "room": "r", "id": 7})
    assert q == QueryPresence("r", 7)
    assert error_code(run(s, {"type": "get_presence", "room": "elsewhere"})) == "not_in_room"
    assert error_code(run(s, {"type": "get_presence"})) == "bad_room"
    # presence ends by leaving the room, never by leaving its event stream alone
    s.system = {"$presence:r"}
    assert error_code(run(s, {"type": "leave", "room": "$presence:r"})) == "not_in_room"
    assert s.system == {"$presence:r"}


def test_joined_says_whether_presence_was_granted() -> None:
    s = Session("0-1")
    [j] = run(s, {"type": "join", "room": "r", "presence": True})
    assert joined_msg(s, j, "e", 0, None, 0, "new")["presence"] is True
    assert joined_msg(s, j, "e", 0, None, 0, None)["presence"] is False  # the room's list was full
    [k] = run(s, {"type": "join", "room": "k"})
    assert "presence" not in joined_msg(s, k, "e", 0, None, 0)


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ([1, 2], "bad_message"),
        ("text", "bad_message"),
        ({"no": "type"}, "bad_message"),
        ({"type": 5}, "bad_message"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "chat"}, "bad_message"),
        ({"type": "chat", "text": 5}, "bad_message"),
        ({"type": "chat", "text": "x", "user": ""}, "bad_message"),
        ({"type": "chat", "text": "x", "user": 3}, "bad_message"),
        ({"type": "ping", "id": [1]}, "bad_message"),
    ],
)
def test_invalid_messages(msg: Any, code: str) -> None:
    assert error_code(run(Session("0-1"), msg)) == code


def test_error_echoes_id() -> None:
    _, [reply] = handle_payload(Session("0-1"), orjson.dumps({"type": "nope", "id": "q1"}), NOW)
    assert isinstance(reply, Reply) and reply.msg["id"] == "q1" and reply.msg["code"] == "unknown_type"


def test_malformed_payloads() -> None:
    for payload in (b"{bad", b"", b"\xff\xfe", b'{"type":"ping"} trailing'):
        label, [reply] = handle_payload(Session("0-1"), payload, NOW)
        assert label == "invalid"
        assert isinstance(reply, Reply) and reply.msg["code"] == "bad_encoding"
    s = Session("0-1", codecs.MSGPACK)
    for payload in (b"\xc1", msgpack.packb({"type": "ping"}) + b"\x00", b"\x81"):
        _, [reply] = handle_payload(s, payload, NOW)
        assert isinstance(reply, Reply) and reply.msg["code"] == "bad_encoding", payload


def test_msgpack_session_decodes_msgpack() -> None:
    s = Session("0-1", codecs.MSGPACK)
    label, [reply] = handle_payload(s, msgpack.packb({"type": "ping", "ts": 5}), NOW)
    assert label == "ping" and isinstance(reply, Reply) and reply.msg["ts"] == 5


def test_handle_rejects_non_dict_directly() -> None:
    from server.errors import BadMessage

    with pytest.raises(BadMessage):
        handle(Session("x"), ["type", "ping"], NOW)


def test_policy_forbids() -> None:
    from server.protocol import Policy

    class NoGames(Policy):
        def may_join(self, session: Session, room: str) -> bool:
            return room != "games"

        def may_publish(self, session: Session, room: str) -> bool:
            return room != "games"

        def may_broadcast(self, session: Session) -> bool:
            return False

    p = NoGames()
    s = Session("0-1")
    for msg in ({"type": "join", "room": "games"}, {"type": "chat", "text": "x", "room": "games"},
                {"type": "broadcast", "text": "x"}):
        _, acts = handle_payload(s, orjson.dumps(msg), NOW, 64, p)
        assert error_code(acts) == "forbidden"
    assert s.rooms == ["lobby"]


# --- v1.1 -------------------------------------------------------------------------------------------------

def test_join_with_since_and_recovery_answers() -> None:
    s = Session("0-1")
    [j] = run(s, {"type": "join", "room": "games", "since": {"offset": 41, "epoch": "k3v9x"}, "id": 7})
    assert j == Join("games", (41, "k3v9x"), 7)
    assert joined_msg(s, j, "k3v9x", 57, True, 16) == {
        "type": "joined", "room": "games", "rooms": ["lobby", "games"], "offset": 57, "epoch": "k3v9x",
        "recovered": True, "replayed": 16, "id": 7}


@pytest.mark.parametrize("since", [5, "x", {"offset": -1, "epoch": "e"}, {"offset": 1}, {"offset": 1.5, "epoch": "e"},
                                   {"offset": 1, "epoch": "UPPER"}, {"offset": 1, "epoch": ""},
                                   {"offset": True, "epoch": "e"}])
def test_malformed_since_is_bad_since_and_no_join(since: Any) -> None:
    s = Session("0-1")
    assert error_code(run(s, {"type": "join", "room": "g", "since": since})) == "bad_since"
    assert s.rooms == ["lobby"]


def test_broadcast_stream_can_be_left_and_joined_again() -> None:
    s = Session("0-1")
    acts = run(s, {"type": "leave", "room": BROADCAST})
    assert isinstance(acts[0], Unsubscribe) and acts[0].room == BROADCAST and not s.broadcasts
    assert s.rooms == ["lobby"]  # $broadcast is never listed in rooms
    assert error_code(run(s, {"type": "leave", "room": BROADCAST})) == "not_in_room"
    [j] = run(s, {"type": "join", "room": BROADCAST})
    assert j == Join(BROADCAST, None) and s.broadcasts and s.rooms == ["lobby"]
    [j] = run(s, {"type": "join", "room": BROADCAST})
    assert j.already


def test_server_rooms_are_reserved() -> None:
    s = Session("0-1")
    assert error_code(run(s, {"type": "chat", "room": "$broadcast", "text": "x"})) == "bad_room"
    assert error_code(run(s, {"type": "publish", "room": "$stats", "data": 1})) == "bad_room"
    assert error_code(run(s, {"type": "join", "room": "$secret"})) == "forbidden"
    assert run(s, {"type": "join", "room": "$stats"}) == [Join("$stats", None)]  # no auth: anyone may watch


def test_publish_and_ids_become_acknowledged_publications() -> None:
    s = Session("0-1")
    [p] = run(s, {"type": "publish", "room": "auction", "data": {"bid": 3}, "id": "b1"})
    assert isinstance(p, Publish) and (p.stream, p.room, p.id) == ("auction", "auction", "b1")
    assert p.msg == {"type": "publication", "room": "auction", "data": {"bid": 3}, "from": "0-1", "user": None,
                     "ts": NOW}
    assert orjson.loads(p.payload) == p.msg
    [c] = run(s, {"type": "chat", "text": "hi", "id": 9})
    assert isinstance(c, Publish) and c.id == 9 and c.stream == "lobby"
    assert error_code(run(s, {"type": "publish", "room": "auction"})) == "bad_message"
    assert ack_msg("auction", 12, "ep", True, "b1") == {"type": "ack", "id": "b1", "room": "auction",
                                                        "offset": 12, "epoch": "ep", "duplicate": True}


def test_sessions_and_the_welcome() -> None:
    token = new_session_token()
    assert valid_session_token(token) and len(token) == 22
    assert not valid_session_token("short") and not valid_session_token("x" * 65)
    assert not valid_session_token("bad token with spaces!!")
    s = Session("0-1")
    s.session_token = token
    assert s.identity == f"/{token}"
    s.user, s.user_fixed = "alice", True
    assert s.identity == f"alice/{token}"  # bound to the token's user when auth is on
    w = welcome_msg(s, 0, "n", NOW, 20.0, 1024, ["$broadcast", "lobby"])
    assert w["version"] == "1.1" and w["session"] == token and w["autojoin"] == ["$broadcast", "lobby"]
    assert "autojoin" not in welcome_msg(s, 0, "n", NOW, 20.0, 1024)
    assert ALLOW_ALL.may_join(s, "$broadcast")
