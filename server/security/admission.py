"""Admission at the WebSocket handshake: origin, token, connection caps. No I/O, no asyncio.

Checks run cheapest and most definitive first; the first that fails decides the HTTP answer:

======  =====================  ====================================================================
status  reason (metric label)  when
======  =====================  ====================================================================
403     ``origin``             ``--allowed-origins`` is set and the request's ``Origin`` is not in it
401     ``auth_missing``       ``--auth-secret`` is set and no token came with the request
401     ``auth_invalid``       the token is malformed or its signature or claims are wrong
401     ``auth_expired``       the token's ``exp`` has passed
503     ``max_conns``          this worker already holds ``--max-conns`` open WebSocket connections
503     ``max_conns_per_ip``   the client's address holds more than ``--max-conns-per-ip`` connections
======  =====================  ====================================================================

Every refusal carries a plain-text body saying why (never a traceback) and is counted in
``fanwire_handshakes_refused_total{reason=...}``. A request without an ``Origin`` header is not a browser
and is not subject to the origin check (origin checks exist to stop other sites' pages from using a
visitor's browser against the server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..config import Config
from ..errors import AuthError
from .iptable import IpTable

if TYPE_CHECKING:
    from .auth import Grant


class Refusal(NamedTuple):
    status: int
    reason: str  # the metric label
    detail: str  # the response body
    headers: tuple[tuple[str, str], ...] = ()


class Gate:
    __slots__ = ("auth_secret", "ip_table", "max_conns", "max_conns_per_ip", "origins")

    def __init__(self, cfg: Config, ip_table: IpTable | None = None) -> None:
        self.origins = frozenset(o.rstrip("/") for o in cfg.allowed_origins)
        self.auth_secret = cfg.auth_secret
        self.max_conns = cfg.max_conns
        self.max_conns_per_ip = cfg.max_conns_per_ip
        self.ip_table = ip_table if cfg.max_conns_per_ip else None

    @property
    def active(self) -> bool:
        return bool(self.origins or self.auth_secret or self.max_conns or self.ip_table)

    def check_origin_and_caps(self, origin: str | None, peer_ip: str, open_conns: int) -> Refusal | None:
        """The checks that hold whoever authenticates (JWT or the application's hook)."""
        if self.origins and origin is not None and origin.rstrip("/") not in self.origins:
            return Refusal(403, "origin", f"origin {origin[:200]!r} is not allowed\n")
        return self._caps(peer_ip, open_conns)

    def _caps(self, peer_ip: str, open_conns: int) -> Refusal | None:
        if self.max_conns and open_conns >= self.max_conns:
            return Refusal(503, "max_conns", "server busy: too many connections, retry later\n",
                           (("Retry-After", "1"),))
        if self.ip_table is not None and self.ip_table.count(peer_ip) > self.max_conns_per_ip:
            return Refusal(503, "max_conns_per_ip",
                           f"too many connections from your address (at most {self.max_conns_per_ip})\n",
                           (("Retry-After", "1"),))
        return None

    def check(self, path: str, origin: str | None, authorization: str | None, peer_ip: str,
              open_conns: int, now: float | None = None) -> tuple[Refusal | None, Grant | None]:
        """``(refusal, grant)``: a refusal to send, or None and the token's grant (None without auth)."""
        if self.origins and origin is not None and origin.rstrip("/") not in self.origins:
            return Refusal(403, "origin", f"origin {origin[:200]!r} is not allowed\n"), None
        grant = None
        if self.auth_secret:
            from . import auth  # imported only when auth is on: PyJWT is an optional dependency

            token = auth.token_from(authorization, path)
            if token is None:
                return Refusal(401, "auth_missing", "a token is required: send 'Authorization: Bearer <token>'"
                                                    " or ?token=<token>\n",
                               (("WWW-Authenticate", 'Bearer realm="fanwire"'),)), None
            try:
                grant = auth.verify(self.auth_secret, token, now)
            except AuthError as exc:
                code = "invalid_token"
                return Refusal(401, exc.reason, f"{exc.detail}\n",
                               (("WWW-Authenticate", f'Bearer realm="fanwire", error="{code}"'),)), None
        return self._caps(peer_ip, open_conns), grant
