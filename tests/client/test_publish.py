"""``python -m client publish``: the request it builds (pure), what it does with answers (against a loopback
HTTP recorder, for the answers a real server gives only in odd cases), and, once the server has its HTTP
API, one real publication reaching a WebSocket member."""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from client.cli import main
from client.publish import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    Answer,
    UsageError,
    build_request,
    http_url,
    parse_data,
    send,
)
from tests.helpers import ROOT, ServerProcess, T, connect, recv_until
from tests.helpers import send as ws_send

KEY = "publish-test-key-0123456789"

# --- the request: pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("ws://127.0.0.1:8765", ("http", "127.0.0.1", 8765, "")),
    ("ws://127.0.0.1:8765/", ("http", "127.0.0.1", 8765, "")),
    ("wss://example.com", ("https", "example.com", 443, "")),
    ("ws://example.com", ("http", "example.com", 80, "")),
    ("wss://example.com:9443/rt/", ("https", "example.com", 9443, "/rt")),
    ("ws://[::1]:9000", ("http", "::1", 9000, "")),
])
def test_ws_urls_map_to_http(url: str, expected: tuple[str, str, int, str]) -> None:
    assert http_url(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:8765", "not a ws:// or wss:// URL"),
    ("127.0.0.1:8765", "not a ws:// or wss:// URL"),
    ("ws://", "no host"),
    ("ws://h:1/?token=x", "query or fragment"),
    ("ws://u:p@h:1", "credentials in the URL"),
    ("ws://h:99999", "bad URL"),
])
def test_bad_urls_are_usage_errors(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        http_url(url)


def test_a_publish_request() -> None:
    req = build_request("ws://127.0.0.1:8765", {"a": 1, "é": [True, None]}, KEY, room="r1", msg_id="k-1")
    assert (req.scheme, req.host, req.port, req.method, req.path) == ("http", "127.0.0.1", 8765, "POST",
                                                                      "/api/publish")
    assert req.url == "http://127.0.0.1:8765/api/publish"
    assert json.loads(req.body) == {"room": "r1", "data": {"a": 1, "é": [True, None]}, "id": "k-1"}
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.headers["Content-Length"] == str(len(req.body))


def test_a_broadcast_request_and_an_integer_id() -> None:
    req = build_request("wss://example.com/rt", "to all", KEY, broadcast=True, msg_id=7)
    assert (req.scheme, req.port, req.path) == ("https", 443, "/rt/api/broadcast")
    assert json.loads(req.body) == {"data": "to all", "id": 7}


def test_no_id_sends_no_id_and_null_data_is_data() -> None:
    req = build_request("ws://h:1", None, KEY, room="r")
    assert json.loads(req.body) == {"room": "r", "data": None}


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"room": "r", "api_key": None}, "an API key is needed"),
    ({"room": "r", "api_key": ""}, "an API key is needed"),
    ({"room": "r", "api_key": "two words"}, "without spaces"),
    ({"room": "r", "api_key": "line\nbreak"}, "without spaces"),
    ({"api_key": KEY}, "--room is needed"),
    ({"room": "r", "broadcast": True, "api_key": KEY}, "give no --room"),
    ({"room": "", "api_key": KEY}, "must not be empty"),
    ({"room": "x" * 129, "api_key": KEY}, "at most 128"),
    ({"room": "r", "api_key": KEY, "msg_id": ""}, "must not be empty"),
    ({"room": "r", "api_key": KEY, "msg_id": "i" * 257}, "at most 256"),
    ({"room": "r", "api_key": KEY, "msg_id": True}, "string or an integer"),
    ({"room": "r", "api_key": KEY, "data": float("nan")}, "not JSON-representable"),
    ({"room": "r", "api_key": KEY, "data": {1, 2}}, "not JSON-representable"),
])
def test_what_the_server_would_refuse_is_a_usage_error(kwargs: dict[str, Any], says: str) -> None:
    data = kwargs.pop("data", {"x": 1})
    with pytest.raises(UsageError, match=says):
        build_request("ws://127.0.0.1:1", data, **kwargs)


def test_data_is_json_or_dash_for_stdin() -> None:
    assert parse_data('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_data("42") == 42
    assert parse_data("-", io.StringIO('"from stdin"')) == "from stdin"
    with pytest.raises(UsageError, match="not JSON"):
        parse_data("{oops")
    with pytest.raises(UsageError, match="not JSON"):
        parse_data("-", io.StringIO(""))


def test_an_answer_error_line_carries_the_servers_code_and_detail() -> None:
    err = Answer(401, {"error": {"code": "unauthorized", "detail": "bad key"}}, "")
    assert err.error_line() == "error: HTTP 401: unauthorized: bad key"
    assert Answer(502, None, "<html>\n Bad   gateway</html>").error_line() == "error: HTTP 502: <html> Bad gateway</html>"
    assert Answer(500, None, "").error_line() == "error: HTTP 500"
    assert Answer(200, {"room": "r"}, "").ok and not err.ok


# --- the command's exit statuses ------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "says"), [
    (["publish", "--room", "r", "--data", "{oops", "--api-key", KEY], "--data is not JSON"),
    (["publish", "--room", "r", "--data", "1"], "an API key is needed"),
    (["publish", "--room", "r", "--broadcast", "--data", "1", "--api-key", KEY], "give no --room"),
    (["publish", "--data", "1", "--api-key", KEY], "--room is needed"),
])
def test_usage_errors_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FANWIRE_API_KEY", raising=False)
    monkeypatch.delenv("FANWIRE_TOKEN", raising=False)
    assert main(["publish", "--url", "ws://127.0.0.1:1", *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "says"), [
    (["publish", "--room", "r"], "the following arguments are required: --data"),
    (["publish", "--room", "r", "--data", "1", "--timeout", "0"], "must be a number of seconds"),
    (["publish", "--room", "r", "--data", "1", "--url", "http://h:1"], "not a ws:// or wss:// URL"),
])
def test_argument_errors_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert says in capsys.readouterr().err


