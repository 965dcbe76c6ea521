"""The asyncio client: :class:`AsyncClient`.

One :class:`AsyncClient` holds at most one WebSocket connection at a time, plus a supervisor task that
reads it, and, when it drops, reconnects with exponential backoff and full jitter
(:mod:`client.backoff`), re-joins the streams the connection was in, re-sends what was not acknowledged,
then sends what was queued meanwhile.

Delivery semantics, in short (``docs/client.md`` has the long version):

* Receiving (protocol v1.1, ``recover=True``, the default): the client tracks its position (offset and
  epoch) in every stream it follows, rooms and ``$broadcast`` (:mod:`client.streams`), connects with
  ``autojoin=0`` and its session, and re-joins every stream with ``since`` after a reconnect: what it
  missed arrives through the ordinary callbacks, in order, before newer messages, never twice. A loss
  (history gone, epoch changed, offsets skipped) is reported to :meth:`AsyncClient.on_recovery`
  callbacks and sets :attr:`AsyncClient.history_lost`; it is never silent. Against a v1 server, as v1.
* Sending with ``ack=True`` (v1.1): the message gets an id and waits in a bounded outbox
  (:mod:`client.outbox`) until its ack; after a reconnect it is re-sent with the same id under the same
  session, so the server publishes it once (exactly-once effect within the server's dedup window).
  The call returns the :class:`~client.protocol.Ack` or raises :exc:`~client.errors.PublishFailed`.
* Sending without ``ack``: at most once. What is handed to the socket before a drop is not re-sent.
* While the client is *reconnecting*, sends and requests are queued, in order, up to ``max_pending``
  messages; one more raises :exc:`~client.errors.SendQueueFull`. Requests queued that way keep their
  own timeout. Before :meth:`AsyncClient.connect`, after :meth:`AsyncClient.disconnect` and after
  a fatal close, sending raises :exc:`~client.errors.NotConnected`.
* A request already sent when the connection drops fails with :exc:`~client.errors.ConnectionLost`
  (the client cannot know whether the server handled it).

Callbacks run on the event loop, in the order the messages arrive; a callback that returns an awaitable
has it scheduled as a task. A callback that raises is logged and does not stop the client.

Security (``docs/hardening.md``): ``wss://`` URLs with ``cafile=`` (the CA that signed the server's
certificate) or ``ssl=`` (a ready :class:`ssl.SSLContext`); ``token=`` (a string, or a callable called
before every connection attempt) is sent as ``Authorization: Bearer``. A 503 with ``Retry-After`` makes
the next attempt wait at least that long (at most the backoff cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import logging
import os
import random
import ssl as ssl_lib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from . import protocol
from .backoff import Backoff, ceiling, floored, parse_retry_after
from .errors import (
    AckTimeout,
    ClientError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    FatalClose,
    HandshakeRejected,
    NotConnected,
    PublishFailed,
    RequestTimeout,
    SendQueueFull,
    ServerError,
    TLSError,
    Unavailable,
    close_is_retryable,
    is_retryable,
    server_error,
)
from .outbox import Outbox
from .protocol import BROADCAST_STREAM, V1_1, Ack, Codec, Message, MsgId, Position
from .streams import RecoveryEvent, Streams

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "MessageCallback",
    "RecoveryCallback",
    "State",
    "StateCallback",
    "TokenSource",
]

DEFAULT_URL: Final = "ws://127.0.0.1:8765"
USER_AGENT: Final = "fanwire-client/0.1"

logger = logging.getLogger("fanwire.client")

MessageCallback = Callable[[Message], object]

#: What ``token=`` accepts: the token, or a zero-argument callable returning it (or an awaitable of it),
#: called before every connection attempt.
TokenSource = str | Callable[[], str | Awaitable[str]]

# SSL errors that mean "the connection dropped during the TLS handshake" (retried like a refused
# connection); every other SSLError (untrusted certificate, no common protocol...) is a TLSError.
_SSL_DROPPED = (ssl_lib.SSLEOFError, ssl_lib.SSLZeroReturnError, ssl_lib.SSLSyscallError)


class State(enum.Enum):
    """Where a client stands. ``IDLE`` -> ``CONNECTING`` -> ``CONNECTED`` <-> ``RECONNECTING`` -> ``CLOSED``."""

    IDLE = "idle"  # never connected
    CONNECTING = "connecting"  # connect() in progress
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # connection lost; retrying with backoff, sends are queued
    CLOSED = "closed"  # disconnect(), a fatal close, or reconnect attempts used up


StateCallback = Callable[[State, ClientError | None], object]

#: ``on_recovery`` callbacks get a :class:`~client.streams.RecoveryEvent`.
RecoveryCallback = Callable[[RecoveryEvent], object]

# Re-sends after an ``unavailable`` answer: full jitter under min(cap, base * 2**n).
_UNAVAILABLE_BASE_S = 0.05
_UNAVAILABLE_CAP_S = 1.0


@dataclass(eq=False, slots=True)
class _Request:
    msg: Message
    expect: frozenset[str]
    future: asyncio.Future[Message]
    sent_on: int | None = None  # connection generation it was written to; None while queued
    durable: bool = False  # an acknowledged send: survives a drop and is re-sent with its id
    error: ClientError | None = None  # the last ``unavailable`` answer of a durable send


@dataclass(slots=True)
class _Conn:
    ws: ClientConnection
    codec: Codec
    welcome: Message
    gen: int
    opened_at: float = field(default_factory=time.monotonic)
    version: tuple[int, int] = (1, 0)  # what the welcome announced
    explicit: bool = False  # v1.1 with autojoin=0: it starts with no stream; the client joins them


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason that describe ``exc``: the server's if it sent one, else ours, else 1006."""
    if exc.rcvd is not None:
        return int(exc.rcvd.code), exc.rcvd.reason
    if exc.sent is not None:
        return int(exc.sent.code), exc.sent.reason
    return 1006, ""


def _rejected(url: str, exc: InvalidStatus) -> HandshakeRejected:
    """A non-101 answer as HandshakeRejected: status, the server's one-line reason, Retry-After."""
    response = exc.response
    status = response.status_code
    text = f"{url} rejected the WebSocket upgrade: HTTP {status} {response.reason_phrase}".rstrip()
    body = (response.body or b"")[:200].decode("utf-8", "replace").strip()
    if body and body.isprintable():
        text += f" ({body})"
    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    return HandshakeRejected(text, status, retry_after)


