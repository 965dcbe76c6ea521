"""The pure parts of the cluster: Redis envelopes and names, backoff, cluster figures, the hub's interest hook."""

from __future__ import annotations

import random
from typing import Any

import pytest

from server import cluster
from server import redisframe as rf
from server.errors import BusFrameError
from server.hub import Hub
from server.metrics import Metrics


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


def test_backoff_grows_is_capped_and_jittered() -> None:
    gen = rf.backoff(0.1, 2.0, random.Random(1))
    delays = [next(gen) for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(1.0 <= d <= 2.0 for d in delays[6:])
    assert len(set(delays)) == len(delays)


def snap(node: str, wid: int, clients: int, rooms: dict[str, int], **kw: Any) -> dict[str, Any]:
    return {"node": node, "id": wid, "clients": clients, "room_count": len(rooms), "messages_in": 1,
            "messages_out": 2, "uptime_s": 1.5 + wid, **kw}


def test_cluster_figures() -> None:
    snaps = [snap("a", 0, 2, {"lobby": 2}), snap("a", 1, 1, {"lobby": 1, "x": 1}), snap("b", 0, 4, {"y": 4})]
    assert cluster.node_entries(snaps) == [
        # rooms with members, summed over the node's workers (lobby counts once per worker holding it)
        {"node": "a", "workers": 2, "clients": 3, "messages_in": 2, "messages_out": 4, "rooms": 3, "uptime_s": 2.5},
        {"node": "b", "workers": 1, "clients": 4, "messages_in": 1, "messages_out": 2, "rooms": 1, "uptime_s": 1.5},
    ]
    assert cluster.stats_fields(snaps, "a", 2, True, True) == {"partial": False,
                                                               "nodes": cluster.node_entries(snaps)}
    assert cluster.stats_fields(snaps, "a", 3, True, True)["partial"] is True  # a local worker missing
    assert cluster.stats_fields(snaps, "a", 2, True, False)["partial"] is True  # Redis unreachable
    assert cluster.stats_fields(snaps[:2], "a", 2, False, True) == {"partial": False}  # pipe bus: as before
    fam = cluster.metric_families(snaps)
    assert fam["fanwire_cluster_nodes"] == {"": 2} and fam["fanwire_cluster_connections"] == {"": 7}
    assert fam["fanwire_cluster_node_connections"] == {'node="a"': 3, 'node="b"': 4}
    assert fam["fanwire_cluster_node_workers"] == {'node="a"': 2, 'node="b"': 1}
    assert cluster.node_entries([{"node": "c", "clients": "bogus", "rooms": [1]}])[0]["clients"] == 0


def test_default_node_id() -> None:
    assert cluster.default_node_id("0.0.0.0", 8765, "pipe") == "0.0.0.0:8765"
    host, port, pid = cluster.default_node_id("0.0.0.0", 8765, "redis").rsplit(":", 2)
    assert host and port == "8765" and pid.isdigit()


class _Sink:
    codec = "json"
    raw = True
    out = None
    closing = None
    msgs_out = 0
    bytes_out = 0

    def send_payload(self, payload: bytes) -> None: ...

    def write_out(self, data: list[bytes]) -> None: ...


def test_hub_tells_the_bus_every_rooms_local_member_count() -> None:
    hub: Hub[Any] = Hub(Metrics(), 1 << 20)
    calls: list[tuple[str, int]] = []
    hub.on_members = lambda room, count: calls.append((room, count))
    a, b = _Sink(), _Sink()
    hub.add(a, ["lobby"])
    hub.add(b, ["lobby"])
    hub.subscribe(b, "games")
    hub.subscribe(b, "games")  # already a member: no news
    assert calls == [("lobby", 1), ("lobby", 2), ("games", 1)]
    hub.remove(a, ["lobby"])
    assert calls[-1] == ("lobby", 1)
    hub.unsubscribe(b, "games")
    hub.remove(b, ["lobby"])
    assert calls[4:] == [("games", 0), ("lobby", 0)]
    hub.subscribe(a, "ghost")  # a removed connection is never a member again
    assert "ghost" not in hub.rooms and calls[-1] == ("lobby", 0)
