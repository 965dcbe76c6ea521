"""Per-worker counters, their snapshots, merging across workers, and Prometheus text rendering. Pure.

A snapshot is ``{family: {labels: value}}`` where ``labels`` is the Prometheus label text (``type="chat"``,
or ``""``), so snapshots travel over the bus as plain maps and merge by addition.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

Snapshot = dict[str, dict[str, float]]

HELP: Final[dict[str, str]] = {
    "fanwire_connections": "Open WebSocket connections.",
    "fanwire_connections_opened_total": "WebSocket connections accepted.",
    "fanwire_connections_closed_total": "WebSocket connections closed, by close code sent or received.",
    "fanwire_handshakes_failed_total": "Handshakes refused or failed, by HTTP status.",
    "fanwire_http_requests_total": "Plain HTTP requests, by path.",
    "fanwire_publishers_held_total": "Times a publishing client was paused because the bus was congested (back-pressure), by bus.",
    "fanwire_http_discarded_total": "Connections whose bytes after an HTTP request were discarded unread, by reason.",
    "fanwire_messages_in_total": "Messages received from clients, by type.",
    "fanwire_bytes_in_total": "Payload bytes received from clients, by type.",
    "fanwire_messages_out_total": "Messages written to clients, by type.",
    "fanwire_bytes_out_total": "Payload bytes written to clients, by type.",
    "fanwire_publishes_total": "Chat and broadcast publications originated here, by scope.",
    "fanwire_bus_frames_out_total": "Frames sent on the bus.",
    "fanwire_bus_frames_in_total": "Frames received from the bus.",
    "fanwire_bus_bytes_out_total": "Bytes sent on the bus.",
    "fanwire_bus_bytes_in_total": "Bytes received from the bus.",
    "fanwire_bus_dropped_total": "Bus frames dropped, by reason.",
    "fanwire_dropped_messages_total": "Messages that could not be delivered to a client, by reason.",
    "fanwire_errors_total": "Error replies sent to clients, by code.",
    "fanwire_heartbeat_timeouts_total": "Connections closed because no pong arrived in time.",
    "fanwire_slow_consumers_total": "Connections closed because their output queue overflowed.",
    "fanwire_handshakes_refused_total": "Connections refused or dropped before the WebSocket opened, by reason.",
    "fanwire_rate_limited_total": "Messages refused by the rate limit (answered with an error), by limit.",
    "fanwire_policy_closes_total": "Open connections closed with 1008, by reason (rate_limited, token_expired).",
    "fanwire_app_errors_total": "Exceptions raised by the application's code (server.App), by kind (action, hook, authenticate).",
    "fanwire_api_requests_total": "HTTP API requests, by route.",
    "fanwire_api_refused_total": "HTTP API requests refused, by error code.",
    "fanwire_presence_full_total": "Joins that asked for presence in a room whose presence list was full on their worker.",
    "fanwire_rooms": "Rooms with at least one member (summed over workers).",
    "fanwire_workers": "Workers that answered this scrape.",
    "fanwire_worker_connections": "Open connections per worker.",
    "fanwire_loop_lag_seconds": "Event-loop lag per worker: how late a 50 ms timer fired, the worst of the last 1-2 s.",
    "fanwire_uptime_seconds": "Seconds since the oldest answering worker started.",
    "fanwire_bus_up": "1 when the bus is healthy, 0 when degraded.",
    "fanwire_redis_messages_out_total": "Publications relayed to other nodes through Redis.",
    "fanwire_redis_messages_in_total": "Publications received from other nodes through Redis.",
    "fanwire_redis_reconnects_total": "Connections to Redis re-established after an outage.",
    "fanwire_cluster_nodes": "Nodes of the cluster seen alive by this node (itself included).",
    "fanwire_cluster_connections": "Open connections on all nodes of the cluster.",
    "fanwire_cluster_node_connections": "Open connections per node of the cluster.",
    "fanwire_cluster_node_workers": "Workers per node of the cluster.",
}


class Metrics:
    """Counters of one worker. Hot paths touch plain dicts and ints only."""

    __slots__ = (
        "api_refused",
        "api_requests",
        "app_errors",
        "bus_bytes_in",
        "bus_bytes_out",
        "bus_dropped",
        "bus_frames_in",
        "bus_frames_out",
        "bytes_in",
        "bytes_out",
        "closed",
        "dropped",
        "errors",
        "handshakes_failed",
        "heartbeat_timeouts",
        "held",
        "http_discarded",
        "http_requests",
        "messages_in",
        "messages_out",
        "opened",
        "policy_closes",
        "presence_full",
        "publishes",
        "rate_limited",
        "redis_messages_in",
        "redis_messages_out",
        "redis_reconnects",
        "refused",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.opened = 0
        self.closed: dict[int, int] = {}
        self.handshakes_failed: dict[int, int] = {}
        self.http_requests: dict[str, int] = {}
        self.http_discarded: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.messages_in: dict[str, int] = {}
        self.bytes_in: dict[str, int] = {}
        self.messages_out: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        self.publishes: dict[str, int] = {}
        self.bus_frames_out = 0
        self.bus_frames_in = 0
        self.bus_bytes_out = 0
        self.bus_bytes_in = 0
        self.bus_dropped: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.heartbeat_timeouts = 0
        self.slow_consumers = 0
        self.redis_messages_out = 0  # the Redis bus's counters (only rendered once one moves)
        self.redis_messages_in = 0
        self.redis_reconnects = 0
        self.refused: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.policy_closes: dict[str, int] = {}
        self.app_errors: dict[str, int] = {}
        self.api_requests: dict[str, int] = {}
        self.api_refused: dict[str, int] = {}
        self.presence_full = 0

    @staticmethod
    def inc(counter: dict[Any, int], key: Any, n: int = 1) -> None:
        counter[key] = counter.get(key, 0) + n

    def count_in(self, mtype: str, nbytes: int) -> None:
        self.messages_in[mtype] = self.messages_in.get(mtype, 0) + 1
        self.bytes_in[mtype] = self.bytes_in.get(mtype, 0) + nbytes

    def count_out(self, mtype: str, n: int, nbytes: int) -> None:
        self.messages_out[mtype] = self.messages_out.get(mtype, 0) + n
        self.bytes_out[mtype] = self.bytes_out.get(mtype, 0) + nbytes

    def total_in(self) -> int:
        return sum(self.messages_in.values())

    def total_out(self) -> int:
        return sum(self.messages_out.values())

    def snapshot(self, connections: int, rooms: int, worker: int, uptime_s: float, bus_up: bool,
                 loop_lag_s: float = 0.0) -> Snapshot:
        s: Snapshot = {
            "fanwire_connections": {"": connections},
            "fanwire_connections_opened_total": {"": self.opened},
            "fanwire_connections_closed_total": _labelled("code", self.closed),
            "fanwire_handshakes_failed_total": _labelled("status", self.handshakes_failed),
            "fanwire_http_requests_total": _labelled("path", self.http_requests),
            "fanwire_http_discarded_total": _labelled("reason", self.http_discarded),
            "fanwire_publishers_held_total": _labelled("bus", self.held),
            "fanwire_messages_in_total": _labelled("type", self.messages_in),
            "fanwire_bytes_in_total": _labelled("type", self.bytes_in),
            "fanwire_messages_out_total": _labelled("type", self.messages_out),
            "fanwire_bytes_out_total": _labelled("type", self.bytes_out),
            "fanwire_publishes_total": _labelled("scope", self.publishes),
            "fanwire_bus_frames_out_total": {"": self.bus_frames_out},
            "fanwire_bus_frames_in_total": {"": self.bus_frames_in},
            "fanwire_bus_bytes_out_total": {"": self.bus_bytes_out},
            "fanwire_bus_bytes_in_total": {"": self.bus_bytes_in},
            "fanwire_bus_dropped_total": _labelled("reason", self.bus_dropped),
            "fanwire_dropped_messages_total": _labelled("reason", self.dropped),
            "fanwire_errors_total": _labelled("code", self.errors),
            "fanwire_heartbeat_timeouts_total": {"": self.heartbeat_timeouts},
            "fanwire_slow_consumers_total": {"": self.slow_consumers},
            "fanwire_handshakes_refused_total": _labelled("reason", self.refused),
            "fanwire_rate_limited_total": _labelled("limit", self.rate_limited),
            "fanwire_policy_closes_total": _labelled("reason", self.policy_closes),
            "fanwire_app_errors_total": _labelled("kind", self.app_errors),
            "fanwire_api_requests_total": _labelled("route", self.api_requests),
            "fanwire_api_refused_total": _labelled("code", self.api_refused),
            "fanwire_presence_full_total": {"": self.presence_full},
            "fanwire_rooms": {"": rooms},
            "fanwire_workers": {"": 1},
            "fanwire_worker_connections": {f'worker="{worker}"': connections},
            "fanwire_loop_lag_seconds": {f'worker="{worker}"': round(loop_lag_s, 6)},
            "fanwire_uptime_seconds": {"": uptime_s},
            "fanwire_bus_up": {"": 1 if bus_up else 0},
        }
        if self.redis_messages_out or self.redis_messages_in or self.redis_reconnects:
            s["fanwire_redis_messages_out_total"] = {"": self.redis_messages_out}
            s["fanwire_redis_messages_in_total"] = {"": self.redis_messages_in}
            s["fanwire_redis_reconnects_total"] = {"": self.redis_reconnects}
        return s


def _labelled(label: str, counter: dict[str, int] | dict[int, int]) -> dict[str, float]:
    return {f'{label}="{escape_label(str(k))}"': v for k, v in counter.items()}


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_MAX_FAMILIES: Final = ("fanwire_uptime_seconds",)
_MIN_FAMILIES: Final = ("fanwire_bus_up",)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum snapshots family by family and label by label (uptime takes the max, bus_up the min)."""
    out: Snapshot = {}
    for snap in snapshots:
        for family, series in snap.items():
            dest = out.setdefault(family, {})
            for labels, value in series.items():
                if labels in dest and family in _MAX_FAMILIES:
                    dest[labels] = max(dest[labels], value)
                elif labels in dest and family in _MIN_FAMILIES:
                    dest[labels] = min(dest[labels], value)
                else:
                    dest[labels] = dest.get(labels, 0) + value
    return out


def render(snapshot: Snapshot) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for family in sorted(snapshot):
        kind = "counter" if family.endswith("_total") else "gauge"
        lines.append(f"# HELP {family} {HELP.get(family, family)}")
        lines.append(f"# TYPE {family} {kind}")
        series = snapshot[family]
        if not series and kind == "counter":
            continue
        for labels in sorted(series):
            value = series[labels]
            text = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
            lines.append(f"{family}{{{labels}}} {text}" if labels else f"{family} {text}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """Parse Prometheus text back into ``{"name{labels}": value}`` (for tests and the bench)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out
