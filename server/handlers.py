"""What a worker does with a client's message, one handler per ``--mode`` (a registry, not string compares).

- ``chat``: the fanwire protocol. The message goes through the pure :mod:`.protocol`, and the actions it
  returns are carried out here: replies to the sender, publications to the hub and the bus, room changes,
  stats queries.
- ``echo``: plain WebSocket echo on the same engine (for comparisons and conformance suites).

A text message must be valid UTF-8 (RFC 6455 8.1): every mode checks that first and closes with 1007
otherwise (a check costs tens of nanoseconds for a small message).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from .protocol import (
    Custom,
    Join,
    Publish,
    QueryPresence,
    QueryStats,
    Reply,
    Unsubscribe,
    handle_payload,
)

if TYPE_CHECKING:
    from .connection import Conn

_time = time.time


class MessageSink(Protocol):
    """What the handlers need of the worker."""

    max_rooms: int

    def reply(self, conn: Conn, msg: dict[str, Any]) -> None: ...

    def publish(self, conn: Conn, action: Publish) -> None: ...

    def join(self, conn: Conn, join: Join) -> None: ...

    def unsubscribe(self, conn: Conn, room: str) -> None: ...

    def query_stats(self, conn: Conn, query: QueryStats) -> None: ...

    def custom(self, conn: Conn, call: Custom) -> None: ...

    def query_presence(self, conn: Conn, query: QueryPresence) -> None: ...

    def count_in(self, mtype: str, nbytes: int) -> None: ...

    def count_out(self, mtype: str, n: int, nbytes: int) -> None: ...


Handler = Callable[["Conn", bytes, bool], None]


def valid_utf8(data: bytes) -> bool:
    if data.isascii():  # no copy, no allocation: the common case, and a fast one for a large message
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def chat_handler(sink: MessageSink) -> Handler:
    """The fanwire protocol (``--mode chat``)."""
    max_rooms = sink.max_rooms
    count_in = sink.count_in
    reply = sink.reply

    def on_message(conn: Conn, data: bytes, text: bool) -> None:
        if text and not valid_utf8(data):
            conn.fail(1007, "invalid UTF-8 in a text frame")
            return
        mtype, actions = handle_payload(conn, data, int(_time() * 1000), max_rooms, conn.policy)
        count_in(mtype, len(data))
        for action in actions:
            match action:
                case Reply(msg=msg):
                    reply(conn, msg)
                case Publish():
                    sink.publish(conn, action)
                case Join():
                    sink.join(conn, action)
                case Unsubscribe(room=room):
                    sink.unsubscribe(conn, room)
                case QueryStats():
                    sink.query_stats(conn, action)
                case Custom():
                    sink.custom(conn, action)
                case QueryPresence():
                    sink.query_presence(conn, action)

    return on_message


def echo_handler(sink: MessageSink) -> Handler:
    """Plain WebSocket echo (``--mode echo``): every message comes back as it came."""
    count_in = sink.count_in
    count_out = sink.count_out

    def on_message(conn: Conn, data: bytes, text: bool) -> None:
        if text and not valid_utf8(data):
            conn.fail(1007, "invalid UTF-8 in a text frame")
            return
        conn.send_message(data, text)
        conn.msgs_out += 1
        count_in("echo", len(data))
        count_out("echo", 1, len(data))

    return on_message


MODES: Final[dict[str, Callable[[MessageSink], Handler]]] = {
    "chat": chat_handler,
    "echo": echo_handler,
}
