"""The browser pages' routes, and a small static HTTP server that serves them for the tests.

The route table is what the real server is meant to serve (docs/browser.md): ``GET /`` the chat page,
``/dashboard``, ``/fanwire.js`` and ``/static/<file>`` from ``server/static/``; the tests add ``/test/<file>``
from ``tests/browser/pages/``. Until the server serves them itself, :class:`StaticSite` does, on its own
port, with the same Content-Security-Policy; the pages then reach the fanwire server through ``?ws=``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.helpers import ROOT, free_port

STATIC = ROOT / "server" / "static"
TEST_PAGES = Path(__file__).resolve().parent / "pages"

#: The Content-Security-Policy the server sends with the pages (and every static file).
CSP = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}

PAGES = {"/": "index.html", "/dashboard": "dashboard.html", "/fanwire.js": "fanwire.js"}


def resolve(path: str) -> Path | None:
    """The file behind a request path, or None. One level of file names only: no traversal."""
    path = unquote(urlsplit(path).path)
    if path in PAGES:
        return STATIC / PAGES[path]
    for prefix, root in (("/static/", STATIC), ("/test/", TEST_PAGES)):
        if path.startswith(prefix):
            name = path[len(prefix):]
            if not name or "/" in name or "\\" in name or name.startswith("."):
                return None
            f = root / name
            return f if f.is_file() and f.suffix in CONTENT_TYPES else None
    return None


def content_type(f: Path) -> str:
    return CONTENT_TYPES.get(f.suffix, "application/octet-stream")


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def csp_for_dev() -> str:
    """The CSP, plus any port of 127.0.0.1 for fetch(): the pages are on this server's port and the
    fanwire server on another, and the client probes ``/connect-check`` and ``/healthz`` there."""
    return CSP.replace("connect-src 'self' ws: wss:", "connect-src 'self' ws: wss: http://127.0.0.1:*")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        f = resolve(self.path)
        if f is None:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        body = f.read_bytes()
        tag = etag(body)
        if self.headers.get("If-None-Match") == tag:
            self.send_response(304)
            self.send_header("ETag", tag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type(f))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", tag)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Security-Policy", csp_for_dev())
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class StaticSite:
    """The pages on http://127.0.0.1:<port>, in a thread of this process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="static-site", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StaticSite:
        self.thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
