"""HTTP/1.1 responses as bytes. Pure. Every response closes the connection (no keep-alive on this port)."""

from __future__ import annotations

import email.utils
import http
from collections.abc import Iterable

import orjson

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def response(status: int, body: bytes = b"", content_type: str = TEXT,
             headers: Iterable[tuple[str, str]] = (), head_only: bool = False) -> bytes:
    """A complete response: status line, Date, Connection: close, Content-Length, Content-Type, extras.
    ``head_only``: the head alone, with the length of ``body`` (a HEAD, a 304). A 204 has no length at all
    (RFC 9110 8.6)."""
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}", f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close"]
    if status != 204:
        lines.append(f"Content-Length: {len(body)}")
    if body or content_type != TEXT:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error(status: int, detail: str, headers: Iterable[tuple[str, str]] = (), json_code: str | None = None) -> bytes:
    """A refusal with a one-line plain-text reason (never a traceback); with ``json_code`` (the HTTP API's
    paths), the JSON error ``{"error": {"code", "detail"}}`` instead."""
    if json_code is not None:
        body = orjson.dumps({"error": {"code": json_code, "detail": detail.rstrip("\n")}})
        return response(status, body, JSON, headers)
    return response(status, (detail.rstrip("\n") + "\n").encode(), TEXT, headers)
