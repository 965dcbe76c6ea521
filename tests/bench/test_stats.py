"""bench.stats: what a figure may claim. Invalid windows, saturation, ratios only under equal conditions,
median and spread of repeats."""

from __future__ import annotations

from typing import Any

import pytest

from bench.stats import load_bound, median_index, ratio, saturation, spread, window_verdict

pytestmark = pytest.mark.timeout(30)


def test_a_window_is_valid_only_when_nothing_was_lost() -> None:
    assert window_verdict(expected=100, ok=100)["valid"] is True
    lost = window_verdict(expected=100, ok=97)
    assert lost["valid"] is False and lost["lost"] == 3 and "3 of 100" in lost["reasons"][0]
    err = window_verdict(expected=100, ok=95, unexpected=5)
    assert err["valid"] is False and err["unexpected"] == 5 and err["lost"] == 5
    closed = window_verdict(expected=100, ok=100, closed=1)
    assert closed["valid"] is False and "closed" in closed["reasons"][0]
    assert window_verdict(expected=100, ok=100, extra=2)["valid"] is False
    assert window_verdict(expected=100, ok=100, errors=1)["valid"] is False


def test_saturation_names_its_reasons() -> None:
    ok = saturation(offered=20000, achieved=19990, p99_ms=0.4, bound_ms=200, server_cpu_pct=40, server_procs=1)
    assert ok == {"saturated": False, "why": []}
    busy = saturation(offered=20000, achieved=20000, p99_ms=17, bound_ms=200, server_cpu_pct=99, server_procs=1)
    assert busy["saturated"] and "99 % CPU" in busy["why"][0]
    # two workers may use 200 %
    assert not saturation(offered=1, achieved=1, p99_ms=1, bound_ms=200, server_cpu_pct=150, server_procs=2)["saturated"]
    short = saturation(offered=100, achieved=80, p99_ms=None, bound_ms=200, server_cpu_pct=None, server_procs=1)
    assert short["saturated"] and "80 %" in short["why"][0]
    slow = saturation(offered=100, achieved=100, p99_ms=500, bound_ms=200, server_cpu_pct=None, server_procs=1)
    assert slow["saturated"] and "p99" in slow["why"][0]


def test_a_latency_ratio_needs_both_sides_unsaturated() -> None:
    fine = {"saturated": False, "valid": True}
    sat = {"saturated": True, "valid": True}
    r, why = ratio("lower", "latency", 0.18, 17.0, fine, sat, "fanwire", "websockets")
    assert r is None and why == "websockets saturated"
    r, why = ratio("lower", "latency", 0.2, 2.0, fine, fine)
    assert r == pytest.approx(10.0) and why == ""
    r, why = ratio("lower", "latency", 0.2, 2.0, {"saturated": False, "valid": False}, fine)
    assert r is None and "invalid" in why


def test_a_capacity_ratio_needs_a_load_that_kept_up() -> None:
    r, why = ratio("higher", "capacity", 160000, 40000, {"load_bound": True}, {})
    assert r is None and "load generator" in why
    r, _ = ratio("higher", "capacity", 160000, 40000, {"load_bound": False}, {"load_bound": False})
    assert r == pytest.approx(4.0)
    assert ratio("higher", "plain", None, 3.0)[0] is None


def test_load_bound() -> None:
    assert load_bound(95.0, 1) and not load_bound(50.0, 1) and not load_bound(150.0, 2) and not load_bound(None, 1)


def test_spread_and_median() -> None:
    s = spread([151.2, 164.5, 160.0])
    assert s["median"] == 160.0 and s["min"] == 151.2 and s["max"] == 164.5 and s["n"] == 3
    assert s["spread_pct"] == pytest.approx(8.3, abs=0.05)
    assert spread([None, 2.0])["n"] == 1
    assert spread([])["median"] is None
    assert median_index([3.0, 1.0, 2.0]) == 2 and median_index([4.0, 1.0, 3.0, 2.0]) == 3


def test_a_figure_is_the_median_of_its_valid_runs() -> None:
    from bench.scenarios.common import file_figure

    runs: list[dict[str, Any]] = [
            {"v": 100.0, "valid": True, "workers": 1, "server_cpu": {"cpu_pct": 99.0}},
            {"v": 5.0, "valid": False, "workers": 1},  # lost messages: left out, counted
            {"v": 120.0, "valid": True, "workers": 1, "server_cpu": {"cpu_pct": 98.0}, "saturated": True},
            {"v": 110.0, "valid": True, "workers": 1, "server_cpu": {"cpu_pct": 97.0}}]
    summary: dict[str, Any] = {}
    file_figure(summary, "x", "fanwire", runs, lambda r: r["v"], "note", "msg/s")
    entry = summary["x"]
    assert isinstance(entry, dict)
    assert entry["fanwire"] == 110.0 and entry["unit"] == "msg/s" and entry["note"] == "note"
    st = entry["stats"]["fanwire"]
    assert st["n"] == 3 and st["invalid"] == 1 and st["min"] == 100.0 and st["max"] == 120.0
    assert entry["conditions"]["fanwire"]["server_cpu_pct"] == 97.0  # the median run's conditions
    none: dict[str, Any] = {}
    file_figure(none, "x", "baseline", [{"v": 1.0, "valid": False, "workers": 1}], lambda r: r["v"])
    e = none["x"]
    assert isinstance(e, dict) and e["baseline"] is None and e["conditions"]["baseline"]["valid"] is False


def test_prometheus_text_is_read_without_the_server() -> None:
    from bench.promtext import parse

    m = parse('# HELP x\n# TYPE fanwire_connections gauge\nfanwire_connections 12\n'
              'fanwire_connections_closed_total{code="1000"} 3\nfanwire_connections_closed_total{code="1011"} 2\n'
              'fanwire_uptime_seconds 1.5e2\nbroken line\n')
    assert m.total("fanwire_connections") == 12
    assert m.total("fanwire_connections_closed_total") == 5
    assert m.total("fanwire_connections_closed_total", code="1011") == 2
    assert m.total("fanwire_uptime_seconds") == 150.0 and m.total("nope") is None
