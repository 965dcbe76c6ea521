"""
Exceptions raised by the fanwire client, and the one place that decides what is retried.

Every exception the client raises on purpose derives from :exc:`ClientError`::

    ClientError
    ├── ConnectError                 opening a connection failed (also: the ``token`` callable raised)
    │   ├── ConnectionRefused        server unreachable: refused, unknown host, or the
    │   │                            connection dropped before the handshake finished        [retried]
    │   ├── HandshakeRejected        HTTP answer other than 101, or no/odd welcome (.status,
    │   │                            .retry_after)     [retried on 5xx, 408, 429, waiting at least Retry-After]
    │   ├── TLSError                 the server's certificate is not trusted (wrong CA, wrong host name,
    │   │                            expired) or TLS could not be negotiated                 [not retried]
    │   └── ConnectTimeout           no welcome within open_timeout (also a ClientTimeout)   [retried]
    ├── ClientTimeout                also a builtins.TimeoutError
    │   ├── ConnectTimeout
    │   └── RequestTimeout           no reply to a request within its timeout (.request)
    ├── ServerError                  the server answered an ``error`` message (.code, .detail, .reply, .id)
    │   ├── RateLimited              ``rate_limited``: over the server's rate limit, the message was dropped
    │   └── Forbidden                ``forbidden``: the token does not allow this join, chat or broadcast
    ├── ConnectionLost               the connection closed (.code, .reason); in-flight requests fail with it
    │   └── FatalClose               closed with a "do not retry" code: no reconnect
    └── NotConnected                 needs a connection: before connect(), after disconnect(),
        │                            after a fatal close or when reconnect attempts ran out
        └── SendQueueFull            reconnecting, and the bounded send queue is full

What is retried is decided here and only here (:func:`is_retryable`, :func:`close_is_retryable`,
:func:`status_is_retryable`), following ``docs/protocol.md``: reconnect after 1001, 1011, 1012, 1013
and abnormal closures; never after 1002, 1007, 1008, 1009 or an HTTP 401/403 at the handshake, with one
exception: a 1008 ``token expired`` close is retried when the client can fetch a fresh token (its
``token`` is a callable). This module is pure: it imports nothing that does I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FATAL_CLOSE_CODES",
    "RETRYABLE_HTTP_STATUSES",
    "TOKEN_EXPIRED_REASON",
    "ClientError",
    "ClientTimeout",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionRefused",
    "FatalClose",
    "Forbidden",
    "HandshakeRejected",
    "NotConnected",
    "RateLimited",
    "RequestTimeout",
    "SendQueueFull",
    "ServerError",
    "TLSError",
    "close_is_retryable",
    "is_retryable",
    "server_error",
    "status_is_retryable",
]

#: Close codes after which the client does not reconnect: the same request would fail the same way.
#: 1002 protocol error, 1003 unsupported data, 1007 invalid data, 1008 policy violation (rate limit,
#: auth), 1009 message too big, 1010 mandatory extension missing.
FATAL_CLOSE_CODES: frozenset[int] = frozenset({1002, 1003, 1007, 1008, 1009, 1010})

#: HTTP statuses at the handshake that are worth retrying (server or proxy trouble, throttling).
#: Every other non-101 status (401, 403, 400, 404, 426, ...) is fatal.
RETRYABLE_HTTP_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

#: The reason of the 1008 close a server sends when the connection's token runs out. Retried only by a
#: client that can fetch a fresh token.
TOKEN_EXPIRED_REASON = "token expired"


class ClientError(Exception):
    """Root of every exception the fanwire client raises on purpose."""


class ConnectError(ClientError):
    """Opening a connection (TCP, WebSocket handshake, welcome) failed."""


class ConnectionRefused(ConnectError):
    """The server could not be reached (refused, unreachable, unknown host) or dropped the connection
    before the handshake finished. Retried."""


class HandshakeRejected(ConnectError):
    """The server answered the upgrade with something other than 101, or sent no proper welcome.

    ``status`` is the HTTP status code, or ``None`` when the failure was not an HTTP status
    (bad upgrade headers, first message not a ``welcome``). ``retry_after`` is the server's
    ``Retry-After`` in seconds (sent with 503 when a connection cap is reached), else ``None``; a
    reconnecting client waits at least that long (at most the backoff cap) before its next attempt.
    """

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TLSError(ConnectError):
    """The TLS handshake failed: the server's certificate is not trusted (unknown CA: pass ``cafile=``),
    is for another host name or has expired, or TLS could not be negotiated. Not retried: the next
    attempt would fail the same way."""


class ClientTimeout(ClientError, TimeoutError):
    """Something did not happen in time. Also a :exc:`TimeoutError`."""


class ConnectTimeout(ConnectError, ClientTimeout):
    """No ``welcome`` arrived within ``open_timeout`` (TCP, TLS, handshake and welcome together). Retried."""


class RequestTimeout(ClientTimeout):
    """No reply to a request (ping, join, leave, get_stats) within its timeout."""

    def __init__(self, message: str, request: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.request = request


class ServerError(ClientError):
    """The server answered a request with an ``error`` message.

    ``code`` is the protocol error code (``bad_room``, ``not_in_room``, ...), ``detail`` the text,
    ``reply`` the whole message, ``id`` the request's ``id`` that the reply echoes (``None`` if none).
    :func:`server_error` picks the subclass for the codes that have one.
    """

    def __init__(self, code: str, detail: str = "", reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.reply = reply if reply is not None else {}

    @property
    def id(self) -> int | str | None:
        """The ``id`` of the request this error answers, as the server echoed it."""
        rid = self.reply.get("id")
        return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


class RateLimited(ServerError):
    """``rate_limited``: the message went over the server's rate limit and was dropped. Slow down: a
    client that keeps going is closed with 1008 (a :exc:`FatalClose`)."""


class Forbidden(ServerError):
    """``forbidden``: the connection's token does not allow this ``join``, ``chat`` or ``broadcast``.
    The connection stays open."""


#: Error codes with an exception class of their own.
_SERVER_ERRORS: dict[str, type[ServerError]] = {"rate_limited": RateLimited, "forbidden": Forbidden}


def server_error(reply: dict[str, Any]) -> ServerError:
    """The exception for an ``error`` reply: :exc:`RateLimited`, :exc:`Forbidden` or :exc:`ServerError`."""
    code = str(reply.get("code", "error"))
    return _SERVER_ERRORS.get(code, ServerError)(code, str(reply.get("detail", "")), reply)


class ConnectionLost(ClientError):
    """The connection closed. ``code``/``reason`` come from the close frame (1006 when there was none).

    Requests already sent on the connection fail with it: the client cannot know whether the server
    handled them. Requests still queued are sent after the reconnect.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        text = f"connection closed: {code}" + (f" {reason}" if reason else "")
        super().__init__(text)
        self.code = code
        self.reason = reason