def test_an_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import free_port

    code = main(["publish", "--url", f"ws://127.0.0.1:{free_port()}", "--room", "r", "--data", "1",
                 "--api-key", KEY, "--timeout", str(T(5))])
    assert code == 1
    assert "cannot publish through http://127.0.0.1:" in capsys.readouterr().err


class Recorder(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that records each request and answers what the test set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answer: tuple[int, bytes] = (200, b'{"room":"r","offset":1,"epoch":"e"}')

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(min(n, 1 << 20))
        self.server.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                     body))
        status, answer = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    srv = Recorder()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(T(5))


def test_the_key_comes_from_the_environment_and_the_answer_is_printed(
        recorder: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANWIRE_API_KEY", KEY)
    assert main(["publish", "--url", recorder.ws_url, "--room", "r", "--data", '{"n":1}', "--id", "42"]) == 0
    assert json.loads(capsys.readouterr().out) == {"room": "r", "offset": 1, "epoch": "e"}
    [(method, path, headers, body)] = recorder.requests
    assert (method, path) == ("POST", "/api/publish")
    assert headers["authorization"] == f"Bearer {KEY}" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"room": "r", "data": {"n": 1}, "id": "42"}  # an --id is always a string


def test_the_option_beats_the_environment(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FANWIRE_API_KEY", "from-the-environment-0123")
    assert main(["publish", "--url", recorder.ws_url, "--broadcast", "--data", "1", "--api-key", KEY]) == 0
    assert recorder.requests[0][1] == "/api/broadcast"
    assert recorder.requests[0][2]["authorization"] == f"Bearer {KEY}"


def test_a_refusal_exits_1_with_the_servers_code_and_detail(
        recorder: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    recorder.answer = (429, b'{"error":{"code":"rate_limited","detail":"slow down"}}')
    assert main(["publish", "--url", recorder.ws_url, "--room", "r", "--data", "1", "--api-key", KEY]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: HTTP 429: rate_limited: slow down"


def test_an_oversized_answer_is_refused(recorder: Recorder) -> None:
    recorder.answer = (200, b" " * (MAX_ANSWER_BYTES + 10))
    req = build_request(recorder.ws_url, 1, KEY, room="r")
    with pytest.raises(Exception, match="larger than"):
        send(req, DEFAULT_TIMEOUT)


# --- against a real server with the HTTP API -------------------------------------------------------------

NO_API = importlib.util.find_spec("server.http.api") is None


def _cli(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FANWIRE_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "client", "publish", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=T(30))


@pytest.mark.skipif(NO_API, reason="the server's HTTP API (server/http/api.py) has not landed yet")
def test_publish_reaches_a_websocket_member_of_the_room() -> None:
    with ServerProcess(workers=2, extra_args=["--api-key", KEY, "--log-level", "warning"]) as srv:
        async def main_() -> None:
            member = await connect(srv.url)
            await ws_send(member, {"type": "join", "room": "news", "id": "j"})
            await recv_until(member, lambda m: m.get("id") == "j")

            first = await asyncio.to_thread(_cli, "--url", srv.url, "--room", "news", "--data", '{"n":1}',
                                            "--id", "once")
            assert first.returncode == 0, first.stderr
            pos = json.loads(first.stdout)
            assert pos["room"] == "news" and isinstance(pos["offset"], int) and pos.get("duplicate") is None
            msg = await recv_until(member, lambda m: m.get("type") == "publication")
            assert msg["data"] == {"n": 1} and msg["from"] == "api"
            assert (msg["offset"], msg["epoch"]) == (pos["offset"], pos["epoch"])

            again = await asyncio.to_thread(_cli, "--url", srv.url, "--room", "news", "--data", '{"n":1}',
                                            "--id", "once")
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout) == {**pos, "duplicate": True}
            bcast = await asyncio.to_thread(_cli, "--url", srv.url, "--broadcast", "--data", '"all"')
            assert bcast.returncode == 0, bcast.stderr
            nxt = await recv_until(member, lambda m: m.get("type") in ("publication", "broadcast"))
            assert nxt["type"] == "broadcast" and nxt["data"] == "all"  # the duplicate was not delivered

            wrong = await asyncio.to_thread(_cli, "--url", srv.url, "--room", "news", "--data", "1",
                                            key="not-the-key-0123456789")
            assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr, wrong.stderr
            await member.close()

        asyncio.run(asyncio.wait_for(main_(), T(60)))
