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
    │   ├── Forbidden                ``forbidden``: the token does not allow this join, chat or broadcast
    │   └── Unavailable              ``unavailable`` (v1.1): the stream's sequencer is gone; an acknowledged
    │                                send is re-sent with the same id by the client itself        [retried]
    ├── PublishFailed                an acknowledged send (``ack=True``) did not get its ack (.id, .message,
    │   │                            .error: the cause, .code: the server's error code, .retryable)
    │   ├── AckTimeout               no ack within the timeout (also a ClientTimeout); published or not:
    │   │                            unknown; re-send with the same id (exactly once)       [retryable]
    │   └── OutboxFull               max_unacked messages already wait for their ack; nothing was sent
    │                                                                             [retryable after a wait]
    ├── ConnectionLost               the connection closed (.code, .reason); in-flight requests fail with it
    │   └── FatalClose               closed with a "do not retry" code: no reconnect
    └── NotConnected                 needs a connection: before connect(), after disconnect(),
        │                            after a fatal close or when reconnect attempts ran out
        └── SendQueueFull            reconnecting, and the bounded send queue is full

What is retried is decided here and only here (:func:`is_retryable`, :func:`close_is_retryable`,
:func:`status_is_retryable` for connections; :func:`publish_is_retryable` for acknowledged sends),
following ``docs/protocol.md``: reconnect after 1001, 1011, 1012, 1013 and abnormal closures; never after
1002, 1007, 1008, 1009 or an HTTP 401/403 at the handshake, with one exception: a 1008 ``token expired``
close is retried when the client can fetch a fresh token (its ``token`` is a callable). An acknowledged
send is worth sending again, with the same id, after ``unavailable``, ``rate_limited``, a timeout, a full
outbox or a lost connection; never after any other refusal (``forbidden``, ``bad_room``, ``no_room``...),
which would be refused again. This module is pure: it imports nothing that does I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FATAL_CLOSE_CODES",
    "RETRYABLE_HTTP_STATUSES",
    "TOKEN_EXPIRED_REASON",
    "AckTimeout",
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
    "OutboxFull",
    "PublishFailed",
    "RateLimited",
    "RequestTimeout",
    "SendQueueFull",
    "ServerError",
    "TLSError",
    "Unavailable",
    "close_is_retryable",
    "is_retryable",
    "publish_is_retryable",
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


class Unavailable(ServerError):
    """``unavailable`` (protocol v1.1): the message could not be given an offset because the process that
    sequences its stream died meanwhile. Sending it again with the same ``id`` is safe and is what the
    server asks for; the client does it by itself for acknowledged sends, until their timeout."""


#: Error codes with an exception class of their own.
_SERVER_ERRORS: dict[str, type[ServerError]] = {
    "rate_limited": RateLimited,
    "forbidden": Forbidden,
    "unavailable": Unavailable,
}


def server_error(reply: dict[str, Any]) -> ServerError:
    """The exception for an ``error`` reply: :exc:`RateLimited`, :exc:`Forbidden`, :exc:`Unavailable` or
    :exc:`ServerError`."""
    code = str(reply.get("code", "error"))
    return _SERVER_ERRORS.get(code, ServerError)(code, str(reply.get("detail", "")), reply)


class PublishFailed(ClientError):
    """An acknowledged send (``ack=True``) ended without an ack.

    ``id`` is the message's id and ``message`` the message as sent; ``error`` is the cause (also in
    ``__cause__``): the server's :exc:`ServerError` when it refused the message (``code`` is then its
    error code), a :exc:`NotConnected` when the client closed first, ``None`` otherwise. ``retryable``
    says whether sending the same message again with the same id (``msg_id=``) may succeed
    (:func:`publish_is_retryable`); doing so within the server's dedup window publishes it at most once.
    """

    def __init__(self, text: str, *, id: int | str | None = None, message: dict[str, Any] | None = None,
                 error: BaseException | None = None) -> None:
        super().__init__(text)
        self.id = id
        self.message = message if message is not None else {}
        self.error = error

    @property
    def code(self) -> str | None:
        """The server's error code when it refused the message, else ``None``."""
        return self.error.code if isinstance(self.error, ServerError) else None

    @property
    def retryable(self) -> bool:
        return publish_is_retryable(self)


class AckTimeout(PublishFailed, ClientTimeout):
    """No ack within the send's timeout. The message may or may not have been published: send it again
    with the same id (``msg_id=exc.id``) to publish it exactly once (within the server's dedup window).
    ``error`` is the last ``unavailable`` answer when that is why, else ``None``."""


class OutboxFull(PublishFailed):
    """``max_unacked`` acknowledged sends are already waiting for their ack; this one was not sent. Wait
    for some acks (or raise ``max_unacked``) and send it again."""


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


def publish_is_retryable(exc: BaseException) -> bool:
    """The single policy for acknowledged sends: may sending the same message again, with the same id,
    succeed after ``exc``? (The dedup window makes the retry harmless when the first copy got through.)

    Yes after a timeout, a full outbox, ``unavailable``, ``rate_limited`` (after slowing down) or a lost
    connection; no after any other refusal by the server, nor once the client is closed.
    """
    if isinstance(exc, (AckTimeout, OutboxFull)):
        return True
    if isinstance(exc, PublishFailed):
        return exc.error is not None and publish_is_retryable(exc.error)
    if isinstance(exc, (Unavailable, RateLimited)):
        return True
    if isinstance(exc, ServerError):
        return False
    if isinstance(exc, ConnectionLost):
        return not isinstance(exc, FatalClose)
    return False


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
