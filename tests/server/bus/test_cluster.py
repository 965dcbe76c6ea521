"""Cluster figures from the nodes' snapshots: per-node entries, partial flags, Prometheus gauges. Pure."""

from __future__ import annotations

from typing import Any

from server.bus import cluster


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
