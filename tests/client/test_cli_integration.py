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
from tests.helpers import ROOT, ServerProcess, T

pytestmark = pytest.mark.timeout(60)


def client_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def wait_for(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        time.sleep(0.01)


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
        lines = p.stdout.splitlines()
        wanted = [
            "* connected as",
            "[lobby] alice: hello",
            "* pong: ",
            "* joined games; rooms: lobby, games",
            "[games] alice: in games",
            "* stats: ",
            "! error not_in_room",
            "* you are now bob",
            "[games] bob: /slash",
            "! unknown command /bogus",
            "[broadcast] bob: to all",
            "commands:",
            "[games] bob: last words",  # end of input: it waited until its last message came back
        ]
        pos = 0
        for needle in wanted:  # in this order: each command was handled before the next line
            while pos < len(lines) and not lines[pos].startswith(needle):
                pos += 1
            assert pos < len(lines), (needle, p.stdout)
        wait_for(lambda: any(m["text"] == "last words" for m in seen), 5, "observer got the chat")
        assert [m["text"] for m in seen if m.get("user") in ("alice", "bob")] == ["hello", "in games", "/slash", "last words"]


def test_chat_keeps_working_across_a_server_restart() -> None:
    with ServerProcess(workers=2) as srv:
        p = subprocess.Popen(client_cmd("chat", "--url", srv.url, "--user", "carol"), cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        out: list[str] = []

        def read_until(needle: str, timeout: float = 10.0) -> None:
            assert p.stdout is not None
            deadline = time.monotonic() + T(timeout)
            while time.monotonic() < deadline:
                r, _, _ = select.select([p.stdout], [], [], 0.1)
                if r:
                    line = p.stdout.readline()
                    out.append(line)
                    if needle in line:
                        return
            raise AssertionError(f"{needle!r} not seen; output so far: {''.join(out)}")

        try:
            p.stdin.write("/join games\nbefore\n")
            p.stdin.flush()
            read_until("[games] carol: before")
            srv.stop()
            read_until("reconnecting...")
            srv.start()
            read_until("reconnected")
            p.stdin.write("after\n/exit\n")
            p.stdin.flush()
            read_until("[games] carol: after")  # still in games: the room was re-joined
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
            read_until(b"type /help")
            read_until(b"> ")
            os.write(master, b"half a li")  # typed, not sent
            read_until(b"half a li")
            mark = len(buf)
            observer.send_chat_message("interrupting!", "eve")
            read_until(b"eve: interrupting!")
            after = bytes(buf[mark:])
            # the message got its own line, then the prompt came back with what was typed so far
            assert b"\r\x1b[2K[lobby] eve: interrupting!\r\n> half a li" in after, after
            os.write(master, b"ne\r")
            wait_for(lambda: any(m["text"] == "half a line" for m in seen), 5, "the typed line arrived whole")
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
