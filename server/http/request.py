"""An HTTP/1.1 request head, parsed strictly from bytes. Pure, no I/O.

fanwire reads every connection's request head itself (at most ``MAX_HEAD`` bytes, up to the blank line)
before anything else happens: nothing after the head is parsed until the server has decided what the
request is. A WebSocket upgrade then goes to websockets' handshake; a plain request (``/healthz``,
``/metrics``, the pages and the API) is answered and the connection closed.

Refusals raise :class:`~server.errors.HttpError` with the status to answer:

======  ===============================================================================================
400     malformed request line or header, lowercase or unknown-shaped method, absolute-form target,
        obsolete line folding, a body on a GET, conflicting ``Content-Length``, ``Transfer-Encoding``
        (chunked bodies are not accepted)
413     a body over the caller's limit
414     request line over ``MAX_LINE`` bytes
431     more than ``MAX_HEADERS`` headers, or a head over ``MAX_HEAD`` bytes
505     any version but HTTP/1.1
======  ===============================================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from ..errors import HttpError

MAX_HEAD: Final = 16 * 1024
MAX_LINE: Final = 8 * 1024
MAX_HEADERS: Final = 100

_METHOD = re.compile(rb"[A-Z]{1,16}")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # origin-form: printable ASCII, no spaces
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII digits only (str.isdigit() also takes superscripts)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]  # (lowercase name, value), in order
    content_length: int

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (the first value of each name)."""
        out: dict[str, str] = {}
        for k, v in parse_qsl(self.target.partition("?")[2], keep_blank_values=True):
            out.setdefault(k, v)
        return out

    def header(self, name: str) -> str | None:
        """The value of the header ``name`` (lowercase); None if absent."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def has_token(self, name: str, token: str) -> bool:
        """True if the comma-separated header ``name`` lists ``token`` (case-insensitive)."""
        token = token.lower()
        return any(t.strip().lower() == token for v in self.header_all(name) for t in v.split(","))

    @property
    def is_upgrade(self) -> bool:
        return self.has_token("upgrade", "websocket")


def find_head_end(buf: bytes | bytearray) -> int:
    """The index just past the blank line ending the head, or -1 if it has not arrived yet."""
    i = buf.find(b"\r\n\r\n")
    return -1 if i < 0 else i + 4


def parse_head(head: bytes, max_body: int = 0) -> HttpRequest:
    """Parse a request head (request line, headers, blank line). Raises HttpError."""
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large", "too_large")
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")
    line = lines[0]
    if len(line) > MAX_LINE:
        raise HttpError(414, "request line too long", "too_large")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise HttpError(400, "malformed method")
    if version != b"HTTP/1.1":
        if re.fullmatch(rb"HTTP/\d\.\d", version):
            raise HttpError(505, "only HTTP/1.1 is supported", "bad_request")
        raise HttpError(400, "malformed request line")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "the target must be a path starting with /")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} headers", "too_large")
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        if len(raw) > MAX_LINE:
            raise HttpError(431, "header line too long", "too_large")
        if not raw:
            raise HttpError(400, "empty header line")
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, sep, value = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    try:
        content_length = _content_length(method, headers, max_body)
    except HttpError as exc:
        if target.startswith(b"/api/"):  # the HTTP API answers in JSON
            if exc.status == 413 and max_body == 0:  # no body is taken anywhere: the API is off
                raise HttpError(404, "no such path", "not_found", json=True) from None
            exc.json = True
        raise
    return HttpRequest(method.decode("ascii"), target.decode("ascii"), tuple(headers), content_length)


def _content_length(method: bytes, headers: list[tuple[str, str]], max_body: int) -> int:
    content_length = 0
    lengths = {v for k, v in headers if k == "content-length"}
    if any(k == "transfer-encoding" for k, _ in headers):
        raise HttpError(400, "Transfer-Encoding is not accepted; send Content-Length", "bad_request")
    if lengths:
        (text,) = lengths if len(lengths) == 1 else ("",)
        if not _DIGITS.fullmatch(text):
            raise HttpError(400, "malformed Content-Length")
        content_length = int(text)
        if content_length and method in (b"GET", b"HEAD"):
            raise HttpError(400, f"a {method.decode()} request takes no body", "bad_request")
        if content_length > max_body:
            raise HttpError(413, f"request body over {max_body} bytes", "too_large")
    return content_length
