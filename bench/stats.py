"""The rules that decide what a figure may claim. Pure: numbers in, verdicts out.

- :func:`spread`: a figure measured several times (interleaved with its baseline): median, min, max,
  spread. The headline is always the median.
- :func:`window_verdict`: a measured window is *valid* only when every request got the reply we asked for:
  nothing unanswered, no unexpected reply (an error frame is not a round trip), no connection closed.
- :func:`saturation`: a latency figure is only comparable while the server keeps up: it got (almost) all
  of the offered load through, its p99 stayed under the scenario's bound, and its processes were not
  pinned at 100 % of their cores.
- :func:`ratio`: how many times better one server is than another, *only* where the conditions allow it;
  otherwise the reason, in words, to print instead of a number.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

__all__ = ["CPU_SATURATED_PCT", "LOAD_BOUND_PCT", "load_bound", "ratio", "saturation", "spread",
           "window_verdict"]

CPU_SATURATED_PCT: Final = 90.0  # a server process busier than this (% of its core) is saturated
LOAD_BOUND_PCT: Final = 90.0  # load processes busier than this (% of their cores): the generator may be the limit


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min, max and spread (max - min, in % of the median) of the values that exist."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "spread_pct": None, "values": []}
    med = statistics.median(vals)
    return {"n": len(vals), "median": med, "min": min(vals), "max": max(vals),
            "spread_pct": round(100 * (max(vals) - min(vals)) / med, 1) if med else None,
            "values": vals}


def median_index(values: Sequence[float]) -> int:
    """Index of the value that is the median (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def window_verdict(*, expected: int, ok: int, unexpected: int = 0, closed: int = 0, errors: int = 0,
                   extra: int = 0) -> dict[str, Any]:
    """``expected`` requests (or deliveries) were owed, ``ok`` of the expected replies came back,
    ``unexpected`` replies were something else (an error, a frame without our marker), ``closed``
    connections closed under us, ``errors`` other failures, ``extra`` replies beyond what was owed.
    Valid only when nothing was lost and nothing else happened."""
    lost = max(0, expected - ok)
    reasons = []
    if lost:
        reasons.append(f"{lost:,} of {expected:,} not answered as expected")
    if unexpected:
        reasons.append(f"{unexpected:,} unexpected replies")
    if closed:
        reasons.append(f"{closed:,} connections closed")
    if errors:
        reasons.append(f"{errors:,} errors")
    if extra:
        reasons.append(f"{extra:,} replies more than requests")
    return {"valid": not reasons, "expected": expected, "ok": ok, "lost": lost, "unexpected": unexpected,
            "closed": closed, "errors": errors, "extra": extra, "reasons": reasons}


def saturation(*, offered: float, achieved: float, p99_ms: float | None, bound_ms: float,
               server_cpu_pct: float | None, server_procs: int, min_share: float = 0.95) -> dict[str, Any]:
    """Whether a server kept up with an open-loop load, and why not."""
    reasons = []
    if offered > 0 and achieved < min_share * offered:
        reasons.append(f"{100 * achieved / offered:.0f} % of the offered load got through")
    if p99_ms is not None and p99_ms > bound_ms:
        reasons.append(f"p99 {p99_ms:,.0f} ms > {bound_ms:,.0f} ms")
    if server_cpu_pct is not None and server_cpu_pct >= CPU_SATURATED_PCT * max(1, server_procs):
        reasons.append(f"server at {server_cpu_pct:.0f} % CPU ({server_procs} core(s))")
    return {"saturated": bool(reasons), "why": reasons}


def load_bound(load_cpu_pct: float | None, load_cores: int) -> bool:
    """The load processes were (nearly) all busy: a closed-loop figure may be the generator's limit."""
    return load_cpu_pct is not None and load_cpu_pct >= LOAD_BOUND_PCT * max(1, load_cores)


Kind = Literal["latency", "capacity", "plain"]


def ratio(better: Literal["lower", "higher"], kind: Kind, a: float | None, b: float | None,
          a_cond: Mapping[str, Any] | None = None, b_cond: Mapping[str, Any] | None = None,
          a_name: str = "fanwire", b_name: str = "baseline") -> tuple[float | None, str]:
    """How many times better ``a`` is than ``b`` (> 1: ``a`` is better), or None and the reason.

    ``latency`` figures compare only when neither side is saturated; ``capacity`` figures (closed-loop
    rates) only when neither was limited by the load generator; every figure only when its windows were
    valid. Conditions missing from an old result are not held against it.
    """
    if a is None or b is None:
        return None, f"{a_name if a is None else b_name} not measured"
    if a <= 0 or b <= 0:
        return None, "a value is zero"
    for name, cond in ((a_name, a_cond), (b_name, b_cond)):
        if not cond:
            continue
        if cond.get("valid") is False:
            return None, f"{name}: invalid window (messages lost)"
        if kind == "latency" and cond.get("saturated"):
            return None, f"{name} saturated"
        if kind == "capacity" and cond.get("load_bound"):
            return None, f"{name}: load generator at its limit"
    return (b / a if better == "lower" else a / b), ""
