"""CLI argument handling (exit 2 with a clear message) and the pure output formatting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from client import protocol
from client.chat import format_message, format_stats
from client.cli import _normalize, build_parser, main
from client.stress import StressConfig, format_table, padding_for, split

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--url", "http://127.0.0.1:1"], "not a ws:// or wss:// URL"),
        (["chat", "--codec", "xml"], "invalid choice: 'xml'"),
        (["chat", "--user", "u" * 65], "at most 64 characters"),
        (["chat", "--user", ""], "must not be empty"),
        (["chat", "--room", ""], "must not be empty"),
        (["chat", "--wait", "-1"], "must be a positive number"),
        (["stress", "--connections", "0"], "must be >= 1"),
        (["stress", "--connections", "ten"], "not an integer"),
        (["stress", "--messages", "5", "--duration", "2"], "not allowed with argument"),
        (["stress", "--size", "-3"], "must be >= 0"),
        (["stress", "--duration", "nan"], "must be a positive number"),
        (["stress", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "unknown command 'frobnicate'; the commands are demo, chat, stress"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: python -m client" in err


@pytest.mark.parametrize("command", ["demo", "chat", "stress"])
def test_every_command_has_help_with_the_common_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--url", "--codec", "--user", "--help"):
        assert option in out


def test_demo_is_the_default_command() -> None:
    parser = build_parser()
    assert _normalize([], parser) == ["demo"]
    assert _normalize(["--url", "ws://h:1"], parser) == ["demo", "--url", "ws://h:1"]
    assert _normalize(["chat"], parser) == ["chat"]
    assert _normalize(["--help"], parser) == ["--help"]
    args = parser.parse_args(_normalize(["--codec", "msgpack"], parser))
    assert (args.command, args.codec) == ("demo", "msgpack")


def test_python_dash_m_client_help_and_bad_args_as_a_process() -> None:
    ok = subprocess.run([sys.executable, "-m", "client", "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "demo" in ok.stdout and "stress" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "client", "stress", "-c", "-5"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_refused_connection_is_a_clean_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import free_port

    assert main(["demo", "--url", f"ws://127.0.0.1:{free_port()}"]) == 1
    assert "ConnectionRefused" in capsys.readouterr().err


def test_format_message() -> None:
    assert format_message({"type": "chat", "room": "lobby", "user": "al", "from": "0-1", "text": "hi"}) == "[lobby] al: hi"
    assert format_message({"type": "chat", "room": "g", "from": "0-1", "text": "hi"}) == "[g] 0-1: hi"
    assert format_message({"type": "broadcast", "from": "0-1", "data": [1]}) == "[broadcast] 0-1: [1]"
    assert format_message({"type": "error", "code": "no_room", "detail": "d"}) == "! error no_room: d"
    assert format_message({"type": "joined", "room": "g", "rooms": ["lobby", "g"]}) == "* joined g; rooms: lobby, g"
    assert format_message({"type": "future", "x": 1}).startswith("* future:")


def test_format_stats() -> None:
    text = format_stats({"type": "stats", "clients": 3, "rooms": {"lobby": 3}, "uptime_s": 1.5,
                         "workers": [{"id": 0, "pid": 9, "clients": 3, "messages_in": 1, "messages_out": 2}],
                         "partial": True})
    assert "3 clients on 1 workers" in text and "(partial)" in text and "lobby=3" in text and "pid 9" in text


def test_split_and_process_count() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(12345, 7)) == 12345
    assert StressConfig("ws://x:1", connections=3, processes=8).process_count() == 3
    assert StressConfig("ws://x:1", connections=10).process_count() == 1


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("size", [64, 300, 4096])
def test_ping_padding_reaches_the_requested_size(codec: str, size: int) -> None:
    c = protocol.get_codec(codec)
    msg = {"type": "ping", "id": 123, "ts": [10**15, padding_for(c, size)]}
    assert abs(len(c.encode(msg)) - size) <= 12


def test_format_table_has_every_required_row() -> None:
    result = {
        "config": {"url": "ws://h:1", "codec": "json", "connections": 2, "messages": 5, "duration": None,
                   "size": 64, "inflight": 1, "processes": 1},
        "connections": {"requested": 2, "opened": 2},
        "messages": {"sent": 10, "received": 9},
        "duration_s": 0.5, "msg_per_s": 18.0,
        "errors": {"timeout": 1, "connect": 0, "total": 1},
        "latency_ms": {"p50": 0.1, "p90": 0.2, "p99": 0.3, "p99.9": 0.4, "max": 0.5},
    }
    table = format_table(result)
    for needle in ("throughput", "18.0 msg/s", "errors", "1 (timeout 1)", "latency p50", "0.100 ms",
                   "latency p90", "latency p99 ", "latency p99.9", "0.400 ms"):
        assert needle in table


def test_console_starts_every_terminal_write_on_a_cleared_line() -> None:
    import io

    from client.chat import CLEAR_LINE, PROMPT, Console

    out = io.StringIO()
    console = Console(out, interactive=True)
    console._buffer = lambda: "half a li"  # what readline holds
    console.print("before any prompt")
    console.prompting = True
    console.print("[lobby] eve: hi")
    console.prompting = False
    console.print("* pong")
    assert out.getvalue() == (CLEAR_LINE + "before any prompt\n"
                              + CLEAR_LINE + "[lobby] eve: hi\n" + PROMPT + "half a li"
                              + CLEAR_LINE + "* pong\n")  # wipes a prompt redrawn just after Enter
    assert console._input_prompt.endswith(PROMPT) and CLEAR_LINE in console._input_prompt
    piped = io.StringIO()
    Console(piped, interactive=False).print("plain")
    assert piped.getvalue() == "plain\n"


def test_redact_argv_hides_the_token() -> None:
    from client.stress import redact_argv

    argv = ["m", "--token", "SECRET1", "--tok=SECRET2", "--to", "SECRET3", "--timeout", "3", "-c", "2"]
    assert redact_argv(argv) == ["m", "--token", "(set)", "--tok=(set)", "--to", "(set)", "--timeout", "3", "-c", "2"]
