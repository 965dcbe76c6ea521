"""The HTTP API for back ends, on real servers: every endpoint with and without credentials, the API off by
default, bounded and validated bodies, the rate limit, and what WebSocket clients see of it."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.security.auth import issue

from ...helpers import ServerProcess, T, connect, connect_spread, http_get, recv_until, request, send

KEY = "test-api-key-0123456789"
SECRET = "s" * 32


def api(srv: ServerProcess, method: str, path: str, body: Any = None, key: str | None = KEY,
        ctype: str = "application/json", raw: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; returns (status, lowercase headers, decoded JSON body or raw text)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=T(10))
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        h["Content-Type"] = ctype
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    text = resp.read()
    out_headers = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    try:
        return resp.status, out_headers, json.loads(text)
    except ValueError:
        return resp.status, out_headers, text.decode(errors="replace")


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(2, extra_args=["--api-key", KEY, "--log-level", "warning"]) as s:
        yield s


def error_code(result: tuple[int, dict[str, str], Any]) -> tuple[int, str]:
    status, headers, body = result
    assert headers["content-type"] == "application/json", (status, body)
    return status, body["error"]["code"]


# --- off unless configured ------------------------------------------------------------------------------

def test_without_a_key_every_api_path_is_404_even_with_credentials() -> None:
    with ServerProcess(1, extra_args=["--log-level", "warning"]) as plain:
        for method, path in [("GET", "/api/stats"), ("POST", "/api/publish"), ("GET", "/api/openapi.json"),
                             ("GET", "/api/rooms/x/presence"), ("DELETE", "/api/anything")]:
            body = {"room": "r", "data": 1} if method != "GET" else None
            assert error_code(api(plain, method, path, body)) == (404, "not_found")
        status, _, _ = http_get(plain.port, "/healthz")
        assert status == 200  # the rest of the server is unchanged


def test_a_short_api_key_is_a_usage_error() -> None:
    srv = ServerProcess(1, extra_args=["--api-key", "short"])
    srv.start(wait=False)
    assert srv.proc is not None and srv.proc.wait(T(15)) == 2
    assert "at least 16 bytes" in srv.output()


# --- credentials ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/publish"), ("POST", "/api/broadcast"), ("GET", "/api/rooms"),
    ("GET", "/api/rooms/lobby/presence"), ("POST", "/api/clients/0-1/disconnect"), ("GET", "/api/stats")])
def test_every_endpoint_needs_the_key(srv: ServerProcess, method: str, path: str) -> None:
    body = {"room": "r", "data": 1} if method == "POST" else None
    for key in (None, "wrong-key-of-some-length", "", KEY + "x"):
        status, headers, _ = api(srv, method, path, body, key=key)
        assert (status, headers.get("www-authenticate")) == (401, "Bearer"), key
    status, _, _ = api(srv, method, path, body, headers={"Authorization": f"Basic {KEY}"}, key=None)
    assert status == 401
    status, _, _ = api(srv, method, path, body, key=KEY)
    assert status in (200, 404)  # 404: no client 0-1 on this fresh server


def test_the_openapi_document_needs_no_key(srv: ServerProcess) -> None:
    status, headers, doc = api(srv, "GET", "/api/openapi.json", key=None)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert doc["openapi"].startswith("3.1") and "/api/publish" in doc["paths"]


def test_an_admin_token_opens_the_api_and_other_tokens_do_not() -> None:
    with ServerProcess(1, extra_args=["--auth-secret", SECRET, "--log-level", "warning"]) as s:
        admin = issue(SECRET, "ops", ["*"], 60, admin=True)
        user = issue(SECRET, "alice", ["*"], 60, broadcast=True)
        expired = issue(SECRET, "ops", ["*"], 60, now=time.time() - 600, admin=True)
        forged = issue("x" * 32, "ops", ["*"], 60, admin=True)
        assert api(s, "GET", "/api/stats", key=admin)[0] == 200
        assert error_code(api(s, "GET", "/api/stats", key=user)) == (403, "forbidden")
        assert error_code(api(s, "GET", "/api/stats", key=expired)) == (401, "unauthorized")
        assert error_code(api(s, "GET", "/api/stats", key=forged)) == (401, "unauthorized")


# --- endpoints ------------------------------------------------------------------------------------------

def test_publish_reaches_members_on_every_worker_in_their_codec_with_an_offset(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, 1)
        mp = await connect(srv.url, "msgpack")
        members = [ws for conns in by_worker.values() for ws in conns] + [mp]
        for ws in members:
            assert (await request(ws, {"type": "join", "room": "news"}))["type"] == "joined"
        status, _, res = await asyncio.to_thread(api, srv, "POST", "/api/publish",
                                                 {"room": "news", "data": {"headline": "hi"}})
        assert status == 200 and res["room"] == "news" and res["offset"] >= 1 and res["epoch"]
        for ws in members:
            got = await recv_until(ws, lambda m: m.get("type") == "publication")
            assert got["room"] == "news" and got["data"] == {"headline": "hi"} and got["from"] == "api"
            assert (got["offset"], got["epoch"]) == (res["offset"], res["epoch"])
        for ws in members:
            await ws.close()

    run(main())


def test_publish_with_an_id_is_idempotent_within_the_dedup_window(srv: ServerProcess) -> None:
    async def main() -> None:
        ws = await connect(srv.url)
        await request(ws, {"type": "join", "room": "once"})
        first = await asyncio.to_thread(api, srv, "POST", "/api/publish", {"room": "once", "data": 1, "id": "job-7"})
        again = await asyncio.to_thread(api, srv, "POST", "/api/publish", {"room": "once", "data": 1, "id": "job-7"})
        assert first[0] == again[0] == 200
        assert again[2] == {**first[2], "duplicate": True}
        await recv_until(ws, lambda m: m.get("type") == "publication")
        await send(ws, {"type": "ping", "id": "after"})
        nxt = await recv_until(ws, lambda m: m.get("type") in ("publication", "pong"))
        assert nxt["type"] == "pong"  # the resend published nothing
        await ws.close()

    run(main())


def test_broadcast_reaches_everyone(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, 1)
        status, _, res = await asyncio.to_thread(api, srv, "POST", "/api/broadcast", {"data": {"maintenance": 5}})
        assert status == 200 and res["room"] == "$broadcast"
        for conns in by_worker.values():
            for ws in conns:
                got = await recv_until(ws, lambda m: m.get("type") == "broadcast")
                assert got["data"] == {"maintenance": 5} and got["from"] == "api" and got["offset"] == res["offset"]
                await ws.close()

    run(main())


def test_rooms_counts_members_over_every_worker(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, 2)
        conns = [ws for c in by_worker.values() for ws in c]
        for ws in conns:
            await request(ws, {"type": "join", "room": "counted"})
        status, _, res = await asyncio.to_thread(api, srv, "GET", "/api/rooms")
        assert status == 200 and res["rooms"]["counted"] == 4 and res["truncated"] is False
        for ws in conns:
            await ws.close()

    run(main())


def test_disconnect_closes_the_client_on_whichever_worker_holds_it(srv: ServerProcess) -> None:
    async def main() -> None:
        by_worker = await connect_spread(srv.url, 2, 1)
        for conns in by_worker.values():
            ws = conns[0]
            cid = ws.welcome["client_id"]  # type: ignore[attr-defined]
            status, _, res = await asyncio.to_thread(api, srv, "POST", f"/api/clients/{cid}/disconnect",
                                                     {"code": 4003, "reason": "banned"})
            assert status == 200 and res == {"client_id": cid, "disconnected": 1, "other_nodes": 0}
            await asyncio.wait_for(ws.wait_closed(), T(5))
            assert (ws.close_code, ws.close_reason) == (4003, "banned")
        assert error_code(await asyncio.to_thread(api, srv, "POST", "/api/clients/9-999/disconnect")) == \
            (404, "not_found")

    run(main())


def test_stats(srv: ServerProcess) -> None:
    status, _, res = api(srv, "GET", "/api/stats")
    assert status == 200 and len(res["workers"]) == 2 and "clients" in res and "you" not in res


# --- bounded, validated input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "code"), [
    ({"data": 1}, "bad_room"),
    ({"room": "", "data": 1}, "bad_room"),
    ({"room": "x" * 129, "data": 1}, "bad_room"),
    ({"room": "$stats", "data": 1}, "bad_room"),
    ({"room": 5, "data": 1}, "bad_room"),
    ({"room": "r"}, "bad_message"),
    ({"room": "r", "data": 1, "id": 1.5}, "bad_message"),
    ({"room": "r", "data": 1, "id": "i" * 257}, "bad_message"),
    ({"room": "r", "data": 1, "id": 1 << 64}, "bad_message"),
    ({"room": "r", "data": 1, "id": -(1 << 63) - 1}, "bad_message"),  # parsed as a float: not rounded into range
    ([1, 2], "bad_message"),
])
def test_publish_validates_its_body(srv: ServerProcess, body: Any, code: str) -> None:
    assert error_code(api(srv, "POST", "/api/publish", body)) == (400, code)


def test_malformed_requests_get_json_errors(srv: ServerProcess) -> None:
    assert error_code(api(srv, "POST", "/api/publish", raw=b"{not json")) == (400, "bad_encoding")
    assert error_code(api(srv, "POST", "/api/publish", raw=b"[" * 5000 + b"]" * 5000)) == (400, "bad_encoding")
    assert error_code(api(srv, "POST", "/api/publish", {"room": "r", "data": 1}, ctype="text/plain")) == \
        (415, "unsupported_media_type")
    assert error_code(api(srv, "POST", "/api/publish", raw=b"")) == (400, "bad_encoding")
    status, headers, body = api(srv, "GET", "/api/publish")
    assert (status, headers["allow"], body["error"]["code"]) == (405, "POST", "method_not_allowed")
    assert error_code(api(srv, "GET", "/api/nothing/here")) == (404, "not_found")
    assert error_code(api(srv, "GET", "/api/rooms/%ff%fe/presence")) == (400, "bad_request")
    assert error_code(api(srv, "POST", "/api/clients/0-1/disconnect", {"code": 1000})) == (400, "bad_message")


def test_a_body_over_the_limit_is_refused_before_it_is_read(srv: ServerProcess) -> None:
    # the head announces 64 MiB and sends none of it: the answer comes at once, as JSON
    head = (f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 << 20}\r\n\r\n").encode()
    status, headers, body = http_get(srv.port, "/", raw=head)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "too_large"
    # data that fits the body but not a message
    big = {"room": "r", "data": "x" * ((1 << 20) - 10)}
    assert error_code(api(srv, "POST", "/api/publish", big)) == (413, "too_large")


def test_the_rate_limit_answers_429_and_spares_unauthenticated_floods() -> None:
    with ServerProcess(1, extra_args=["--api-key", KEY, "--api-rate", "3", "--log-level", "warning"]) as s:
        for _ in range(20):  # refused credentials take nothing from the bucket
            assert api(s, "GET", "/api/stats", key="wrong-key-of-some-length")[0] == 401
        statuses = [api(s, "GET", "/api/stats")[0] for _ in range(8)]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses
        _, headers, body = next(r for r in (api(s, "GET", "/api/stats") for _ in range(5)) if r[0] == 429)
        assert headers["retry-after"] == "1" and body["error"]["code"] == "rate_limited"
        time.sleep(1.1)
        assert api(s, "GET", "/api/stats")[0] == 200  # the bucket refills


@pytest.mark.parametrize(("path", "key", "status"), [
    ("/api/publish", "wrong-key-of-some-length", 401),
    ("/api/publish", None, 401),
    ("/api/nowhere", KEY, 404),
    ("/api/rooms", KEY, 400),  # a GET takes no body
    ("/somewhere-else", KEY, 405),
])
def test_a_body_is_never_read_before_the_head_is_accepted(srv: ServerProcess, path: str, key: str | None,
                                                          status: int) -> None:
    """An unauthenticated client cannot make a worker buffer a body: the answer comes right after the
    head, while the announced megabyte never arrives."""
    method = "GET" if path == "/api/rooms" else "POST"
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {1 << 20}\r\n\r\n").encode()
    started = time.monotonic()
    got, headers, _ = http_get(srv.port, "/", raw=head, timeout=5)
    assert got == status and time.monotonic() - started < 2  # not the 10 s handshake timeout
    assert headers.get("connection") == "close"
