"""The documented targets fanwire has to beat, and our goals on this machine: one table, read by the
README generator and by the charts (for their reference lines). Pure data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DOC", "ROWS", "Row"]


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # "<scenario>.<summary key>"
    metric: str
    unit: str
    documented: str  # the documented figure, as text ("~10 ms"); "" when there is none
    goal: str  # our goal, as text; "" when there is none
    goal_value: float | None
    better: Literal["lower", "higher"]

    @property
    def scenario(self) -> str:
        return self.key.partition(".")[0]

    @property
    def field(self) -> str:
        return self.key.partition(".")[2]

    def met(self, value: float | None) -> bool | None:
        """True / False against the goal; None when there is no goal or no value."""
        if self.goal_value is None or value is None:
            return None
        return value <= self.goal_value if self.better == "lower" else value >= self.goal_value


# Documented figures, for the charts' reference lines.
DOC: Final = {
    "handshake_ms": 10.0,
    "rss_per_conn_kb": 16.0,
    "connections": 5000.0,
    "small_msgs_per_s": 15000.0,
    "large_msgs_per_s": 5000.0,
    "latency_ms_high": 10.0,
    "latency_ms_low": 1.0,
    "fanout_deliveries_per_s": 500000.0,
    "fanout_p99_ms": 50.0,
}

ROWS: Final[tuple[Row, ...]] = (
    Row("connect.handshake_p99_ms", "Handshake time p99 (controlled arrival rate)", "ms", "~10 ms",
        "p99 <= 2 ms", 2.0, "lower"),
    Row("connect.handshake_p50_ms", "Handshake time p50 (controlled arrival rate)", "ms", "", "", None, "lower"),
    Row("connect.handshakes_per_s", "New connections per second (unthrottled)", "conn/s", "", "", None,
        "higher"),
    Row("connect.rss_per_conn_kb", "Memory per idle connection (RSS delta / connections)", "KB",
        "16 KB", "<= 6 KB", 6.0, "lower"),
    Row("connect.max_connections", "Concurrent connections held (all reached by a broadcast)", "conns",
        "5,000+", ">= 60,000", 60000.0, "higher"),
    Row("connect.broadcast_all_ms", "One broadcast reaching every connection", "ms", "", "", None, "lower"),
    Row("throughput.small_msgs_per_s", "Round trips/s, 64 B JSON, 1 worker core", "msg/s",
        "15,000 msg/s", ">= 100,000 per worker core", 100000.0, "higher"),
    Row("throughput.small_us_per_msg", "Server CPU per round trip, 64 B JSON", "us", "", "<= 10 us", 10.0,
        "lower"),
    Row("throughput.small_msgpack_msgs_per_s", "Round trips/s, 64 B msgpack, 1 worker core", "msg/s", "", "",
        None, "higher"),
    Row("throughput.large_msgs_per_s", "Round trips/s, 16 KiB JSON, 1 worker core", "msg/s", "5,000 msg/s",
        ">= 30,000", 30000.0, "higher"),
    Row("throughput.large_msgpack_msgs_per_s", "Round trips/s, 16 KiB msgpack, 1 worker core", "msg/s", "",
        "", None, "higher"),
    Row("latency.p99_ms_at_20k", "Round-trip latency p99 at 20k msg/s offered (open loop)", "ms", "1-10 ms",
        "p99 <= 1 ms", 1.0, "lower"),
    Row("latency.p50_ms_at_20k", "Round-trip latency p50 at 20k msg/s offered (open loop)", "ms", "1-10 ms",
        "", None, "lower"),
    Row("latency.max_rate_p99_1ms", "Highest offered rate with p99 <= 1 ms", "msg/s", "", "", None, "higher"),
    Row("fanout.deliveries_per_s", "Fan-out deliveries/s, largest subscriber count", "deliv/s", "",
        ">= 500,000", 500000.0, "higher"),
    Row("fanout.p99_ms", "Fan-out delivery latency p99 at that rate", "ms", "", "p99 <= 50 ms", 50.0, "lower"),
    Row("fanout.redis_deliveries_per_s", "Fan-out over the Redis bus (2 nodes), deliveries/s", "deliv/s", "", "",
        None, "higher"),
    Row("fanout.redis_p99_ms", "Fan-out over the Redis bus, delivery latency p99 at that rate", "ms", "", "",
        None, "lower"),
    Row("codecs.json_msgs_per_s", "Typical message, JSON: round trips/s", "msg/s", "", "", None, "higher"),
    Row("codecs.msgpack_msgs_per_s", "Typical message, msgpack: round trips/s", "msg/s", "", "", None,
        "higher"),
    Row("codecs.json_us_per_msg", "Typical message, JSON: server CPU per round trip", "us", "", "", None,
        "lower"),
    Row("codecs.msgpack_us_per_msg", "Typical message, msgpack: server CPU per round trip", "us", "", "", None,
        "lower"),
    Row("codecs.msgpack_wire_ratio", "Typical message: msgpack bytes on the wire / JSON bytes", "x", "", "",
        None, "lower"),
    Row("scaling.best_msgs_per_s", "Round trips/s, 64 B JSON, all worker counts (best)", "msg/s", "", "",
        None, "higher"),
)
