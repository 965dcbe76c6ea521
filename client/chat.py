"""``python -m client chat``: an interactive chat, also usable with piped input.

Lines are read by a thread (``input()`` with readline on a terminal, ``readline()`` otherwise) and handled
one at a time, in order, on the event loop; ``/ping``, ``/stats``, ``/join`` and ``/leave`` wait for their
answer before the next line is read. On a terminal, incoming messages are printed *above* the prompt: the
line is cleared, the message printed, then the prompt and the text typed so far are redrawn, so what is
being typed is never garbled. At ``/exit`` or end of input the command waits (at most ``--wait`` seconds)
until its own chats and broadcasts have come back (or been refused with an ``error``) and the client is
connected, then exits.

Chats and broadcasts go out with an ``id`` (``c1``, ``c2``, ...) so that a refusal (``forbidden``,
``rate_limited``, ``no_room``), which echoes the ``id``, is told apart from a message still on its way.
Against a v1.1 server they are sent with ``ack=True``: a line typed just before a connection drops is
re-sent after the reconnect and published once. After a reconnect, each stream's recovery is shown:
``* games: recovered 3 missed messages`` or ``! games: history lost, some messages may be missing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import protocol
from .aio import AsyncClient, State
from .errors import AckTimeout, ClientError, PublishFailed, ServerError
from .streams import RecoveryEvent

__all__ = ["HELP", "Console", "format_message", "format_recovery", "format_stats", "run_chat"]

HELP = """commands:
  <text>              send a chat message to the current room
  /broadcast <text>   send to every connected client
  /ping               measure the round-trip time
  /join <room>        join a room (it becomes the current room)
  /leave <room>       leave a room
  /stats              server statistics
  /nick <name>        change your user name
  /help               this help
  /exit               quit (also end of input, Ctrl-D)
  //text              send a chat message that starts with '/'"""

PROMPT = "> "

# Go to column 0 and erase the line. Everything the console writes on a terminal starts with it, and so
# does the prompt readline draws (between \001 and \002, which tell readline it takes no room), so a
# prompt redrawn at a moment when readline was not showing one (just before it draws its prompt, or just
# after the user pressed Enter) is wiped by whatever comes next instead of staying on the screen.
CLEAR_LINE = "\r\x1b[2K"


def _who(msg: dict[str, Any]) -> str:
    user, sender = msg.get("user"), msg.get("from")
    return str(user) if user else str(sender) if sender else "?"


def format_message(msg: dict[str, Any]) -> str:
    """One line for a message from the server, for humans."""
    kind = msg.get("type")
    if kind == "chat":
        return f"[{msg.get('room', '?')}] {_who(msg)}: {msg.get('text', '')}"
    if kind == "broadcast":
        body = msg["text"] if "text" in msg else msg.get("data")
        return f"[broadcast] {_who(msg)}: {body}"
    if kind == "publication":
        return f"[{msg.get('room', '?')}] {_who(msg)} published: {msg.get('data')}"
    if kind == "welcome":
        user = f" (user {msg['user']})" if msg.get("user") else ""
        version = msg.get("version") or msg.get("protocol")
        rooms = msg.get("rooms") or []
        if not rooms and isinstance(msg.get("autojoin"), list):  # v1.1: the client joins these itself
            rooms = [r for r in msg["autojoin"] if isinstance(r, str) and r != protocol.BROADCAST_STREAM]
        return (
            f"* connected as {msg.get('client_id')}{user} to worker {msg.get('worker')} "
            f"(codec {msg.get('codec')}, protocol {version}); rooms: {', '.join(rooms)}"
        )
    if kind == "joined":
        return f"* joined {msg.get('room')}; rooms: {', '.join(msg.get('rooms', []))}"
    if kind == "left":
        return f"* left {msg.get('room')}; rooms: {', '.join(msg.get('rooms', []))}"
    if kind == "pong":
        return "* pong"
    if kind == "error":
        return f"! error {msg.get('code')}: {msg.get('detail', '')}"
    if kind == "stats":
        return format_stats(msg)
    return f"* {kind}: {msg}"


_REASONS = {
    "epoch_changed": "the server lost its history",
    "gap": "part of it is gone",
    "bad_since": "the server did not know our position",
    "rewound": "the server went back in time",
    "rejoin_failed": "could not join it again",
    "not_recovered": "the server could not replay it all",
}


