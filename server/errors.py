"""The exceptions fanwire's server raises, all under one root.

::

    FanwireError
     ├── ConfigError            a bad option or combination of options (exit code 2)
     ├── BootError              a worker cannot start: port in use, bad certificate... (no restart loop)
     ├── AuthError              a handshake token is missing, invalid or expired (HTTP 401); has ``reason``
     ├── RemoteProtocolError    the *peer* broke HTTP or RFC 6455: the connection ends
     │    ├── HttpError             a request refused before any WebSocket exists       has ``status``
     │    └── WsProtocolError       a frame breaking RFC 6455                            has a close ``code``
     ├── ProtocolViolation      the *peer* broke the fanwire message protocol; has an error ``code``
     │    ├── BadEncoding           payload is not valid JSON / msgpack            code "bad_encoding"
     │    ├── BadMessage            not a map, missing or wrongly typed field      code "bad_message"
     │    ├── UnknownType           unknown ``type``                               code "unknown_type"
     │    ├── UnknownAction         unknown ``custom`` action                      code "unknown_action"
     │    └── RoomError             bad room name, too many rooms, not in room     code varies
     ├── BusError               the bus between workers or nodes failed
     │    └── BusFrameError         a malformed frame arrived on the bus (dropped and counted)
     └── PublishFailed          a server-side publication (application, HTTP API) was not sequenced;
                                has the ``code`` a client would get (``unavailable``: send it again)

``ProtocolViolation`` never closes a connection: the worker turns it into an ``error`` reply.
``RemoteProtocolError`` always does: an HTTP error status, or a close frame with its code.
"""

from __future__ import annotations


class FanwireError(Exception):
    """Root of every fanwire server exception."""


class ConfigError(FanwireError):
    """An invalid option or combination of options."""


class BootError(FanwireError):
    """A worker could not boot; the supervisor halts instead of restarting it."""


class AuthError(FanwireError):
    """A handshake's token is missing, malformed, badly signed or expired. ``reason`` labels the metric."""

    def __init__(self, detail: str, reason: str = "auth_invalid") -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class RemoteProtocolError(FanwireError):
    """The peer broke HTTP/1.1 or RFC 6455; the connection ends."""


class HttpError(RemoteProtocolError):
    """A request refused before any WebSocket exists: ``status`` and a one-line ``detail``; ``reason``
    labels the metric (and is the error code of a JSON answer: ``json`` is set for the HTTP API's paths)."""

    def __init__(self, status: int, detail: str, reason: str = "bad_request",
                 headers: tuple[tuple[str, str], ...] = (), json: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason
        self.headers = headers
        self.json = json


class WsProtocolError(RemoteProtocolError):
    """A frame breaking RFC 6455: close the connection with ``code`` (1002, 1007, 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ProtocolViolation(FanwireError):
    """The client sent something the protocol refuses. ``code`` goes into the error reply."""

    code = "bad_message"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadEncoding(ProtocolViolation):
    code = "bad_encoding"


class BadMessage(ProtocolViolation):
    code = "bad_message"


class UnknownType(ProtocolViolation):
    code = "unknown_type"


class UnknownAction(ProtocolViolation):
    code = "unknown_action"


class RoomError(ProtocolViolation):
    code = "bad_room"


class BusError(FanwireError):
    """The bus failed to carry a frame."""


class BusFrameError(BusError):
    """A frame on the bus could not be parsed."""


class PublishFailed(FanwireError):
    """A publication of the server's own (``ctx.publish``, the HTTP API) was not sequenced."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the publication was not sequenced: {code}")
        self.code = code
