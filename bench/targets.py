"""The documented targets fanwire has to beat, and our goals on this machine: one table, read by the
README generators and by the charts (for their reference lines). Pure data.

A row's ``kind`` says when a ratio between two servers may be printed (:func:`bench.stats.ratio`):
``latency`` figures only where neither side is saturated, ``capacity`` figures (closed-loop rates) only
where the load generator was not the limit, ``plain`` ones always (memory, counts). A goal is either a
number (``goal_value``) or a multiple of a peer measured in the same run (``goal_vs``: fan-out p99 within
1.2x of the raw-socket floor, echo at least as fast as picows).
"""

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
    kind: Literal["latency", "capacity", "plain"] = "plain"
    goal_vs: tuple[str, float] | None = None  # (peer server, factor): fanwire within factor x the peer

    @property
    def scenario(self) -> str:
        return self.key.partition(".")[0]

    @property
    def field(self) -> str:
        return self.key.partition(".")[2]

    def met(self, value: float | None, peer: float | None = None) -> bool | None:
        """True / False against the goal; None when there is no goal or no value."""
        if value is None:
            return None
        target = self.goal_value
        if self.goal_vs is not None:
            if peer is None:
                return None
            target = peer * self.goal_vs[1]
        if target is None:
            return None
        return value <= target if self.better == "lower" else value >= target


# Documented figures, for the charts' reference lines.
DOC: Final = {
    "handshake_ms": 10.0,
    "rss_per_conn_kb": 16.0,
    "connections": 5000.0,
    "small_msgs_per_s": 15000.0,
    "large_msgs_per_s": 5000.0,
    "latency_ms_high": 10.0,
    "latency_ms_low": 1.0,
}

# Our goals, for the charts' goal lines (each drawn only on the panel it applies to).
GOALS: Final = {
    "handshake_p99_ms": 2.0,
    "rss_per_conn_kb": 6.0,
    "max_connections": 60000.0,
    "small_msgs_per_s": 100000.0,
    "large_msgs_per_s": 30000.0,
    "small_us_per_msg": 10.0,
    "latency_p99_ms": 1.0,
    "fanout_deliveries_per_s": 500000.0,
    "fanout_p99_ms": 50.0,
    "fanout_vs_floor": 1.2,
    "scale_conns": 100000.0,
    "scale_rss_per_conn_kb": 4.0,
    "scale_broadcast_p99_ms": 1000.0,
    "recovery_delivered_pct": 100.0,
    "recovery_cpu_ratio": 1.10,
    "recovery_pingpong_ratio": 0.95,
}

