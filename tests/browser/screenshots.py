"""Screenshots of the chat page and the dashboard for the docs: ``python -m tests.browser.screenshots [DIR]``
(default ``docs/``): docs/browser-chat.png (a real 2-worker server, two pages and a Python client) and
docs/browser-dashboard.png (the same server's `$stats` under a little load). Uses the system's Chromium
like the tests; starts and stops everything it uses."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from client import Client
from tests.browser.conftest import CHROMIUM_ARGS, PageUrl, chromium_binary, make_page_url
from tests.browser.site import StaticSite
from tests.browser.ui import send_broadcast, send_chat, wait_state, wait_text
from tests.helpers import ROOT, ServerProcess


def main(out: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("no chromium: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    site = StaticSite().start()
    srv = ServerProcess(workers=2).start()
    try:
        shoot(binary, out, site, srv)
    finally:
        srv.__exit__()
        site.stop()


def shoot(binary: str, out: Path, site: StaticSite, srv: ServerProcess) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS, headless=True)
        try:
            url = make_page_url(srv, site)
            ctx = browser.new_context(viewport={"width": 1100, "height": 620}, device_scale_factor=1)
            page = ctx.new_page()
            page.goto(url("/"))
            wait_state(page, "connected")
            page.fill("#nick", "alice")
            page.dispatch_event("#nick", "change")
            other = browser.new_context().new_page()
            other.goto(url("/"))
            wait_state(other, "connected")
            other.fill("#nick", "bob")
            other.dispatch_event("#nick", "change")
            py = Client(srv.url, user="python-bot")
            py.connect()
            send_chat(page, "hi everyone, the dashboard is at /dashboard")
            send_chat(other, "<b>this is shown as text, not HTML</b>")
            py.send_chat_message("hello from the Python client")
            send_broadcast(other, "deploy at 17:00")
            page.fill("#join-room", "games")
            page.click("#join-form button")
            page.wait_for_selector('#rooms li.room.current[data-room="games"]')
            py.join("games")
            py.send_chat_message("anyone for chess?", room="games")
            wait_text(page, "anyone for chess?")
            page.click("#ping")
            time.sleep(0.3)
            page.screenshot(path=str(out / "browser-chat.png"))
            py.disconnect()
        except BaseException:
            browser.close()
            raise

        try:
            dashboard(browser, url, srv, out)
        finally:
            browser.close()


def dashboard(browser: Browser, url: PageUrl, srv: ServerProcess, out: Path) -> None:
    """The dashboard of the same real server, under a little load from six Python clients."""
    stop = threading.Event()

    def traffic() -> None:
        clients = [Client(srv.url, user=f"u{i}") for i in range(6)]
        for c in clients:
            c.connect()
        i = 0
        while not stop.is_set():
            i += 1
            clients[i % 6].send_chat_message(f"m{i}")
            if i % 7 == 0:
                clients[i % 6].ping()
            time.sleep(0.004 + 0.004 * ((i // 300) % 3))
        for c in clients:
            c.disconnect()

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        page = ctx.new_page()
        page.goto(url("/dashboard"))
        wait_state(page, "connected")
        time.sleep(12)
        page.screenshot(path=str(out / "browser-dashboard.png"), full_page=False)
    finally:
        stop.set()
        t.join(10)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
