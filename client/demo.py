"""``python -m client demo``: a guided tour of every feature, built on the blocking :class:`~client.Client`.

Each step waits (bounded) for the message that proves it worked before printing it, so the output reads
in order even though messages arrive on the client's background thread.
"""

from __future__ import annotations

import queue
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from . import protocol
from .chat import format_message, format_stats
from .errors import ClientError
from .sync import Client

__all__ = ["run_demo"]

_WAIT_S = 5.0


class _Inbox:
    """Messages from one client's callback thread, handed to the demo's thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)

    def put(self, msg: dict[str, Any]) -> None:
        try:
            self.q.put_nowait(msg)
        except queue.Full:  # nobody is reading: drop rather than block the client's loop
            pass

    def expect(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = _WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.q.get(timeout=left)
            except queue.Empty:
                break
            if pred(msg):
                return msg
        raise ClientError(f"no {what} within {timeout:g} s")


def run_demo(
    url: str,
    codec: str,
    user: str | None,
    out: TextIO | None = None,
    *,
    cafile: str | None = None,
    token: str | None = None,
) -> int:
    """Run the tour; 0 when every step worked. With authentication on, ``token`` must allow every room
    and broadcasts (the server then shows the token's user instead of ``user``)."""
    out = out if out is not None else sys.stdout
    user = user or "alice"
    other = "msgpack" if codec == "json" else "json"
    room = f"games-{uuid.uuid4().hex[:6]}"

    def say(step: str, text: str) -> None:
        print(f"{step:<18} {text}", file=out, flush=True)

    say("fanwire demo", f"{url}, codec {codec}, user {user}")
    inbox = _Inbox()
    c = Client(url, codec=codec, cafile=cafile, token=token)
    c.set_message_callback(inbox.put)
    second: Client | None = None
    step = "connect"
    try:
        welcome = c.connect()
        me = c.client_id
        say("1. connect", format_message(welcome)[2:])

        step = "chat"
        c.send_chat_message("Hello World!", user)
        got = inbox.expect("chat echo", lambda m: m["type"] == "chat" and m.get("from") == me)
        say("2. chat", f"sent 'Hello World!' to the lobby, received back: {format_message(got)}")

        step = "broadcast"
        c.send_broadcast("to everyone", user=user)
        got = inbox.expect("broadcast", lambda m: m["type"] == "broadcast" and m.get("from") == me)
        say("3. broadcast", f"received: {format_message(got)}")

        step = "ping"
        rtts = [c.ping() for _ in range(3)]
        say("4. ping", "round trips " + ", ".join(f"{r:.2f} ms" for r in rtts))

        step = "join"
        rooms = c.join(room)
        say("5. join", f"joined {room}; rooms: {', '.join(rooms)}")
        c.send_chat_message("anyone here?", user)  # no room given: goes to the current room, the one just joined
        got = inbox.expect("chat in the new room", lambda m: m["type"] == "chat" and m.get("room") == room)
        say("", f"chat without a room goes to the current one: {format_message(got)}")

        step = "get_stats"
        stats = c.get_stats()
        say("6. get_stats", format_stats(stats, bullet="").replace("\n", "\n" + " " * 19))
        c.send_message({"type": "custom", "action": "get_stats"})  # the raw form, answered to the callback
        inbox.expect("stats via the callback", lambda m: m["type"] == "stats")
        say("", "send_message({'type': 'custom', 'action': 'get_stats'}): stats arrived through the callback")

        step = "leave"
        rooms = c.leave(room)
        say("7. leave", f"left {room}; rooms: {', '.join(rooms)}")

        step = "codecs"
        sample = protocol.chat("Hello World!", user, "lobby")
        sizes = {name: len(cd.encode(sample)) for name, cd in protocol.CODECS.items()}
        say("8. codecs", "the same chat encodes to " + ", ".join(f"{n} B in {k}" for k, n in sizes.items()))
        second = Client(url, codec=other, cafile=cafile, token=token)
        inbox2 = _Inbox()
        second.set_message_callback(inbox2.put)
        second.connect()
        second.send_chat_message(f"hi from a {other} client", "bob")
        them = second.client_id
        got = inbox.expect(f"chat from the {other} client", lambda m: m["type"] == "chat" and m.get("from") == them)
        say("", f"a {other} client said hello; this {codec} client received: {format_message(got)}")
    except ClientError as exc:
        print(f"demo: {step} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if second is not None:
            second.disconnect()
        c.disconnect()
    say("done", "all features shown")
    return 0
