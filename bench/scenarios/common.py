"""What every scenario shares: its context, a server with its load processes, opening connections,
a closed-loop window, and filing figures (median of the repeats, spread, conditions) in a summary."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..hist import Histogram
from ..loadgen import LoadError, LoadPool
from ..procstat import CorePlan, CpuWindow, cores, others_pct
from ..servers import TARGETS, Server
from ..stats import load_bound, median_index, spread, window_verdict

__all__ = ["HOST", "Ctx", "Scenario", "conditions", "conns_per_load_process", "cpu_line", "file_figure",
           "jsonable", "open_conns", "pingpong", "session", "sleep_until", "sources_for", "split"]

HOST = "127.0.0.1"
PORTS_PER_SOURCE = 15_000  # well under the ~28,000 ephemeral ports (32768-60999) per (source, destination) pair
FILES_PER_PROCESS = 20_000  # the hard open-file limit on the 2-vCPU machine (it cannot be raised)


def conns_per_load_process() -> int:
    """Connections one load process may hold: 60 % of its open-file limit (20,000 here), at most 12,000."""
    return max(500, min(12_000, int(resource.getrlimit(resource.RLIMIT_NOFILE)[0] * 0.6)))


@dataclass
class Ctx:
    """What a scenario gets: its size, where to write, how to report progress, which servers to run."""

    quick: bool
    out: Path
    log: Callable[[str], None] = print
    workers_list: list[int] | None = None
    targets: tuple[str, ...] = ()  # only these targets (or servers); empty: all
    repeats: int = 3
    cpus: list[int] = field(default_factory=cores)
    skipped: dict[str, str] = field(default_factory=dict)  # target -> why it did not run

    @property
    def ncpu(self) -> int:
        return len(self.cpus)

    def wants(self, target: str) -> bool:
        """Whether to run ``target``: selected (by its name or its server's) and available here."""
        spec = TARGETS[target]
        if self.targets and target not in self.targets and spec.server not in self.targets:
            return False
        missing = spec.missing()
        if missing:
            if target not in self.skipped:
                self.log(f"{target}: skipped: {missing}")
            self.skipped[target] = missing
            return False
        return True

    def pick(self, targets: Sequence[str]) -> list[str]:
        return [t for t in targets if self.wants(t)]

    def reps(self, p: dict[str, Any]) -> int:
        """Repeats of this scenario: the scenario's own setting, else the run's."""
        return max(1, int(p.get("repeats") or self.repeats))


Runner = Callable[[Ctx, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Runner
    full: dict[str, Any]
    quick: dict[str, Any]
    in_quick_run: bool = True  # part of ``bench run --quick`` (scale is too long)
    how: str = ""  # one line for results/README.md: what it measures and how

    def params(self, quick: bool) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.quick if quick else self.full))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------
# a server and its load


@contextmanager
def session(ctx: Ctx, target: str, workers: int = 1, load_procs: int = 0, plan: CorePlan | None = None,
            extra_args: Sequence[str] = ()) -> Iterator[tuple[Server, LoadPool, CorePlan]]:
    """A fresh server and a pool of load processes, both pinned by the plan; stopped on exit (the
    server first, so the load processes can answer its close frames)."""
    server_procs = workers if TARGETS[target].multi else 1
    plan = plan or CorePlan.make(server_procs, ctx.cpus)
    srv = Server(target, workers, log_dir=ctx.out / "tmp", plan=plan, extra_args=extra_args)
    pool = LoadPool(plan.load_processes(load_procs), None if plan.shared else plan.load)
    try:
        srv.start()
        pool.start()
        yield srv, pool, plan
    finally:
        try:
            srv.stop()
        finally:
            pool.close()


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def sources_for(count: int, per_source: int = PORTS_PER_SOURCE) -> list[str]:
    """Source addresses so no (source, destination) pair runs out of ephemeral ports."""
    n = math.ceil(count / per_source)
    return [f"127.0.0.{i + 1}" for i in range(n)] if n > 1 else []


def sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def open_conns(pool: LoadPool, srv: Server, count: int, rate: float | None, codec: str = "json",
               max_pending: int = 256, timeout: float = 10.0, sources: Sequence[str] | None = None,
               require: bool = True) -> dict[str, Any]:
    """Open ``count`` connections spread over the pool; the arrival rate is split likewise.
    Returns the merged handshake histogram (us, from each connection's real start), how late the starts
    were against the schedule and how many were early, errors, and connections per second."""
    counts = split(count, pool.n)
    srcs = list(sources) if sources is not None else sources_for(count)
    start_at = time.monotonic() + 0.2
    sub = "fanwire.msgpack" if codec == "msgpack" else "fanwire.json"
    args = [{"host": HOST, "port": srv.port, "count": n, "rate": (rate * n / count) if rate else None,
             "start_at": start_at, "subprotocol": sub if srv.mode != "echo" else None, "codec": codec,
             "expect_welcome": srv.spec.welcome, "sources": srcs, "max_pending": max_pending, "timeout": timeout,
             "deadline": 60.0 + (count / rate if rate else count / 500)} for n in counts]
    cpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    cpu.start()
    gcpu.start()
    results = pool.call("open", args, timeout=120.0 + (count / rate if rate else count / 500))
    cpu.stop()
    gcpu.stop()
    hist = Histogram.merged(r["handshake_us"] for r in results)
    errors: dict[str, int] = {}
    workers: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in r["workers"].items():
            workers[str(k)] = workers.get(str(k), 0) + v
    starts = [r["starts"] for r in results if r.get("starts")]
    lag = Histogram.merged(s["lag_us"] for s in starts)
    early = sum(s["early"] for s in starts)
    firsts = [r["first_ns"] for r in results if r["first_ns"]]
    lasts = [r["last_ns"] for r in results if r["last_ns"]]
    span = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
    opened = hist.count
    if opened == 0 and require:
        raise LoadError(f"no connection to {srv.target} opened: {errors}")
    return {"requested": count, "opened": opened, "errors": errors, "rate": rate,
            "handshake_ms": hist.summary(1000), "handshake_us": hist.to_dict(),
            "start_lag_ms": lag.summary(1000) if starts else None, "early_starts": early if starts else None,
            "conn_per_s": round(opened / span, 1) if span > 0 else None, "span_s": round(span, 3),
            "conns_per_worker": workers, "server_cpu": cpu.report(), "load_cpu": gcpu.report(),
            "other_cpu_pct": others_pct(cpu, gcpu), "server_cpu_s": round(cpu.seconds, 3),
            "server_us_per_handshake": round(cpu.seconds * 1e6 / opened, 1) if opened else None,
            "sources": srcs or [HOST], "load_processes": pool.n}


def pingpong(pool: LoadPool, srv: Server, frame: bytes, expect: dict[str, Any], inflight: int, batch: int,
             warmup: float, duration: float, plan: CorePlan, drain: float = 2.0) -> dict[str, Any]:
    """Closed-loop pipelined round trips on the pool's open connections; server and load CPU are read
    from /proc over exactly the measured window. Only replies that match ``expect`` count; the window
    is valid only when every request was answered as expected and no connection closed."""
    start_at = time.monotonic() + 0.2
    tickets = pool.submit("pingpong", {"frame": frame, "expect": expect, "inflight": inflight, "batch": batch,
                                       "start_at": start_at, "warmup": warmup, "duration": duration,
                                       "drain": drain})
    scpu, gcpu = CpuWindow(srv.pids), CpuWindow(pool.pids)
    sleep_until(start_at + warmup)
    scpu.start()
    gcpu.start()
    sleep_until(start_at + warmup + duration)
    scpu.stop()
    gcpu.stop()
    results = pool.wait(tickets, timeout=duration + warmup + drain + 30)
    received = sum(r["received"] for r in results)
    window = max(r["window_s"] for r in results)
    rx = sum(r["rx_bytes"] for r in results)
    verdict = window_verdict(expected=sum(r["sent_total"] for r in results),
                             ok=sum(r["ok_total"] for r in results),
                             unexpected=sum(r["unexpected"] for r in results),
                             closed=sum(r["closed"] for r in results),
                             extra=sum(r["extra"] for r in results))
    load = gcpu.report()
    return {
        "msgs_per_s": round(received / window, 1),
        "received": received,
        "window_s": round(window, 3),
        "valid": verdict["valid"],
        "verdict": verdict,
        "server_cpu": scpu.report(),
        "load_cpu": load,
        "load_bound": load_bound(load["cpu_pct"], len(plan.load)) and not plan.shared,
        "other_cpu_pct": others_pct(scpu, gcpu),
        "server_us_per_msg": round(scpu.seconds * 1e6 / received, 3) if received else None,
        "wire_bytes_out_per_msg": len(frame),
        "wire_bytes_in_per_msg": round(rx / received, 1) if received else None,
        "conns": sum(r["conns"] for r in results),
        "close_codes": _merge_counts(r["close_codes"] for r in results),
        "load_shape": {"inflight_per_conn": inflight, "resend_batch": batch, "load_processes": pool.n},
    }


def _merge_counts(maps: Iterator[dict[str, int]] | Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def cpu_line(r: dict[str, Any]) -> str:
    s = r.get("server_cpu", {}).get("cpu_pct")
    g = r.get("load_cpu", {}).get("cpu_pct")
    line = f"server CPU {s}%, load CPU {g}%"
    other = r.get("other_cpu_pct") or 0
    if other >= 15:
        line += f", other CPU {other}% (other processes, kernel)"
    steal = r.get("server_cpu", {}).get("machine_steal_pct") or 0
    if steal >= 5:
        line += f", stolen by the hypervisor {steal}%"
    if r.get("valid") is False:
        line += "; INVALID: " + "; ".join(r.get("verdict", {}).get("reasons", []))
    return line


def plan_note(plan: CorePlan) -> str:
    return "shared cores" if plan.shared else f"server cores {list(plan.server)}, load cores {list(plan.load)}"


def jsonable(p: Any) -> Any:
    return orjson.loads(orjson.dumps(p))


# ---------------------------------------------------------------------------------------------------
# filing figures


def conditions(run: dict[str, Any]) -> dict[str, Any]:
    """The conditions a figure was measured under, from its (median) run."""
    cores_ = run.get("cores") or {}
    out: dict[str, Any] = {
        "workers": run.get("workers"),
        "server_cpu_pct": (run.get("server_cpu") or {}).get("cpu_pct"),
        "load_cpu_pct": (run.get("load_cpu") or {}).get("cpu_pct"),
        "shared_cores": cores_.get("shared"),
        "valid": run.get("valid", True),
    }
    for key in ("saturated", "saturated_why", "load_bound", "overloaded"):
        if key in run:
            out[key] = run[key]
    return out


def file_figure(summary: dict[str, Any], key: str, server: str, runs: Sequence[dict[str, Any]],
                value: Callable[[dict[str, Any]], float | None], note: str = "", unit: str = "",
                cond: Callable[[dict[str, Any]], dict[str, Any]] = conditions, digits: int = 4) -> None:
    """File the figure ``key`` of ``server`` measured by ``runs`` (one per repeat): the median of the
    valid runs is the figure, its spread and the conditions of the median run go beside it. Runs whose
    window was invalid are left out and counted."""
    valid = [r for r in runs if r.get("valid", True)]
    vals = [value(r) for r in valid]
    pairs = [(v, r) for v, r in zip(vals, valid) if v is not None]
    st = spread([v for v, _ in pairs])
    st["invalid"] = len(runs) - len(valid)
    entry = summary.setdefault(key, {})
    med = st["median"]
    entry[server] = None if med is None else (round(med, digits) if abs(med) < 1000 else round(med, 1))
    entry.setdefault("stats", {})[server] = {k: (round(v, digits) if isinstance(v, float) else v)
                                             for k, v in st.items() if k != "values"} | {
        "values": [round(v, digits) for v in st["values"]]}
    if pairs:
        mid = pairs[median_index([v for v, _ in pairs])][1]
        entry.setdefault("conditions", {})[server] = cond(mid)
    elif runs:
        entry.setdefault("conditions", {})[server] = {**cond(runs[0]), "valid": False}
    if note:
        entry.setdefault("notes", {})[server] = note
        if server == "fanwire" or "note" not in entry:
            entry["note"] = note
    if unit:
        entry["unit"] = unit
