"""What a request head leads to: a WebSocket (after the handshake and admission), or a plain HTTP answer.

=========================  ========================================================================
request                    answer
=========================  ========================================================================
``Upgrade: websocket``     websockets validates the handshake (400/426/505 otherwise), then admission
                           (origin, token, caps: 403/401/503), then ``101`` and the connection opens
``GET /healthz``           ``200`` JSON: this worker's health
``GET /metrics``           ``200`` Prometheus text, gathered from every worker
``/api/...``               the HTTP API for back ends (:mod:`.api`): 404 unless configured
``GET`` anything else      ``426 Upgrade Required``
another method             ``405`` with ``Allow: GET``
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

if TYPE_CHECKING:
    from ..connection import Conn
    from .api import Api
    from .request import HttpRequest

API_PREFIX = "/api/"

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


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

    __slots__ = ("api", "owner", "routes")

    def __init__(self, owner: RouterOwner, api: Api | None = None) -> None:
        self.owner = owner
        self.api = api
        self.routes: dict[str, Route] = {"/healthz": self._healthz, "/metrics": self._metrics}

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
        if request.method != "GET":
            conn.http_error(HttpError(405, f"method {request.method} not allowed", "bad_request",
                                      (("Allow", "GET"),)))
            return
        if route is None:
            conn.http_error(HttpError(426, "this is a WebSocket server: send a WebSocket handshake",
                                      "not_websocket", (("Upgrade", "websocket"),)))
            return
        m = self.owner.metrics
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
