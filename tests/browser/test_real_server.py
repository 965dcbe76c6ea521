"""The chat page in Chromium against a real 2-worker fanwire server: chat across workers with a Python
client, broadcast, text never rendered as HTML, surviving a worker SIGKILL and a rolling restart, and
receiving what was missed meanwhile (protocol v1.1).

Pages come from ``page_url(path)``: the server's own routes when it serves them, else the tests' static
site with ``?ws=`` pointing at the server (conftest.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from client import Client
from server.streams.owner import owner_slot
from tests.browser.conftest import Pages, PageUrl, make_page_url
from tests.browser.site import StaticSite
from tests.browser.ui import (
    notices,
    poll,
    send_broadcast,
    send_chat,
    senders,
    texts,
    wait_state,
    wait_text,
    worker_of,
)
from tests.helpers import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page


class PyClient:
    """The Python client, collecting what it receives."""

    def __init__(self, url: str, user: str = "py") -> None:
        self.got: list[dict[str, Any]] = []
        self.c = Client(url, user=user)
        self.c.set_message_callback(self.got.append)
        self.c.connect()

    @property
    def worker(self) -> int:
        assert self.c.welcome is not None
        return int(self.c.welcome["worker"])

    def texts(self, type_: str = "chat") -> list[str]:
        return [m.get("text", "") for m in list(self.got) if m.get("type") == type_]

    def close(self) -> None:
        self.c.disconnect()


@pytest.fixture
def py_clients(real_server: ServerProcess) -> Iterator[list[PyClient]]:
    made: list[PyClient] = []
    yield made
    for c in made:
        c.close()


def open_on_distinct_workers(pages: Pages, url: str, n: int = 2, tries: int = 30) -> list[Page]:
    """Open chat pages until ``n`` of them sit on ``n`` different workers (SO_REUSEPORT spreads them)."""
    by_worker: dict[int, Page] = {}
    for _ in range(tries):
        page = pages.open(url)
        wait_state(page, "connected")
        w = worker_of(page)
        if w in by_worker:
            pages.opened.remove(page)
            page.context.close()
        else:
            by_worker[w] = page
        if len(by_worker) == n:
            return list(by_worker.values())
    raise AssertionError(f"pages reached only workers {sorted(by_worker)}")


def test_two_pages_and_a_python_client_chat_across_workers(pages: Pages, page_url: PageUrl,
                                                            real_server: ServerProcess,
                                                            py_clients: list[PyClient]) -> None:
    a, b = open_on_distinct_workers(pages, page_url("/"))
    assert worker_of(a) != worker_of(b)
    py = PyClient(real_server.url, user="python")
    py_clients.append(py)
    nick_a = a.input_value("#nick")
    assert nick_a and nick_a != b.input_value("#nick"), "each page gets its own generated nickname"

    send_chat(a, "hello from page A")
    for page in (a, b):
        wait_text(page, "hello from page A")
    poll(lambda: "hello from page A" in py.texts(), "the Python client gets the page's chat")
    assert next(m for m in py.got if m.get("text") == "hello from page A")["user"] == nick_a

    py.c.send_chat_message("hello from Python")
    for page in (a, b):
        wait_text(page, "hello from Python")
        i = texts(page).index("hello from Python")
        assert senders(page)[i] == "python"

    # a nickname change shows on what the page sends from then on
    b.fill("#nick", "bob")
    b.dispatch_event("#nick", "change")
    send_chat(b, "renamed")
    wait_text(a, "renamed")
    assert senders(a)[texts(a).index("renamed")] == "bob"
    # the rooms list, the current room and the ping RTT
    assert a.locator("#rooms li.room.current").get_attribute("data-room") == "lobby"
    a.click("#ping")
    poll(lambda: a.text_content("#rtt").endswith(" ms"), "an RTT")


def test_join_a_room_and_chat_there(pages: Pages, page_url: PageUrl, real_server: ServerProcess,
                                    py_clients: list[PyClient]) -> None:
    page = pages.open(page_url("/"))
    wait_state(page, "connected")
    page.fill("#join-room", "games")
    page.click("#join-form button")
    page.wait_for_selector('#rooms li.room.current[data-room="games"]')
    assert page.text_content("#current-room") == "#games"
    py = PyClient(real_server.url, user="gamer")
    py_clients.append(py)
    py.c.join("games")
    send_chat(page, "in games")
    poll(lambda: "in games" in py.texts(), "the chat reaches the room")
    py.c.send_chat_message("lobby only", room="lobby")
    py.c.send_chat_message("games too", room="games")
    wait_text(page, "games too")
    page.click('#rooms li.room[data-room="games"] button.leave')
    page.wait_for_selector('#rooms li.room.current[data-room="lobby"]')


def test_broadcast_reaches_every_page_and_client(pages: Pages, page_url: PageUrl, real_server: ServerProcess,
                                                 py_clients: list[PyClient]) -> None:
    a, b = open_on_distinct_workers(pages, page_url("/"))
    py = PyClient(real_server.url)
    py_clients.append(py)
    send_broadcast(a, "attention everyone")
    for page in (a, b):
        wait_text(page, "attention everyone", kind="broadcast")
    poll(lambda: "attention everyone" in py.texts("broadcast"), "the Python client gets the broadcast")
    py.c.send_broadcast("python says hi to all")
    for page in (a, b):
        wait_text(page, "python says hi to all", kind="broadcast")


def test_html_in_messages_and_names_is_text(pages: Pages, page_url: PageUrl, real_server: ServerProcess,
                                            py_clients: list[PyClient]) -> None:
    page = pages.open(page_url("/"))
    wait_state(page, "connected")
    evil = '<img src=x onerror="window.__xss=1">'
    evil_name = "<b onmouseover=window.__xss=3>mallory</b>"
    py = PyClient(real_server.url, user=evil_name)
    py_clients.append(py)
    py.c.send_chat_message(evil)
    send_chat(page, "<script>window.__xss=2</script>")
    page.fill("#join-room", "<svg onload=window.__xss=4>")
    page.click("#join-form button")
    wait_text(page, evil)
    wait_text(page, "<script>window.__xss=2</script>")
    page.wait_for_selector("#rooms li.room.current")
    assert senders(page)[texts(page).index(evil)] == evil_name
    assert page.locator("#rooms li.room.current .room-name").text_content() == "<svg onload=window.__xss=4>"
    assert page.locator("#messages img, #messages script, #messages b, #rooms svg").count() == 0
    page.hover("#messages li.msg.chat .sender")
    assert page.evaluate("() => window.__xss") is None
    # Pages.check() (fixture teardown) also asserts that the CSP blocked nothing


@pytest.fixture
def own_server(site: StaticSite) -> Iterator[tuple[ServerProcess, PageUrl]]:
    """A server of this test alone (it gets killed and restarted)."""
    with ServerProcess(workers=2) as srv:
        yield srv, make_page_url(srv, site)


def test_page_survives_a_worker_sigkill(pages: Pages, own_server: tuple[ServerProcess, PageUrl]) -> None:
    srv, url = own_server
    page = pages.open(url("/"))
    wait_state(page, "connected")
    worker = worker_of(page)
    old_pid = srv.worker_pids()[worker]
    os.kill(old_pid, signal.SIGKILL)
    poll(lambda: any("reconnecting" in n for n in notices(page)), "the page to say it is reconnecting")
    wait_state(page, "connected")
    poll(lambda: any(n.startswith("reconnected to worker") for n in notices(page)), "the reconnect notice")
    assert page.locator("#recovery").is_visible()
    srv.wait_worker_replaced(worker, old_pid)
    py = PyClient(srv.url)
    try:
        py.c.send_chat_message("after the kill")
        wait_text(page, "after the kill")
        send_chat(page, "page still talks")
        poll(lambda: "page still talks" in py.texts(), "the page's chat after the reconnect")
    finally:
        py.close()


def test_page_survives_a_rolling_restart(pages: Pages, own_server: tuple[ServerProcess, PageUrl]) -> None:
    srv, url = own_server
    page = pages.open(url("/"))
    wait_state(page, "connected")
    old = dict(srv.worker_pids())
    os.kill(srv.pid, signal.SIGHUP)
    poll(lambda: any("1012" in n for n in notices(page)), "the page to report the 1012 close", timeout=15)
    wait_state(page, "connected", timeout=15)
    for w, pid in old.items():
        srv.wait_worker_replaced(w, pid, timeout=15)
    srv.wait_pids_gone(list(old.values()))
    py = PyClient(srv.url)
    try:
        py.c.send_chat_message("after the restart")
        wait_text(page, "after the restart")
    finally:
        py.close()


def test_page_receives_what_it_missed_during_a_worker_sigkill(pages: Pages,
                                                              own_server: tuple[ServerProcess, PageUrl]) -> None:
    srv, url = own_server
    # the page sits on the worker that is killed; lobby's sequencer must be the other one: killing a
    # stream's sequencer loses its history (docs/protocol.md, "When a history is lost"), which is
    # "history lost", not what this test is about
    sequencer = owner_slot("lobby", srv.workers)
    page = next(p for p in open_on_distinct_workers(pages, url("/")) if worker_of(p) != sequencer)
    assert page.evaluate("() => fanwireChat.client.version") == "1.1", "the server does not speak v1.1"
    worker = worker_of(page)
    py = PyClient(srv.url)
    try:
        for _ in range(30):  # a publisher on the other worker, which survives
            if py.worker != worker:
                break
            py.close()
            py = PyClient(srv.url)
        assert py.worker != worker
        os.kill(srv.worker_pids()[worker], signal.SIGKILL)
        sent = [f"missed {i}" for i in range(5)]
        for text in sent:
            py.c.send_chat_message(text)
        wait_state(page, "connected")
        for text in sent:
            wait_text(page, text, timeout=5)
        shown = [t for t in texts(page) if t.startswith("missed ")]
        assert shown == sent, "every message once, in order"
        poll(lambda: "recovered" in (page.text_content("#recovery") or ""), "the recovered badge")
    finally:
        py.close()
