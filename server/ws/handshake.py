"""The WebSocket opening handshake: websockets' validation and negotiation, on a request head we parsed.

:func:`accept` runs websockets' ``ServerProtocol.accept`` (key, version, Upgrade/Connection headers,
subprotocol and extension negotiation) on a short-lived protocol object and returns the ``101`` response
bytes with what was negotiated; the object is dropped at once, so an open connection carries nothing of it.
A request websockets refuses raises :class:`~server.errors.HttpError` with websockets' own status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from .. import codecs
from ..errors import HttpError
from ..http.request import HttpRequest

_logger = logging.getLogger("websockets.server")
_SUBPROTOCOLS = [Subprotocol(p) for p in codecs.SUBPROTOCOLS]


class _Protocol(ServerProtocol):
    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        chosen = codecs.select_subprotocol(subprotocols)
        return None if chosen is None else Subprotocol(chosen)


@dataclass(frozen=True, slots=True)
class Accepted:
    response: bytes  # the 101 response, to write as is
    subprotocol: str | None
    extensions: list[Any]  # negotiated extension objects (permessage-deflate), or []


def accept(request: HttpRequest, extension_factories: list[Any] | None) -> Accepted:
    headers = Headers()
    for name, value in request.headers:
        headers[name] = value
    proto = _Protocol(subprotocols=_SUBPROTOCOLS, extensions=extension_factories, logger=_logger)
    response = proto.accept(Request(request.target, headers))
    if response.status_code != 101:
        extra = tuple((k, v) for k, v in response.headers.raw_items()
                      if k.lower() in ("allow", "upgrade", "sec-websocket-version"))
        detail = response.body.decode(errors="replace").strip().splitlines()[0] if response.body else ""
        raise HttpError(response.status_code, detail or "bad WebSocket handshake", "bad_request", extra)
    return Accepted(bytes(response.serialize()), proto.subprotocol, list(proto.extensions))