def _tls_context(url_is_secure: bool, cafile: str | os.PathLike[str] | None,
                 context: ssl_lib.SSLContext | None, connect_kwargs: Mapping[str, Any]) -> ssl_lib.SSLContext | None:
    """The SSLContext for ``cafile=`` / ``ssl=``, checked against the URL; ``None``: websockets' default
    (the system CAs for ``wss://``)."""
    if cafile is None and context is None:
        return None
    if not url_is_secure:
        raise ValueError("cafile= and ssl= need a wss:// URL")
    if cafile is not None and context is not None:
        raise ValueError("give cafile= or ssl=, not both")
    if "ssl" in connect_kwargs:
        raise ValueError("give ssl= or connect_kwargs['ssl'], not both")
    if context is not None:
        if not isinstance(context, ssl_lib.SSLContext):
            raise ValueError(f"ssl= must be an ssl.SSLContext, not {type(context).__name__}")
        return context
    assert cafile is not None
    try:
        return ssl_lib.create_default_context(cafile=os.fspath(cafile))
    except (OSError, ssl_lib.SSLError) as exc:
        raise ValueError(f"cannot load the CA file {os.fspath(cafile)!r}: {exc}") from exc


class AsyncClient:
    """A fanwire client for asyncio.

    ``codec`` is ``"json"`` (default) or ``"msgpack"``; ``user`` is the default ``user`` put on chats and
    broadcasts. Options, all keyword-only:

    * reconnect: ``reconnect`` (on), ``backoff`` (:class:`~client.backoff.Backoff`: base 0.5 s, cap 5 s,
      unlimited attempts), ``stable_after`` (a connection that lived this long resets the backoff).
    * timeouts: ``open_timeout`` (TCP + handshake + welcome), ``request_timeout`` (default for
      requests), ``ping_interval`` / ``ping_timeout`` (WebSocket keepalive: a dead server is detected
      within ``ping_interval + ping_timeout + close_timeout`` seconds, 21 s by default; ``None``
      disables), ``close_timeout`` (how long a closing handshake may take before the TCP connection
      is dropped).
    * limits: ``max_pending`` (messages queued while reconnecting), ``inbox_size`` (messages buffered
      for ``async for``; the oldest is dropped when full and counted in :attr:`dropped`; 0 disables),
      ``max_size`` (largest incoming message), ``max_unacked`` (acknowledged sends waiting for their
      ack; one more raises :exc:`~client.errors.OutboxFull`).
    * ``rooms``: rooms to join when connecting, after the server's default ones (the last one becomes
      the current room); :meth:`connect` raises the server's error when one is refused.
    * protocol v1.1: ``recover`` (on: track offsets, join the streams itself with ``autojoin=0``,
      re-join them with ``since`` after a reconnect, drop duplicates, report losses; off: behave as a
      v1 client), ``ack_timeout`` (default timeout of ``ack=True`` sends, ``None``: wait until the
      client closes).
    * security: ``cafile`` (PEM file of the CA that signed the server's certificate) or ``ssl`` (an
      :class:`ssl.SSLContext`), for ``wss://`` URLs; ``wss://`` without either trusts the system CAs.
      ``token``: a string, or a zero-argument callable returning one (or an awaitable of one), called
      before every connection attempt so a fresh token can be fetched; sent as
      ``Authorization: Bearer <token>``. With a callable, a 1008 ``token expired`` close is followed
      by a reconnect with a new token; otherwise it is final, like a 401 at the handshake.
    * escape hatches: ``headers`` (extra handshake headers), ``connect_kwargs`` (passed to
      :func:`websockets.asyncio.client.connect`), ``rng`` (jitter source, for tests).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        codec: str = "json",
        *,
        user: str | None = None,
        # Security
        cafile: str | os.PathLike[str] | None = None,
        ssl: ssl_lib.SSLContext | None = None,
        token: TokenSource | None = None,
        # Reconnect
        reconnect: bool = True,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
        # Timeouts
        open_timeout: float = 5.0,
        request_timeout: float = 5.0,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 10.0,
        close_timeout: float = 1.0,
        # Limits
        max_pending: int = 1000,
        inbox_size: int = 1024,
        max_size: int | None = 2**20,
        max_unacked: int = 1000,
        # Protocol v1.1
        rooms: Iterable[str] = (),
        recover: bool = True,
        ack_timeout: float | None = 30.0,
        # Escape hatches
        headers: Mapping[str, str] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        rng: Callable[[], float] | None = None,
    ) -> None:
        try:
            secure = parse_uri(url).secure
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
        self.url = url
        self._codec = protocol.get_codec(codec)  # requested; replaced by the negotiated one
        if user is not None:
            protocol.chat("x", user=user)  # validates the name
        self.user = user
        self.reconnect = reconnect
        self.backoff = backoff if backoff is not None else Backoff()
        self.stable_after = stable_after
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        if max_pending < 0 or inbox_size < 0:
            raise ValueError("max_pending and inbox_size must be >= 0")
        self.max_pending = max_pending
        self.max_size = max_size
        if max_unacked < 1:
            raise ValueError("max_unacked must be >= 1")
        if ack_timeout is not None and not ack_timeout > 0:
            raise ValueError("ack_timeout must be > 0 or None")
        self.recover = recover
        self.ack_timeout = ack_timeout
        self._initial_rooms = list(dict.fromkeys(rooms))
        for room in self._initial_rooms:
            protocol.join(room)  # validates
        self._headers = dict(headers or {})
        self._connect_kwargs = dict(connect_kwargs or {})
        self._ssl = _tls_context(secure, cafile, ssl, self._connect_kwargs)
        if token is not None:
            if not callable(token):
                protocol.check_token(token)
            if any(k.lower() == "authorization" for k in self._headers):
                raise ValueError("give token= or an Authorization header, not both")
        self._token = token
        self._fresh_token = callable(token)  # a new token for each connection: 'token expired' is retried
        self._rng = rng if rng is not None else random.random

        self._state = State.IDLE
        self._conn: _Conn | None = None
        self._gen = 0
        self._ids: Iterator[int] = itertools.count(1)
        self._pending: dict[int | str, _Request] = {}
        self._queue: deque[tuple[Message, _Request | None]] = deque()
        self._rooms: list[str] = []
        self._wanted_rooms: list[str] = []
        self._presence_rooms: set[str] = set()  # joined with presence: asked again after a reconnect
        self._welcome: Message | None = None
        self._closing = False
        self._closed_reason: ClientError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._delays: Iterator[float] | None = None
        self.reconnects = 0
        self.dropped = 0
        # Protocol v1.1
        self._streams = Streams()
        self._outbox = Outbox(max_unacked)
        self._session: str | None = None
        self._broadcast_on = True  # this connection receives broadcasts
        self._broadcast_wanted = True  # the next connection should
        self._history_lost = False
        self._timers: set[asyncio.TimerHandle] = set()
        self.duplicates = 0  # messages dropped because they had been delivered already

        self._on_message: MessageCallback | None = None
        self._on_type: dict[str, tuple[MessageCallback, ...]] = {}
        self._on_state: tuple[StateCallback, ...] = ()
        self._on_recovery: tuple[RecoveryCallback, ...] = ()
        self._inbox: deque[Message] | None = deque(maxlen=inbox_size) if inbox_size else None
        self._inbox_event: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------------
    # Introspection

    @property
    def state(self) -> State:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is State.CONNECTED

    @property
    def codec(self) -> str:
        """The codec in use: the one negotiated with the server once connected."""
        return self._codec.name

    @property
    def welcome(self) -> Message | None:
        """The last ``welcome`` received (a new one comes with each reconnect)."""
        return self._welcome

    @property
    def client_id(self) -> str | None:
        cid = self._welcome.get("client_id") if self._welcome else None
        return cid if isinstance(cid, str) else None

    @property
    def rooms(self) -> list[str]:
        """The connection's rooms as the server last reported them (welcome, joined, left)."""
        return list(self._rooms)

    @property
    def closed_reason(self) -> ClientError | None:
        """Why the client is CLOSED when it did not close on request (fatal close, attempts used up)."""
        return self._closed_reason

    @property
    def server_version(self) -> tuple[int, int]:
        """The protocol version of the server, from the last ``welcome``: ``(1, 1)`` or ``(1, 0)``;
        ``(0, 0)`` before the first one."""
        return protocol.server_version(self._welcome)

    @property
    def session(self) -> str | None:
        """The session the server handed out (v1.1), presented again on every reconnect."""
        return self._session

    @property
    def positions(self) -> dict[str, Position]:
        """The last position (epoch, offset) in every stream followed: rooms, and ``$broadcast``."""
        return self._streams.positions

    @property
    def history_lost(self) -> bool:
        """True once a loss was reported (an :class:`~client.streams.RecoveryEvent` with
        ``recovered=False``) since :meth:`connect`; set it to False to acknowledge."""
        return self._history_lost

    @history_lost.setter
    def history_lost(self, value: bool) -> None:
        self._history_lost = bool(value)

    @property
    def unacked(self) -> int:
        """Acknowledged sends waiting for their ack."""
        return len(self._outbox)

    # ------------------------------------------------------------------------------------------------
    # Callbacks

    def set_message_callback(self, fn: MessageCallback | None) -> None:
        """Call ``fn(msg)`` for every message the server sends, the ``welcome`` included (``None`` clears)."""
        self._on_message = fn

    def on(self, type_: str, fn: MessageCallback) -> MessageCallback:
        """Call ``fn(msg)`` for every message of type ``type_``; returns ``fn`` (usable as a decorator)."""
        self._on_type = {**self._on_type, type_: (*self._on_type.get(type_, ()), fn)}
        return fn

    def off(self, type_: str, fn: MessageCallback | None = None) -> None:
        """Remove ``fn`` (or every callback) registered with :meth:`on` for ``type_``."""
        kept = tuple(f for f in self._on_type.get(type_, ()) if fn is not None and f is not fn)
        self._on_type = {k: v for k, v in self._on_type.items() if k != type_}
        if kept:
            self._on_type[type_] = kept

    def on_state_change(self, fn: StateCallback) -> StateCallback:
        """Call ``fn(state, error)`` on every state change; ``error`` says why for RECONNECTING/CLOSED."""
        self._on_state = (*self._on_state, fn)
        return fn

    def on_recovery(self, fn: RecoveryCallback) -> RecoveryCallback:
        """Call ``fn(event)`` (a :class:`~client.streams.RecoveryEvent`) after every re-join with ``since``
        (``event.recovered``: nothing was lost) and whenever a loss shows on a live stream (a gap in the
        offsets, a new epoch). It runs after the replayed messages and before newer ones of that stream."""
        self._on_recovery = (*self._on_recovery, fn)
        return fn

    # ------------------------------------------------------------------------------------------------
    # Lifecycle

    async def connect(self, *, retry: bool = False) -> Message:
        """Open the connection and wait for the ``welcome``, which is returned.

        Raises a :exc:`~client.errors.ConnectError` subclass, or :exc:`~client.errors.ConnectionLost`
        when the server closes before its welcome. With ``retry``, retryable failures are retried with
        the backoff policy first. Connecting an already connected client does nothing.
        """
        if self._state is State.CONNECTED and self._conn is not None:
            return self._conn.welcome
        if self._state in (State.CONNECTING, State.RECONNECTING):
            raise RuntimeError("connect() is already in progress")
        self._closing = False
        self._closed_reason = None
        self._fresh_session()
        self._set_state(State.CONNECTING, None)
        reader: asyncio.Task[ConnectionLost] | None = None
        conn: _Conn | None = None
        try:
            conn = await (self._open_with_retry() if retry else self._open())
            self._attach(conn)
            self._first_streams(conn)
            self._deliver(conn.welcome)
            reader = asyncio.get_running_loop().create_task(self._read(conn), name="fanwire-client-reader")
            await self._setup(conn, first=True)  # join the streams (autojoin, rooms=); send what was queued
            if self._conn is not conn:
                raise await reader
        except BaseException as exc:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            if conn is not None:
                conn.ws.transport.abort()
            if self._conn is conn:
                self._conn = None
            if self._state is not State.CLOSED:
                error = exc if isinstance(exc, ClientError) else None
                if conn is not None:  # fail what welcome callbacks may have queued meanwhile
                    self._shutdown(error)
                else:
                    self._set_state(State.CLOSED, error)
            raise
        self._set_state(State.CONNECTED, None)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(conn, reader), name="fanwire-client")
        return conn.welcome

    async def disconnect(self) -> None:
        """Close the connection (code 1000) and stop reconnecting. Queued messages are dropped and
        waiting requests fail with :exc:`~client.errors.NotConnected`. Safe to call more than once."""
        self._closing = True
        conn, self._conn = self._conn, None
        self._shutdown(None)
        supervisor, self._supervisor = self._supervisor, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.close_timeout + 1):
                    await conn.ws.close(1000, "client disconnect")
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Every message from the server, in order, until the client is closed."""
        if self._inbox is None:
            raise RuntimeError("async iteration needs an inbox (inbox_size > 0)")
        if self._inbox_event is None:
            self._inbox_event = asyncio.Event()
        while True:
            if self._inbox:
                yield self._inbox.popleft()
                continue
            if self._state in (State.IDLE, State.CLOSED):
                return
            self._inbox_event.clear()
            await self._inbox_event.wait()

    # ------------------------------------------------------------------------------------------------
    # Operations

    async def send_message(
        self, msg: Mapping[str, Any], *, ack: bool = False, timeout: float | None = None
    ) -> Ack | None:
        """Send any message as is (a map with a string ``type``); no reply is awaited.

        With ``ack=True`` (a ``chat``, ``broadcast`` or ``publish``, protocol v1.1), the message gets an
        ``id`` (its own ``id`` when it has one) and the call returns the server's
        :class:`~client.protocol.Ack` once the message is published; it is re-sent with the same id after a
        reconnect until then. Raises :exc:`~client.errors.PublishFailed` (refused: ``.code``),
        :exc:`~client.errors.AckTimeout` (no ack within ``timeout``, default ``ack_timeout``),
        :exc:`~client.errors.OutboxFull`; :exc:`~client.errors.NotConnected` when nothing was sent.
        """
        if not isinstance(msg.get("type"), str):
            raise ValueError("a message is a map with a string 'type'")
        if ack:
            return await self._send_acked(dict(msg), timeout)
        await self._submit(dict(msg), None)
        return None

    async def request(
        self, msg: Mapping[str, Any], expect: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send ``msg`` with a fresh ``id`` and return the reply that echoes it.

        An ``error`` reply raises :exc:`~client.errors.ServerError` (:exc:`~client.errors.RateLimited`
        for ``rate_limited``, :exc:`~client.errors.Forbidden` for ``forbidden``); no reply within
        ``timeout`` (default ``request_timeout``) raises :exc:`~client.errors.RequestTimeout`.
        """
        if not isinstance(msg.get("type"), str):
            raise ValueError("a message is a map with a string 'type'")
        timeout = self.request_timeout if timeout is None else timeout
        expected = frozenset(expect) if expect is not None else protocol.REPLY_TYPES - {"error"}
        rid = self._next_id()
        out = {**msg, "id": rid}
        req = _Request(out, expected, asyncio.get_running_loop().create_future())
        self._pending[rid] = req
        try:
            async with asyncio.timeout(timeout):
                await self._submit(out, req)
                return await req.future
        except ClientError:
            raise
        except TimeoutError:
            raise RequestTimeout(f"no reply to {msg['type']!r} within {timeout:g} s", out) from None
        finally:
            self._pending.pop(rid, None)
            if not req.future.done():
                req.future.cancel()  # a queued copy is skipped when the queue is flushed

    async def send_chat_message(
        self, text: str, user: str | None = None, room: str | None = None, *, ack: bool = False,
        timeout: float | None = None,
    ) -> Ack | None:
        """Send a ``chat`` to ``room`` (default: the current room, the one joined last). With ``ack=True``,
        as :meth:`send_chat`."""
        return await self.send_chat(text, room, user=user, ack=ack, timeout=timeout)

    async def send_chat(
        self, text: str, room: str | None = None, *, user: str | None = None, ack: bool = False,
        timeout: float | None = None, msg_id: MsgId | None = None,
    ) -> Ack | None:
        """Send a ``chat`` to ``room`` (default: the current room, the one joined last).

        ``ack=True`` (v1.1): wait for the server's ack and return it (see :meth:`send_message`); the room
        is then fixed when the call is made (the current room at that moment), so a re-send goes to the
        same stream. ``msg_id``: the message's id (default: a fresh one); pass the ``id`` of an
        :exc:`~client.errors.AckTimeout` to retry without publishing twice.
        """
        msg = protocol.chat(text, user if user is not None else self.user, room)
        return await self.send_message(self._with_id(msg, msg_id), ack=ack, timeout=timeout)

    async def send_broadcast(
        self, text: str | None = None, *, data: Any = None, user: str | None = None, ack: bool = False,
        timeout: float | None = None, msg_id: MsgId | None = None,
    ) -> Ack | None:
        """Send a ``broadcast`` (``text``, or ``data``) to every connected client, this one included.
        ``ack``, ``timeout``, ``msg_id``: as for :meth:`send_chat` (the ack's room is ``$broadcast``)."""
        msg = protocol.broadcast(text, data=data, user=user if user is not None else self.user)
        return await self.send_message(self._with_id(msg, msg_id), ack=ack, timeout=timeout)

    async def publish(
        self, room: str, data: Any, *, ack: bool = False, timeout: float | None = None, msg_id: MsgId | None = None
    ) -> Ack | None:
        """Publish ``data`` (anything JSON can carry) to ``room`` (v1.1; no need to be a member): its
        members receive a ``publication``. ``ack``, ``timeout``, ``msg_id``: as for :meth:`send_chat`."""
        return await self.send_message(self._with_id(protocol.publish(room, data), msg_id), ack=ack, timeout=timeout)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Application-level ping; returns the round-trip time in milliseconds."""
        start = time.perf_counter()
        await self.request(protocol.ping(time.time_ns() // 1_000_000), {"pong"}, timeout=timeout)
        return (time.perf_counter() - start) * 1000.0

    async def join(
        self, room: str, *, since: Position | Mapping[str, Any] | None = None, presence: bool = False,
        timeout: float | None = None
    ) -> list[str]:
        """Join ``room`` (it becomes the current room); returns the connection's rooms. A room the
        token does not allow raises :exc:`~client.errors.Forbidden`. ``$broadcast`` (v1.1) subscribes
        to broadcasts.

        ``since`` (v1.1, a :class:`~client.protocol.Position` or ``{"offset": n, "epoch": e}``, e.g. one
        saved from :attr:`positions`): the server first replays what the stream got after it, and an
        :meth:`on_recovery` event says whether that was everything. A position the server refuses
        (``bad_since``) is reported as a loss and the room joined without it. The client does this by
        itself after reconnects; ``since`` is for positions kept across client instances.

        ``presence``: be listed in the room's presence (:meth:`get_presence`) and receive its ``presence``
        events (``{"type": "presence", "room", "event": "join"|"leave", "client_id", "user", "node"}``);
        kept across reconnects until :meth:`leave`.
        """
        pos = Position.of(since) if since is not None else None
        if pos is not None and not self.recover:
            raise ValueError("since= needs recover=True")
        msg = protocol.join(room, pos, presence)
        if presence:
            self._presence_rooms.add(room)
        if pos is not None:
            self._streams.join_sent(room, pos)
        try:
            reply = await self.request(msg, {"joined"}, timeout=timeout)
        except ServerError as exc:
            if pos is None or exc.code != "bad_since":
                raise
            self._streams.join_refused(room)
            reply = await self.request(protocol.join(room), {"joined"}, timeout=timeout)
        return list(reply.get("rooms", self._rooms))

    async def leave(self, room: str, *, timeout: float | None = None) -> list[str]:
        """Leave ``room``; returns the connection's rooms. Leaving a room one is not in raises
        :exc:`~client.errors.ServerError` (``not_in_room``)."""
        reply = await self.request(protocol.leave(room), {"left"}, timeout=timeout)
        self._presence_rooms.discard(room)
        return list(reply.get("rooms", self._rooms))

    async def get_presence(self, room: str, *, timeout: float | None = None) -> Message:
        """``room``'s presence list, over every worker and node: ``{"count", "members": [{"client_id",
        "user", "node"}], "truncated"}`` (the server lists at most 1000; ``count`` is complete). Only members
        (and admins) may ask; others get ``ServerError`` ``not_in_room``."""
        return await self.request(protocol.get_presence(room), {"presence_list"}, timeout=timeout)

    async def call(self, action: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Call the server application's ``action`` (``@app.action``) and return its result's ``data``
        (None when the action returns nothing: then this waits for ``timeout`` instead; use :meth:`send_message`
        for fire-and-forget). The action's failure raises ``ServerError`` (``internal_error``)."""
        reply = await self.request(protocol.custom(action, data), {"result"}, timeout=timeout)
        return reply.get("data")

    async def get_stats(self, *, timeout: float | None = None) -> Message:
        """The server's ``stats`` message (clients, workers, rooms, uptime, ``you``)."""
        return await self.request(protocol.custom("get_stats"), {"stats"}, timeout=timeout)

    # ------------------------------------------------------------------------------------------------
    # Sending

    def _check_open(self) -> None:
        if self._state in (State.CONNECTED, State.RECONNECTING):
            return
        if self._state is State.CONNECTING and self._conn is not None:
            return  # welcome received, streams being joined: queued, sent right after
        if self._state is State.CLOSED and self._closed_reason is not None:
            raise NotConnected(f"not connected: {self._closed_reason}") from self._closed_reason
        raise NotConnected(f"not connected ({self._state.value}): call connect() first")

    async def _submit(self, msg: Message, req: _Request | None) -> None:
        """Write ``msg`` now when connected, queue it while reconnecting, refuse it otherwise."""
        self._check_open()
        conn = self._conn
        if self._state is State.CONNECTED and conn is not None:
            if req is not None:
                self._mark_sent(req, conn.gen)
            try:
                await conn.ws.send(conn.codec.encode(msg), text=conn.codec.text)
                return
            except ConnectionClosed:
                if req is not None:
                    req.sent_on = None
                    if req.durable:
                        self._outbox.unsent(req.msg["id"])
                self._check_open()  # the drop may have been fatal
                if req is not None and req.future.done():
                    return
        if len(self._queue) >= self.max_pending:
            raise SendQueueFull(f"reconnecting and {self.max_pending} messages are already queued")
        self._queue.append((msg, req))

    async def _flush(self, conn: _Conn) -> None:
        """Send what was queued while reconnecting, in order. Runs before the state becomes CONNECTED."""
        while self._queue:
            msg, req = self._queue[0]
            if req is not None and req.future.done():
                self._queue.popleft()
                continue
            if req is not None:
                self._mark_sent(req, conn.gen)
            await conn.ws.send(conn.codec.encode(msg), text=conn.codec.text)  # ConnectionClosed: stays queued
            self._queue.popleft()

    def _mark_sent(self, req: _Request, gen: int) -> None:
        req.sent_on = gen
        if req.durable:
            self._outbox.sent(req.msg["id"], gen)

    def _next_id(self) -> int:
        """A request id no waiting request uses (an application may have chosen integer ids itself)."""
        rid = next(self._ids)
        while rid in self._pending:
            rid = next(self._ids)
        return rid

    @staticmethod
    def _with_id(msg: Message, msg_id: MsgId | None) -> Message:
        if msg_id is not None:
            msg["id"] = protocol.check_msg_id(msg_id)
        return msg

    async def _send_acked(self, msg: Message, timeout: float | None) -> Ack:
        """Send ``msg`` with an id and wait for its ack; kept in the outbox (and re-sent with the same id
        after reconnects) until then."""
        kind = msg["type"]
        if kind not in protocol.ACKED_TYPES:
            raise ValueError(f"only {', '.join(sorted(protocol.ACKED_TYPES))} are acknowledged, not {kind!r}")
        self._check_open()
        if protocol.server_version(self._welcome) < V1_1:
            raise PublishFailed(f"{self.url} speaks protocol v1: it does not acknowledge messages", message=msg)
        mid = protocol.check_msg_id(msg["id"]) if "id" in msg else self._next_id()
        if mid in self._pending:
            raise ValueError(f"id {mid!r} is already used by a message or request waiting for its answer")
        if kind == "chat" and "room" not in msg and self._rooms:
            msg["room"] = self._rooms[-1]  # a re-send must go to the same stream
        out = {**msg, "id": mid}
        self._outbox.add(out)  # OutboxFull
        req = _Request(out, frozenset({"ack"}), asyncio.get_running_loop().create_future(), durable=True)
        self._pending[mid] = req
        limit = self.ack_timeout if timeout is None else timeout
        submitted = False
        try:
            async with asyncio.timeout(limit):
                await self._submit(out, req)  # NotConnected, SendQueueFull: nothing was sent
                submitted = True
                reply = await req.future
        except TimeoutError:
            raise AckTimeout(f"no ack for {kind} {mid!r} within {limit:g} s; it may or may not be published",
                             id=mid, message=out, error=req.error) from req.error
        except PublishFailed:
            raise
        except ClientError as exc:
            if not submitted:
                raise
            raise PublishFailed(f"{kind} {mid!r} was not acknowledged: {exc}", id=mid, message=out,
                                error=exc) from exc
        finally:
            self._pending.pop(mid, None)
            self._outbox.pop(mid)
            if not req.future.done():
                req.future.cancel()  # a queued copy is skipped when the queue is flushed
        ack = protocol.parse_ack(reply)
        if ack is None:
            raise PublishFailed(f"malformed ack for {kind} {mid!r}: {reply!r:.200}", id=mid, message=out)
        return ack

    # ------------------------------------------------------------------------------------------------
    # Connecting

    async def _auth_headers(self) -> dict[str, str]:
        """The handshake headers, with a token fetched now when ``token`` is a callable."""
        if self._token is None:
            return self._headers
        token: object = self._token
        if callable(self._token):
            try:
                token = self._token()
                if inspect.isawaitable(token):
                    token = await token
                protocol.check_token(token)
            except Exception as exc:  # the user's token source failed: not something a retry fixes
                raise ConnectError(f"the token callable failed: {type(exc).__name__}: {exc}") from exc
        return {**self._headers, "Authorization": f"Bearer {token}"}

    async def _open(self) -> _Conn:
        """TCP, TLS, WebSocket handshake and welcome within ``open_timeout``; errors mapped to ClientError."""
        headers = await self._auth_headers()
        tls: dict[str, Any] = {"ssl": self._ssl} if self._ssl is not None else {}
        ws: ClientConnection | None = None
        url = protocol.connect_url(self.url, autojoin=not self.recover, session=self._session)
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await ws_connect(
                    url,
                    subprotocols=[Subprotocol(self._codec.subprotocol)],
                    additional_headers=headers or None,
                    user_agent_header=USER_AGENT,
                    compression=None,
                    open_timeout=None,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    close_timeout=self.close_timeout,
                    max_size=self.max_size,
                    **({"proxy": None} | tls | self._connect_kwargs),
                )
                codec = protocol.codec_for_subprotocol(ws.subprotocol)
                raw = await ws.recv(decode=False)
        except asyncio.CancelledError:
            if ws is not None:
                ws.transport.abort()
            raise
        except TimeoutError:
            if ws is not None:
                ws.transport.abort()
            raise ConnectTimeout(f"no welcome from {self.url} within {self.open_timeout:g} s") from None
        except ConnectionClosed as exc:
            raise self._lost(*_close_of(exc)) from None
        except InvalidStatus as exc:
            raise _rejected(self.url, exc) from None
        except InvalidMessage as exc:
            if isinstance(exc.__cause__, (EOFError, OSError)):
                raise ConnectionRefused(f"{self.url} closed the connection during the handshake") from exc
            raise HandshakeRejected(f"{self.url}: {exc}") from exc
        except InvalidHandshake as exc:
            raise HandshakeRejected(f"{self.url}: {exc}") from exc
        except _SSL_DROPPED as exc:
            raise ConnectionRefused(f"{self.url} dropped the connection during the TLS handshake: {exc}") from exc
        except ssl_lib.SSLError as exc:  # SSLCertVerificationError included
            raise TLSError(f"TLS with {self.url} failed: {getattr(exc, 'verify_message', None) or exc}") from exc
        except OSError as exc:
            raise ConnectionRefused(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        try:
            welcome = codec.decode(raw)
        except protocol.DecodeError as exc:
            welcome = {"type": f"<{exc}>"}
        if welcome["type"] != "welcome":
            ws.transport.abort()
            raise HandshakeRejected(f"expected a welcome from {self.url}, got {welcome['type']!r}")
        self._gen += 1
        version = protocol.server_version(welcome)
        explicit = self.recover and version >= V1_1 and isinstance(welcome.get("autojoin"), list)
        return _Conn(ws, codec, welcome, self._gen, version=version, explicit=explicit)

    def _lost(self, code: int, reason: str) -> ConnectionLost:
        retry = close_is_retryable(code, reason, fresh_token=self._fresh_token)
        return ConnectionLost(code, reason) if retry else FatalClose(code, reason)

    def _retryable(self, exc: BaseException) -> bool:
        return is_retryable(exc, fresh_token=self._fresh_token)

    def _next_delay(self, delay: float, last: BaseException | None) -> float:
        """The backoff delay, or the server's Retry-After when that is longer (capped by the backoff cap)."""
        retry_after = last.retry_after if isinstance(last, HandshakeRejected) else None
        return floored(delay, retry_after, self.backoff.cap)

    async def _open_with_retry(self) -> _Conn:
        last: ClientError | None = None
        for delay in itertools.chain((0.0,), self.backoff.delays(self._rng)):
            delay = self._next_delay(delay, last)
            if delay:
                await asyncio.sleep(delay)
            try:
                return await self._open()
            except ClientError as exc:
                if not self._retryable(exc):
                    raise
                last = exc
                logger.info("connect to %s failed (%s); retrying in up to %.1f s", self.url, exc, self.backoff.cap)
        assert last is not None
        raise last

    def _attach(self, conn: _Conn) -> None:
        self._conn = conn
        self._codec = conn.codec
        self._welcome = conn.welcome
        rooms = conn.welcome.get("rooms")
        self._rooms = [r for r in rooms if isinstance(r, str)] if isinstance(rooms, list) else []
        self._broadcast_on = not conn.explicit  # implicit unless the client joins $broadcast itself
        session = conn.welcome.get("session")
        if session is None:
            return
        try:
            protocol.check_session(session)
        except ValueError:
            logger.warning("ignoring a malformed session from %s", self.url)
            return
        if self._session is not None and session != self._session and any(e.sent_on for e in self._outbox):
            logger.warning("%s did not resume the session: unacknowledged messages re-sent now may be "
                           "published twice", self.url)
        self._session = session

    def _fresh_session(self) -> None:
        """A new connect(): new session, no stream positions, the server's default streams."""
        self._session = None
        self._streams.clear()
        self._history_lost = False
        self._wanted_rooms = []
        self._broadcast_wanted = True

    def _first_streams(self, conn: _Conn) -> None:
        """The streams of the first connection: those the welcome's ``autojoin`` lists (v1.1 with
        ``autojoin=0``: the client joins them), else those the server put the connection in."""
        if conn.explicit:
            autojoin = [r for r in conn.welcome["autojoin"] if isinstance(r, str) and r]
            self._broadcast_wanted = BROADCAST_STREAM in autojoin
            rooms = [r for r in autojoin if r != BROADCAST_STREAM]
        else:
            rooms = list(self._rooms)
        if BROADCAST_STREAM in self._initial_rooms:
            self._broadcast_wanted = True  # (implicit anyway on a connection that is not explicit)
        extra = [r for r in self._initial_rooms if r != BROADCAST_STREAM]
        self._wanted_rooms = list(dict.fromkeys(rooms + extra))

    # ------------------------------------------------------------------------------------------------
    # The supervisor: read, and on a drop reconnect, restore, flush

    async def _supervise(self, conn: _Conn, reader: asyncio.Task[ConnectionLost]) -> None:
        """Wait for the connection to drop; then reconnect, restore, re-send, flush; and again."""
        while True:
            try:
                lost = await reader
            except asyncio.CancelledError:
                reader.cancel()
                raise
            if self._closing or self._state is State.CLOSED:
                return
            if time.monotonic() - conn.opened_at >= self.stable_after:
                self._delays = None  # a stable connection starts a fresh backoff sequence
            nxt = await self._reconnect(lost)
            if nxt is None:
                return
            conn = nxt
            reader = asyncio.get_running_loop().create_task(self._read(conn), name="fanwire-client-reader")
            try:
                await self._setup(conn)
                if self._conn is conn and not self._closing:
                    self.reconnects += 1
                    self._set_state(State.CONNECTED, None)
            except (ClientError, ConnectionClosed) as exc:
                logger.info("restoring the session on %s failed: %s", self.url, exc)
                with contextlib.suppress(Exception):
                    await conn.ws.close(1000, "restore failed")
            except asyncio.CancelledError:
                reader.cancel()
                raise

    async def _setup(self, conn: _Conn, *, first: bool = False) -> None:
        """Bring a new connection to where the client was: its streams (re-joined with ``since``), then
        the unacknowledged messages (same ids), then what was queued meanwhile, in that order. ``first``:
        the connection made by connect(), which raises when a room is refused."""
        await self._restore(conn, strict=first)
        await self._resend(conn)
        await self._flush(conn)

    async def _read(self, conn: _Conn) -> ConnectionLost:
        """Dispatch every message of ``conn`` until it closes; then account for the loss."""
        try:
            while True:
                raw = await conn.ws.recv(decode=False)
                try:
                    msg = conn.codec.decode(raw)
                except protocol.DecodeError as exc:
                    logger.warning("dropping a frame from %s: %s", self.url, exc)
                    continue
                self._deliver(msg)
        except ConnectionClosed as exc:
            lost = self._lost(*_close_of(exc))
        except asyncio.CancelledError:
            lost = ConnectionLost(1006, "reader cancelled")
            self._on_lost(conn, lost)
            raise
        self._on_lost(conn, lost)
        return lost

    def _on_lost(self, conn: _Conn, lost: ConnectionLost) -> None:
        """Runs synchronously when a connection closes, so that sends right after it queue or fail."""
        if self._conn is conn:
            self._conn = None
        if self._state is State.CONNECTED:
            self._wanted_rooms = list(self._rooms)
            self._broadcast_wanted = self._broadcast_on
        for req in list(self._pending.values()):
            if req.sent_on == conn.gen and not req.future.done() and not req.durable:
                req.future.set_exception(lost)
        if self._closing or self._state in (State.CLOSED, State.CONNECTING):
            return  # CONNECTING: connect() reports it
        if self.reconnect and self._retryable(lost):
            if self._state is not State.RECONNECTING:
                logger.info("connection to %s lost (%s); reconnecting", self.url, lost)
                self._set_state(State.RECONNECTING, lost)
        else:
            logger.warning("connection to %s closed (%s); not reconnecting", self.url, lost)
            self._shutdown(lost)

    async def _reconnect(self, lost: ClientError) -> _Conn | None:
        if self._delays is None:
            self._delays = self.backoff.delays(self._rng)
        last: ClientError = lost
        for delay in self._delays:
            await asyncio.sleep(self._next_delay(delay, last))
            if self._closing:
                return None
            try:
                conn = await self._open()
            except ClientError as exc:
                last = exc
                if not self._retryable(exc):
                    break
                logger.debug("reconnect to %s failed: %s", self.url, exc)
                continue
            if self._closing:
                await conn.ws.close(1000, "client disconnect")
                return None
            self._attach(conn)
            self._deliver(conn.welcome)
            return conn
        logger.warning("giving up on %s: %s", self.url, last)
        self._shutdown(last)
        return None

    async def _restore(self, conn: _Conn, *, strict: bool = False) -> None:
        """Bring the new connection's streams to what the old one had, in the same order (the last
        joined room is the current one). Pipelined: all requests go out, then all replies are awaited.

        v1.1 with ``autojoin=0``: the connection starts with none; every stream is joined, with ``since``
        when the client has a position in it (so what was missed is replayed first). Otherwise (v1, or
        ``recover=False``): rooms are joined and left to match, without ``since``.

        A refused join is logged and reported (:meth:`on_recovery`, ``rejoin_failed``), or raised when
        ``strict``; ``unavailable`` is raised (the connection is closed and the client reconnects, so the
        stream is not given up for a passing failure)."""
        if conn.explicit:
            streams = [BROADCAST_STREAM] if self._broadcast_wanted else []
            rooms = streams + [r for r in self._wanted_rooms if r != BROADCAST_STREAM]
            await self._join_streams(conn, rooms, strict)
            return
        have, want = list(self._rooms), list(self._wanted_rooms)
        common = 0
        while common < min(len(have), len(want)) and have[common] == want[common]:
            common += 1
        msgs = [protocol.leave(r) for r in have[common:]] + [protocol.join(r, None, r in self._presence_rooms)
                                                             for r in want[common:]]
        kept = [protocol.join(r, None, True) for r in want[:common] if r in self._presence_rooms]
        if kept:  # rooms the server put us back in by itself: ask for their presence again
            msgs += kept
            if want and msgs[-1]["room"] != want[-1]:
                msgs.append(protocol.join(want[-1], None, want[-1] in self._presence_rooms))  # stays current
        reqs: list[_Request] = []
        loop = asyncio.get_running_loop()
        for msg in msgs:
            rid = self._next_id()
            out = {**msg, "id": rid}
            req = _Request(out, frozenset({"joined", "left"}), loop.create_future(), conn.gen)
            self._pending[rid] = req
            reqs.append(req)
            await conn.ws.send(conn.codec.encode(out), text=conn.codec.text)
        try:
            async with asyncio.timeout(self.request_timeout):
                for req in reqs:
                    try:
                        await req.future
                    except ServerError as exc:  # e.g. too_many_rooms with a new server config
                        if strict or isinstance(exc, Unavailable):
                            raise
                        logger.warning("could not restore %s %r: %s", req.msg["type"], req.msg["room"], exc)
        except TimeoutError:
            raise RequestTimeout("no answer to the room re-joins") from None
        finally:
            for req in reqs:
                self._pending.pop(req.msg["id"], None)

    async def _join_streams(self, conn: _Conn, rooms: list[str], strict: bool = False) -> None:
        """Join ``rooms`` in order, with ``since`` where there is a position. A position refused with
        ``bad_since`` is forgotten and its room joined again without one (reported as a loss); the last
        room is then joined once more, so that it stays the current room."""
        joins = [(r, self._streams.since(r) if self.recover else None) for r in rooms]
        refused = await self._join_round(conn, joins, strict)
        if not refused:
            return
        again = list(refused)
        current = next((r for r in reversed(rooms) if r != BROADCAST_STREAM), None)
        if current is not None and again[-1] != current and any(r != BROADCAST_STREAM for r in again):
            again.append(current)
        await self._join_round(conn, [(r, None) for r in again], strict)

    async def _join_round(
        self, conn: _Conn, joins: list[tuple[str, Position | None]], strict: bool = False
    ) -> list[str]:
        """Send the joins, then await every answer; returns the rooms whose ``since`` was refused."""
        loop = asyncio.get_running_loop()
        sent: list[tuple[str, Position | None, _Request]] = []
        refused: list[str] = []
        try:
            for room, since in joins:
                rid = self._next_id()
                out = {**protocol.join(room, since, room in self._presence_rooms), "id": rid}
                req = _Request(out, frozenset({"joined"}), loop.create_future(), conn.gen)
                self._pending[rid] = req
                sent.append((room, since, req))
                if self.recover:
                    self._streams.join_sent(room, since)
                await conn.ws.send(conn.codec.encode(out), text=conn.codec.text)
            async with asyncio.timeout(self.request_timeout):
                for room, since, req in sent:
                    try:
                        await req.future
                    except ServerError as exc:
                        if since is not None and exc.code == "bad_since":
                            logger.warning("%s refused our position in %r (%s); joining it without", self.url, room, exc)
                            self._streams.join_refused(room)
                            refused.append(room)
                            continue
                        if strict or isinstance(exc, Unavailable):
                            raise
                        logger.warning("could not restore join %r: %s", room, exc)
                        event = self._streams.join_failed(room) if self.recover else None
                        if event is not None:
                            self._report(event)
        except TimeoutError:
            raise RequestTimeout("no answer to the stream re-joins") from None
        finally:
            for _, _, req in sent:
                self._pending.pop(req.msg["id"], None)
        return refused

    async def _resend(self, conn: _Conn) -> None:
        """Write again, with their ids, the acknowledged sends that went out on an earlier connection and
        got no ack: the server recognises them (same session) and publishes each once."""
        for entry in self._outbox.to_resend(conn.gen):
            req = self._pending.get(entry.id)
            if req is None or req.future.done():
                self._outbox.pop(entry.id)
                continue
            if conn.version < V1_1:
                self._outbox.pop(entry.id)
                req.future.set_exception(PublishFailed(
                    f"{self.url} now speaks protocol v1: {entry.msg['type']} {entry.id!r} cannot be confirmed",
                    id=entry.id, message=entry.msg))
                continue
            self._mark_sent(req, conn.gen)
            await conn.ws.send(conn.codec.encode(entry.msg), text=conn.codec.text)

    def _on_unavailable(self, rid: MsgId, reply: Message) -> None:
        """``unavailable`` for an acknowledged send: send it again, same id, after a short jittered wait
        (if the connection drops meanwhile, the reconnect re-sends it)."""
        n = self._outbox.unavailable(rid)
        req = self._pending.get(rid)
        if req is not None:
            req.error = server_error(reply)
        delay = self._rng() * ceiling(max(0, n - 1), _UNAVAILABLE_BASE_S, _UNAVAILABLE_CAP_S)
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            entry, req, conn = self._outbox.get(rid), self._pending.get(rid), self._conn
            if entry is None or req is None or req.future.done() or conn is None or entry.sent_on != conn.gen:
                return
            if self._state is not State.CONNECTED:
                return
            self._mark_sent(req, conn.gen)
            task = asyncio.ensure_future(conn.ws.send(conn.codec.encode(entry.msg), text=conn.codec.text))
            self._tasks.add(task)
            task.add_done_callback(self._resend_done)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _resend_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the drop is handled by the reconnect
            logger.debug("re-send failed: %r", task.exception())

    def _report(self, event: RecoveryEvent) -> None:
        """Tell the application how complete a stream is."""
        if event.recovered:
            logger.info("%s: recovered %d missed messages", event.room, event.replayed)
        else:
            self._history_lost = True
            logger.warning("%s: history lost (%s), some messages may be missing", event.room, event.reason)
        for fn in self._on_recovery:
            self._call(fn, event)

    def _shutdown(self, reason: ClientError | None) -> None:
        """Enter CLOSED for good: fail everything waiting, end iterations."""
        self._closed_reason = reason
        err = NotConnected(f"client closed: {reason}" if reason else "client disconnected")
        if reason is not None:
            err.__cause__ = reason
        for req in list(self._pending.values()):
            if not req.future.done():
                req.future.set_exception(err)
        for _, queued in self._queue:
            if queued is not None and not queued.future.done():
                queued.future.set_exception(err)
        self._queue.clear()
        self._outbox.clear()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._set_state(State.CLOSED, reason)
        if self._inbox_event is not None:
            self._inbox_event.set()

    # ------------------------------------------------------------------------------------------------
    # Receiving

    def _deliver(self, msg: Message) -> None:
        type_ = msg["type"]
        event: RecoveryEvent | None = None
        if self.recover and type_ in protocol.STREAM_TYPES:
            decision = self._streams.message(msg)
            if not decision.deliver:
                self.duplicates += 1
                logger.debug("dropping a message delivered already: %r", msg)
                return
            if decision.event is not None:
                self._report(decision.event)  # the loss comes before the message after it
        if type_ == "welcome":
            self._welcome = msg
        if type_ in ("joined", "left", "welcome"):
            rooms = msg.get("rooms")
            if isinstance(rooms, list):
                self._rooms = [r for r in rooms if isinstance(r, str)]
        if type_ in ("joined", "left"):
            room = msg.get("room")
            if room == BROADCAST_STREAM:
                self._broadcast_on = type_ == "joined"
            if self.recover and isinstance(room, str):
                if type_ == "joined":
                    event = self._streams.joined(msg)
                else:
                    self._streams.left(room)
        rid = msg.get("id")
        if type_ == "ack" and isinstance(rid, (int, str)):
            self._outbox.pop(rid)
        if type_ == "error" and isinstance(rid, (int, str)) and not isinstance(rid, bool) and rid in self._outbox:
            if msg.get("code") == "unavailable":
                self._on_unavailable(rid, msg)
            else:
                self._outbox.pop(rid)
                self._resolve(msg)
        elif type_ in protocol.REPLY_TYPES:
            self._resolve(msg)
        if self._on_message is not None:
            self._call(self._on_message, msg)
        for fn in self._on_type.get(type_, ()):
            self._call(fn, msg)
        if self._inbox is not None:
            if len(self._inbox) == self._inbox.maxlen:
                self.dropped += 1
            self._inbox.append(msg)
            if self._inbox_event is not None:
                self._inbox_event.set()
        if event is not None:
            self._report(event)  # after the replayed messages and their joined, before newer ones

    def _resolve(self, reply: Message) -> None:
        rid = reply.get("id")
        req: _Request | None = None
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            req = self._pending.pop(rid, None)
        elif rid is None and reply["type"] != "error":
            # A server that does not echo ids: the oldest sent request expecting this type.
            req = next((r for r in self._pending.values() if r.sent_on and reply["type"] in r.expect), None)
            if req is not None:
                self._pending.pop(req.msg["id"], None)
        if req is None or req.future.done():
            return
        if reply["type"] == "error":
            req.future.set_exception(server_error(reply))
        elif reply["type"] in req.expect:
            req.future.set_result(reply)
        else:
            req.future.set_exception(ClientError(f"unexpected {reply['type']!r} reply to {req.msg['type']!r}"))

    def _call(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception:
            logger.exception("callback %r failed", fn)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("callback task failed", exc_info=task.exception())

    def _set_state(self, state: State, error: ClientError | None) -> None:
        if state is self._state:
            return
        self._state = state
        for fn in self._on_state:
            self._call(fn, state, error)
