"""``python -m client publish``: one publication (or broadcast) through the server's HTTP API.

A back end that only has something to say (a cron job, a shell script, another service) should not have
to hold a WebSocket: the server's HTTP API takes ``POST /api/publish`` (or ``/api/broadcast``) with a
Bearer key, on the same port as the WebSockets. This module is that request and nothing more:

- :func:`build_request` is pure: it checks what the user gave (room, key, id, URL) and returns the exact
  method, path, headers and body, so every rule is testable without a socket;
- :func:`send` makes the one HTTP request with :mod:`http.client` (the standard library: a back end
  needs no extra dependency), every network step under the timeout, and reads a bounded answer;
- :func:`run_publish` is the command: it prints the server's JSON answer and returns the exit status
  (0 on 200; 1 with the server's error code and detail on stderr; 2 for a usage error).

The server's ``ws://`` / ``wss://`` URL maps to ``http://`` / ``https://`` on the same host and port; a
path on the URL is kept as a prefix (``wss://example.com/rt`` -> ``https://example.com/rt/api/publish``),
for a server behind a proxy that mounts it there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
from dataclasses import dataclass
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from . import protocol

__all__ = ["Answer", "HttpRequest", "UsageError", "add_parser", "build_request", "http_url", "run_publish",
           "send"]

DEFAULT_TIMEOUT: Final = 10.0  # seconds each network step may take: connect, send, each read of the answer
MAX_ANSWER_BYTES: Final = 1 << 20  # an answer is a small JSON map; more is not an answer we want
MAX_DATA_BYTES: Final = 1 << 20  # --data - reads at most this much of stdin (the server's default limit)
MAX_ID_LEN: Final = 256  # as the server's idempotency keys
PROG: Final = "python -m client publish"


class UsageError(ValueError):
    """What the user asked for cannot be sent (exit status 2)."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, ready for :func:`send`."""

    scheme: str  # "http" or "https"
    host: str
    port: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class Answer:
    """The server's answer: the status and the body (``json`` is None when the body is not JSON)."""

    status: int
    json: Any
    text: str

    @property
    def ok(self) -> bool:
        return self.status == 200

    def error_line(self) -> str:
        """One line for stderr: the API's ``{"error":{"code","detail"}}`` when it sent one."""
        err = self.json.get("error") if isinstance(self.json, dict) else None
        if isinstance(err, dict):
            return f"error: HTTP {self.status}: {err.get('code', '?')}: {err.get('detail', '')}".rstrip(": ")
        snippet = " ".join(self.text.split())[:200]
        return f"error: HTTP {self.status}" + (f": {snippet}" if snippet else "")


