"""The asyncio client: :class:`AsyncClient`.

One :class:`AsyncClient` holds at most one WebSocket connection at a time, plus a supervisor task that
reads it, and, when it drops, reconnects with exponential backoff and full jitter
(:mod:`client.backoff`), re-joins the rooms the connection was in, then sends what was queued meanwhile.

Delivery semantics, in short (``docs/client.md`` has the long version):

* Messages go out at most once. What is handed to the socket before a drop is not re-sent.
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
from .backoff import Backoff, floored, parse_retry_after
from .errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    FatalClose,
    HandshakeRejected,
    NotConnected,
    RequestTimeout,
    SendQueueFull,
    ServerError,
    TLSError,
    close_is_retryable,
    is_retryable,
    server_error,
)
from .protocol import Codec, Message

__all__ = ["DEFAULT_URL", "AsyncClient", "MessageCallback", "State", "StateCallback", "TokenSource"]

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


@dataclass(eq=False, slots=True)
class _Request:
    msg: Message
    expect: frozenset[str]
    future: asyncio.Future[Message]
    sent_on: int | None = None  # connection generation it was written to; None while queued


@dataclass(slots=True)
class _Conn:
    ws: ClientConnection
    codec: Codec
    welcome: Message
    gen: int
    opened_at: float = field(default_factory=time.monotonic)


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
      ``max_size`` (largest incoming message).
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
        self._welcome: Message | None = None
        self._closing = False
        self._closed_reason: ClientError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._delays: Iterator[float] | None = None
        self.reconnects = 0
        self.dropped = 0

        self._on_message: MessageCallback | None = None
        self._on_type: dict[str, tuple[MessageCallback, ...]] = {}
        self._on_state: tuple[StateCallback, ...] = ()
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
        self._set_state(State.CONNECTING, None)
        try:
            conn = await (self._open_with_retry() if retry else self._open())
        except BaseException as exc:
            self._set_state(State.CLOSED, exc if isinstance(exc, ClientError) else None)
            raise
        self._attach(conn)
        self._set_state(State.CONNECTED, None)
        self._deliver(conn.welcome)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(conn), name="fanwire-client")
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

    async def send_message(self, msg: Mapping[str, Any]) -> None:
        """Send any message as is (a map with a string ``type``); no reply is awaited."""
        if not isinstance(msg.get("type"), str):
            raise ValueError("a message is a map with a string 'type'")
        await self._submit(dict(msg), None)

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
        rid = next(self._ids)
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

    async def send_chat_message(self, text: str, user: str | None = None, room: str | None = None) -> None:
        """Send a ``chat`` to ``room`` (default: the current room, the one joined last)."""
        await self.send_message(protocol.chat(text, user if user is not None else self.user, room))

    async def send_broadcast(self, text: str | None = None, *, data: Any = None, user: str | None = None) -> None:
        """Send a ``broadcast`` (``text``, or ``data``) to every connected client, this one included."""
        await self.send_message(protocol.broadcast(text, data=data, user=user if user is not None else self.user))

    async def ping(self, *, timeout: float | None = None) -> float:
        """Application-level ping; returns the round-trip time in milliseconds."""
        start = time.perf_counter()
        await self.request(protocol.ping(time.time_ns() // 1_000_000), {"pong"}, timeout=timeout)
        return (time.perf_counter() - start) * 1000.0

    async def join(self, room: str, *, timeout: float | None = None) -> list[str]:
        """Join ``room`` (it becomes the current room); returns the connection's rooms. A room the
        token does not allow raises :exc:`~client.errors.Forbidden`."""
        reply = await self.request(protocol.join(room), {"joined"}, timeout=timeout)
        return list(reply.get("rooms", self._rooms))

    async def leave(self, room: str, *, timeout: float | None = None) -> list[str]:
        """Leave ``room``; returns the connection's rooms. Leaving a room one is not in raises
        :exc:`~client.errors.ServerError` (``not_in_room``)."""
        reply = await self.request(protocol.leave(room), {"left"}, timeout=timeout)
        return list(reply.get("rooms", self._rooms))

    async def get_stats(self, *, timeout: float | None = None) -> Message:
        """The server's ``stats`` message (clients, workers, rooms, uptime, ``you``)."""
        return await self.request(protocol.custom("get_stats"), {"stats"}, timeout=timeout)

    # ------------------------------------------------------------------------------------------------
    # Sending

    def _check_open(self) -> None:
        if self._state in (State.CONNECTED, State.RECONNECTING):
            return
        if self._state is State.CLOSED and self._closed_reason is not None:
            raise NotConnected(f"not connected: {self._closed_reason}") from self._closed_reason
        raise NotConnected(f"not connected ({self._state.value}): call connect() first")

    async def _submit(self, msg: Message, req: _Request | None) -> None:
        """Write ``msg`` now when connected, queue it while reconnecting, refuse it otherwise."""
        self._check_open()
        conn = self._conn
        if self._state is State.CONNECTED and conn is not None:
            if req is not None:
                req.sent_on = conn.gen
            try:
                await conn.ws.send(conn.codec.encode(msg), text=conn.codec.text)
                return
            except ConnectionClosed:
                if req is not None:
                    req.sent_on = None
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
                req.sent_on = conn.gen
            await conn.ws.send(conn.codec.encode(msg), text=conn.codec.text)  # ConnectionClosed: stays queued
            self._queue.popleft()

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
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await ws_connect(
                    self.url,
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
        return _Conn(ws, codec, welcome, self._gen)

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

    # ------------------------------------------------------------------------------------------------
    # The supervisor: read, and on a drop reconnect, restore, flush

    async def _supervise(self, conn: _Conn) -> None:
        restored = True
        while True:
            reader = asyncio.get_running_loop().create_task(self._read(conn), name="fanwire-client-reader")
            try:
                if not restored:
                    await self._restore(conn)
                    await self._flush(conn)
                    if self._conn is conn and not self._closing:
                        self.reconnects += 1
                        self._set_state(State.CONNECTED, None)
                restored = True
            except (ClientError, ConnectionClosed) as exc:
                logger.info("restoring the session on %s failed: %s", self.url, exc)
                with contextlib.suppress(Exception):
                    await conn.ws.close(1000, "restore failed")
            except asyncio.CancelledError:
                reader.cancel()
                raise
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
            conn, restored = nxt, False

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
        for req in list(self._pending.values()):
            if req.sent_on == conn.gen and not req.future.done():
                req.future.set_exception(lost)
        if self._closing or self._state is State.CLOSED:
            return
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

    async def _restore(self, conn: _Conn) -> None:
        """Bring the new connection's rooms to what the old one had, in the same order (the last
        joined room is the current one). Pipelined: all requests go out, then all replies are awaited."""
        have, want = list(self._rooms), list(self._wanted_rooms)
        common = 0
        while common < min(len(have), len(want)) and have[common] == want[common]:
            common += 1
        msgs = [protocol.leave(r) for r in have[common:]] + [protocol.join(r) for r in want[common:]]
        reqs: list[_Request] = []
        loop = asyncio.get_running_loop()
        for msg in msgs:
            rid = next(self._ids)
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
                        logger.warning("could not restore %s %r: %s", req.msg["type"], req.msg["room"], exc)
        except TimeoutError:
            raise RequestTimeout("no answer to the room re-joins") from None
        finally:
            for req in reqs:
                self._pending.pop(req.msg["id"], None)

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
        self._set_state(State.CLOSED, reason)
        if self._inbox_event is not None:
            self._inbox_event.set()

    # ------------------------------------------------------------------------------------------------
    # Receiving

    def _deliver(self, msg: Message) -> None:
        type_ = msg["type"]
        if type_ == "welcome":
            self._welcome = msg
        if type_ in ("joined", "left", "welcome"):
            rooms = msg.get("rooms")
            if isinstance(rooms, list):
                self._rooms = [r for r in rooms if isinstance(r, str)]
        if type_ in protocol.REPLY_TYPES:
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
