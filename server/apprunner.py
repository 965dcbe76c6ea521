"""Runs the application's code (:class:`server.App`) inside a worker: custom actions, connect/disconnect
hooks, and what a handler's :class:`~server.application.Context` may do (the application's ``Session``).

An action's exception costs that one request (``internal_error`` with its id, counted, logged with its
traceback); an async action runs as a task of its own (at most ``MAX_RUNNING`` per connection), so a slow
one never holds up the loop; a sync one runs inline.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from .application import MAX_RUNNING, App, Context, is_async
from .codecs import encode_json
from .errors import BadMessage, ProtocolViolation
from .metrics import Metrics
from .protocol import Custom, Join, Reply, Unsubscribe, error_msg, handle

if TYPE_CHECKING:
    from .connection import Conn

log = logging.getLogger("fanwire.worker")

# the close codes an endpoint may send (RFC 6455 7.4.1; 1004-1006 and 1015 never go on the wire)
SENDABLE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


class Host(Protocol):
    """What the runner needs of the worker's messaging."""

    metrics: Metrics
    max_rooms: int
    worker_id: int
    spawn: Callable[[Coroutine[Any, Any, None]], None]

    def reply(self, conn: Conn, msg: dict[str, Any]) -> None: ...

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> asyncio.Future[dict[str, Any]]: ...

    def join(self, conn: Conn, join: Join) -> None: ...

    def unsubscribe(self, conn: Conn, room: str) -> None: ...


class AppRunner:
    """One worker's runner of one App (see the module docstring)."""

    def __init__(self, app: App, host: Host) -> None:
        self.app = app
        self.host = host
        self.running: dict[Conn, int] = {}  # async actions running per connection

    def context(self, conn: Conn, request_id: Any = None) -> Context:
        return Context(conn.client_id, conn.user, list(conn.rooms), conn.codec.name, self.host.worker_id,
                       request_id, conn, self)

    # --- actions -------------------------------------------------------------------------------------

    def call(self, conn: Conn, call: Custom) -> None:
        host = self.host
        handler = self.app.actions.get(call.action)
        if handler is None:
            known = ", ".join(["get_stats", *self.app.actions])
            host.reply(conn, error_msg("unknown_action", f"unknown action {call.action!r}; known: {known}", call.id))
            return
        ctx = self.context(conn, call.id)
        if is_async(handler):
            running = self.running.get(conn, 0)
            if running >= MAX_RUNNING:
                host.reply(conn, error_msg("too_many_requests",
                                           f"at most {MAX_RUNNING} actions running per connection", call.id))
                return
            self.running[conn] = running + 1
            host.spawn(self._run_async(handler, ctx, call))
            return
        try:
            result = handler(ctx, call.data)
        except Exception:
            self._failed(conn, call)
            return
        self._done(conn, call, result)

    async def _run_async(self, handler: Any, ctx: Context, call: Custom) -> None:
        conn = ctx.conn
        try:
            result = await handler(ctx, call.data)
        except Exception:
            self._failed(conn, call)
        else:
            self._done(conn, call, result)
        finally:
            left = self.running.get(conn, 1) - 1
            if left > 0:
                self.running[conn] = left
            else:
                self.running.pop(conn, None)

    def _done(self, conn: Conn, call: Custom, result: Any) -> None:
        if result is None:
            return
        msg: dict[str, Any] = {"type": "result", "action": call.action, "data": result}
        if call.id is not None:
            msg["id"] = call.id
        try:
            encode_json(msg)  # what a JSON client can receive (msgpack ones too: same rules)
        except BadMessage:
            log.error("action %r returned a value that cannot be sent: %s", call.action, type(result).__name__)
            self._failed(conn, call, traceback=False)
            return
        self.host.reply(conn, msg)

    def _failed(self, conn: Conn, call: Custom, traceback: bool = True) -> None:
        if traceback:
            log.exception("action %r failed (client %s, request id %r)", call.action, conn.client_id, call.id)
        m = self.host.metrics
        m.inc(m.app_errors, "action")
        self.host.reply(conn, error_msg("internal_error", f"the action {call.action!r} failed", call.id))

    # --- hooks ---------------------------------------------------------------------------------------

    def connected(self, conn: Conn) -> None:
        self._hooks(self.app.connect_hooks, conn)

    def disconnected(self, conn: Conn) -> None:
        self._hooks(self.app.disconnect_hooks, conn)

    def _hooks(self, hooks: list[Any], conn: Conn) -> None:
        """on_connect / on_disconnect: each in its own protection (an exception is logged and counted)."""
        for hook in hooks:
            ctx = self.context(conn)
            try:
                result = hook(ctx)
                if inspect.isawaitable(result):
                    self.host.spawn(self._guarded(result, hook))
            except Exception:
                self._hook_failed(hook, conn)

    async def _guarded(self, awaitable: Any, hook: Any) -> None:
        try:
            await awaitable
        except Exception:
            self._hook_failed(hook, None)

    def _hook_failed(self, hook: Any, conn: Conn | None) -> None:
        log.exception("hook %s failed%s", getattr(hook, "__name__", hook),
                      f" for client {conn.client_id}" if conn is not None else "")
        m = self.host.metrics
        m.inc(m.app_errors, "hook")

    # --- the contexts' Session (server.application.Session) ------------------------------------------------

    def ctx_reply(self, ctx: Context, msg: dict[str, Any]) -> None:
        self.host.reply(ctx.conn, msg)

    def ctx_publish(self, ctx: Context, room: str, data: Any) -> asyncio.Future[dict[str, Any]]:
        msg = {"type": "publication", "room": room, "data": data, "from": ctx.client_id, "user": ctx.user,
               "ts": int(time.time() * 1000)}
        return self.host.inject(room, room, msg)

    def ctx_join(self, ctx: Context, room: str) -> None:
        self._as_if_sent(ctx.conn, {"type": "join", "room": room})

    def ctx_leave(self, ctx: Context, room: str) -> None:
        self._as_if_sent(ctx.conn, {"type": "leave", "room": room})

    def ctx_close(self, ctx: Context, code: int, reason: str) -> None:
        if type(code) is not int or not (code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999):
            raise ValueError(f"close code {code!r} may not be sent (RFC 6455 7.4): use 1000, 1001, 1008, "
                             "1011 or 3000-4999")
        if type(reason) is not str or len(reason.encode()) > 123:
            raise ValueError("a close reason is a string of at most 123 bytes (UTF-8)")
        ctx.conn.close(code, reason, "app")

    def _as_if_sent(self, conn: Conn, msg: dict[str, Any]) -> None:
        """Carry out ``msg`` for ``conn`` as if the client had sent it (the same rules and answers)."""
        host = self.host
        try:
            actions = handle(conn, msg, int(time.time() * 1000), host.max_rooms, conn.policy)
        except ProtocolViolation as exc:
            host.reply(conn, error_msg(exc.code, exc.detail))
            return
        for action in actions:
            match action:
                case Join():
                    host.join(conn, action)
                case Unsubscribe(room=room):
                    host.unsubscribe(conn, room)
                case Reply(msg=reply):
                    host.reply(conn, reply)
