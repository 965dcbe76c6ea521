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
    RateLimited,
    RequestTimeout,
    SendQueueFull,
    ServerError,
    TLSError,
)
from .sync import Client

__all__ = [
    "DEFAULT_URL",
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
    "RateLimited",
    "RequestTimeout",
    "SendQueueFull",
    "ServerError",
    "State",
    "TLSError",
    "backoff",
]
