"""The HTTP API for back ends, on the WebSocket port: every worker answers, cluster-wide with the Redis bus.

==========================================  ===============================================================
``POST /api/publish``                       ``{"room", "data", "id"?}``: sequenced like a client's message
``POST /api/broadcast``                     ``{"data", "id"?}``: to every client (the ``$broadcast`` stream)
``GET  /api/rooms``                         rooms and their members (the largest 1000)
``GET  /api/rooms/{room}/presence``         the room's tracked clients, on every worker and node
``POST /api/clients/{id}/disconnect``       ``{"code"?, "reason"?}``: close that client (4000-4999)
``GET  /api/stats``                         what an admin's ``get_stats`` answers
``GET  /api/openapi.json``                  the OpenAPI 3.1 document (:mod:`.openapi`), without credentials
==========================================  ===============================================================

Off unless configured: with neither ``--api-key`` nor ``--auth-secret`` every ``/api/`` path answers 404,
as if there were nothing there. Credentials: ``Authorization: Bearer <api key>`` (compared in constant
time), or an admin token (``python -m server token --admin``). Every answer is JSON and closes the
connection; errors are ``{"error": {"code", "detail"}}``. Bodies are at most ``max_message_size`` + 1 KiB
(the connection refuses a larger ``Content-Length`` with 413 before reading any of it), must be
``application/json``, and are validated like a client's message. Requests that pass the credentials check
are rate limited per worker (``--api-rate``, 429 with ``Retry-After``); those that do not cost a header
comparison and are answered 401 at once.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote

import orjson

from ..codecs import encode_json
from ..errors import AuthError, BadMessage, HttpError, PublishFailed
from ..metrics import Metrics
from ..protocol import MAX_ID_LEN, MAX_ROOM_LEN, SYSTEM_PREFIX
from ..security.ratelimit import OK, RateLimiter
from ..stats import MAX_LISTED_ROOMS
from ..streams import BROADCAST
from . import response
from .openapi import document

if TYPE_CHECKING:
    from ..config import Config
    from ..connection import Conn
    from .request import HttpRequest

PREFIX: Final = "/api/"
NO_STORE: Final = (("Cache-Control", "no-store"),)


class ApiError(Exception):
    """An API request refused: its status, code and detail become the JSON error answer."""

    def __init__(self, status: int, code: str, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


class Backend(Protocol):
    """What the API needs of the worker's messaging."""

    def inject(self, stream: str, room: str | None, msg: dict[str, Any], identity: str | None = None,
               msg_id: Any = None, kind: str = "app") -> asyncio.Future[dict[str, Any]]: ...

    def presence_of(self, room: str) -> Awaitable[dict[str, Any]]: ...

    def cluster_stats(self) -> Awaitable[dict[str, Any]]: ...

    def disconnect(self, client_id: str, code: int, reason: str) -> Awaitable[tuple[int, int]]: ...


Handler = Callable[["HttpRequest", bytes, list[str]], Awaitable[Any]]