def format_recovery(event: RecoveryEvent) -> str | None:
    """One line about a stream's recovery after a reconnect, or a loss seen live; ``None`` when there is
    nothing worth saying (recovered, and nothing was missed)."""
    where = "broadcasts" if event.room == protocol.BROADCAST_STREAM else event.room
    if event.recovered:
        if not event.replayed:
            return None
        return f"* {where}: recovered {event.replayed} missed message{'s' if event.replayed != 1 else ''}"
    why = _REASONS.get(event.reason, event.reason)
    if event.missed:
        why += f", {event.missed} missing"
    if event.replayed:
        why += f"; recovered {event.replayed}"
    return f"! {where}: history lost, some messages may be missing ({why})"


def format_stats(msg: dict[str, Any], bullet: str = "* ") -> str:
    """The ``stats`` message as a few lines, each starting with ``bullet``."""
    rooms = msg.get("rooms") or {}
    room_list = ", ".join(f"{k}={v}" for k, v in sorted(rooms.items())) if isinstance(rooms, dict) else str(rooms)
    workers = msg.get("workers") or []
    lines = [
        f"{bullet}stats: {msg.get('clients')} clients on {len(workers)} workers, uptime {msg.get('uptime_s')} s"
        + (" (partial)" if msg.get("partial") else ""),
        f"{bullet}  rooms: {room_list or '-'}",
    ]
    for w in workers:
        if isinstance(w, dict):
            lines.append(
                f"{bullet}  worker {w.get('id')} pid {w.get('pid')}: {w.get('clients')} clients, "
                f"{w.get('messages_in')} in, {w.get('messages_out')} out"
            )
    you = msg.get("you")
    if isinstance(you, dict):
        lines.append(
            f"{bullet}  you: {you.get('client_id')}, {you.get('messages_in')} in, {you.get('messages_out')} out, "
            f"connected {you.get('connected_s')} s"
        )
    return "\n".join(lines)


class Console:
    """Prints lines without garbling a line being typed at a readline prompt.

    On a terminal, while the reader thread sits in ``input()``, a line is printed by clearing the current
    line (``\\r`` + erase), writing the text, then redrawing the prompt and readline's line buffer.
    ``prompting`` is set just before ``input()`` and cleared just after it returns, so it can be true for
    an instant when no prompt is showing; every write and readline's own prompt start by clearing the
    line (:data:`CLEAR_LINE`), so a prompt redrawn in that instant is wiped by the next output instead
    of staying on the screen. Elsewhere, lines are simply written and flushed.
    """

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.prompt = PROMPT
        self.prompting = False
        self._lock = threading.Lock()
        self._buffer: Callable[[], str] = lambda: ""
        self._input_prompt = PROMPT  # what input() is given
        if interactive:
            try:
                import readline

                self._buffer = readline.get_line_buffer
                self._input_prompt = "\001" + CLEAR_LINE + "\002" + PROMPT
            except ImportError:  # pragma: no cover - readline exists on the platforms we run on
                pass

    def print(self, text: str) -> None:
        with self._lock:
            if not self.interactive:
                self.out.write(text + "\n")
            elif self.prompting:
                self.out.write(CLEAR_LINE + text + "\n" + self.prompt + self._buffer())
            else:
                self.out.write(CLEAR_LINE + text + "\n")
            self.out.flush()

    def end(self) -> None:
        """Leave the terminal on a fresh line if a prompt is showing."""
        with self._lock:
            if self.interactive and self.prompting:
                self.out.write("\n")
                self.out.flush()
                self.prompting = False

    def read_line(self, stdin: TextIO) -> str | None:
        """One line without its newline, or ``None`` at end of input. Called from the reader thread."""
        if self.interactive:
            with self._lock:
                self.prompting = True
            try:
                return input(self._input_prompt)
            except EOFError:
                return None
            finally:
                with self._lock:
                    self.prompting = False
        line = stdin.readline()
        return None if line == "" else line.rstrip("\r\n")


@dataclass(slots=True)
class _Echoes:
    """Counts our own chats and broadcasts sent, and those that came back.

    ``expected`` is raised *before* a message is handed to the client and lowered again when the send
    fails or the server refuses it with an ``error`` echoing its ``id`` (``pending`` holds the ids that
    may still be refused), so that an answer can never arrive before it is expected.
    """

    my_ids: set[str] = field(default_factory=set)  # our client ids, one per connection
    expected: int = 0
    received: int = 0
    pending: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self) -> bool:
        return self.received >= self.expected


