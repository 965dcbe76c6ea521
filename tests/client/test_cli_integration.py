"""``python -m client`` against a real server: demo, chat through a pipe and a pseudo-terminal, stress."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest

from client import Client
from tests.client.fakes import Lines, wait_for
from tests.helpers import ROOT, ServerProcess, T

pytestmark = pytest.mark.timeout(60)


def client_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def line_of(lines: list[str], prefix: str, output: str) -> int:
    """The index of the one line starting with ``prefix``."""
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(hits) == 1, (prefix, hits, output)
    return hits[0]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_demo_shows_every_feature_and_exits_0(server: ServerProcess, codec: str) -> None:
    p = subprocess.run(client_cmd("demo", "--url", server.url, "--codec", codec), cwd=ROOT, capture_output=True,
                       text=True, timeout=T(30))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for needle in ("connected as", "Hello World!", "[broadcast] alice: to everyone", "round trips", " ms",
                   "joined games-", "left games-", "stats:", "B in json", "B in msgpack", "bob: hi from a",
                   "all features shown"):
        assert needle in out, (needle, out)


def test_chat_through_a_pipe_handles_lines_in_order_and_waits_for_answers(server: ServerProcess) -> None:
    seen: list[dict[str, Any]] = []
    with Client(server.url) as observer:
        observer.on("chat", seen.append)
        observer.join("games")
        script = "hello\n/ping\n/join games\nin games\n/stats\n/leave nowhere\n/nick bob\n//slash\n/bogus\n" \
                 "/broadcast to all\n/help\nlast words\n"
        p = subprocess.run(client_cmd("chat", "--url", server.url, "--user", "alice"), cwd=ROOT, input=script,
                           capture_output=True, text=True, timeout=T(30))
        assert p.returncode == 0, p.stderr
        out = p.stdout
        lines = out.splitlines()
        at = {prefix: line_of(lines, prefix, out) for prefix in (
            "* connected as", "* pong: ", "* joined games; rooms: lobby, games", "* stats: ", "! error not_in_room",
            "* you are now bob", "! unknown command /bogus", "commands:",
            "[lobby] alice: hello", "[games] alice: in games", "[games] bob: /slash", "[broadcast] bob: to all",
            "[games] bob: last words",
        )}
        # What each command prints comes in input order: a line is handled before the next one is read.
        commands = ["* connected as", "* pong: ", "* joined games; rooms: lobby, games", "* stats: ",
                    "! error not_in_room", "* you are now bob", "! unknown command /bogus", "commands:"]
        assert [at[c] for c in commands] == sorted(at[c] for c in commands), out
        # Our own messages come back each after the line that sent it. A chat is not waited for, and since
        # protocol v1.1 a room's messages are ordered by the worker that sequences the room (maybe the other
        # worker) while a ping is answered by ours: an echo may come before or after what the next commands
        # print, so only the order within one stream is asserted.
        assert at["[games] alice: in games"] < at["[games] bob: /slash"] < at["[games] bob: last words"], out
        assert at["* connected as"] < at["[lobby] alice: hello"], out
        assert at["* joined games; rooms: lobby, games"] < at["[games] alice: in games"], out
        assert at["* you are now bob"] < at["[games] bob: /slash"], out
        assert at["! unknown command /bogus"] < at["[broadcast] bob: to all"], out
        assert at["commands:"] < at["[games] bob: last words"], out
        # end of input: it waited until its own messages had all come back (each is found above), then left
        assert lines[-1] in {lines[at[e]] for e in ("[lobby] alice: hello", "[games] alice: in games",
                                                   "[games] bob: /slash", "[broadcast] bob: to all",
                                                   "[games] bob: last words")}, out
        assert "did not come back" not in out
        wait_for(lambda: any(m["text"] == "last words" for m in seen), 10, "observer got the chat")
        assert [m["text"] for m in seen if m.get("user") in ("alice", "bob")] == ["hello", "in games", "/slash", "last words"]


def test_chat_without_a_room_is_refused_and_not_waited_for(server: ServerProcess) -> None:
    # a chat while in no room is refused (no_room, echoing the chat's id): at the end of input the command
    # knows it will not come back and exits at once instead of waiting --wait seconds for it
    start = time.monotonic()
    p = subprocess.run(client_cmd("chat", "--url", server.url, "--wait", "60"), cwd=ROOT,
                       input="/leave lobby\nanyone?\n", capture_output=True, text=True, timeout=T(30))
    assert p.returncode == 0, p.stderr
    assert "! error no_room" in p.stdout and "did not come back" not in p.stdout, p.stdout
    assert time.monotonic() - start < 30  # not the 60 s of --wait


def test_chat_keeps_working_across_a_server_restart() -> None:
    with ServerProcess(workers=2) as srv:
        # --wait 30: at /exit it may still be in a backoff wait (up to 5 s) if the stop raced with a reconnect
        p = subprocess.Popen(client_cmd("chat", "--url", srv.url, "--user", "carol", "--wait", "30"), cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        out = Lines(p.stdout)
        try:
            p.stdin.write("/join games\nbefore\n")
            p.stdin.flush()
            out.until("[games] carol: before", 20)
            srv.stop()
            out.until("reconnecting...")
            down = time.monotonic()  # the server is gone: no connection can succeed from here to start()
            srv.start()
            # A "reconnected" from before the stop completed does not count: the workers stop one after
            # the other, so the client may have got back in to one still up. The default backoff (cap 5 s)
            # may be in its longest wait when the server comes back.
            out.until("reconnected", 5 + 15, since=down)
            p.stdin.write("after\n/exit\n")
            p.stdin.flush()
            out.until("[games] carol: after", 20)  # still in games: the room was re-joined
            assert p.wait(T(10)) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_chat_on_a_pseudo_terminal_redraws_the_line_being_typed(server: ServerProcess) -> None:
    seen: list[dict[str, Any]] = []
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
    p = subprocess.Popen(client_cmd("chat", "--url", server.url, "--user", "dora"), cwd=ROOT, stdin=slave,
                         stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    buf = bytearray()

    def read_until(needle: bytes, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + T(timeout)
        while needle not in buf:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen in {bytes(buf)!r}")
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    buf.extend(os.read(master, 65536))
                except OSError:
                    break
        return buf.index(needle)

    try:
        with Client(server.url) as observer:
            observer.on("chat", seen.append)
            read_until(b"type /help", 20)  # the process starts (slowly on a loaded machine) and connects
            read_until(b"> ")
            os.write(master, b"half a li")  # typed, not sent
            read_until(b"half a li")
            mark = len(buf)
            observer.send_chat_message("interrupting!", "eve")
            # the message gets its own line, then the prompt comes back with what was typed so far (waited
            # for whole: the terminal may hand the output over in more than one piece)
            redrawn = b"\r\x1b[2K[lobby] eve: interrupting!\r\n> half a li"
            assert read_until(redrawn) >= mark, bytes(buf)
            os.write(master, b"ne\r")
            wait_for(lambda: any(m["text"] == "half a line" for m in seen), 10, "the typed line arrived whole")
            assert [m["text"] for m in seen if m.get("user") == "dora"] == ["half a line"]
            os.write(master, b"/exit\r")
            assert p.wait(T(10)) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_stress_small_bounded_run_with_json_output(server: ServerProcess) -> None:
    p = subprocess.run(client_cmd("stress", "--url", server.url, "--connections", "6", "--messages", "25",
                                  "--processes", "2", "--inflight", "2", "--size", "200", "--codec", "msgpack",
                                  "--json"),
                       cwd=ROOT, capture_output=True, text=True, timeout=T(40))
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["config"]["processes"] == 2 and result["config"]["codec"] == "msgpack"
    assert result["connections"] == {"requested": 6, "opened": 6, "failed": 0}
    assert result["messages"] == {"sent": 150, "received": 150}
    assert result["errors"]["total"] == 0
    lat = result["latency_ms"]
    assert lat["count"] == 150
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < T(5000)
    assert result["msg_per_s"] > 0 and result["duration_s"] > 0
    assert "\x1b" not in p.stderr and "[####" not in p.stderr  # no progress bar when stderr is not a terminal


def test_stress_duration_mode_prints_the_table(server: ServerProcess) -> None:
    p = subprocess.run(client_cmd("stress", "--url", server.url, "-c", "2", "--duration", "0.5"),
                       cwd=ROOT, capture_output=True, text=True, timeout=T(30))
    assert p.returncode == 0, p.stderr
    for needle in ("throughput", "msg/s", "errors", "latency p50", "latency p99.9", "2/2 opened"):
        assert needle in p.stdout


def test_stress_against_nothing_reports_connect_errors_and_exits_1() -> None:
    from tests.helpers import free_port

    p = subprocess.run(client_cmd("stress", "--url", f"ws://127.0.0.1:{free_port()}", "-c", "3", "-n", "5",
                                  "--timeout", "1", "--json"),
                       cwd=ROOT, capture_output=True, text=True, timeout=T(30))
    assert p.returncode == 1
    result = json.loads(p.stdout)
    assert result["errors"]["connect"] == 3 and result["connections"]["opened"] == 0
