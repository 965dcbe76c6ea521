"""The browser's files and ``/connect-check`` (server/http/static.py, server/http/routes.py): the loader and
``If-None-Match`` on their own, then real servers: types, ETag/304, CSP, HEAD, hostile paths, and the
admission check answering what the handshake would (tokens, origins, caps, an application's async hook)
without opening or counting anything."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server import Accept, App, Refuse, Request, Server
from server.http import response, static
from server.security.auth import issue

from ...helpers import ROOT, ServerProcess, T, connect, http_get, scrape_metrics

SECRET = "static-tests-secret-0123456789abcdef"
GOOD_ORIGIN = "https://good.example"
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
         "/fanwire.js": ("fanwire.js", "text/javascript; charset=utf-8"),
         "/static/fanwire.js": ("fanwire.js", "text/javascript; charset=utf-8"),
         "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
         "/static/chat.css": ("chat.css", "text/css; charset=utf-8"),
         "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
         "/static/index.html": ("index.html", "text/html; charset=utf-8")}
HOSTILE = ["/static/../server/worker.py", "/static/..%2fserver.py", "/static/%2e%2e/x.js", "/static/",
           "/static", "/static//chat.js", "/static/chat.js/", "/static/./chat.js", "/static/x/../chat.js",
           "/static/.hidden.js", "/static/chat.JS", "/static/chat%2ejs", "/static/chat.js%00.png",
           "/static/chat.js;.css", "/static/" + "a" * 6000 + ".js", "/index.html", "/dashboard/",
           "/dashboard.html", "/fanwire.js/", "//fanwire.js", "/STATIC/chat.js", "/%2e%2e/etc/passwd",
           "/static/%5c..%5cx.js", "/static/__init__.py", "/nope", "/favicon.ico"]


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def get(port: int, path: str, *headers: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{h}\r\n" for h in headers)
    raw = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()
    return http_get(port, path, raw=raw)


# --- the pure parts ------------------------------------------------------------------------------------------

def test_only_plain_names_with_known_extensions_are_servable() -> None:
    for ok in ("chat.js", "a.css", "x-1_2.html", "logo.png", "icon.svg", "fanwire.js"):
        assert static.valid_name(ok), ok
    for bad in (".env", ".x.js", "..", "...js", "a..js", "a/b.js", "a\\b.js", "chat.JS", "chat.py", "chat",
                "chat.js ", " chat.js", "chat.js\x00.png", "-x.js", "é.js", "a" * 200 + ".js", ""):
        assert not static.valid_name(bad), bad


def test_if_none_match_lists_weak_tags_star_and_bounds() -> None:
    tag = static.make_etag(b"body")
    other = static.make_etag(b"other")
    assert static.not_modified([tag], tag)
    assert static.not_modified(["W/" + tag], tag), "weak comparison (RFC 9110 13.1.2)"
    assert static.not_modified([f"{other}, {tag}"], tag)
    assert static.not_modified([f"{other},{tag}"], tag)
    assert static.not_modified([other, tag], tag), "several header lines"
    assert static.not_modified(["*"], tag)
    assert not static.not_modified([other], tag)
    assert not static.not_modified([tag.strip('"')], tag), "an unquoted tag is malformed"
    assert not static.not_modified([f"{other} {tag}"], tag), "no comma: malformed"
    assert not static.not_modified([""], tag)
    assert not static.not_modified([tag[:-1]], tag)
    many = ", ".join([other] * static.MAX_TAGS + [tag])
    assert not static.not_modified([many], tag), "only MAX_TAGS tags are read"
    assert not static.not_modified([other] * static.MAX_TAGS + [tag], tag), "over all the lines together"
    start = time.monotonic()
    assert not static.not_modified(['"' + "a" * 8000 + ", " * 4000], tag)
    assert time.monotonic() - start < 0.5


def test_loader_keeps_only_regular_plain_files_within_bounds(tmp_path: Path) -> None:
    (tmp_path / "ok.js").write_text("export {};\n")
    (tmp_path / "page.html").write_text("<!doctype html>\n")
    (tmp_path / ".secret.js").write_text("secret")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.js").write_text("inner")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.js"
    outside.write_text("outside")
    os.symlink(outside, tmp_path / "link.js")
    (tmp_path / "huge.js").write_bytes(b"x" * (static.MAX_FILE + 1))
    files = static.Files.load(tmp_path)
    assert sorted(files.by_path) == ["/static/ok.js", "/static/page.html"]
    asset = files.lookup("/static/ok.js")
    assert asset is not None
    assert asset.etag == '"' + hashlib.sha256(b"export {};\n").hexdigest()[:32] + '"'
    assert files.lookup("/") is None, "no index.html there: / is absent, not an error"
    assert static.Files.load(tmp_path / "missing").by_path == {}


def test_the_pages_and_fanwire_js_are_the_shipped_files() -> None:
    files = static.Files.load()
    for path, (name, ctype) in FILES.items():
        asset = files.lookup(path)
        assert asset is not None, path
        assert asset.body == (ROOT / "server" / "static" / name).read_bytes()
        assert asset.content_type == ctype
    assert files.lookup("/fanwire.js") is files.lookup("/static/fanwire.js")


def test_a_204_has_no_length_and_a_head_keeps_the_bodys() -> None:
    head = response.response(204, b"", headers=[("Cache-Control", "no-store")]).decode()
    assert head.startswith("HTTP/1.1 204 No Content\r\n") and "Content-Length" not in head
    head = response.response(304, b"12345", "text/css", head_only=True).decode()
    assert "Content-Length: 5\r\n" in head and head.endswith("\r\n\r\n")


# --- a real server ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(2, extra_args=["--log-level", "warning"]) as s:
        yield s


def test_files_with_types_etags_caching_and_csp(srv: ServerProcess) -> None:
    for path, (name, ctype) in FILES.items():
        status, headers, body = get(srv.port, path)
        assert status == 200, (path, status)
        assert body == (ROOT / "server" / "static" / name).read_bytes(), path
        assert headers["content-type"] == ctype
        assert headers["etag"] == static.make_etag(body)
        assert headers["cache-control"] == "no-cache"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["content-security-policy"] == static.CSP
    status, _, body = get(srv.port, "/?token=abc&ws=ws://127.0.0.1:1/")
    assert status == 200 and body.startswith(b"<!doctype html>"), "the query is not part of the path"


def test_if_none_match_gives_304_without_a_body(srv: ServerProcess) -> None:
    _, headers, body = get(srv.port, "/static/chat.js")
    tag = headers["etag"]
    other = static.make_etag(b"an older chat.js")
    for inm in (tag, "W/" + tag, f"{other}, {tag}", "*"):
        status, h, b = get(srv.port, "/static/chat.js", f"If-None-Match: {inm}")
        assert status == 304 and b == b"", (inm, status)
        assert h["etag"] == tag and h["cache-control"] == "no-cache"
        assert h["content-length"] == str(len(body)), "a 304 may only carry the 200's length"
    status, _, b = get(srv.port, "/static/chat.js", f"If-None-Match: {other}", f"If-None-Match: {tag}")
    assert status == 304 and b == b""
    _, dash, _ = get(srv.port, "/dashboard")
    for inm in (other, dash["etag"], tag.strip('"'), ", ".join([other] * 80 + [tag])):
        status, _, b = get(srv.port, "/static/chat.js", f"If-None-Match: {inm}")
        assert status == 200 and b == body, inm


def test_head_gets_the_head_only(srv: ServerProcess) -> None:
    _, _, body = get(srv.port, "/fanwire.js")
    status, headers, b = get(srv.port, "/fanwire.js", method="HEAD")
    assert status == 200 and b == b""
    assert headers["content-length"] == str(len(body)) and headers["content-type"].startswith("text/javascript")
    status, headers, b = get(srv.port, "/static/nope.js", method="HEAD")
    assert status == 404 and b == b"" and headers["content-length"] == "13"


def test_hostile_and_unknown_paths_are_404(srv: ServerProcess) -> None:
    before = scrape_metrics(srv.port)
    for path in HOSTILE:
        status, headers, body = get(srv.port, path)
        assert status == 404, (path[:80], status)
        assert body == b"no such path\n" and "etag" not in headers
    m = scrape_metrics(srv.port)
    key = 'fanwire_http_requests_total{path="(not found)"}'
    assert m[key] - before.get(key, 0) == len(HOSTILE), "one bounded label for every unknown path"
    assert not any("static/." in k or "passwd" in k for k in m)
    # not a handshake refusal either (the dashboard's "refused handshakes" must not move on a favicon)
    for k, v in m.items():
        if k.startswith("fanwire_handshakes_refused_total"):
            assert v == before.get(k, 0), k


def test_other_methods_on_files_are_405(srv: ServerProcess) -> None:
    for path in ("/", "/static/chat.js"):
        status, headers, _ = get(srv.port, path, "Content-Length: 0", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD", (path, status, headers)
    status, headers, _ = get(srv.port, "/connect-check", method="HEAD")
    assert status == 405 and headers["allow"] == "GET"
    status, _, _ = get(srv.port, "/nothing-here", "Content-Length: 0", method="DELETE")
    assert status == 404


def test_connect_check_without_gates_is_204_no_store(srv: ServerProcess) -> None:
    status, headers, body = get(srv.port, "/connect-check")
    assert status == 204 and body == b""
    assert headers["cache-control"] == "no-store" and "content-length" not in headers
    status, _, body = get(srv.port, "/connect-check?session=bad")
    assert status == 400 and b"session" in body, "the same checks as the handshake"


# --- /connect-check with gates: the handshake's answer, nothing opened or counted ---------------------------

@pytest.fixture(scope="module")
def gated() -> Iterator[ServerProcess]:
    args = ["--auth-secret", SECRET, "--allowed-origins", GOOD_ORIGIN, "--max-conns-per-ip", "2",
            "--log-level", "warning"]
    with ServerProcess(2, extra_args=args) as s:
        yield s


def token(admin: bool = False) -> str:
    return issue(SECRET, "alice", ["*"], 600, admin=admin)


def test_connect_check_answers_what_the_handshake_would(gated: ServerProcess) -> None:
    status, headers, body = get(gated.port, "/connect-check")
    assert status == 401 and body.endswith(b"\n") and body.count(b"\n") == 1 and b"token" in body
    assert headers["www-authenticate"].startswith("Bearer") and headers["cache-control"] == "no-store"
    status, headers, body = get(gated.port, "/connect-check", "Authorization: Bearer abc.def.ghi")
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    expired = issue(SECRET, "alice", ["*"], 60, now=time.time() - 3600)
    status, _, body = get(gated.port, "/connect-check", f"Authorization: Bearer {expired}")
    assert status == 401 and b"expired" in body
    assert get(gated.port, "/connect-check", f"Authorization: Bearer {token()}")[0] == 204
    assert get(gated.port, f"/connect-check?token={token()}")[0] == 204
    status, headers, body = get(gated.port, f"/connect-check?token={token()}", "Origin: https://evil.example")
    assert status == 403 and b"origin" in body and headers["cache-control"] == "no-store"
    assert get(gated.port, f"/connect-check?token={token()}", f"Origin: {GOOD_ORIGIN}")[0] == 204
    status, _, _ = get(gated.port, "/connect-check", "Authorization: Bearer a", "Authorization: Bearer b")
    assert status == 400


def test_connect_check_opens_nothing_and_leaks_no_per_ip_count(gated: ServerProcess) -> None:
    before = scrape_metrics(gated.port)
    for _ in range(30):
        assert get(gated.port, f"/connect-check?token={token()}")[0] == 204
        assert get(gated.port, "/connect-check")[0] == 401
    m = scrape_metrics(gated.port)
    assert m["fanwire_connections"] == 0 and m["fanwire_connections_opened_total"] == before.get(
        "fanwire_connections_opened_total", 0)
    assert m['fanwire_http_requests_total{path="/connect-check"}'] - before.get(
        'fanwire_http_requests_total{path="/connect-check"}', 0) == 60
    refused = {k: v for k, v in m.items() if k.startswith("fanwire_handshakes_refused_total")}
    assert refused == {k: v for k, v in before.items() if k.startswith("fanwire_handshakes_refused_total")}

    async def main() -> None:
        # 60 checks came and went: the per-address cap (2) still lets 2 WebSockets in
        hdr = {"Authorization": f"Bearer {token()}"}
        a = await connect(gated.url, additional_headers=hdr)
        b = await connect(gated.url, additional_headers=hdr)
        status, headers, body = await asyncio.to_thread(get, gated.port, f"/connect-check?token={token()}")
        assert status == 503 and headers["retry-after"] == "1" and b"too many" in body, "a third would be refused"
        await a.close()
        deadline = time.monotonic() + T(5)
        while (await asyncio.to_thread(get, gated.port, f"/connect-check?token={token()}"))[0] != 204:
            assert time.monotonic() < deadline, "the closed connection still counts"
            await asyncio.sleep(0.05)
        await b.close()

    run(main())


def test_connect_check_closes_after_answering(gated: ServerProcess) -> None:
    """The answer closes the connection; whatever the client sends behind it is never read."""
    with socket.create_connection(("127.0.0.1", gated.port), timeout=T(5)) as s:
        s.sendall(f"GET /connect-check?token={token()} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                  + b"GET /connect-check HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 204 ") and data.count(b"HTTP/1.1") == 1


# --- an application's async authenticate hook -------------------------------------------------------------------

gate = App()


@gate.authenticate
async def by_pass(request: Request) -> Accept | Refuse:
    await asyncio.sleep(0.01)
    if request.query.get("pass") != "sesame":
        return Refuse(403, "wrong pass")
    return Accept("guest")


def test_connect_check_awaits_the_applications_authenticate_hook() -> None:
    with Server(app=gate, port=0, workers=1, log_level="warning") as srv:
        assert srv.url is not None
        port = int(srv.url.rsplit(":", 1)[1])
        status, headers, body = get(port, "/connect-check?pass=nope")
        assert status == 403 and body == b"wrong pass\n" and headers["cache-control"] == "no-store"
        assert get(port, "/connect-check?pass=sesame")[0] == 204
