"""Counters, snapshots, merging across workers, Prometheus text."""

from __future__ import annotations

from server import metrics


def test_metrics_merge_and_render() -> None:
    a = metrics.Metrics()
    a.count_in("chat", 10)
    a.inc(a.errors, "bad_message")
    b = metrics.Metrics()
    b.count_in("chat", 5)
    b.count_in("ping", 3)
    sa = a.snapshot(3, 1, 0, 10.0, True)
    sb = b.snapshot(4, 2, 1, 12.5, False)
    merged = metrics.merge([sa, sb])
    parsed = metrics.parse(metrics.render(merged))
    assert parsed['fanwire_messages_in_total{type="chat"}'] == 2
    assert parsed['fanwire_bytes_in_total{type="chat"}'] == 15
    assert parsed['fanwire_messages_in_total{type="ping"}'] == 1
    assert parsed["fanwire_connections"] == 7
    assert parsed["fanwire_workers"] == 2
    assert parsed['fanwire_worker_connections{worker="1"}'] == 4
    assert parsed["fanwire_uptime_seconds"] == 12.5
    assert parsed["fanwire_bus_up"] == 0
    assert parsed['fanwire_errors_total{code="bad_message"}'] == 1
    text = metrics.render(merged)
    assert "# TYPE fanwire_messages_in_total counter" in text
    assert "# TYPE fanwire_connections gauge" in text
