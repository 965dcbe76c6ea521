"""What a request head leads to: a WebSocket (after the handshake and admission), or a plain HTTP answer.

=========================  ========================================================================
request                    answer
=========================  ========================================================================
``Upgrade: websocket``     websockets validates the handshake (400/426/505 otherwise), then admission
                           (origin, token, caps: 403/401/503), then ``101`` and the connection opens
``GET /healthz``           ``200`` JSON: this worker's health
``GET /metrics``           ``200`` Prometheus text, gathered from every worker
``GET /connect-check``     what the handshake's admission (origin, token or the application's hook,
                           caps) would answer: ``204``, or its status, one-line reason and headers
                           (``WWW-Authenticate``, ``Retry-After``); ``Cache-Control: no-store``. It
                           opens nothing and is no handshake (not counted as a refused one)
``GET /``, ``/dashboard``  the browser's files (:mod:`.static`: the chat page, the dashboard, the
``/fanwire.js``            client, ``/static/<name>``), from memory, with ETag/``304``, the pages'
``/static/<name>``         CSP; ``HEAD`` too
``/api/...``               the HTTP API for back ends (:mod:`.api`): 404 unless configured
anything else              ``404`` (before the pages, a plain ``GET`` got ``426``; clients read 404,
                           405 and 426 on ``/connect-check`` alike: no such endpoint)
another method             ``405`` with ``Allow``
=========================  ========================================================================

Every answer closes the connection, and nothing the client sent after its request head is ever parsed.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..errors import HttpError
from ..metrics import Metrics
from ..ws import handshake
from . import response
from .static import Asset, Files

if TYPE_CHECKING:
    from ..connection import Conn
    from .api import Api
    from .request import HttpRequest

API_PREFIX = "/api/"

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
NO_STORE = (("Cache-Control", "no-store"),)
NOT_FOUND = "(not found)"  # the metric label of every path that is not a route


class RouterOwner(Protocol):
    """What the routes need of the worker."""

    metrics: Metrics
    extension_factories: list[Any] | None

    def health(self) -> dict[str, Any]: ...

    def metrics_text(self) -> Awaitable[str]: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def admit(self, conn: Conn, request: HttpRequest) -> HttpError | Awaitable[HttpError | None] | None: ...

    def open(self, conn: Conn, request: HttpRequest) -> None: ...


Route = Callable[["Conn", "HttpRequest"], None]


class Router:
    """Routes one request head; the worker calls :meth:`on_request` (the connection's ``on_request``)."""

    __slots__ = ("api", "files", "owner", "routes")

    def __init__(self, owner: RouterOwner, api: Api | None = None, files: Files | None = None) -> None:
        self.owner = owner
        self.api = api
        self.files = files if files is not None else Files({})
        self.routes: dict[str, Route] = {"/healthz": self._healthz, "/metrics": self._metrics,
                                         "/connect-check": self._connect_check}

    def before_body(self, request: HttpRequest) -> HttpError | None:
        """A head that announces a body: refuse now what will be refused anyway (the body is then never
        read): an HTTP API request without valid credentials, or to no route that takes a body."""
        if request.path.startswith(API_PREFIX) and self.api is not None:
            return self.api.check_head(request)
        return HttpError(405, f"method {request.method} not allowed", "bad_request", (("Allow", "GET"),))

    def on_request(self, conn: Conn, request: HttpRequest, body: bytes) -> None:
        if request.is_upgrade:
            self._upgrade(conn, request)
            return
        if request.path.startswith(API_PREFIX) and self.api is not None:
            self.api.handle(conn, request, body)
            return
        route = self.routes.get(request.path)
        m = self.owner.metrics
        if route is None:
            asset = self.files.lookup(request.path)
            if asset is None:
                m.inc(m.http_requests, NOT_FOUND)  # one label for every unknown path: bounded
                conn.respond(404, b"no such path\n", head_only=request.method == "HEAD")
                return
            if request.method not in ("GET", "HEAD"):
                conn.http_error(HttpError(405, f"method {request.method} not allowed", "bad_request",
                                          (("Allow", "GET, HEAD"),)))
                return
            m.inc(m.http_requests, request.path)  # a file loaded at start: bounded
            self._file(conn, request, asset)
            return
        if request.method != "GET":
            conn.http_error(HttpError(405, f"method {request.method} not allowed", "bad_request",
                                      (("Allow", "GET"),)))
            return
        m.inc(m.http_requests, request.path)
        route(conn, request)

    def _upgrade(self, conn: Conn, request: HttpRequest) -> None:
        owner = self.owner
        try:
            accepted = handshake.accept(request, owner.extension_factories)
        except HttpError as exc:
            conn.http_error(exc)
            return
        refusal = owner.admit(conn, request)
        if inspect.isawaitable(refusal):  # the application authenticates asynchronously
            pending = refusal

            async def later() -> None:
                self._admitted(conn, request, accepted, await pending)

            owner.spawn(later())
            return
        self._admitted(conn, request, accepted, refusal)

    def _admitted(self, conn: Conn, request: HttpRequest, accepted: handshake.Accepted,
                  refusal: HttpError | None) -> None:
        if conn.transport is None:
            return  # gone while it was being authenticated
        if refusal is not None:
            conn.http_error(refusal)
            return
        conn.upgrade(accepted.response, accepted.subprotocol, accepted.extensions)
        self.owner.open(conn, request)

    # --- plain routes -------------------------------------------------------------------------------------

    def _healthz(self, conn: Conn, request: HttpRequest) -> None:
        conn.respond(200, orjson.dumps(self.owner.health()), response.JSON)

    def _metrics(self, conn: Conn, request: HttpRequest) -> None:
        async def answer() -> None:
            text = await self.owner.metrics_text()
            conn.respond(200, text.encode(), PROMETHEUS)

        self.owner.spawn(answer())

    def _file(self, conn: Conn, request: HttpRequest, asset: Asset) -> None:
        out = self.files.answer(asset, request.method, request.header_all("if-none-match"))
        conn.respond(out.status, asset.body, asset.content_type, asset.headers, out.head_only)

    def _connect_check(self, conn: Conn, request: HttpRequest) -> None:
        """The handshake's admission, answered as plain HTTP: a browser sees a refused WebSocket only as
        1006, so the client asks here why. The connection stays a plain HTTP one and closes after the
        answer; admission's only side effect on it (``conn.grant``) dies with it."""
        refusal = self.owner.admit(conn, request)
        if inspect.isawaitable(refusal):  # the application authenticates asynchronously
            pending = refusal

            async def later() -> None:
                self._checked(conn, await pending)

            self.owner.spawn(later())
            return
        self._checked(conn, refusal)

    @staticmethod
    def _checked(conn: Conn, refusal: HttpError | None) -> None:
        if refusal is None:
            conn.respond(204, b"", response.TEXT, NO_STORE)
            return
        conn.respond(refusal.status, (refusal.detail.rstrip("\n") + "\n").encode(), response.TEXT,
                     (*refusal.headers, *NO_STORE))