class Api:
    """One worker's HTTP API (see the module docstring)."""

    def __init__(self, cfg: Config, backend: Backend, metrics: Metrics,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.enabled = cfg.api_enabled
        self.api_key = cfg.api_key.encode() if cfg.api_key else None
        self.auth_secret = cfg.auth_secret
        self.max_message_size = cfg.max_message_size
        self.backend = backend
        self.metrics = metrics
        self.spawn = spawn
        self.limiter = RateLimiter(cfg.api_rate, 0.0, 1.0, time.monotonic())
        self.openapi = orjson.dumps(document(cfg.max_message_size + 1024))
        # (segments pattern, method) -> handler; "{}" matches one segment, passed on in order
        self.routes: dict[tuple[str, ...], dict[str, Handler]] = {
            ("publish",): {"POST": self._publish},
            ("broadcast",): {"POST": self._broadcast},
            ("rooms",): {"GET": self._rooms},
            ("rooms", "{}", "presence"): {"GET": self._presence},
            ("clients", "{}", "disconnect"): {"POST": self._disconnect},
            ("stats",): {"GET": self._stats},
        }

    # --- dispatch ------------------------------------------------------------------------------------

    def handle(self, conn: Conn, request: HttpRequest, body: bytes) -> None:
        """Answer one ``/api/`` request (now, or once the cluster has answered)."""
        if not self.enabled:
            self._answer_error(conn, ApiError(404, "not_found", "no such path"))
            return
        try:
            route, handler, args = self._route(request)
            if route == "openapi":
                self.metrics.inc(self.metrics.api_requests, "/api/openapi.json")
                conn.respond(200, self.openapi, response.JSON, NO_STORE)
                return
            self.metrics.inc(self.metrics.api_requests, route)
            self._authorize(request)
            if self.limiter.take(0, time.monotonic()) != OK:
                raise ApiError(429, "rate_limited", "over the API's rate limit", (("Retry-After", "1"),))
        except ApiError as exc:
            self._answer_error(conn, exc)
            return
        assert handler is not None
        self.spawn(self._run(conn, handler, request, body, args))

    def check_head(self, request: HttpRequest) -> HttpError | None:
        """Before a body is read: the route, the method and the credentials (so that an unauthenticated
        client never makes a worker buffer a body)."""
        try:
            if not self.enabled:
                raise ApiError(404, "not_found", "no such path")
            route, _, _ = self._route(request)
            if route != "openapi":
                self._authorize(request)
        except ApiError as exc:
            self.metrics.inc(self.metrics.api_refused, exc.code)
            return HttpError(exc.status, exc.detail, exc.code, exc.headers, json=True)
        return None

    def _route(self, request: HttpRequest) -> tuple[str, Handler | None, list[str]]:
        path = request.path
        if path == "/api/openapi.json":
            if request.method != "GET":
                raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here",
                               (("Allow", "GET"),))
            return "openapi", None, []
        parts = path[len(PREFIX):].split("/")
        for pattern, methods in self.routes.items():
            if len(pattern) != len(parts):
                continue
            args: list[str] = []
            for want, got in zip(pattern, parts):
                if want == "{}":
                    try:
                        args.append(unquote(got, errors="strict"))
                    except UnicodeDecodeError:
                        raise ApiError(400, "bad_request", "a path segment is not UTF-8") from None
                elif want != got:
                    break
            else:
                handler = methods.get(request.method)
                if handler is None:
                    raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here",
                                   (("Allow", ", ".join(methods)),))
                return PREFIX + "/".join(pattern), handler, args
        raise ApiError(404, "not_found", "no such path")

    def _authorize(self, request: HttpRequest) -> None:
        values = request.header_all("authorization")
        if len(values) != 1:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key or admin token>",
                           (("WWW-Authenticate", "Bearer"),))
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key or admin token>",
                           (("WWW-Authenticate", "Bearer"),))
        if self.api_key is not None and hmac.compare_digest(token.encode(), self.api_key):
            return
        if self.auth_secret is not None and token.count(".") == 2:
            from ..security.auth import verify

            try:
                grant = verify(self.auth_secret, token)
            except AuthError as exc:
                raise ApiError(401, "unauthorized", exc.detail, (("WWW-Authenticate", "Bearer"),)) from None
            if not grant.admin:
                raise ApiError(403, "forbidden", "the API needs an admin token")
            return
        raise ApiError(401, "unauthorized", "wrong credentials", (("WWW-Authenticate", "Bearer"),))

    async def _run(self, conn: Conn, handler: Handler, request: HttpRequest, body: bytes, args: list[str]) -> None:
        try:
            result = await handler(request, body, args)
        except ApiError as exc:
            self._answer_error(conn, exc)
            return
        except PublishFailed as exc:
            self._answer_error(conn, ApiError(503, exc.code, "not sequenced: send it again"))
            return
        conn.respond(200, orjson.dumps(result), response.JSON, NO_STORE)

    def _answer_error(self, conn: Conn, exc: ApiError) -> None:
        self.metrics.inc(self.metrics.api_refused, exc.code)
        body = orjson.dumps({"error": {"code": exc.code, "detail": exc.detail}})
        conn.respond(exc.status, body, response.JSON, NO_STORE + exc.headers)

    # --- endpoints -----------------------------------------------------------------------------------

    async def _publish(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        doc = self._json_body(request, body)
        room = _room(doc.get("room"))
        if "data" not in doc:
            raise ApiError(400, "bad_message", "missing field 'data'")
        msg = {"type": "publication", "room": room, "data": doc["data"], "from": "api", "user": None,
               "ts": int(time.time() * 1000)}
        return await self._inject(room, room, msg, doc)

    async def _broadcast(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        doc = self._json_body(request, body)
        if "data" not in doc:
            raise ApiError(400, "bad_message", "missing field 'data'")
        msg = {"type": "broadcast", "from": "api", "user": None, "data": doc["data"],
               "ts": int(time.time() * 1000)}
        return await self._inject(BROADCAST, None, msg, doc)

    async def _inject(self, stream: str, room: str | None, msg: dict[str, Any], doc: dict[str, Any]) -> Any:
        msg_id = _msg_id(doc.get("id"))
        try:
            size = len(encode_json(msg))
        except BadMessage as exc:
            raise ApiError(400, "bad_message", exc.detail) from None
        if size > self.max_message_size:
            raise ApiError(413, "too_large", f"the message would be {size} bytes, over {self.max_message_size}")
        return await self.backend.inject(stream, room, msg, "api" if msg_id is not None else None, msg_id, "api")

    async def _rooms(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        rooms = (await self.backend.cluster_stats()).get("rooms", {})
        return {"rooms": rooms, "truncated": len(rooms) >= MAX_LISTED_ROOMS}

    async def _presence(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        room = _room(args[0])
        return {"room": room, **await self.backend.presence_of(room)}

    async def _disconnect(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        client_id = args[0]
        if not 0 < len(client_id) <= 64:
            raise ApiError(400, "bad_request", "a client id is 1 to 64 characters")
        doc = self._json_body(request, body) if body else {}
        code = _integral(doc.get("code", 4000))
        reason = doc.get("reason", "disconnected by the server")
        if type(code) is not int or not 4000 <= code <= 4999:
            raise ApiError(400, "bad_message", "'code' must be an integer from 4000 to 4999")
        if type(reason) is not str or len(reason) > 120:
            raise ApiError(400, "bad_message", "'reason' must be a string of at most 120 characters")
        closed, others = await self.backend.disconnect(client_id, code, reason)
        if not closed and not others:
            raise ApiError(404, "not_found", f"no client {client_id!r} is connected")
        return {"client_id": client_id, "disconnected": closed, "other_nodes": others}

    async def _stats(self, request: HttpRequest, body: bytes, args: list[str]) -> Any:
        return await self.backend.cluster_stats()

    # --- checks --------------------------------------------------------------------------------------

    def _json_body(self, request: HttpRequest, body: bytes) -> dict[str, Any]:
        ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad_encoding", "the body is not valid JSON") from None
        if type(doc) is not dict:
            raise ApiError(400, "bad_message", "the body must be a JSON object")
        return doc


def _room(room: Any) -> str:
    if type(room) is not str or not 0 < len(room) <= MAX_ROOM_LEN:
        raise ApiError(400, "bad_room", f"'room' must be a string of 1 to {MAX_ROOM_LEN} characters")
    if room.startswith(SYSTEM_PREFIX):
        raise ApiError(400, "bad_room", f"rooms starting with {SYSTEM_PREFIX!r} are the server's own")
    return room


def _msg_id(value: Any) -> str | int | None:
    if value is None:
        return None
    value = _integral(value)
    if type(value) is int and -(1 << 63) <= value < 1 << 63:
        return value
    if type(value) is str and len(value) <= MAX_ID_LEN:
        return value
    raise ApiError(400, "bad_message", f"'id' must be an integer or a string of at most {MAX_ID_LEN} characters")


def _integral(value: Any) -> Any:
    """7.0 is an integer in JSON (and in JSON Schema): take it as 7, where a float holds it exactly (a
    larger one, e.g. an id beyond 64 bits that the parser turned into a float, stays refused)."""
    if type(value) is float and value.is_integer() and abs(value) <= 1 << 53:
        return int(value)
    return value
