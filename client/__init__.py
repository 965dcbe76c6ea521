"""fanwire client: an asyncio :class:`AsyncClient`, a blocking :class:`Client`, and ``python -m client``.

>>> from client import Client
>>> c = Client("ws://127.0.0.1:8765", codec="msgpack")      # doctest: +SKIP
>>> c.set_message_callback(lambda msg: print("Received:", msg))  # doctest: +SKIP
>>> c.connect(); c.ping(); c.disconnect()                    # doctest: +SKIP

See ``docs/client.md``.
"""

from __future__ import annotations

from .aio import DEFAULT_URL, AsyncClient, State
from .backoff import Backoff, backoff
from .errors import (
    AckTimeout,
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    FatalClose,
    Forbidden,
    HandshakeRejected,
    NotConnected,
    OutboxFull,
    PublishFailed,
    RateLimited,
    RequestTimeout,
    SendQueueFull,
    ServerError,
    TLSError,
    Unavailable,
)
from .protocol import Ack, Position
from .streams import RecoveryEvent
from .sync import Client

__all__ = [
    "DEFAULT_URL",
    "Ack",
    "AckTimeout",
    "AsyncClient",
    "Backoff",
    "Client",
    "ClientError",
    "ClientTimeout",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionRefused",
    "FatalClose",
    "Forbidden",
    "HandshakeRejected",
    "NotConnected",
    "OutboxFull",
    "Position",
    "PublishFailed",
    "RateLimited",
    "RecoveryEvent",
    "RequestTimeout",
    "SendQueueFull",
    "ServerError",
    "State",
    "TLSError",
    "Unavailable",
    "backoff",
]
