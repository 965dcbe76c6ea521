"""The blocking facade: :class:`Client`, for scripts and REPLs.

It runs an :class:`~client.aio.AsyncClient` on an event loop in a background thread (started by
:meth:`Client.connect`, stopped by :meth:`Client.disconnect`) and exposes the same operations as plain
methods that block until done. Callbacks run **on that background thread**; they must not call the
blocking methods of the same client (that would wait on itself, so it raises :exc:`RuntimeError`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from .aio import DEFAULT_URL, AsyncClient, MessageCallback, RecoveryCallback, State, StateCallback
from .errors import ClientError, RequestTimeout
from .protocol import Ack, Message, MsgId, Position

__all__ = ["Client"]

T = TypeVar("T")

# Extra time the calling thread waits beyond the operation's own timeout before giving up on the loop.
_GRACE_S = 2.0


class Client:
    """A blocking fanwire client. Takes the same arguments as :class:`~client.aio.AsyncClient`
    (except ``inbox_size``: messages reach a blocking user through callbacks only)."""

    def __init__(self, url: str = DEFAULT_URL, codec: str = "json", **options: Any) -> None:
        options.setdefault("inbox_size", 0)
        self._async = AsyncClient(url, codec, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------
    # Plumbing

    @property
    def aio(self) -> AsyncClient:
        """The underlying :class:`~client.aio.AsyncClient` (use it only from callbacks)."""
        return self._async

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    loop.close()

            thread = threading.Thread(target=run, name="fanwire-client-loop", daemon=True)
            thread.start()
            ready.wait(5.0)
            self._loop, self._thread = loop, thread
            return loop

    def _stop_loop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking Client method called from its own callback; use client.aio instead")
        loop = self._loop
        if loop is None:
            loop = self._start_loop()
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(None if timeout is None else timeout + _GRACE_S)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise RequestTimeout("the client's event loop did not answer in time") from None

    def _timeout(self, timeout: float | None) -> float:
        return self._async.request_timeout if timeout is None else timeout

    def _send_timeout(self, ack: bool, timeout: float | None) -> float | None:
        """How long a send may take: an acknowledged one waits for its ack (``None``: no bound)."""
        if not ack:
            return self._timeout(None)
        return self._async.ack_timeout if timeout is None else timeout

    # ------------------------------------------------------------------------------------------------
    # Introspection

    @property
    def state(self) -> State:
        return self._async.state

    @property
    def connected(self) -> bool:
        return self._async.connected

    @property
    def codec(self) -> str:
        return self._async.codec

    @property
    def client_id(self) -> str | None:
        return self._async.client_id

    @property
    def welcome(self) -> Message | None:
        return self._async.welcome

    @property
    def rooms(self) -> list[str]:
        return self._async.rooms

    @property
    def reconnects(self) -> int:
        return self._async.reconnects

    @property
    def closed_reason(self) -> ClientError | None:
        return self._async.closed_reason

    @property
    def server_version(self) -> tuple[int, int]:
        return self._async.server_version

    @property
    def session(self) -> str | None:
        return self._async.session

    @property
    def positions(self) -> dict[str, Position]:
        return self._async.positions

    @property
    def history_lost(self) -> bool:
        return self._async.history_lost

    @history_lost.setter
    def history_lost(self, value: bool) -> None:
        self._async.history_lost = value

    @property
    def unacked(self) -> int:
        return self._async.unacked

    @property
    def duplicates(self) -> int:
        return self._async.duplicates

    @property
    def user(self) -> str | None:
        return self._async.user

    @user.setter
    def user(self, value: str | None) -> None:
        self._async.user = value

    # ------------------------------------------------------------------------------------------------
    # Callbacks (run on the client's background thread)

    def set_message_callback(self, fn: MessageCallback | None) -> None:
        """Call ``fn(msg)`` for every message the server sends, the ``welcome`` included."""
        self._async.set_message_callback(fn)

    def on(self, type_: str, fn: MessageCallback) -> MessageCallback:
        """Call ``fn(msg)`` for every message of type ``type_`` (``"chat"``, ``"stats"``, ...)."""
        return self._async.on(type_, fn)

    def off(self, type_: str, fn: MessageCallback | None = None) -> None:
        self._async.off(type_, fn)

    def on_state_change(self, fn: StateCallback) -> StateCallback:
        """Call ``fn(state, error)`` on every state change (connected, reconnecting, closed...)."""
        return self._async.on_state_change(fn)

    def on_recovery(self, fn: RecoveryCallback) -> RecoveryCallback:
        """Call ``fn(event)`` after each re-join with ``since`` and when a loss shows; see
        :meth:`client.aio.AsyncClient.on_recovery`."""
        return self._async.on_recovery(fn)

    # ------------------------------------------------------------------------------------------------
    # Operations

    def connect(self, *, retry: bool = False) -> Message:
        """Connect and return the ``welcome``; see :meth:`client.aio.AsyncClient.connect`."""
        self._start_loop()
        bound = None if retry else self._async.open_timeout
        try:
            return self._run(self._async.connect(retry=retry), bound)
        except BaseException:
            self._stop_loop()
            raise

    def disconnect(self) -> None:
        """Close the connection and stop the background thread. Safe to call more than once."""
        if self._loop is None:
            return
        try:
            self._run(self._async.disconnect(), self._async.close_timeout + 1)
        finally:
            self._stop_loop()

    close = disconnect

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.disconnect()

    def send_message(self, msg: Mapping[str, Any], *, ack: bool = False, timeout: float | None = None) -> Ack | None:
        """Send any message as is (a map with a string ``type``); with ``ack=True``, wait for its ack
        (see :meth:`client.aio.AsyncClient.send_message`)."""
        return self._run(self._async.send_message(msg, ack=ack, timeout=timeout), self._send_timeout(ack, timeout))

    def request(
        self, msg: Mapping[str, Any], expect: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send ``msg`` with a fresh ``id`` and return the reply that echoes it."""
        return self._run(self._async.request(msg, expect, timeout=timeout), self._timeout(timeout))

    def send_chat_message(
        self, text: str, user: str | None = None, room: str | None = None, *, ack: bool = False,
        timeout: float | None = None,
    ) -> Ack | None:
        return self._run(self._async.send_chat_message(text, user, room, ack=ack, timeout=timeout),
                         self._send_timeout(ack, timeout))

    def send_chat(
        self, text: str, room: str | None = None, *, user: str | None = None, ack: bool = False,
        timeout: float | None = None, msg_id: MsgId | None = None,
    ) -> Ack | None:
        """A ``chat``; with ``ack=True``, returns the server's ack (see :meth:`client.aio.AsyncClient.send_chat`)."""
        return self._run(self._async.send_chat(text, room, user=user, ack=ack, timeout=timeout, msg_id=msg_id),
                         self._send_timeout(ack, timeout))

    def send_broadcast(
        self, text: str | None = None, *, data: Any = None, user: str | None = None, ack: bool = False,
        timeout: float | None = None, msg_id: MsgId | None = None,
    ) -> Ack | None:
        return self._run(
            self._async.send_broadcast(text, data=data, user=user, ack=ack, timeout=timeout, msg_id=msg_id),
            self._send_timeout(ack, timeout),
        )

    def publish(
        self, room: str, data: Any, *, ack: bool = False, timeout: float | None = None, msg_id: MsgId | None = None
    ) -> Ack | None:
        """Publish ``data`` to ``room`` (v1.1); with ``ack=True``, returns the server's ack."""
        return self._run(self._async.publish(room, data, ack=ack, timeout=timeout, msg_id=msg_id),
                         self._send_timeout(ack, timeout))

    def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip time in milliseconds."""
        return self._run(self._async.ping(timeout=timeout), self._timeout(timeout))

    def join(
        self, room: str, *, since: Position | Mapping[str, Any] | None = None, presence: bool = False,
        timeout: float | None = None
    ) -> list[str]:
        # (a join after bad_since is two requests, hence twice the timeout)
        return self._run(self._async.join(room, since=since, presence=presence, timeout=timeout),
                         2 * self._timeout(timeout))

    def leave(self, room: str, *, timeout: float | None = None) -> list[str]:
        return self._run(self._async.leave(room, timeout=timeout), self._timeout(timeout))

    def get_stats(self, *, timeout: float | None = None) -> Message:
        return self._run(self._async.get_stats(timeout=timeout), self._timeout(timeout))

    def get_presence(self, room: str, *, timeout: float | None = None) -> Message:
        return self._run(self._async.get_presence(room, timeout=timeout), self._timeout(timeout))

    def call(self, action: str, data: Any = None, *, timeout: float | None = None) -> Any:
        return self._run(self._async.call(action, data, timeout=timeout), self._timeout(timeout))