class ChatSession:
    def __init__(self, client: AsyncClient, console: Console, wait_s: float) -> None:
        self.client = client
        self.console = console
        self.wait_s = wait_s
        self.echoes = _Echoes()
        self.closed = asyncio.Event()
        self.was_connected = False
        self.exiting = False
        self._msg_ids = (f"c{n}" for n in itertools.count(1))
        self._acked: set[asyncio.Future[Any]] = set()
        client.set_message_callback(self._on_message)
        client.on_state_change(self._on_state)
        client.on_recovery(self._on_recovery)

    def _on_recovery(self, event: RecoveryEvent) -> None:
        line = format_recovery(event)
        if line is not None:
            self.console.print(line)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "welcome":
            cid = msg.get("client_id")
            if isinstance(cid, str):
                self.echoes.my_ids.add(cid)
        ev = self.echoes
        if kind in ("chat", "broadcast") and msg.get("from") in ev.my_ids:
            ev.received += 1
            if ev.settled():
                ev.pending.clear()  # nothing of ours is on its way any more
            ev.changed.set()
        rid = msg.get("id")
        if kind == "error" and isinstance(rid, str) and rid in ev.pending:
            if msg.get("code") == "unavailable":
                return  # the client sends it again by itself
            ev.pending.discard(rid)  # one of our chats or broadcasts was refused: it will not come back
            ev.expected -= 1
            ev.changed.set()
        elif kind in protocol.REPLY_TYPES and rid is not None:
            return  # an answer to one of our commands: the command prints it
        self.console.print(format_message(msg))

    def _on_state(self, state: State, error: ClientError | None) -> None:
        if state is State.RECONNECTING:
            self.console.print(f"* reconnecting... ({error})")
        elif state is State.CONNECTED and self.was_connected:
            self.console.print(f"* reconnected; rooms: {', '.join(self.client.rooms)}")
        elif state is State.CLOSED and error is not None and self.was_connected:
            self.console.print(f"! connection closed: {error}; not reconnecting")  # (a failed connect() says it)
        if state is State.CONNECTED:
            self.was_connected = True
        if state is State.CLOSED:
            self.closed.set()
        self.echoes.changed.set()

    async def handle(self, line: str) -> bool:
        """Handle one input line; False means exit."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("//") or not line.startswith("/"):
            await self._chat(line[1:] if line.startswith("//") else line)
            return True
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        c = self.client
        try:
            if cmd in ("/exit", "/quit"):
                return False
            elif cmd == "/help":
                self.console.print(HELP)
            elif cmd == "/ping":
                self.console.print(f"* pong: {await c.ping():.2f} ms")
            elif cmd == "/stats":
                self.console.print(format_stats(await c.get_stats()))
            elif cmd in ("/join", "/leave") and not arg:
                self.console.print(f"! usage: {cmd} <room>")
            elif cmd == "/join":
                self.console.print(f"* joined {arg}; rooms: {', '.join(await c.join(arg))}")
            elif cmd == "/leave":
                self.console.print(f"* left {arg}; rooms: {', '.join(await c.leave(arg))}")
            elif cmd == "/nick":
                protocol.chat("x", user=arg)  # validates
                c.user = arg
                self.console.print(f"* you are now {arg}")
            elif cmd == "/broadcast":
                if not arg:
                    self.console.print("! usage: /broadcast <text>")
                else:
                    await self._publish(protocol.broadcast(arg, user=c.user))
            else:
                self.console.print(f"! unknown command {cmd}; /help lists the commands")
        except ServerError as exc:
            self.console.print(f"! error {exc.code}: {exc.detail}")
        except (ClientError, ValueError) as exc:
            self.console.print(f"! {cmd}: {exc}")
        return True

    async def _chat(self, text: str) -> None:
        try:
            msg = protocol.chat(text, self.client.user)
        except ValueError as exc:
            self.console.print(f"! not sent: {exc}")
            return
        try:
            await self._publish(msg)
        except ClientError as exc:
            self.console.print(f"! not sent: {exc}")

    async def _publish(self, msg: dict[str, Any]) -> None:
        """Send a chat (to the current room, of which we are a member) or a broadcast; both come back to
        us unless the server refuses them. Raises what the send raises."""
        ev = self.echoes
        rid = next(self._msg_ids)
        ev.pending.add(rid)
        ev.expected += 1
        if self.client.server_version >= protocol.V1_1:
            # Acknowledged: kept and re-sent (same id) across reconnects until the server has it. The ack
            # is not waited for here; one step of the task writes the message, so lines go out in order.
            task = asyncio.ensure_future(self.client.send_message({**msg, "id": rid}, ack=True))
            self._acked.add(task)
            task.add_done_callback(lambda t: self._acked_done(t, rid))
            await asyncio.sleep(0)
            return
        try:
            await self.client.send_message({**msg, "id": rid})
        except BaseException:
            ev.pending.discard(rid)
            ev.expected -= 1
            raise

    def _acked_done(self, task: asyncio.Future[Any], rid: str) -> None:
        self._acked.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        ev = self.echoes
        if rid not in ev.pending:
            return  # refused by the server: the error was printed when it came
        ev.pending.discard(rid)  # it will not come back (or we stop waiting for it)
        ev.expected -= 1
        ev.changed.set()
        if self.exiting:
            return
        if isinstance(exc, AckTimeout):
            self.console.print(f"! {rid} was not confirmed in time; it may or may not have been sent")
        elif isinstance(exc, PublishFailed) and exc.code is None and isinstance(exc.__cause__, ClientError):
            self.console.print(f"! not sent: {exc.__cause__}")
        else:
            self.console.print(f"! not sent: {exc}")

    async def drain(self) -> None:
        """Wait, at most ``wait_s``, until we are connected and our own messages have come back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        ev = self.echoes
        while loop.time() < deadline and self.client.state is not State.CLOSED:
            if self.client.state is State.CONNECTED and ev.settled():
                return
            ev.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.changed.wait(), deadline - loop.time())
        if ev.received < ev.expected:
            self.console.print(f"! {ev.expected - ev.received} of your messages did not come back in time")


