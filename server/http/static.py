"""The browser's files (``server/static/``: the chat page, the dashboard, ``fanwire.js``), served from memory.

=====================  ==========================================================================================
path                   file
=====================  ==========================================================================================
``/``                  ``index.html`` (the chat page)
``/dashboard``         ``dashboard.html``
``/fanwire.js``        ``fanwire.js`` (also ``/static/fanwire.js``: the pages import ``../fanwire.js`` from there)
``/static/<name>``     ``<name>``: one path segment, a file that was there when the worker started
=====================  ==========================================================================================

Why from memory: the directory is read **once**, when the worker starts (:meth:`Files.load`; a rolling restart,
SIGHUP, picks up changed files), and a request is a dictionary lookup of its path among the names loaded then. Nothing a client sends ever reaches the file
system, so there is nothing to traverse: ``/static/../x``, ``/static/%2e%2e/x``, ``/static/a/b``, dot files,
names of other extensions and files added later are all simply absent (404). Only regular files (no
symbolic links) whose names are plain (``[A-Za-z0-9][A-Za-z0-9._-]*``, no ``..``) with a known extension
are loaded, each at most ``MAX_FILE`` bytes and ``MAX_TOTAL`` in all.

Every answer carries ``ETag`` (a hash of the content, computed at load), ``Cache-Control: no-cache`` (the
browser revalidates, so a new server's files are used at once; the ETag keeps that a ``304`` without a
body), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (a ``?token=`` in the page's
address must never travel in a ``Referer``) and the Content-Security-Policy of the pages (it matters for
HTML and SVG documents and costs nothing on the others). ``If-None-Match`` is read with bounds
(``MAX_TAGS`` entity tags in all), weak tags compare equal (RFC 9110 13.1.2), ``*`` matches every file.
``HEAD`` gets the same head without the body.
"""

from __future__ import annotations

import hashlib
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("fanwire.worker")

DIRECTORY: Final = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX: Final = "/static/"
PAGES: Final = {"/": "index.html", "/dashboard": "dashboard.html", "/fanwire.js": "fanwire.js"}

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

CSP: Final = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
              "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

MAX_FILE: Final = 4 << 20
MAX_TOTAL: Final = 16 << 20
MAX_FILES: Final = 256
MAX_TAGS: Final = 64  # entity tags read from If-None-Match (all its lines together)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r'\s*(\*|(?:W/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class Asset:
    """One file, ready to answer: its bytes, its content type and every header of its answers."""

    name: str
    body: bytes
    content_type: str
    etag: str  # with its quotes, as on the wire
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send: ``status`` (200 or 304), the asset (its body goes only with a 200 to a GET)."""

    status: int
    asset: Asset
    head_only: bool


def valid_name(name: str) -> bool:
    """A file name that may be served: one plain segment with a known extension, not a dot file."""
    return (_NAME.fullmatch(name) is not None and ".." not in name
            and any(name.endswith(ext) for ext in CONTENT_TYPES))


def make_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def make_asset(name: str, body: bytes) -> Asset:
    ctype = CONTENT_TYPES[name[name.rindex("."):]]
    tag = make_etag(body)
    headers = (("ETag", tag), ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
               ("Referrer-Policy", "no-referrer"), ("Content-Security-Policy", CSP))
    return Asset(name, body, ctype, tag, headers)


def not_modified(if_none_match: list[str], etag: str) -> bool:
    """Does ``If-None-Match`` (its header lines) match ``etag``? Weak comparison; ``*`` matches; at most
    ``MAX_TAGS`` tags are read, and a malformed list matches nothing (the full answer is always safe)."""
    want = etag.removeprefix("W/")
    seen = 0
    for value in if_none_match:
        pos = 0
        while pos < len(value):
            m = _TAG.match(value, pos)
            if m is None or m.end() == pos:
                return False
            seen += 1
            if seen > MAX_TAGS:
                return False
            tag = m.group(1)
            if tag == "*" or tag.removeprefix("W/") == want:
                return True
            pos = m.end()
    return False


class Files:
    """The files of one worker, by request path (see the module docstring)."""

    __slots__ = ("by_path",)

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.by_path: dict[str, Asset] = {}
        for name, asset in assets.items():
            self.by_path[STATIC_PREFIX + name] = asset
        for path, name in PAGES.items():
            if name in assets:
                self.by_path[path] = assets[name]

    @classmethod
    def load(cls, directory: Path = DIRECTORY) -> Files:
        """Read the directory once. A missing directory or file is left out (logged), never fatal: the
        WebSocket server works without its pages."""
        assets: dict[str, Asset] = {}
        total = 0
        try:
            entries = sorted(directory.iterdir())
        except OSError as exc:
            log.warning("no browser pages: cannot read %s: %s", directory, exc)
            return cls({})
        for path in entries[: MAX_FILES * 4]:
            name = path.name
            if not valid_name(name) or len(assets) >= MAX_FILES:
                continue
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE or total + st.st_size > MAX_TOTAL:
                    log.warning("browser pages: %s left out (not a regular file, or too large)", name)
                    continue
                body = path.read_bytes()
            except OSError as exc:
                log.warning("browser pages: cannot read %s: %s", name, exc)
                continue
            if len(body) > MAX_FILE or total + len(body) > MAX_TOTAL:
                continue  # it grew between lstat and read
            total += len(body)
            assets[name] = make_asset(name, body)
        return cls(assets)

    def lookup(self, path: str) -> Asset | None:
        """The file behind a request path (without its query), or None."""
        return self.by_path.get(path)

    def answer(self, asset: Asset, method: str, if_none_match: list[str]) -> Answer:
        """200 with the file, or 304 when the client's copy is current; HEAD: the head alone."""
        if if_none_match and not_modified(if_none_match, asset.etag):
            return Answer(304, asset, True)
        return Answer(200, asset, method == "HEAD")
