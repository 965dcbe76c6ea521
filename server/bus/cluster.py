"""Cluster figures from worker snapshots: per-node entries and totals for ``get_stats`` and ``/metrics``. Pure.

A snapshot is what :meth:`~server.messaging.Messaging.stats_snapshot` returns (``node``, ``id``,
``clients``, ``room_count``...).
This node's workers answer over the pipe bus (with their ``metrics``); the other nodes' workers are read
from Redis (figures only, no ``metrics``: each node's ``/metrics`` stays its own, so Prometheus sums over
nodes do not count anything twice; the ``fanwire_cluster_*`` gauges carry the cluster view).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..metrics import Snapshot, escape_label


def node_entries(snaps: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per node: its workers, clients, messages and rooms, sorted by node name."""
    nodes: dict[str, dict[str, Any]] = {}
    for s in snaps:
        name = str(s.get("node", ""))
        e = nodes.get(name)
        if e is None:
            e = nodes[name] = {"node": name, "workers": 0, "clients": 0, "messages_in": 0, "messages_out": 0,
                               "rooms": 0, "uptime_s": 0.0}
        e["workers"] += 1
        e["clients"] += _int(s.get("clients"))
        e["messages_in"] += _int(s.get("messages_in"))
        e["messages_out"] += _int(s.get("messages_out"))
        e["uptime_s"] = max(e["uptime_s"], _float(s.get("uptime_s")))
        e["rooms"] += _int(s.get("room_count"))  # rooms with members, summed over the node's workers
    return [nodes[n] for n in sorted(nodes)]


def stats_fields(snaps: list[dict[str, Any]], node: str, worker_count: int, cluster: bool,
                 bus_up: bool) -> dict[str, Any]:
    """The ``partial`` flag and, in a cluster, the ``nodes`` entries of a ``stats`` reply.

    ``partial``: a worker of this node did not answer, or (in a cluster) Redis is unreachable so the other
    nodes could not be counted.
    """
    local = sum(1 for s in snaps if s.get("node", node) == node)
    out: dict[str, Any] = {"partial": local < worker_count or (cluster and not bus_up)}
    if cluster:
        out["nodes"] = node_entries(snaps)
    return out


def metric_families(snaps: Iterable[dict[str, Any]]) -> Snapshot:
    """The ``fanwire_cluster_*`` gauges: nodes, connections in total and per node, workers per node."""
    entries = node_entries(snaps)
    return {
        "fanwire_cluster_nodes": {"": len(entries)},
        "fanwire_cluster_connections": {"": sum(e["clients"] for e in entries)},
        "fanwire_cluster_node_connections": {f'node="{escape_label(e["node"])}"': e["clients"] for e in entries},
        "fanwire_cluster_node_workers": {f'node="{escape_label(e["node"])}"': e["workers"] for e in entries},
    }


def _int(v: Any) -> int:
    return v if type(v) is int else 0


def _float(v: Any) -> float:
    return float(v) if type(v) in (int, float) else 0.0