async def run_chat(
    url: str,
    codec: str,
    user: str | None,
    room: str | None = None,
    wait_s: float = 5.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    *,
    cafile: str | None = None,
    token: str | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    client = AsyncClient(url, codec, user=user, request_timeout=wait_s, inbox_size=0, cafile=cafile, token=token)
    with _terminal_restored(stdin if interactive else None):
        return await _chat(client, room, wait_s, stdin, stdout, interactive)


@contextlib.contextmanager
def _terminal_restored(stdin: TextIO | None) -> Iterator[None]:
    """Put the terminal back as it was: the reader thread may be left inside readline's input()."""
    saved: list[Any] | None = None
    if stdin is not None:
        with contextlib.suppress(Exception):
            saved = termios.tcgetattr(stdin.fileno())
    try:
        yield
    finally:
        if saved is not None and stdin is not None:
            with contextlib.suppress(Exception):
                termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)


async def _chat(
    client: AsyncClient, room: str | None, wait_s: float, stdin: TextIO, stdout: TextIO, interactive: bool
) -> int:
    console = Console(stdout, interactive)
    session = ChatSession(client, console, wait_s)
    try:
        await client.connect()
    except ClientError as exc:
        print(f"chat: {exc} ({type(exc).__name__})", file=sys.stderr)
        return 1
    if interactive:
        console.print("type /help for the commands, /exit to quit")
    if room:
        await session.handle(f"/join {room}")

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    next_line = threading.Event()

    def reader() -> None:
        while True:
            try:
                line = console.read_line(stdin)
            except (OSError, ValueError, KeyboardInterrupt):
                line = None
            try:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            except RuntimeError:  # the loop is closed: the chat ended (e.g. a fatal close) while we read
                return
            if line is None:
                return
            next_line.wait()
            next_line.clear()

    threading.Thread(target=reader, name="fanwire-chat-stdin", daemon=True).start()
    status = 0
    closed = asyncio.ensure_future(session.closed.wait())
    try:
        while True:
            get = asyncio.ensure_future(lines.get())
            await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                status = 1
                break
            line = get.result()
            if line is None or not await session.handle(line):
                await session.drain()
                break
            next_line.set()
    finally:
        closed.cancel()
        session.exiting = True
        if client.state is State.CLOSED and client.closed_reason is not None:
            status = 1
        await client.disconnect()
        console.end()
    return status
