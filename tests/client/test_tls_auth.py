"""The client against a hardened server: wss:// with a CA file, signed tokens, forbidden actions, rate limits,
503 + Retry-After; the library and the command line. Real server processes, trustme certificates made at
test time, real tokens (server.auth and ``python -m server token``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from client import (
    AsyncClient,
    Backoff,
    Client,
    ClientError,
    ConnectError,
    ConnectionLost,
    FatalClose,
    Forbidden,
    HandshakeRejected,
    NotConnected,
    RateLimited,
    ServerError,
    State,
    TLSError,
    protocol,
)
from server.security import auth
from tests.client.fakes import FakeServer, async_wait_for, run, wait_for
from tests.conftest import SECRET, Certs
from tests.helpers import PYTHON, ROOT, ServerProcess, T, scrape_metrics

pytestmark = pytest.mark.timeout(60)

RATE = 50  # messages/s per connection on the secure server; with --rate-burst 1 the bucket holds 50
FAST = Backoff(0.05, 0.5)


def token(user: str = "alice", rooms: tuple[str, ...] = ("lobby", "games"), ttl: float = 600,
          broadcast: bool = False) -> str:
    return auth.issue(SECRET, user, rooms, ttl, broadcast)


def slow_retries() -> dict[str, Any]:
    """Options under which a retry would cost ~T(30) s: a client that gives up at once is visibly fast."""
    return {"backoff": Backoff(T(30), T(30)), "rng": lambda: 0.999}


@pytest.fixture(scope="module")
def secure(certs: Certs) -> Iterator[ServerProcess]:
    args = ["--certfile", str(certs.server_pem), "--keyfile", str(certs.server_pem),
            "--rate-limit", str(RATE), "--rate-burst", "1"]
    with ServerProcess(workers=2, extra_args=args, env={"FANWIRE_AUTH_SECRET": SECRET}) as srv:
        yield srv


def refused(srv: ServerProcess, reason: str) -> float:
    """Handshakes the server refused for ``reason`` (a one-worker server: its count is never partial)."""
    return scrape_metrics(srv.port).get(f'fanwire_handshakes_refused_total{{reason="{reason}"}}', 0.0)


# --- the library ----------------------------------------------------------------------------------------


def test_wss_with_a_ca_file_and_a_token(secure: ServerProcess, certs: Certs) -> None:
    assert secure.url.startswith("wss://")

    async def body() -> None:
        async with AsyncClient(secure.url, cafile=certs.cafile, token=token(), user="mallory") as c:
            assert c.welcome is not None and c.welcome["user"] == "alice"  # the token's user, not ours
            assert c.rooms == ["lobby"]
            assert await c.ping() > 0
            assert await c.join("games") == ["lobby", "games"]
            await c.send_chat_message("over TLS")
            async for msg in c:
                if msg["type"] == "chat":
                    assert (msg["user"], msg["room"], msg["text"]) == ("alice", "games", "over TLS")
                    break

    run(body())
    # the blocking client, with a ready SSLContext and a token callable
    calls: list[int] = []

    def fresh() -> str:
        calls.append(1)
        return token("bob")

    with Client(secure.url, ssl=certs.client_context(), token=fresh) as c:
        assert c.welcome is not None and c.welcome["user"] == "bob"
        assert c.ping() > 0
    assert calls == [1]


def test_untrusted_certificate_is_a_tls_error_and_not_retried(secure: ServerProcess) -> None:
    async def body() -> None:
        c = AsyncClient(secure.url, token=token(), **slow_retries())  # the system CAs: the test CA is unknown
        start = time.monotonic()
        with pytest.raises(TLSError) as info:
            await c.connect(retry=True)
        assert time.monotonic() - start < T(20)  # no retry: that would have waited ~30 s
        assert "certificate" in str(info.value)
        assert c.state is State.CLOSED

    run(body())


@pytest.mark.parametrize(("case", "why"), [("missing", "a token is required"), ("expired", "token expired"),
                                           ("wrong_secret", "invalid token")])
def test_a_missing_or_bad_token_is_a_401_and_not_retried(secure: ServerProcess, certs: Certs, case: str,
                                                          why: str) -> None:
    calls: list[int] = []
    tokens = {
        "expired": auth.issue(SECRET, "alice", ["lobby"], 1, now=time.time() - 60),
        "wrong_secret": auth.issue("not-the-server-secret-but-long-enough!", "alice", ["*"], 600),
    }

    def source() -> str:
        calls.append(1)
        return tokens[case]

    async def body() -> None:
        c = AsyncClient(secure.url, cafile=certs.cafile, token=None if case == "missing" else source,
                        **slow_retries())
        start = time.monotonic()
        with pytest.raises(HandshakeRejected) as info:
            await c.connect(retry=True)
        assert time.monotonic() - start < T(20)  # no retry: that would have waited ~30 s
        assert info.value.status == 401 and "401" in str(info.value)
        assert why in str(info.value)  # the server's reason: the token was sent and judged as intended
        assert c.state is State.CLOSED
        with pytest.raises(NotConnected):
            await c.ping()

    run(body())
    assert calls == ([] if case == "missing" else [1])  # asked once: one attempt


def test_forbidden_join_chat_and_broadcast_raise_forbidden(secure: ServerProcess, certs: Certs) -> None:
    async def body() -> None:
        async with AsyncClient(secure.url, cafile=certs.cafile, token=token(rooms=("lobby",))) as c:
            with pytest.raises(Forbidden) as info:
                await c.join("games")
            exc = info.value
            assert isinstance(exc, ServerError) and exc.code == "forbidden"
            assert exc.id is not None and exc.reply["id"] == exc.id and exc.reply["type"] == "error"
            # chats and broadcasts have no reply when they work; sent as requests, a refusal raises
            with pytest.raises(Forbidden):
                await c.request(protocol.chat("psst", room="games"), {"chat"})
            with pytest.raises(Forbidden) as binfo:
                await c.request(protocol.broadcast("to all"), {"broadcast"})
            assert binfo.value.id != exc.id
            assert await c.ping() > 0  # the connection stays open
            assert c.rooms == ["lobby"]

    run(body())


def test_a_rate_limited_burst_raises_rate_limited_and_persisting_is_a_fatal_close(
    secure: ServerProcess, certs: Certs
) -> None:
    async def body() -> None:
        c = AsyncClient(secure.url, cafile=certs.cafile, token=token(), request_timeout=T(10), backoff=FAST)
        await c.connect()
        # twice the bucket at once: ~RATE refusals, under the 2 x RATE that would get us closed
        results = await asyncio.gather(*(c.ping() for _ in range(2 * RATE)), return_exceptions=True)
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert limited and any(isinstance(r, float) for r in results), results
        assert all(isinstance(r, (float, RateLimited)) for r in results), results
        for exc in limited:
            assert isinstance(exc, ServerError) and exc.code == "rate_limited"
            assert exc.reply["type"] == "error" and exc.reply["id"] == exc.id
        assert len({exc.id for exc in limited}) == len(limited)  # each refusal names its own request

        # slowing down is enough: the connection stays open
        deadline = time.monotonic() + T(10)
        while True:
            try:
                assert await c.ping() > 0
                break
            except RateLimited:
                assert time.monotonic() < deadline, "still rate limited"
                await asyncio.sleep(0.1)
        assert c.state is State.CONNECTED and c.reconnects == 0

        # keeping going gets the connection closed with 1008, which is final
        await asyncio.gather(*(c.ping() for _ in range(8 * RATE)), return_exceptions=True)
        await async_wait_for(lambda: c.state is State.CLOSED, 10, "closed by the server")
        reason = c.closed_reason
        assert isinstance(reason, FatalClose) and reason.code == 1008, reason
        assert c.reconnects == 0
        await c.disconnect()

    run(body())


def test_a_token_callable_is_called_for_each_connection_so_an_expired_token_is_replaced(
    secure: ServerProcess, certs: Certs
) -> None:
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.monotonic())
        return token(ttl=3 if len(calls) == 1 else 600)  # the first one runs out in 2 to 3 s

    async def body() -> None:
        renewing = AsyncClient(secure.url, cafile=certs.cafile, token=fresh, backoff=FAST)
        fixed = AsyncClient(secure.url, cafile=certs.cafile, token=token(ttl=3), backoff=FAST)
        why: list[ClientError | None] = []
        renewing.on_state_change(lambda s, e: why.append(e) if s is State.RECONNECTING else None)
        await renewing.connect()
        await renewing.join("games")
        await fixed.connect()
        await async_wait_for(lambda: fixed.state is State.CLOSED and renewing.reconnects == 1
                             and renewing.state is State.CONNECTED, 15, "expiry handled")
        # a fixed token cannot be renewed: 1008 'token expired' is final
        assert isinstance(fixed.closed_reason, FatalClose)
        assert (fixed.closed_reason.code, fixed.closed_reason.reason) == (1008, "token expired")
        # a callable is asked again (once per attempt): the client reconnects, with its rooms
        assert len(calls) >= 2
        assert len(why) == 1 and isinstance(why[0], ConnectionLost) and not isinstance(why[0], FatalClose)
        assert (why[0].code, why[0].reason) == (1008, "token expired")
        assert renewing.rooms == ["lobby", "games"]
        assert await renewing.ping() > 0
        await renewing.disconnect()
        await fixed.disconnect()

    run(body())


def test_retry_after_on_a_503_is_waited_for() -> None:
    # one connection per worker: a second client is refused with 503 and Retry-After: 1
    with ServerProcess(workers=1, extra_args=["--max-conns", "1"]) as srv:
        async def body() -> None:
            holder = AsyncClient(srv.url)
            await holder.connect()
            c = AsyncClient(srv.url, backoff=Backoff(0.01, T(5)))  # without Retry-After: retries every ~10 ms
            start = time.monotonic()
            task = asyncio.create_task(c.connect(retry=True))
            await async_wait_for(lambda: refused(srv, "max_conns") >= 1, 10, "the first attempt refused")
            await holder.disconnect()  # the place is free again
            await asyncio.wait_for(task, T(10))
            assert time.monotonic() - start >= 1.0  # it waited the Retry-After second (else: ~10 ms)
            # and did not knock again meanwhile (2: the server had not yet freed the place after 1 s)
            assert refused(srv, "max_conns") <= 2
            await c.disconnect()

        run(body())


def test_retry_after_is_capped_by_the_backoff_cap_and_used_when_reconnecting() -> None:
    with FakeServer(status=503, status_headers={"Retry-After": "30"}) as fake:
        c = Client(fake.url, backoff=Backoff(0.01, 0.3, max_attempts=2))
        start = time.monotonic()
        with pytest.raises(HandshakeRejected) as info:
            c.connect(retry=True)
        assert info.value.status == 503 and info.value.retry_after == 30.0
        gaps = [b - a for a, b in zip(fake.attempt_times, fake.attempt_times[1:])]
        assert fake.attempts == 3 and all(g >= 0.29 for g in gaps), gaps  # at least the cap, ...
        assert time.monotonic() - start < T(10)  # ... not the 30 s asked for

    holder: list[FakeServer] = []

    async def close_then_busy(ws: Any, n: int) -> None:
        if n == 1:  # the next handshake is refused with 503 + Retry-After: 1, the one after accepted
            holder[0].status, holder[0].refuse_count = 503, 1
            await ws.close(1012)
        else:
            async for _ in ws:
                pass

    with FakeServer(close_then_busy, status_headers={"Retry-After": "1"}) as fake:
        holder.append(fake)
        c = Client(fake.url, backoff=Backoff(0.01, 5.0))
        c.connect()
        wait_for(lambda: c.reconnects == 1 and c.state is State.CONNECTED, 10, "reconnected")
        assert fake.attempts == 3
        assert fake.attempt_times[2] - fake.attempt_times[1] >= 0.99  # Retry-After, not ~10 ms
        c.disconnect()


def test_the_token_goes_in_an_authorization_header_fetched_anew_each_time() -> None:
    n = iter(range(1, 100))

    async def close_first(ws: Any, i: int) -> None:
        if i == 1:
            await ws.close(1012)
        else:
            async for _ in ws:
                pass

    async def source() -> str:  # an async token source works too
        await asyncio.sleep(0)
        return f"tok-{next(n)}"

    with FakeServer(close_first) as fake:
        c = Client(fake.url, token=source, backoff=FAST)
        c.connect()
        wait_for(lambda: c.reconnects == 1 and c.state is State.CONNECTED, 10, "reconnected")
        c.disconnect()
        assert [h["Authorization"] for h in fake.requests] == ["Bearer tok-1", "Bearer tok-2"]
    with FakeServer() as fake:
        with Client(fake.url, token="static-token"):
            pass
        assert fake.requests[0]["Authorization"] == "Bearer static-token"


def test_a_failing_token_source_stops_the_connect() -> None:
    def broken() -> str:
        raise RuntimeError("token service down")

    with FakeServer() as fake:
        c = Client(fake.url, token=broken)
        with pytest.raises(ConnectError) as info:
            c.connect(retry=True)
        assert "token service down" in str(info.value) and isinstance(info.value.__cause__, RuntimeError)
        assert fake.attempts == 0


def test_security_options_are_checked_before_anything_is_sent(certs: Certs) -> None:
    with pytest.raises(ValueError, match="wss://"):
        AsyncClient("ws://127.0.0.1:1", cafile=certs.cafile)
    with pytest.raises(ValueError, match="not both"):
        AsyncClient("wss://127.0.0.1:1", cafile=certs.cafile, ssl=certs.client_context())
    with pytest.raises(ValueError, match="CA file"):
        AsyncClient("wss://127.0.0.1:1", cafile=str(certs.cafile) + ".missing")
    with pytest.raises(ValueError, match="token"):
        AsyncClient("ws://127.0.0.1:1", token="two words")
    with pytest.raises(ValueError, match="not both"):
        AsyncClient("ws://127.0.0.1:1", token="t", headers={"authorization": "Bearer u"})


# --- the command line ------------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FANWIRE_")}
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, env={**base, **(env or {})},
                          input=stdin, capture_output=True, text=True, timeout=T(timeout))


def test_demo_over_wss_with_cafile_and_token_flags(secure: ServerProcess, certs: Certs) -> None:
    tok = token(rooms=("*",), broadcast=True)
    p = cli("demo", "--url", secure.url, "--cafile", str(certs.cafile), "--token", tok)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(user alice)" in p.stdout and "all features shown" in p.stdout
    p = cli("demo", "--url", secure.url, "--cafile", str(certs.cafile))  # no token
    assert p.returncode == 1 and "HandshakeRejected" in p.stderr and "401" in p.stderr, p.stderr


def test_chat_with_the_token_and_ca_file_from_the_environment(secure: ServerProcess, certs: Certs) -> None:
    # a token from the server's own 'token' subcommand: lobby only, no broadcasts
    tok = subprocess.run([PYTHON, "-m", "server", "token", "--user", "alice", "--rooms", "lobby", "--ttl", "600"],
                         cwd=ROOT, env={**os.environ, "FANWIRE_AUTH_SECRET": SECRET}, capture_output=True,
                         text=True, check=True, timeout=T(30)).stdout.strip()
    env = {"FANWIRE_URL": secure.url, "FANWIRE_TOKEN": tok, "FANWIRE_CAFILE": str(certs.cafile)}
    p = cli("chat", "--wait", "60", env=env, stdin="hello\n/broadcast hi all\n/join games\nbye\n")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "(user alice)" in out and "[lobby] alice: hello" in out and "[lobby] alice: bye" in out, out
    assert out.count("! error forbidden") == 2, out  # the broadcast and the join
    assert "did not come back" not in out  # the refused broadcast was not waited for (--wait 60)


def test_stress_over_wss_with_flags_and_the_token_kept_out_of_the_report(
    secure: ServerProcess, certs: Certs
) -> None:
    tok = token()
    p = cli("stress", "--url", secure.url, "--cafile", str(certs.cafile), "--token", tok, "-c", "2", "-n", "10",
            "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["connections"]["opened"] == 2 and result["messages"]["received"] == 20
    assert result["errors"]["total"] == 0
    assert result["config"]["token"] == "(set)" and tok not in p.stdout


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["demo", "--url", "wss://127.0.0.1:1", "--cafile", "/nonexistent/ca.pem"], {}, "cannot load CA file"),
    (["chat", "--url", "ws://127.0.0.1:1", "--cafile", "CAFILE"], {}, "--cafile needs a wss:// URL"),
    (["stress", "--token", "two words"], {}, "without spaces"),
    (["chat", "--url", "wss://127.0.0.1:1"], {"FANWIRE_CAFILE": "/nonexistent/ca.pem"}, "$FANWIRE_CAFILE"),
    (["demo"], {"FANWIRE_TOKEN": "bad\ttoken"}, "$FANWIRE_TOKEN"),
])
def test_bad_security_arguments_exit_2(certs: Certs, argv: list[str], env: dict[str, str], message: str,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from client.cli import main

    for key in [k for k in os.environ if k.startswith("FANWIRE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as info:
        main([str(certs.cafile) if a == "CAFILE" else a for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m client" in err, err


def test_cafile_from_the_environment_is_ignored_for_ws_urls(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    from client.cli import _security, build_parser

    monkeypatch.setenv("FANWIRE_CAFILE", str(certs.cafile))
    monkeypatch.setenv("FANWIRE_TOKEN", "tok")
    parser = build_parser()
    for url, cafile in (("ws://127.0.0.1:1", None), ("wss://127.0.0.1:1", str(certs.cafile))):
        args = parser.parse_args(["chat", "--url", url])
        _security(parser, args)
        assert (args.cafile, args.token) == (cafile, "tok")
    args = parser.parse_args(["chat", "--url", "ws://127.0.0.1:1", "--token", "flag"])
    _security(parser, args)
    assert args.token == "flag"  # the flag wins over the environment