def http_url(ws_url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, prefix)`` of the HTTP API behind a ``ws://`` or ``wss://`` URL."""
    try:
        parts = urlsplit(ws_url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {ws_url!r}: {exc}") from None
    schemes = {"ws": "http", "wss": "https"}
    if parts.scheme not in schemes:
        raise UsageError(f"not a ws:// or wss:// URL: {ws_url!r}")
    if not parts.hostname:
        raise UsageError(f"no host in {ws_url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"the URL must not have a query or fragment: {ws_url!r}")
    if parts.username or parts.password:
        raise UsageError("credentials in the URL would not be sent: use --api-key or $FANWIRE_API_KEY")
    scheme = schemes[parts.scheme]
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


def build_request(url: str, data: Any, api_key: str | None, *, room: str | None = None,
                  msg_id: str | int | None = None, broadcast: bool = False) -> HttpRequest:
    """The ``POST /api/publish`` (or ``/api/broadcast`` with ``broadcast``) that sends ``data``; raises
    :class:`UsageError` for anything the server would refuse for certain."""
    scheme, host, port, prefix = http_url(url)
    if not api_key:
        raise UsageError("an API key is needed: --api-key KEY or $FANWIRE_API_KEY")
    try:
        protocol.check_token(api_key)
    except ValueError as exc:
        raise UsageError(f"the API key: {exc}") from None
    body: dict[str, Any] = {}
    if broadcast:
        if room is not None:
            raise UsageError("--broadcast goes to everyone: give no --room")
        path = "/api/broadcast"
    else:
        if room is None:
            raise UsageError("--room is needed (or --broadcast)")
        try:
            protocol.publish(room, None)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        body["room"] = room
        path = "/api/publish"
    body["data"] = data
    if msg_id is not None:
        try:
            protocol.check_msg_id(msg_id)
        except ValueError as exc:
            raise UsageError(f"--id: {exc}") from None
        if isinstance(msg_id, str) and len(msg_id) > MAX_ID_LEN:
            raise UsageError(f"--id must be at most {MAX_ID_LEN} characters (got {len(msg_id)})")
        body["id"] = msg_id
    try:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the data is not JSON-representable: {exc}") from None
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "Authorization": f"Bearer {api_key}", "Content-Length": str(len(payload)),
               "Connection": "close"}
    return HttpRequest(scheme, host, port, "POST", prefix + path, headers, payload)


def send(req: HttpRequest, timeout: float = DEFAULT_TIMEOUT, context: ssl.SSLContext | None = None) -> Answer:
    """Make the request (OSError, http.client.HTTPException on failure to talk to the server)."""
    conn: http.client.HTTPConnection
    if req.scheme == "https":
        conn = http.client.HTTPSConnection(req.host, req.port, timeout=timeout,
                                           context=context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(req.host, req.port, timeout=timeout)
    try:
        conn.request(req.method, req.path, body=req.body, headers=req.headers)
        resp = conn.getresponse()
        raw = resp.read(MAX_ANSWER_BYTES + 1)
        status = resp.status
    finally:
        conn.close()
    if len(raw) > MAX_ANSWER_BYTES:
        raise http.client.HTTPException(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return Answer(status, parsed, text)


# --- the command ---------------------------------------------------------------------------------------


def _timeout(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < x <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 3600], not {value!r}")
    return x


def parse_data(text: str, stdin: TextIO | None = None) -> Any:
    """``--data``: a JSON text, or ``-`` for a JSON text on stdin (at most ``MAX_DATA_BYTES``)."""
    if text == "-":
        text = (stdin or sys.stdin).read(MAX_DATA_BYTES + 1)
        if len(text) > MAX_DATA_BYTES:
            raise UsageError(f"--data -: more than {MAX_DATA_BYTES} characters on stdin")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--data is not JSON: {exc}") from None


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``publish`` subcommand, on the subparsers ``sub`` of ``python -m client``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "publish",
        parents=[common],
        help="publish to a room (or broadcast) through the server's HTTP API",
        description="POST one publication to the server's HTTP API (/api/publish, or /api/broadcast with "
        "--broadcast) and print the server's JSON answer. The ws:// or wss:// --url maps to http:// or "
        "https:// on the same host and port. Exit status: 0 on success, 1 when the server refuses (its "
        "error code and detail go to stderr) or cannot be reached, 2 on usage errors.",
    )
    p.add_argument("--room", default=None, help="the room to publish to")
    p.add_argument("--broadcast", action="store_true", help="send to every client instead of a room")
    p.add_argument("--data", required=True, metavar="JSON", help="any JSON value ('-': read it from stdin)")
    p.add_argument("--id", default=None, dest="msg_id", metavar="KEY",
                   help="idempotency key: a resend with the same key within the server's dedup window "
                   "publishes nothing and answers the first result again, with \"duplicate\": true")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the server's API key (default: $FANWIRE_API_KEY, the better place for it: command "
                   "lines are visible to other users; failing both, --token / $FANWIRE_TOKEN, for a server "
                   "whose admin tokens open the API)")
    p.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT,
                   help=f"seconds each step (connect, send, answer) may take (default: {DEFAULT_TIMEOUT:g})")
    return p


def run_publish(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The command (see the module docstring); ``args`` as parsed by :func:`add_parser`'s parser."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    key = args.api_key or os.environ.get("FANWIRE_API_KEY") or getattr(args, "token", None)
    try:
        data = parse_data(args.data)
        req = build_request(args.url, data, key, room=args.room, msg_id=args.msg_id, broadcast=args.broadcast)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 2
    context = ssl.create_default_context(cafile=args.cafile) if req.scheme == "https" and args.cafile else None
    try:
        answer = send(req, args.timeout, context)
    except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timeout, TLS, garbled
        print(f"error: cannot publish through {req.url}: {type(exc).__name__}: {exc}", file=err)
        return 1
    if not answer.ok:
        print(answer.error_line(), file=err)
        return 1
    print(json.dumps(answer.json, ensure_ascii=False) if answer.json is not None else answer.text, file=out)
    return 0
