"""The dashboard in Chromium: live figures from `$stats` snapshots that move under load and name the
workers; counter resets never show negative rates; the admin token. Against the fake v1.1 server (which
publishes `$stats` like the real one), and against the real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from client import Client
from tests.browser.conftest import Pages, PageUrl
from tests.browser.fakeserver import FakeServer
from tests.browser.ui import poll, tile_value, wait_state
from tests.helpers import ServerProcess


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(stats_interval=0.25) as f:
        yield f


def _below(v: float | None, limit: float) -> bool:
    return v is not None and v < limit


def load(url: str, n: int = 150, user: str = "load") -> None:
    """A burst of chats from a Python client (each one delivered to every member of lobby)."""
    c = Client(url, user=user)
    c.connect()
    try:
        for i in range(n):
            c.send_chat_message(f"load {i}")
        c.ping()
    finally:
        c.disconnect()


def test_dashboard_figures_move_under_load_and_name_the_workers(pages: Pages, fake: FakeServer) -> None:
    listeners = [Client(fake.url, user=f"listener{i}") for i in range(3)]
    for c in listeners:
        c.connect()
    try:
        page = pages.open(fake.http + "/dashboard")
        wait_state(page, "connected")
        poll(lambda: tile_value(page, "workers") == 2, "two workers")
        rows = page.locator("#workers tbody tr")
        poll(lambda: rows.count() == 2, "a row per worker")
        pids = {int(w["pid"]) for w in fake.snapshot()["workers"]}
        shown = page.locator("#workers tbody td:nth-child(3)").all_text_contents()
        assert {int(p) for p in shown} == pids, "the workers' pids are shown"
        assert page.get_attribute("#workers tbody tr >> nth=0", "data-worker") == "fake/0"
        assert (page.text_content("#bus") or "").startswith("bus pipe up")
        poll(lambda: tile_value(page, "connections") == 4, "3 listeners + the dashboard")
        poll(lambda: _below(tile_value(page, "deliveries"), 10), "idle (the snapshots themselves are deliveries)")

        load(fake.url)
        poll(lambda: (tile_value(page, "in") or 0) > 10, "messages in/s to move")
        poll(lambda: (tile_value(page, "deliveries") or 0) > 10, "deliveries/s to move")
        assert (tile_value(page, "bytes-out") or 0) > 0
        legend = page.locator("#l-in .legend-label").all_text_contents()
        assert "chat" in legend, legend
        assert page.locator("#l-conns .legend-label").all_text_contents() == ["worker 0", "worker 1"]
        poll(lambda: _below(tile_value(page, "deliveries"), 10), "rates to fall back once the load stops")
        assert page.get_attribute("#age", "data-stale") == "false"
    finally:
        for c in listeners:
            c.disconnect()


def test_counter_resets_and_odd_families_do_not_break_the_dashboard(pages: Pages, fake: FakeServer) -> None:
    page = pages.open(fake.http + "/dashboard")
    wait_state(page, "connected")
    load(fake.url, 50)
    fake.count_drop("slow_consumer", 2)
    poll(lambda: page.locator('#problems tr[data-family="fanwire_dropped_messages_total"]').count() == 1,
         "the drops by reason")
    assert page.get_attribute('#problems tr[data-family="fanwire_dropped_messages_total"]', "data-by") == "slow_consumer"
    poll(lambda: tile_value(page, "in") is not None, "rates (two snapshots)")
    n = fake.call(lambda: len(fake.snapshots))
    fake.reset_counters()  # a worker restart: every counter drops
    seen = []
    read = """() => ["in", "out", "deliveries", "bytes-in", "drops", "errors"].map(
        (t) => parseFloat(document.getElementById("t-" + t).dataset.value))"""
    while fake.call(lambda: len(fake.snapshots)) < n + 3:  # sample the page across the reset
        seen.append(page.evaluate(read))
        time.sleep(0.02)
    assert len(seen) >= 3
    assert all(v >= 0 for row in seen for v in row), seen  # NaN (no value) fails too
    assert page.locator("#t-connections .value").text_content() == "1"


def test_dashboard_needs_an_admin_token_for_stats(pages: Pages) -> None:
    with FakeServer(token="user-token-0123456789", admin_token="admin-token-0123456789",
                    stats_interval=0.25) as fake:
        page = pages.open(fake.http + "/dashboard?token=user-token-0123456789")
        wait_state(page, "connected")
        page.wait_for_selector("#notice:visible")
        assert "admin token" in (page.text_content("#notice") or "")
        page2 = pages.open(fake.http + "/dashboard?token=admin-token-0123456789")
        poll(lambda: tile_value(page2, "workers") == 2, "figures with the admin token")


def test_dashboard_on_the_real_server(pages: Pages, page_url: PageUrl, real_server: ServerProcess) -> None:
    page = pages.open(page_url("/dashboard"))
    wait_state(page, "connected")
    poll(lambda: tile_value(page, "workers") == 2, "$stats snapshots naming the workers", timeout=4)
    shown = {int(p) for p in page.locator("#workers tbody td:nth-child(3)").all_text_contents()}
    assert shown == set(real_server.worker_pids().values())
    load(real_server.url)
    poll(lambda: (tile_value(page, "deliveries") or 0) > 10, "deliveries/s to move")
    poll(lambda: (tile_value(page, "in") or 0) > 10, "messages in/s to move")
