"""Fixtures for the browser tests: headless Chromium (Debian's, through Playwright for Python), the pages
(served by a static server of the tests until the fanwire server serves them), real fanwire servers and
a fake v1.1 server.

Never ``playwright install``: the tests use the system's Chromium (``apt-get install chromium``;
``.ci/run`` does it) and skip, saying so loudly, when it or the ``playwright`` package is missing.
``FANWIRE_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

from tests.browser.site import StaticSite
from tests.helpers import ServerProcess, T, http_get

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # reported by the skip in the browser fixture
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

NO_CHROMIUM_REASON = ("NO CHROMIUM BINARY: the browser tests did NOT run. Install it (Debian: apt-get install chromium; "
                      ".ci/run does this) or set FANWIRE_CHROMIUM; never 'playwright install'")
NO_PLAYWRIGHT_REASON = ("NO playwright PYTHON PACKAGE: the browser tests did NOT run. pip install -e '.[dev]' "
                        "(the browser itself comes from apt-get install chromium, never from 'playwright install')")

#: Reports everything the Content-Security-Policy blocks (an inline script or style would show up here).
CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sourceFile || '') + ':' + e.lineNumber));
"""


def chromium_binary() -> str | None:
    env = os.environ.get("FANWIRE_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for the browser tests, stopped when they are done: Playwright's sync API runs an event
    loop on the main thread while it lives, and the other test packages need asyncio.run() there."""
    if sync_playwright is None:
        pytest.skip(NO_PLAYWRIGHT_REASON)
    binary = chromium_binary()
    if binary is None:
        pytest.skip(NO_CHROMIUM_REASON)
    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir), removed on close
        b = p.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Pages:
    """Opens pages, each in a fresh browser context (its own storage), and checks them at the end:
    no uncaught exception, nothing blocked by the CSP."""

    browser: Browser
    opened: list[Page] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def open(self, url: str | None = None) -> Page:
        ctx = self.browser.new_context()
        ctx.set_default_timeout(T(10) * 1000)
        page = ctx.new_page()
        page.add_init_script(CSP_WATCH)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))

        def on_console(msg: ConsoleMessage) -> None:
            self.console.append(f"{msg.type}: {msg.text}")

        page.on("console", on_console)
        self.opened.append(page)
        if url is not None:
            page.goto(url)
        return page

    def check(self) -> None:
        violations: list[str] = []
        for page in self.opened:
            if not page.is_closed():
                violations += page.evaluate("window.__csp || []")
        assert not self.errors, f"uncaught errors in the pages: {self.errors}"
        assert not violations, f"Content-Security-Policy violations: {violations}"

    def close(self) -> None:
        for page in self.opened:
            page.context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    p = Pages(browser)
    try:
        yield p
        p.check()
    finally:
        p.close()


@pytest.fixture(scope="session")
def site() -> Iterator[StaticSite]:
    s = StaticSite().start()
    try:
        yield s
    finally:
        s.stop()


PageUrl = Callable[..., str]


def server_serves_pages(port: int) -> bool:
    """Does this fanwire server serve the browser files itself (GET /fanwire.js)?"""
    forced = os.environ.get("FANWIRE_BROWSER_PAGES")
    if forced in ("site", "server"):
        return forced == "server"
    try:
        status, headers, _ = http_get(port, "/fanwire.js")
    except OSError:
        return False
    return status == 200 and "javascript" in headers.get("content-type", "")


def make_page_url(srv: ServerProcess, site: StaticSite) -> PageUrl:
    """``page_url(path, **query)``: the URL of a page for server ``srv``: the server's own route when it
    serves the pages, else the static site's, with ``?ws=`` pointing at the server. Set
    FANWIRE_BROWSER_PAGES=site|server to force one."""
    own = server_serves_pages(srv.port)

    def page_url(path: str = "/", **query: Any) -> str:
        q = {k: v for k, v in query.items() if v is not None}
        if own:
            base = srv.http
        else:
            base = site.url
            q = {"ws": srv.url + "/", **q}
        return base + path + ("?" + urlencode(q) if q else "")

    page_url.serves_pages = own  # type: ignore[attr-defined]
    return page_url


@pytest.fixture(scope="module")
def real_server() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def page_url(real_server: ServerProcess, site: StaticSite) -> PageUrl:
    return make_page_url(real_server, site)
