"""The benchmark scenarios: a declarative list, each with a full and a ``--quick`` size.

Every scenario starts its servers fresh (one at a time, never two at once), places them and the load
processes on cores (:class:`~bench.procstat.CorePlan`), warms up before every measured window, measures
only inside the window, and repeats every figure (``repeats``, 3 at full size) with the servers
interleaved (fanwire, its baselines, fanwire, ...), so that drift on the machine hits all of them alike.
It returns one result: ``config``, ``runs`` (one entry per server, setting and repeat, with the raw
histograms) and ``summary`` (per figure: the median of the repeats per server, their spread, and the
conditions of the median run: CPU of both sides, saturation, validity).

All traffic goes to 127.0.0.0/8. Every loop is bounded by a count and a deadline.

Adding a scenario: write
``bench/scenarios/<name>.py`` with ``run_<name>(ctx, params) -> {"config", "runs", "summary"}`` built from
:mod:`bench.scenarios.common` (``session``, ``open_conns``, ``file_figure``), add a :class:`Scenario` to
:data:`SCENARIOS` with a full and a quick size, a chart to ``bench/charts.py`` (the tests require one per
scenario), and rows to ``bench/targets.py`` for the figures the README table shows. :data:`PLANNED` lists
the ones that wait for a server feature; ``python -m bench list`` shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .codecs import run_codecs
from .common import Ctx, Scenario
from .connect import run_connect
from .fanout import run_fanout
from .latency import run_latency
from .recovery import run_recovery
from .scale import run_scale
from .scaling import run_scaling
from .throughput import run_throughput

__all__ = ["PLANNED", "SCENARIOS", "Ctx", "Scenario", "by_name", "default_names"]

CHAT3 = ["fanwire", "baseline", "baseline-uvloop"]

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "connect", "Connections: handshake time, connections/s, memory per idle connection, how many are held",
        run_connect,
        full={"targets": CHAT3,
              # handshake time: one server core, the load on the other, a controlled arrival rate
              "handshake": {"conns": 1000, "rate": 1000, "workers": 1},
              # memory per idle connection, connections/s unthrottled, one broadcast to all: one server core
              "idle": {"conns": 10000, "workers": 1},
              # how many each server holds (and one broadcast reaches): up the ladder to the first failure, once
              "capacity": {"levels": [15000, 20000, 40000, 60000], "workers": 4},
              "settle_s": 1.5, "timeout": 15.0, "broadcast_timeout": 20.0, "saturation_p99_ms": 100.0},
        quick={"targets": CHAT3, "handshake": {"conns": 200, "rate": 500, "workers": 1},
               "idle": {"conns": 400, "workers": 1}, "capacity": {"levels": [600], "workers": 2},
               "settle_s": 0.3, "timeout": 10.0, "broadcast_timeout": 5.0, "saturation_p99_ms": 100.0, "repeats": 1},
        how="connections opened by the load processes, handshake timed from each connection's real start",
    ),
    Scenario(
        "throughput", "Throughput: pipelined round trips, ping/pong (JSON, msgpack) and plain echo, one server core",
        run_throughput,
        full={"chat": {"targets": CHAT3,
                       "messages": [[64, "json"], [64, "msgpack"], [16384, "json"], [16384, "msgpack"]]},
              "ceiling": {"targets": ["ceiling"], "messages": [[64, "json"]]},
              "echo": {"targets": ["fanwire-echo", "websockets-echo", "picows-echo"],
                       "messages": [[64, "text"], [16384, "text"], [65536, "binary"]]},
              "conns": 100, "inflight": 16, "batch": 4, "large": {"min_size": 32768, "inflight": 4, "batch": 2},
              "warmup": 0.7, "duration": 2.5, "workers": 1},
        quick={"chat": {"targets": CHAT3, "messages": [[64, "json"], [16384, "msgpack"]]},
               "ceiling": {"targets": ["ceiling"], "messages": [[64, "json"]]},
               "echo": {"targets": ["fanwire-echo", "websockets-echo", "picows-echo"],
                        "messages": [[64, "text"], [65536, "binary"]]},
               "conns": 50, "inflight": 16, "batch": 4, "large": {"min_size": 32768, "inflight": 4, "batch": 2},
               "warmup": 0.2, "duration": 0.4, "workers": 1, "repeats": 1},
        how="closed loop: every connection keeps N requests in flight; only replies carrying our marker count",
    ),
    Scenario(
        "latency", "Latency: open-loop round trips at fixed offered rates, until overload",
        run_latency,
        full={"targets": CHAT3, "rates": [1000, 5000, 10000, 20000, 30000, 50000, 75000, 100000, 150000, 200000],
              "reference_rate": 20000, "conns": 100, "codec": "json", "size": 64, "warmup": 0.5,
              "duration": 2.0, "drain": 2.0, "workers": 1, "saturation_p99_ms": 200.0, "max_load_processes": 2},
        quick={"targets": CHAT3, "rates": [1000, 5000], "reference_rate": 20000, "conns": 50, "codec": "json",
               "size": 64, "warmup": 0.2, "duration": 0.4, "drain": 1.0, "workers": 1, "saturation_p99_ms": 200.0,
               "max_load_processes": 2, "repeats": 1},
        how="open loop, send times from the schedule (no coordinated omission)",
    ),
    Scenario(
        "fanout", "Fan-out: broadcasts to 1k and 10k subscribers on one server core, next to the raw-socket floor",
        run_fanout,
        full={"targets": ["fanwire", "floor", "baseline", "baseline-uvloop"], "workers": 1,
              "groups": [{"subs": 1000, "rates": [100, 500], "sample_every": 5},
                         {"subs": 10000, "rates": [10, 100], "sample_every": 5}],
              "cross_worker": {"subs": 1000, "rates": [100, 500], "workers": 2, "sample_every": 5},
              "redis": {"subs": 1000, "rates": [100, 500], "sample_every": 5},
              "load_processes": 2, "size": 100, "warmup": 0.5, "duration": 2.5, "drain": 1.0, "arrival": True,
              "saturation_p99_ms": 1000.0, "goal_p99_ms": 50.0},
        quick={"targets": ["fanwire", "floor", "baseline", "baseline-uvloop"], "workers": 1,
               "groups": [{"subs": 100, "rates": [100], "sample_every": 1}],
               "cross_worker": {"subs": 100, "rates": [100], "workers": 2, "sample_every": 1},
               "redis": {"subs": 100, "rates": [20], "sample_every": 1},
               "load_processes": 2, "size": 100, "warmup": 0.2, "duration": 0.4, "drain": 0.3, "arrival": True,
               "saturation_p99_ms": 1000.0, "goal_p99_ms": 50.0, "repeats": 1},
        how="open-loop broadcasts, latency from each broadcast's send to its arrival at the receiving socket "
            "(the kernel's stamp) and to its read; every receiver must get every broadcast once",
    ),
    Scenario(
        "recovery", "Recovery: nothing lost across repeated connection cuts, time to recover, and the price of "
                    "history (history on vs off)",
        run_recovery,
        full={"chaos": {"workers": 2, "subs": 200, "rooms": 2, "rate": 50, "cut_every": 2.0, "down_s": 0.2,
                        "warmup": 1.0, "duration": 10.0, "settle_s": 15.0, "codec": "json", "load_processes": 2,
                        "max_send_lag_ms": 50.0},
              "price": {"workers": 1, "load_processes": 2,
                        "pingpong": {"conns": 100, "inflight": 16, "batch": 4, "size": 64, "warmup": 0.7,
                                     "duration": 2.5},
                        "fanout": [{"subs": 1000, "rate": 100}, {"subs": 20, "rate": 1000}],
                        "size": 100, "warmup": 0.5, "duration": 2.5, "drain": 1.0, "saturation_p99_ms": 1000.0}},
        quick={"chaos": {"workers": 2, "subs": 20, "rooms": 1, "rate": 50, "cut_every": 0.5, "down_s": 0.1,
                         "warmup": 0.2, "duration": 1.5, "settle_s": 5.0, "codec": "json", "load_processes": 2,
                         "max_send_lag_ms": 50.0},
               "price": {"workers": 1, "load_processes": 1,
                         "pingpong": {"conns": 20, "inflight": 16, "batch": 4, "size": 64, "warmup": 0.2,
                                      "duration": 0.4},
                         "fanout": [{"subs": 50, "rate": 100}],
                         "size": 100, "warmup": 0.2, "duration": 0.4, "drain": 0.3, "saturation_p99_ms": 1000.0},
               "repeats": 1},
        how="v1.1 subscribers cut (TCP reset) on a schedule under steady publishing, every offset checked against "
            "the publisher's acks; ping/pong and fan-out with history on and off, in turn",
    ),
    Scenario(
        "codecs", "Codecs: JSON vs msgpack for a typical message: msg/s, server CPU, bytes on the wire",
        run_codecs,
        full={"targets": CHAT3, "codecs": ["json", "msgpack"], "conns": 100, "inflight": 16, "batch": 4,
              "warmup": 0.7, "duration": 2.5, "workers": 1},
        quick={"targets": ["fanwire", "baseline"], "codecs": ["json", "msgpack"], "conns": 50, "inflight": 16,
               "batch": 4, "warmup": 0.2, "duration": 0.4, "workers": 1, "repeats": 1},
        how="as throughput, with a typical ~200 B message",
    ),
    Scenario(
        "scaling", "Scaling: round trips/s against the number of workers",
        run_scaling,
        full={"baselines": ["baseline", "baseline-uvloop"], "conns": 100, "conns_per_worker": 50, "inflight": 16,
              "batch": 4, "warmup": 0.7, "duration": 2.5, "size": 64, "codec": "json"},
        quick={"baselines": ["baseline"], "conns": 50, "conns_per_worker": 25, "inflight": 16, "batch": 4,
               "warmup": 0.2, "duration": 0.4, "size": 64, "codec": "json", "repeats": 1},
        how="as throughput, 64 B JSON ping/pong, 1..cores workers",
    ),
    Scenario(
        "scale", "Scale: 100,000 concurrent connections on one node: memory, connect rate, broadcast, heartbeats",
        run_scale,
        full={"conns": 100000, "workers": 0, "conns_per_worker": 13000, "conns_per_load_process": 12000,
              "conns_per_source": 15000, "max_pending": 256, "timeout": 30.0, "settle_s": 2.0,
              "broadcast_timeout": 30.0, "hold_s": 60.0, "ping_interval": 10.0, "ping_timeout": 10.0,
              "backlog": 4096, "repeats": 1},
        quick={"conns": 3000, "workers": 2, "conns_per_worker": 13000, "conns_per_load_process": 1500,
               "conns_per_source": 1000, "max_pending": 256, "timeout": 10.0, "settle_s": 0.5,
               "broadcast_timeout": 10.0, "hold_s": 3.0, "ping_interval": 1.0, "ping_timeout": 2.0,
               "backlog": 4096, "repeats": 1},
        in_quick_run=False,
        how="one run (about two minutes at full size); not part of --quick",
    ),
)

# scenarios that wait for a server feature: shown by ``python -m bench list``, not run
PLANNED: Final[dict[str, str]] = {}


def by_name(names: Sequence[str]) -> list[Scenario]:
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        planned = [n for n in unknown if n in PLANNED]
        extra = f" ({', '.join(planned)}: planned, not written yet)" if planned else ""
        raise KeyError(f"unknown scenario(s) {', '.join(unknown)}{extra}; known: {', '.join(known)}")
    return [known[n] for n in names]


def default_names(quick: bool) -> list[str]:
    """What ``bench run`` runs without ``--scenario``: everything, less what is too long for ``--quick``."""
    return [s.name for s in SCENARIOS if s.in_quick_run or not quick]
