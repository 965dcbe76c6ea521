"""A worker's connections, from accept to close: the :class:`~server.connection.ConnOwner` of each of them.

Admission (origin, token, caps: :mod:`.admission`) decides at the handshake; :meth:`ConnHost.open` turns
an accepted connection into a client (an id, its grant's policy, its rate limiter, its rooms in the hub,
the ``welcome``); :meth:`ConnHost.on_closed` undoes all of it, whatever way the connection ended, and is
the only place a connection leaves the hub.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .application import Accept, Refuse, Request
from .config import Config
from .connection import Conn, Limits
from .errors import HttpError
from .hub import Hub
from .metrics import Metrics
from .protocol import (
    ALLOW_ALL,
    DEFAULT_ROOM,
    MAX_ROOM_LEN,
    MAX_USER_LEN,
    Policy,
    error_msg,
    new_session_token,
    valid_session_token,
    welcome_msg,
)
from .security.admission import Gate, Refusal
from .security.iptable import IpTable
from .security.ratelimit import KICK, RateLimiter
from .streams import BROADCAST

log = logging.getLogger("fanwire.worker")

if TYPE_CHECKING:
    from .http.request import HttpRequest
    from .http.routes import Router
    from .messaging import Messaging


class ConnHost:
    """Everything a connection asks of its worker (see :class:`~server.connection.ConnOwner`)."""

    def __init__(self, cfg: Config, worker_id: int, node: str, hub: Hub[Conn], metrics: Metrics,
                 ip_table: IpTable | None) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.node = node
        self.hub = hub
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by Worker.run
        self.limits = Limits(max_message_size=cfg.max_message_size, max_fragments=cfg.max_fragments,
                             frame_budget=cfg.frame_budget, close_timeout=cfg.close_timeout,
                             handshake_timeout=cfg.handshake_timeout,
                             # the HTTP API's bodies: a publication's data plus its envelope; 0 = no body
                             max_body=cfg.max_message_size + 1024 if cfg.api_enabled else 0)
        self.policy: Policy = ALLOW_ALL
        self.push = hub.push
        self.handshaking: set[Conn] = set()
        self.tls_pending: dict[Conn, float] = {}  # accepted, TLS handshake not done yet -> accept time
        self.client_seq = 0
        # Client ids are <worker>-<tag>-<hex counter>: the random tag of this worker process keeps a restarted
        # worker, or the same worker number on another node, from handing out an id still in use (presence
        # lists, the HTTP API's disconnect).
        self.client_id_prefix = f"{worker_id}-{secrets.token_hex(4)}-"
        self.stopping: str | None = None  # "shutdown" / "restart" once the worker stops
        self.stop_code = 1001
        if cfg.max_conns_per_ip and ip_table is None:
            ip_table = IpTable(1)  # a worker started alone counts its own connections only
        self.ip_table = ip_table if cfg.max_conns_per_ip else None
        self.gate = Gate(cfg, self.ip_table)
        self.gated = self.gate.active
        self.rate_limited = bool(cfg.rate_limit or cfg.rate_limit_bytes)
        self.router: Router = None  # type: ignore[assignment]  # wired by the worker
        self.messaging: Messaging = None  # type: ignore[assignment]
        self.on_message: Callable[[Conn, bytes, bool], None] = None  # type: ignore[assignment]
        self.with_tls = False

    # --- ConnOwner ------------------------------------------------------------------------------------

    def new_conn(self) -> Conn:
        """The protocol factory of the listener."""
        conn = Conn(self)
        if self.with_tls:
            self.tls_pending[conn] = time.monotonic()  # connection_made comes after the TLS handshake
        return conn

    def on_connected(self, conn: Conn) -> None:
        # a stopping worker still serves what it accepted: the client opens, then gets 1001/1012
        if self.ip_table is not None:
            self.ip_table.add(conn.peer_ip, 1)
        self.handshaking.add(conn)
        accepted = self.tls_pending.pop(conn, None)
        if accepted is not None and conn.timer is not None:  # one deadline for the TLS and WebSocket handshakes
            conn.timer.cancel()
            left = max(0.0, self.cfg.handshake_timeout - (time.monotonic() - accepted))
            conn.timer = self.loop.call_later(left, conn._handshake_expired)

    def on_request(self, conn: Conn, request: HttpRequest, body: bytes) -> None:
        self.router.on_request(conn, request, body)

    def before_body(self, conn: Conn, request: HttpRequest) -> HttpError | None:
        return self.router.before_body(request)

    def on_over_rate(self, conn: Conn, verdict: int, payload: bytes | None) -> None:
        """A message (or control frame) refused by the rate limit: an error reply with the message's id,
        and a 1008 close if the client keeps going."""
        m = self.metrics
        rl = conn.rl
        assert rl is not None
        m.inc(m.rate_limited, rl.limit)
        if conn.close_reason is not None:  # already on its way out (kicked): drop quietly, count once
            return
        if payload is not None:
            if rl.limit == "messages":
                detail = f"over the rate limit of {self.cfg.rate_limit:g} messages/s; message dropped"
            else:
                detail = f"over the rate limit of {self.cfg.rate_limit_bytes:g} bytes/s; message dropped"
            self.messaging.reply(conn, error_msg("rate_limited", detail, _message_id(conn, payload)))
        if verdict == KICK:
            m.inc(m.policy_closes, "rate_limited")
            conn.close(1008, "rate limit exceeded", "rate_limited")

    def on_closed(self, conn: Conn) -> None:
        self.handshaking.discard(conn)
        self.tls_pending.pop(conn, None)
        if self.ip_table is not None:
            self.ip_table.add(conn.peer_ip, -1)
        if conn in self.hub.conns:
            self.messaging.closed(conn)  # presence ends, disconnect hooks run
            self.hub.remove(conn, conn.streams())
            self.metrics.inc(self.metrics.closed, close_label(conn.close_code()))

    # --- admission and opening ------------------------------------------------------------------------------

    def admit(self, conn: Conn, request: HttpRequest) -> HttpError | Awaitable[HttpError | None] | None:
        """Origin, token (or the application's ``authenticate`` hook) and caps: a refusal, None, or (an async
        hook) an awaitable of either."""
        token = request.query.get("session")
        if token is not None and not valid_session_token(token):
            return HttpError(400, "malformed 'session': 16 to 64 characters of A-Z a-z 0-9 _ -", "bad_request")
        app = self.messaging.app
        if app is not None and app.authenticator is not None:
            return self._authenticate(conn, request, app.authenticator)
        if not self.gated:
            return None
        origin = request.header_all("origin")
        authorization = request.header_all("authorization")
        if len(origin) > 1 or len(authorization) > 1:
            return HttpError(400, "duplicate Origin or Authorization header", "bad_request")
        refusal: Refusal | None
        refusal, conn.grant = self.gate.check(request.target, origin[0] if origin else None,
                                              authorization[0] if authorization else None, conn.peer_ip,
                                              len(self.hub.conns))
        if refusal is None:
            return None
        return HttpError(refusal.status, refusal.detail, refusal.reason, refusal.headers)

    def _authenticate(self, conn: Conn, request: HttpRequest,
                      hook: Callable[[Request], Any]) -> HttpError | Awaitable[HttpError | None] | None:
        """The application decides instead of JWT; the origin check and the caps still hold."""
        refusal = self.gate.check_origin_and_caps(request.header("origin"), conn.peer_ip, len(self.hub.conns))
        if refusal is not None:
            return HttpError(refusal.status, refusal.detail, refusal.reason, refusal.headers)
        req = Request(request.path, request.query, dict(request.headers), conn.peer_ip)
        try:
            verdict = hook(req)
        except Exception:
            log.exception("the application's authenticate hook failed")
            self.metrics.inc(self.metrics.app_errors, "authenticate")
            return HttpError(500, "authentication failed", "auth_error")
        if inspect.isawaitable(verdict):
            return self._authenticated_later(conn, verdict)
        return self._verdict(conn, verdict)

    async def _authenticated_later(self, conn: Conn, verdict: Awaitable[Any]) -> HttpError | None:
        try:
            return self._verdict(conn, await verdict)
        except Exception:
            log.exception("the application's authenticate hook failed")
            self.metrics.inc(self.metrics.app_errors, "authenticate")
            return HttpError(500, "authentication failed", "auth_error")

    def _verdict(self, conn: Conn, verdict: Any) -> HttpError | None:
        from .security.auth import Grant

        if isinstance(verdict, Accept) and _valid_accept(verdict):
            conn.grant = Grant(verdict.user, frozenset(verdict.rooms), verdict.broadcast, math.inf, verdict.admin)
            return None
        if isinstance(verdict, Refuse) and type(verdict.status) is int and 400 <= verdict.status <= 599:
            return HttpError(verdict.status, str(verdict.reason)[:200], "app_refused")
        log.error("authenticate returned %r: expected Accept(user of 1 to %d characters, rooms: strings) or "
                  "Refuse(status 400..599)", verdict, MAX_USER_LEN)
        self.metrics.inc(self.metrics.app_errors, "authenticate")
        return HttpError(500, "authentication failed", "auth_error")

    def open(self, conn: Conn, request: HttpRequest) -> None:
        """The WebSocket is open: make it a client (see the module docstring)."""
        self.handshaking.discard(conn)
        self.client_seq += 1
        conn.client_id = f"{self.client_id_prefix}{self.client_seq:x}"
        query = request.query
        conn.session_token = query.get("session") or new_session_token()
        grant = conn.grant
        if grant is not None:  # auth is on: the token decides the name and the rooms
            from .security.auth import GrantPolicy

            conn.policy = GrantPolicy(grant)
            conn.user = grant.user
            conn.user_fixed = True
            if not grant.may_use(DEFAULT_ROOM):
                conn.rooms = []
        autojoin: list[str] | None = None
        if query.get("autojoin") == "0":  # the client joins its streams itself (with since: recovery)
            autojoin = [BROADCAST, *conn.rooms]
            conn.rooms = []
            conn.broadcasts = False
        if self.rate_limited:
            cfg = self.cfg
            conn.rl = RateLimiter(cfg.rate_limit, cfg.rate_limit_bytes, cfg.rate_burst, conn.opened_at)
        self.metrics.opened += 1
        self.hub.add(conn, conn.streams())
        if self.cfg.mode != "echo":
            welcome = welcome_msg(conn, self.worker_id, self.node, int(time.time() * 1000),
                                  self.cfg.ping_interval, self.cfg.max_message_size, autojoin)
            if grant is not None:
                welcome["user"] = grant.user
            self.messaging.reply(conn, welcome)
        apps = self.messaging.apps
        if apps is not None:
            apps.connected(conn)
        if self.stopping:  # accepted while stopping (drained backlog, handshake in flight): send it on
            conn.close(self.stop_code, "server restarting" if self.stop_code == 1012 else "server shutting down",
                       self.stopping)

    # --- the TLS layer ----------------------------------------------------------------------------------

    def sweep_tls(self, now: float) -> None:
        """Count TLS handshakes that never completed (the loop's TLS layer drops them silently)."""
        if not self.tls_pending:
            return
        limit = now - self.cfg.handshake_timeout - 1.0
        stale = [c for c, t in self.tls_pending.items() if t < limit]
        for c in stale:
            del self.tls_pending[c]
            self.metrics.inc(self.metrics.refused, "tls_handshake")
            self.metrics.inc(self.metrics.handshakes_failed, "tls")


def _message_id(conn: Conn, payload: bytes) -> Any:
    """The ``id`` of a refused message, if it has a usable one (for the error reply)."""
    from .errors import BadEncoding

    try:
        msg = conn.codec.decode(payload)
    except BadEncoding:
        return None
    mid = msg.get("id") if type(msg) is dict else None
    return mid if type(mid) in (str, int) else None


def _valid_accept(verdict: Accept) -> bool:
    return (type(verdict.user) is str and 0 < len(verdict.user) <= MAX_USER_LEN
            and isinstance(verdict.rooms, (tuple, list, frozenset, set))
            and all(type(r) is str and 0 < len(r) <= MAX_ROOM_LEN for r in verdict.rooms))


def close_label(code: int) -> str | int:
    """The metric label of a close code: RFC 6455's own codes as they are; the ranges of applications
    (3000-3999 registered, 4000-4999 private) as one label each, so a client choosing its close code
    cannot grow the metric without bound."""
    if 1000 <= code <= 1015:
        return code
    if 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return "other"