class FatalClose(ConnectionLost):
    """The server closed with a "do not retry" code (see :data:`FATAL_CLOSE_CODES`); no reconnect."""


class NotConnected(ClientError):
    """The operation needs a connection and none is coming.

    Raised before :meth:`connect`, after :meth:`disconnect`, after a :exc:`FatalClose`, or once the
    reconnect attempts are used up; ``__cause__`` holds the reason when there is one.
    """


class SendQueueFull(NotConnected):
    """The client is reconnecting and its bounded send queue (``max_pending``) is full."""


def close_is_retryable(code: int | None, reason: str = "", *, fresh_token: bool = False) -> bool:
    """True when a connection closed with ``code`` should be re-established (``None``: no close frame).

    ``fresh_token``: the client fetches a new token for each connection, so a 1008 ``token expired``
    close is worth a reconnect (with any other token problem the server answers the next handshake
    with 401, which is final).
    """
    if code is None or code not in FATAL_CLOSE_CODES:
        return True
    return fresh_token and code == 1008 and reason == TOKEN_EXPIRED_REASON


def status_is_retryable(status: int | None) -> bool:
    """True when a handshake refused with HTTP ``status`` may succeed later (``None``: not an HTTP status)."""
    return status is not None and status in RETRYABLE_HTTP_STATUSES


def is_retryable(exc: BaseException, *, fresh_token: bool = False) -> bool:
    """The single retry policy: may a new connection attempt succeed after ``exc``?

    ``fresh_token`` as for :func:`close_is_retryable`.
    """
    if isinstance(exc, FatalClose):
        return False
    if isinstance(exc, ConnectionLost):
        return close_is_retryable(exc.code, exc.reason, fresh_token=fresh_token)
    if isinstance(exc, HandshakeRejected):
        return status_is_retryable(exc.status)
    if isinstance(exc, (ConnectionRefused, ConnectTimeout)):
        return True
    if isinstance(exc, ClientError):  # TLSError, a failing token callable, ServerError, NotConnected...
        return False
    return isinstance(exc, (OSError, TimeoutError))
