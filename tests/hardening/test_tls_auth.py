"""TLS (wss://) and token authentication against real server processes, real certificates, real tokens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from server.security import auth

from ..conftest import SECRET, Certs
from ..helpers import (
    PYTHON,
    ROOT,
    ServerProcess,
    T,
    raw_http,
    recv,
    recv_until,
    scrape_metrics,
    send,
    status_of,
)

HANDSHAKE_TIMEOUT = 1.0


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def token(user: str, rooms: list[str], ttl: float = 600, broadcast: bool = False) -> str:
    return auth.issue(SECRET, user, rooms, ttl, broadcast)


@pytest.fixture(scope="module")
def srv(certs: Certs) -> Iterator[ServerProcess]:
    args = ["--certfile", str(certs.server_pem), "--keyfile", str(certs.server_pem), "--auth-secret", SECRET,
            "--handshake-timeout", str(HANDSHAKE_TIMEOUT)]
    with ServerProcess(workers=2, extra_args=args) as s:
        yield s


async def wss(srv: ServerProcess, certs: Certs, tok: str | None = None, query: bool = False,
              **kwargs: Any) -> ClientConnection:
    url = srv.url + (f"/?token={tok}" if tok and query else "/")
    headers = {"Authorization": f"Bearer {tok}"} if tok and not query else None
    ws = await websockets.connect(url, ssl=certs.client_context(), additional_headers=headers,
                                  subprotocols=["fanwire.json"], open_timeout=T(10), **kwargs)  # type: ignore[list-item]
    ws.welcome = await recv(ws)  # type: ignore[attr-defined]
    return ws


def test_wss_with_ca_file_and_token_from_the_cli(srv: ServerProcess, certs: Certs) -> None:
    env = {**os.environ, "FANWIRE_AUTH_SECRET": SECRET}
    tok = subprocess.run([PYTHON, "-m", "server", "token", "--user", "alice", "--rooms", "lobby,games",
                          "--ttl", "3600"], cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                         timeout=T(30)).stdout.strip()

    async def main() -> None:
        for query in (False, True):
            ws = await wss(srv, certs, tok, query=query)
            assert ws.welcome["user"] == "alice" and ws.welcome["rooms"] == ["lobby"]  # type: ignore[attr-defined]
            assert srv.url.startswith("wss://")
            await send(ws, {"type": "ping", "ts": 1})
            assert (await recv(ws))["type"] == "pong"
            await ws.close()

    run(main())


def test_certificate_is_verified_and_plain_ws_gets_nothing(srv: ServerProcess, certs: Certs) -> None:
    async def untrusted() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(srv.url, ssl=ssl.create_default_context(), open_timeout=T(10))

    run(untrusted())
    # plain HTTP on the TLS port: no WebSocket, no HTTP answer
    reply = raw_http(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    assert status_of(reply) == 0
    # HTTPS routes work
    ctx = certs.client_context()
    assert status_of(raw_http(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", ssl_context=ctx)) == 200


@pytest.mark.parametrize(("case", "reason"), [
    ("missing", "auth_missing"), ("garbage", "auth_invalid"), ("wrong_key", "auth_invalid"),
    ("expired", "auth_expired"), ("empty_query", "auth_invalid"),
])
def test_bad_tokens_get_401_and_no_websocket(srv: ServerProcess, certs: Certs, case: str, reason: str) -> None:
    tokens = {
        "missing": None, "garbage": "not.a.token", "empty_query": "",
        "wrong_key": auth.issue("some-other-secret-that-is-long-enough!", "eve", ["*"], 60, True),
        "expired": auth.issue(SECRET, "alice", ["lobby"], 1, now=time.time() - 60),
    }
    tok = tokens[case]
    before = scrape_metrics(srv.port, certs.client_context())
    path = "/?token=" if case == "empty_query" else "/"
    headers = f"Authorization: Bearer {tok}\r\n" if tok else ""
    req = (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n")
    reply = raw_http(srv.port, req.encode(), ssl_context=certs.client_context())
    assert status_of(reply) == 401, reply[:200]
    assert b"WWW-Authenticate: Bearer" in reply
    body = reply.partition(b"\r\n\r\n")[2]
    assert body and b"Traceback" not in body
    after = scrape_metrics(srv.port, certs.client_context())
    key = f'fanwire_handshakes_refused_total{{reason="{reason}"}}'
    assert after.get(key, 0) == before.get(key, 0) + 1
    assert after['fanwire_handshakes_failed_total{status="401"}'] >= 1

    async def client_view() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await wss(srv, certs, tok or None)
        assert info.value.response.status_code == 401

    run(client_view())


def test_a_token_for_room_a_cannot_publish_to_room_b(srv: ServerProcess, certs: Certs) -> None:
    async def main() -> None:
        alice = await wss(srv, certs, token("alice", ["a"]))
        bob = await wss(srv, certs, token("bob", ["b"]))
        carol = await wss(srv, certs, token("carol", ["a", "b"], broadcast=True))
        assert alice.welcome["rooms"] == []  # type: ignore[attr-defined]  # lobby is not in her token
        for ws, room in ((bob, "b"), (carol, "a"), (carol, "b")):
            await send(ws, {"type": "join", "room": room})
            assert (await recv_until(ws, lambda m: m["type"] == "joined"))["room"] == room
        # alice -> room b: refused, nobody in b hears it
        await send(alice, {"type": "chat", "room": "b", "text": "sneaky", "id": 7})
        err = await recv(alice)
        assert err == {"type": "error", "code": "forbidden", "detail": err["detail"], "id": 7}
        await send(alice, {"type": "join", "room": "b", "id": 8})
        assert (await recv(alice))["code"] == "forbidden"
        await send(alice, {"type": "broadcast", "text": "to all", "id": 9})
        assert (await recv(alice))["code"] == "forbidden"
        # alice -> room a, claiming to be someone else: carol hears it, from alice
        await send(alice, {"type": "chat", "room": "a", "text": "hello a", "user": "mallory"})
        msg = await recv_until(carol, lambda m: m["type"] == "chat")
        assert (msg["room"], msg["text"], msg["user"]) == ("a", "hello a", "alice")
        # bob heard nothing of all this; a message carol sends to b reaches him first
        await send(carol, {"type": "chat", "room": "b", "text": "for b"})
        msg = await recv_until(bob, lambda m: m["type"] == "chat")
        assert (msg["text"], msg["user"]) == ("for b", "carol")
        # carol may broadcast: everyone hears it, with her token's name
        await send(carol, {"type": "broadcast", "text": "hi all", "user": "admin"})
        for ws in (alice, bob, carol):
            b = await recv_until(ws, lambda m: m["type"] == "broadcast")
            assert (b["text"], b["user"]) == ("hi all", "carol")
        # a room-less chat from alice is refused as no_room (she is in no room)
        await send(alice, {"type": "chat", "text": "where?"})
        assert (await recv(alice))["code"] == "no_room"
        for ws in (alice, bob, carol):
            await ws.close()

    run(main())
    m = scrape_metrics(srv.port, certs.client_context())
    assert m['fanwire_errors_total{code="forbidden"}'] >= 3


def test_connection_closes_with_1008_when_its_token_expires(srv: ServerProcess, certs: Certs) -> None:
    async def main() -> None:
        ws = await wss(srv, certs, token("alice", ["lobby"], ttl=2))
        t0 = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await send(ws, {"type": "ping"})
                await recv(ws, timeout=5)
                await asyncio.sleep(0.1)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "token expired"
        assert time.monotonic() - t0 < T(4)

    run(main())
    m = scrape_metrics(srv.port, certs.client_context())
    assert m['fanwire_policy_closes_total{reason="token_expired"}'] >= 1


def test_tls_slowloris_is_dropped_and_counted_without_hurting_others(srv: ServerProcess, certs: Certs) -> None:
    before = scrape_metrics(srv.port, certs.client_context())
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]  # never say hello
    half = []  # finish TLS, never send the HTTP request
    for _ in range(3):
        s = certs.client_context().wrap_socket(socket.create_connection(("127.0.0.1", srv.port)),
                                               server_hostname="127.0.0.1")
        half.append(s)

    async def others() -> float:
        ws = await wss(srv, certs, token("dave", ["lobby"]))
        worst = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            await send(ws, {"type": "ping"})
            await recv(ws)
            worst = max(worst, time.monotonic() - t0)
            await asyncio.sleep(0.05)
        await ws.close()
        return worst

    assert run(others()) < T(0.5)
    t0 = time.monotonic()
    for s in idle:
        s.settimeout(T(HANDSHAKE_TIMEOUT + 3))
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()
    for s in half:
        s.settimeout(T(HANDSHAKE_TIMEOUT + 3))
        data = b""
        try:
            while chunk := s.recv(1000):
                data += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
        assert status_of(data) == 408, data
        s.close()
    assert time.monotonic() - t0 < T(HANDSHAKE_TIMEOUT + 3)
    deadline = time.monotonic() + T(HANDSHAKE_TIMEOUT + 4)  # TLS failures are counted by a periodic sweep
    key = 'fanwire_handshakes_refused_total{reason="tls_handshake"}'
    while True:
        m = scrape_metrics(srv.port, certs.client_context())
        if m.get(key, 0) >= before.get(key, 0) + 5 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert m.get(key, 0) >= before.get(key, 0) + 5
    key = 'fanwire_handshakes_refused_total{reason="handshake_timeout"}'
    assert m.get(key, 0) >= before.get(key, 0) + 3


def test_certificate_renewal_by_rolling_restart(certs: Certs, tmp_path: Any) -> None:
    """SIGHUP loads a renewed certificate; a broken one aborts the restart and the old workers serve on."""
    import trustme

    pem = tmp_path / "server.pem"
    pem.write_bytes(certs.server_pem.read_bytes())
    with ServerProcess(workers=1, extra_args=["--certfile", str(pem), "--keyfile", str(pem)]) as srv:
        new_ca = trustme.CA()
        new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        new_ctx = ssl.create_default_context(cadata=new_ca.cert_pem.bytes().decode())
        old = srv.worker_pids()[0]
        os.kill(srv.pid, signal.SIGHUP)
        srv.wait_worker_replaced(0, old, 10)
        deadline = time.monotonic() + T(5)
        while True:  # the old worker may still hold the port for a moment
            try:
                raw_http(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", ssl_context=new_ctx)
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        pem.write_text("garbage")
        current = srv.worker_pids()[0]
        os.kill(srv.pid, signal.SIGHUP)
        deadline = time.monotonic() + T(10)
        while "rolling restart aborted" not in srv.output():
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.05)
        assert srv.proc is not None and srv.proc.poll() is None
        reply = raw_http(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", ssl_context=new_ctx)
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["pid"] == current
