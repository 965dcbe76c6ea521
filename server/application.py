"""Application code inside fanwire's workers: custom actions, connect/disconnect hooks, authentication.

::

    from server import App, Server

    app = App()

    @app.action("bid")                      # {"type":"custom","action":"bid","data":{...},"id":5}
    async def bid(ctx, data):               # sync or async
        await ctx.publish("auction-7", {"bid": data["amount"], "by": ctx.user})
        return {"accepted": True}           # -> {"type":"result","action":"bid","id":5,"data":{...}}

    @app.on_connect
    def hello(ctx): ctx.join("auction-7")

    @app.authenticate                       # instead of JWT: Accept(...) or Refuse(...)
    def check(request): return Accept("alice", rooms=("auction-7",)) if request.query.get("key") == "s" else Refuse()

    Server(app=app, port=8765, workers=2).start()      # or: python -m server --app mymodule:app

Every worker runs the handlers (the app object is created before the workers fork, or imported from its
import string ``module:attribute``). A handler's exception costs that one request: the caller gets
``error`` ``internal_error`` with its request id, the error is counted and logged with its traceback; the
worker carries on. An async handler runs as a task of its own, so a slow one never holds up the others;
a connection may have at most ``MAX_RUNNING`` of them running (more get ``too_many_requests``). A sync
handler runs inline: keep it short. Without handlers, the fast paths (ping, chat, broadcast) do not look
at the app at all.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .errors import ConfigError
from .protocol import MAX_ACTION_LEN

MAX_RUNNING: Final = 16  # async handlers running per connection

ActionHandler = Callable[["Context", Any], Any]
Hook = Callable[["Context"], Any]


@dataclass(frozen=True, slots=True)
class Request:
    """A WebSocket handshake, as the ``authenticate`` hook sees it."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lowercase names; the last value of a repeated header
    peer: str  # the client's address


@dataclass(frozen=True, slots=True)
class Accept:
    """Let the client in as ``user``, allowed to join and publish to ``rooms`` (``"*"``: every room)."""

    user: str
    rooms: tuple[str, ...] = ("*",)
    broadcast: bool = False
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the handshake with ``status`` (401, 403, 503...) and a one-line ``reason``."""

    status: int = 401
    reason: str = "not allowed"


class Session(Protocol):
    """What a handler's context needs of the connection and the worker (the messaging layer provides it)."""

    def ctx_reply(self, ctx: Context, msg: dict[str, Any]) -> None: ...

    def ctx_publish(self, ctx: Context, room: str, data: Any) -> Awaitable[dict[str, Any]]: ...

    def ctx_join(self, ctx: Context, room: str) -> None: ...

    def ctx_leave(self, ctx: Context, room: str) -> None: ...

    def ctx_close(self, ctx: Context, code: int, reason: str) -> None: ...


@dataclass(slots=True)
class Context:
    """One handler call: who called (``client_id``, ``user``, ``rooms``, ``codec``, ``worker``), with which
    request ``id``, and what the handler may do on their behalf."""

    client_id: str
    user: str | None
    rooms: list[str]
    codec: str
    worker: int
    id: Any = None
    conn: Any = field(default=None, repr=False)
    session: Session | None = field(default=None, repr=False)

    def reply(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` (a map with a ``type``) to this client."""
        assert self.session is not None
        self.session.ctx_reply(self, msg)

    def publish(self, room: str, data: Any) -> Awaitable[dict[str, Any]]:
        """Publish ``data`` to ``room`` (members get ``{"type":"publication","room":...,"data":...}`` with its
        offset and epoch); await the result for ``{"room", "offset", "epoch"}`` (or ignore it)."""
        assert self.session is not None
        return self.session.ctx_publish(self, room, data)

    def join(self, room: str) -> None:
        """Make this client a member of ``room`` (it gets ``joined``, as if it had asked)."""
        assert self.session is not None
        self.session.ctx_join(self, room)

    def leave(self, room: str) -> None:
        assert self.session is not None
        self.session.ctx_leave(self, room)

    def close(self, code: int = 1000, reason: str = "") -> None:
        assert self.session is not None
        self.session.ctx_close(self, code, reason)


class App:
    """A fanwire application: custom actions, hooks, and an optional authentication hook."""

    def __init__(self) -> None:
        self.actions: dict[str, ActionHandler] = {}
        self.connect_hooks: list[Hook] = []
        self.disconnect_hooks: list[Hook] = []
        self.authenticator: Callable[[Request], Accept | Refuse | Awaitable[Accept | Refuse]] | None = None

    def action(self, name: str) -> Callable[[ActionHandler], ActionHandler]:
        """Register ``fn(ctx, data)`` (sync or async) for ``{"type":"custom","action":name}``."""
        if type(name) is not str or not 0 < len(name) <= MAX_ACTION_LEN or name == "get_stats":
            raise ValueError(f"cannot register the action {name!r}: 1 to {MAX_ACTION_LEN} characters, "
                             "not get_stats (the server's own)")

        def register(fn: ActionHandler) -> ActionHandler:
            self.actions[name] = fn
            return fn

        return register

    def on_connect(self, fn: Hook) -> Hook:
        self.connect_hooks.append(fn)
        return fn

    def on_disconnect(self, fn: Hook) -> Hook:
        self.disconnect_hooks.append(fn)
        return fn

    def authenticate(self, fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        self.authenticator = fn
        return fn

    @property
    def empty(self) -> bool:
        return not (self.actions or self.connect_hooks or self.disconnect_hooks or self.authenticator)


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def load(spec: str) -> App:
    """The App at ``module:attribute`` (the module is imported; raises ConfigError with the reason)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app must be 'module:attribute', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the application's own import errors, reported as a usage error
        raise ConfigError(f"--app {spec}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"--app {spec}: {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise ConfigError(f"--app {spec}: {attr!r} is a {type(obj).__name__}, not a server.App")
    return obj
