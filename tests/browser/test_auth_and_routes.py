"""The chat page against a real server with --auth-secret (a clear 401 instead of a retry loop, named
exactly thanks to ``/connect-check``; a token from the URL or the field), and the HTTP routes the server
serves the pages on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from server.security import auth
from tests.browser.conftest import Pages, PageUrl, make_page_url, server_serves_pages
from tests.browser.site import CSP, StaticSite
from tests.browser.ui import wait_state
from tests.helpers import ServerProcess, T, http_get

SECRET = "browser-tests-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_server(site: StaticSite) -> Iterator[tuple[ServerProcess, PageUrl]]:
    with ServerProcess(workers=2, extra_args=["--auth-secret", SECRET]) as srv:
        yield srv, make_page_url(srv, site)


def token(user: str = "alice") -> str:
    return auth.issue(SECRET, user, ["*"], 600, True)


def test_401_is_shown_and_not_retried_forever(pages: Pages, auth_server: tuple[ServerProcess, PageUrl]) -> None:
    _, url = auth_server
    page = pages.open(url("/"))
    wait_state(page, "closed", timeout=15)
    page.wait_for_selector("#auth-error:visible")
    text = page.text_content("#auth-error") or ""
    assert "refused" in text and "401" in text, text
    assert page.evaluate("() => document.getElementById('auth').open"), "the token field is shown"
    attempts = page.evaluate("() => fanwireChat.client.attempts")
    assert attempts <= 3
    time.sleep(T(1))
    assert page.evaluate("() => fanwireChat.client.attempts") == attempts, "no retry loop"
    # a token typed into the field connects
    page.fill("#token", token("carol"))
    page.click("#token-form button")
    wait_state(page, "connected")
    assert page.input_value("#nick") == "carol" and page.is_disabled("#nick"), "the name comes from the token"
    assert page.is_hidden("#auth-error")


def test_token_in_the_url(pages: Pages, auth_server: tuple[ServerProcess, PageUrl]) -> None:
    _, url = auth_server
    page = pages.open(url("/", token=token("dave")))
    wait_state(page, "connected")
    assert page.input_value("#nick") == "dave"
    assert "token=" not in page.url, "the token is removed from the address bar"


def test_401_is_named_precisely_with_the_servers_check_endpoint(pages: Pages,
                                                                auth_server: tuple[ServerProcess, PageUrl]) -> None:
    srv, url = auth_server
    assert server_serves_pages(srv.port), "the server does not serve the pages"
    page = pages.open(url("/"))
    wait_state(page, "closed", timeout=5)
    assert page.evaluate("() => fanwireChat.client.closedReason.status") == 401
    assert page.evaluate("() => fanwireChat.client.attempts") == 1


def test_server_serves_the_pages_with_types_caching_and_csp(real_server: ServerProcess) -> None:
    port = real_server.port
    expect = {"/": "text/html", "/dashboard": "text/html", "/fanwire.js": "text/javascript",
              "/static/fanwire.js": "text/javascript", "/static/chat.js": "text/javascript",
              "/static/dashboard.js": "text/javascript", "/static/common.js": "text/javascript",
              "/static/stats.js": "text/javascript", "/static/chart.js": "text/javascript",
              "/static/chat.css": "text/css", "/static/dashboard.css": "text/css"}
    for path, ctype in expect.items():
        status, headers, body = http_get(port, path)
        assert status == 200, (path, status)
        assert headers["content-type"].startswith(ctype), (path, headers)
        assert body
        tag = headers.get("etag")
        assert tag, (path, headers)
        assert "cache-control" in headers, (path, headers)
        if ctype == "text/html":
            assert headers.get("content-security-policy") == CSP, (path, headers)
        raw = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {tag}\r\n"
               "Connection: close\r\n\r\n").encode()
        status, _, _ = http_get(port, path, raw=raw)
        assert status == 304, (path, status)
    for path in ("/static/../server.py", "/static/nope.js", "/static/", "/nope"):
        status, _, _ = http_get(port, path)
        assert status == 404, (path, status)
    status, headers, _ = http_get(port, "/connect-check")
    assert status == 204, status
    assert "no-store" in headers.get("cache-control", "")


def test_connect_check_says_what_the_handshake_would_get(auth_server: tuple[ServerProcess, PageUrl]) -> None:
    srv, _ = auth_server
    status, _, body = http_get(srv.port, "/connect-check")
    assert status == 401 and b"token" in body, (status, body)
    raw = (f"GET /connect-check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token()}\r\n"
           "Connection: close\r\n\r\n").encode()
    status, _, _ = http_get(srv.port, "/connect-check", raw=raw)
    assert status == 204
    status, _, _ = http_get(srv.port, f"/connect-check?token={token()}")
    assert status == 204