ROWS: Final[tuple[Row, ...]] = (
    Row("connect.handshake_p99_ms", "Handshake time p99, 1,000 conn/s, one server core", "ms", "~10 ms",
        "p99 <= 2 ms", 2.0, "lower", "latency"),
    Row("connect.handshake_p50_ms", "Handshake time p50, 1,000 conn/s, one server core", "ms", "", "", None, "lower",
        "latency"),
    Row("connect.handshakes_per_s", "New connections per second, unthrottled, one server core", "conn/s", "", "",
        None, "higher", "capacity"),
    Row("connect.rss_per_conn_kb", "Memory per idle connection (RSS delta / connections)", "KB", "16 KB",
        "<= 6 KB", 6.0, "lower"),
    Row("connect.max_connections", "Concurrent connections held, all reached by a broadcast", "conns", "5,000+",
        ">= 60,000", 60000.0, "higher"),
    Row("connect.broadcast_all_ms", "One broadcast reaching every idle connection", "ms", "", "", None, "lower"),
    Row("throughput.small_msgs_per_s", "Round trips/s, 64 B JSON ping/pong, one server core", "msg/s",
        "15,000 msg/s", ">= 100,000 per core", 100000.0, "higher", "capacity"),
    Row("throughput.small_vs_ceiling", "64 B JSON ping/pong, fanwire / the raw-socket ceiling, same repeat", "x",
        "", ">= 0.50 (stretch)", 0.5, "higher"),
    Row("throughput.small_us_per_msg", "Server CPU per round trip, 64 B JSON", "us", "", "<= 10 us", 10.0, "lower"),
    Row("throughput.small_msgpack_msgs_per_s", "Round trips/s, 64 B msgpack ping/pong, one server core", "msg/s",
        "", "", None, "higher", "capacity"),
    Row("throughput.large_msgs_per_s", "Round trips/s, 16 KiB JSON ping/pong, one server core", "msg/s",
        "5,000 msg/s", ">= 30,000", 30000.0, "higher", "capacity"),
    Row("throughput.large_msgpack_msgs_per_s", "Round trips/s, 16 KiB msgpack ping/pong, one server core", "msg/s",
        "", "", None, "higher", "capacity"),
    Row("throughput.echo_64_msgs_per_s", "Echo round trips/s, 64 B, one server core", "msg/s", "", "", None,
        "higher", "capacity"),
    Row("throughput.echo_16k_msgs_per_s", "Echo round trips/s, 16 KiB, one server core", "msg/s", "",
        ">= 1.0x picows", None, "higher", "capacity", ("picows", 1.0)),
    Row("throughput.echo_64k_msgs_per_s", "Echo round trips/s, 64 KiB, one server core", "msg/s", "",
        ">= 1.0x picows", None, "higher", "capacity", ("picows", 1.0)),
    Row("latency.p99_ms_at_20k", "Round-trip latency p99 at 20k msg/s offered (open loop)", "ms", "1-10 ms",
        "p99 <= 1 ms", 1.0, "lower", "latency"),
    Row("latency.p50_ms_at_20k", "Round-trip latency p50 at 20k msg/s offered (open loop)", "ms", "1-10 ms",
        "", None, "lower", "latency"),
    Row("latency.p99_9_ms_at_20k", "Round-trip latency p99.9 at 20k msg/s offered (open loop)", "ms", "", "",
        None, "lower", "latency"),
    Row("latency.max_rate_p99_1ms", "Highest offered rate with p99 <= 1 ms, not saturated", "msg/s", "", "", None,
        "higher"),
    Row("fanout.p99_ms_1k_100", "Fan-out p99 to the arrival, 1,000 subscribers x 100 broadcasts/s, one server core",
        "ms", "", "<= 1.2x floor", None, "lower", "latency", ("floor", 1.2)),
    Row("fanout.read_p99_ms_1k_100", "Fan-out p99 to the read, 1,000 subscribers x 100 broadcasts/s, one server "
        "core", "ms", "", "", None, "lower", "latency"),
    Row("fanout.p99_ms_10k_10", "Fan-out p99 to the arrival, 10,000 subscribers x 10 broadcasts/s, one server core",
        "ms", "", "<= 1.2x floor", None, "lower", "latency", ("floor", 1.2)),
    Row("fanout.read_p99_ms_10k_10", "Fan-out p99 to the read, 10,000 subscribers x 10 broadcasts/s, one server "
        "core", "ms", "", "p99 <= 50 ms", 50.0, "lower", "latency"),
    Row("fanout.p99_ms_10k_100", "Fan-out p99 to the arrival, 10,000 subscribers x 100 broadcasts/s (more than one "
        "core can send: a backlog, not a latency)", "ms", "", "", None, "lower", "latency"),
    Row("fanout.deliveries_per_s", "Fan-out deliveries/s received, 10,000 subscribers, one server process", "deliv/s", "",
        ">= 500,000", 500000.0, "higher", "capacity"),
    Row("fanout.cross_p99_ms_1k_500", "Fan-out p99 over 2 workers (pipe bus), 1,000 subscribers x 500/s", "ms", "",
        "", None, "lower", "latency"),
    Row("fanout.redis_p99_ms_1k_500", "Fan-out p99 over the Redis bus (2 nodes), 1,000 subscribers x 500/s", "ms",
        "", "", None, "lower", "latency"),
    Row("recovery.delivered_pct", "Recovery: owed deliveries that arrived, each once and in order, under repeated "
        "cuts", "%", "", "100.00 %", 100.0, "higher"),
    Row("recovery.duplicates", "Recovery: duplicate deliveries, all runs", "msgs", "", "none", 0.0, "lower"),
    Row("recovery.out_of_order", "Recovery: deliveries out of order, all runs", "msgs", "", "none", 0.0, "lower"),
    Row("recovery.history_lost", "Recovery: history losses (recovered: false, epoch changes), all runs", "events", "",
        "none", 0.0, "lower"),
    Row("recovery.recover_p50_ms", "Recovery: time to recover p50 (reconnect to caught up)", "ms", "", "", None,
        "lower", "latency"),
    Row("recovery.recover_p99_ms", "Recovery: time to recover p99 (reconnect to caught up)", "ms", "", "", None,
        "lower", "latency"),
    Row("recovery.fanout_cpu_ratio_1k_100", "Price of history: fan-out server CPU per delivery, on / off, 1,000 "
        "subscribers x 100/s", "x", "", "<= 1.10", 1.10, "lower"),
    Row("recovery.fanout_cpu_ratio_20_1000", "Price of history: fan-out server CPU per delivery, on / off, 20 "
        "subscribers x 1,000/s", "x", "", "<= 1.10", 1.10, "lower"),
    Row("recovery.pingpong_ratio", "Price of history: 64 B ping/pong round trips/s, on / off", "x", "",
        ">= 0.95 (unchanged)", 0.95, "higher"),
    Row("recovery.pingpong_cpu_ratio", "Price of history: server CPU per ping/pong round trip, on / off", "x", "",
        "", None, "lower"),
    Row("codecs.json_msgs_per_s", "Typical message, JSON: round trips/s", "msg/s", "", "", None, "higher",
        "capacity"),
    Row("codecs.msgpack_msgs_per_s", "Typical message, msgpack: round trips/s", "msg/s", "", "", None, "higher",
        "capacity"),
    Row("codecs.json_us_per_msg", "Typical message, JSON: server CPU per round trip", "us", "", "", None, "lower"),
    Row("codecs.msgpack_us_per_msg", "Typical message, msgpack: server CPU per round trip", "us", "", "", None,
        "lower"),
    Row("codecs.msgpack_wire_ratio", "Typical message: msgpack bytes on the wire / JSON bytes", "x", "", "", None,
        "lower"),
    Row("scaling.best_msgs_per_s", "Round trips/s, 64 B JSON, best worker count", "msg/s", "", "", None, "higher",
        "capacity"),
    Row("scale.scale_conns_held", "Scale: connections held through the heartbeat hold", "conns", "", ">= 100,000",
        100000.0, "higher"),
    Row("scale.scale_rss_per_conn_kb", "Scale: server memory per idle connection", "KB", "", "<= 4 KB", 4.0, "lower"),
    Row("scale.scale_conn_per_s", "Scale: connections opened per second", "conn/s", "", "", None, "higher"),
    Row("scale.scale_broadcast_p99_ms", "Scale: one broadcast to all, p99 of its arrival at the clients' sockets",
        "ms", "", "p99 <= 1 s", 1000.0, "lower"),
    Row("scale.scale_broadcast_server_cpu_s", "Scale: server CPU from that send to the last arrival's stamp", "CPU s",
        "", "", None, "lower"),
    Row("scale.scale_broadcast_load_cpu_s", "Scale: load processes' CPU meanwhile (waiting, then stamping)", "CPU s",
        "", "", None, "lower"),
    Row("scale.scale_broadcast_read_p99_ms", "Scale: one more broadcast, p99 of its read by the load processes "
        "(they share the 2 cores)", "ms", "", "", None, "lower"),
    Row("scale.scale_dropped", "Scale: connections dropped (never opened, or closed in the hold)", "conns", "",
        "none", 0.0, "lower"),
    Row("scale.scale_idle_server_cpu_pct", "Scale: server CPU while the connections idle (heartbeats)", "%", "", "",
        None, "lower"),
)
