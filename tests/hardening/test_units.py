"""The pure parts of hardening, without sockets: tokens, rate limiter, per-IP table, admission, options."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import jwt
import pytest

from server import auth
from server.admission import Gate
from server.cli import build_parser, config_from_args, main
from server.config import Config
from server.errors import AuthError, ConfigError
from server.iptable import IpTable
from server.migrate import enable_migrate_req, migrate_req
from server.protocol import Session, handle
from server.ratelimit import KICK, OK, REFUSED, RateLimiter

from .conftest import SECRET

NOW = 1_800_000_000.0


# --- tokens -----------------------------------------------------------------------------------------------

def test_token_round_trip_and_claims() -> None:
    token = auth.issue(SECRET, "alice", ["lobby", "games", "lobby"], ttl=60, broadcast=True, now=NOW)
    grant = auth.verify(SECRET, token, now=NOW + 30)
    assert grant.user == "alice"
    assert grant.rooms == frozenset({"lobby", "games"})
    assert grant.broadcast is True
    assert grant.expires == NOW + 60
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims["sub"] == "alice" and claims["rooms"] == ["lobby", "games"] and claims["iat"] == int(NOW)


def test_expired_wrong_key_tampered_and_unsigned_tokens_are_refused() -> None:
    token = auth.issue(SECRET, "alice", ["lobby"], ttl=60, now=NOW)
    with pytest.raises(AuthError) as info:
        auth.verify(SECRET, token, now=NOW + 61)
    assert info.value.reason == "auth_expired"
    real = auth.issue(SECRET, "alice", ["lobby"], ttl=60)  # against the real clock
    with pytest.raises(AuthError) as info:
        auth.verify(SECRET, auth.issue(SECRET, "alice", ["lobby"], ttl=1, now=time.time() - 10))
    assert info.value.reason == "auth_expired"
    assert auth.verify(SECRET, real).user == "alice"
    with pytest.raises(AuthError) as info:
        auth.verify("another-secret-of-at-least-32-bytes!!", token, now=NOW)
    assert info.value.reason == "auth_invalid"
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["rooms"] = ["*"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        auth.verify(SECRET, f"{head}.{forged}.{sig}", now=NOW)
    unsigned = jwt.encode({"sub": "eve", "exp": NOW + 60, "rooms": ["*"]}, None, algorithm="none")
    with pytest.raises(AuthError):
        auth.verify(SECRET, unsigned, now=NOW)
    for bad in ("", "x", "a.b.c", "x" * 5000):
        with pytest.raises(AuthError):
            auth.verify(SECRET, bad, now=NOW)


@pytest.mark.parametrize("claims", [
    {"exp": NOW + 60},  # no sub
    {"sub": "a"},  # no exp
    {"sub": "", "exp": NOW + 60},
    {"sub": "a" * 65, "exp": NOW + 60},
    {"sub": 7, "exp": NOW + 60},
    {"sub": "a", "exp": NOW + 60, "rooms": "lobby"},
    {"sub": "a", "exp": NOW + 60, "rooms": [1]},
    {"sub": "a", "exp": NOW + 60, "broadcast": "yes"},
])
def test_tokens_with_bad_claims_are_refused(claims: dict[str, object]) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        auth.verify(SECRET, token, now=NOW)
    assert info.value.reason == "auth_invalid"


def test_token_location() -> None:
    assert auth.token_from("Bearer abc", "/") == "abc"
    assert auth.token_from("bearer  abc ", "/?token=zzz") == "abc"  # the header wins
    assert auth.token_from(None, "/chat?x=1&token=t%2B1") == "t+1"
    assert auth.token_from("Basic dXNlcjpwdw==", "/?token=q") == "q"
    assert auth.token_from("Basic dXNlcjpwdw==", "/") is None
    assert auth.token_from(None, "/?token=") == ""
    assert auth.token_from(None, "/") is None


def test_grant_policy_drives_the_protocol() -> None:
    grant = auth.Grant("alice", frozenset({"lobby", "games"}), False, NOW + 60)
    policy = auth.GrantPolicy(grant)
    s = Session("c1")
    s.user, s.user_fixed = "alice", True
    assert handle(s, {"type": "join", "room": "games"}, 0, policy=policy)
    for msg in ({"type": "join", "room": "admin"}, {"type": "chat", "room": "admin", "text": "x"},
                {"type": "broadcast", "text": "x"}):
        with pytest.raises(Exception) as info:
            handle(s, msg, 0, policy=policy)
        assert getattr(info.value, "code", None) == "forbidden"
    [pub] = handle(s, {"type": "chat", "room": "games", "text": "hi", "user": "mallory"}, 0, policy=policy)
    assert pub.msg["user"] == "alice"  # type: ignore[attr-defined]
    anyroom = auth.GrantPolicy(auth.Grant("bob", frozenset({"*"}), True, NOW + 60))
    assert anyroom.may_join(s, "whatever") and anyroom.may_broadcast(s)


def test_issue_refuses_nonsense() -> None:
    for kwargs in ({"user": ""}, {"user": "a" * 65}, {"ttl": 0}, {"rooms": [""]}):
        args: dict[str, object] = {"user": "a", "rooms": ["lobby"], "ttl": 10, **kwargs}
        with pytest.raises(ValueError):
            auth.issue(SECRET, **args)  # type: ignore[arg-type]


# --- rate limiter ---------------------------------------------------------------------------------------------

def test_message_bucket_allows_burst_then_exactly_the_rate() -> None:
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    assert [rl.take(10, 0.0) for _ in range(10)] == [OK] * 10  # the burst: 10 tokens
    assert rl.take(10, 0.0) == REFUSED and rl.limit == "messages"
    # sustained: one token per 0.1 s
    t, passed = 0.0, 0
    for _ in range(100):
        t += 0.05  # offered at 20/s, twice the rate
        if rl.take(10, t) == OK:
            passed += 1
        if rl.refused > 10:  # reset the episode so this measures the rate, not the kick
            rl.refused = 0
    assert passed == pytest.approx(50, abs=1)  # 5 s at 10/s


def test_byte_bucket_and_large_messages_go_into_debt() -> None:
    rl = RateLimiter(rate=0, rate_bytes=1000, burst=1.0, now=0.0)
    assert rl.take(600, 0.0) == OK
    assert rl.take(600, 0.0) == REFUSED and rl.limit == "bytes"
    assert rl.take(600, 0.2) == OK  # 400 + 200 refilled
    assert rl.take(5000, 10.0) == OK  # bigger than the bucket: passes when full, leaves a debt
    assert rl.take(1, 11.0) == REFUSED  # -4000 + 1000
    assert rl.take(1, 14.01) == OK


def test_a_client_that_keeps_going_is_kicked_and_one_that_slows_down_is_not() -> None:
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    verdicts = [rl.take(1, 0.0) for _ in range(60)]
    assert verdicts[:10] == [OK] * 10
    assert verdicts[10:30] == [REFUSED] * 20  # max(16, 2 * bucket) refusals
    assert verdicts[30] == KICK
    # by time: over the limit for longer than the burst
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    t, last = 0.0, OK
    while last != KICK and t < 5:
        t += 0.05
        last = rl.take(1, t)
    assert last == KICK and 1.9 < t < 2.3  # empty after ~1 s at 20/s offered, then 1 s over the limit
    # one that backs off after the first error is never kicked
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    t = 0.0
    for _ in range(20):
        while rl.take(1, t) == OK:
            pass
        t += 2.0  # backs off
    assert rl.refused == 1


# --- per-IP table ----------------------------------------------------------------------------------------------

def test_ip_table_sums_rows_and_is_shared_across_fork() -> None:
    table = IpTable(3)
    table.bind(0)
    table.add("10.0.0.1", 2)
    table.bind(2)
    table.add("10.0.0.1", 1)
    table.add("10.0.0.2", 1)
    assert table.count("10.0.0.1") == 3 and table.count("10.0.0.2") == 1 and table.count("10.9.9.9") == 0
    pid = os.fork()
    if pid == 0:  # a worker: writes its own row
        table.bind(1)
        table.add("10.0.0.1", 5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.count("10.0.0.1") == 8
    table.clear(1)  # the supervisor reaped that worker
    assert table.count("10.0.0.1") == 3
    table.bind(2)
    table.add("10.0.0.2", -5)  # never below zero
    assert table.count("10.0.0.2") == 0
    with pytest.raises(ValueError):
        table.bind(3)


# --- admission ---------------------------------------------------------------------------------------------------

def test_gate_order_and_answers() -> None:
    open_gate = Gate(Config())
    assert not open_gate.active
    assert open_gate.check("/", "https://evil.example", None, "1.2.3.4", 10**6) == (None, None)
    table = IpTable(1)
    cfg = Config(allowed_origins=("https://ok.example",), auth_secret=SECRET, max_conns=2, max_conns_per_ip=1)
    gate = Gate(cfg, table)
    token = auth.issue(SECRET, "alice", ["lobby"], ttl=60, now=NOW)
    bearer = f"Bearer {token}"

    def status(origin: str | None, authz: str | None, conns: int = 0, path: str = "/") -> int:
        refusal, _ = gate.check(path, origin, authz, "1.2.3.4", conns, now=NOW)
        return 0 if refusal is None else refusal.status

    assert status("https://evil.example", bearer) == 403
    assert status("https://ok.example/", bearer) == 0  # a trailing slash is tolerated
    assert status(None, bearer) == 0  # not a browser
    assert status(None, None) == 401
    assert status(None, "Bearer nope") == 401
    assert status(None, None, path=f"/?token={token}") == 0
    assert status(None, bearer, conns=2) == 503
    table.add("1.2.3.4", 2)  # this connection and another one
    refusal, _ = gate.check("/", None, bearer, "1.2.3.4", 0, now=NOW)
    assert refusal is not None and refusal.reason == "max_conns_per_ip" and ("Retry-After", "1") in refusal.headers
    refusal, grant = gate.check("/", None, bearer, "5.6.7.8", 0, now=NOW)
    assert refusal is None and grant is not None and grant.user == "alice"
    refusal, _ = gate.check("/", None, bearer, "1.2.3.4", 0, now=NOW + 61)
    assert refusal is not None and refusal.reason == "auth_expired"


# --- options -------------------------------------------------------------------------------------------------------

def test_options_default_off_and_validated() -> None:
    d = Config()
    assert (d.certfile, d.auth_secret, d.allowed_origins, d.rate_limit, d.rate_limit_bytes, d.max_conns,
            d.max_conns_per_ip, d.handshake_timeout) == (None, None, (), 0.0, 0.0, 0, 0, 10.0)
    for bad in ({"rate_limit": -1}, {"rate_limit_bytes": -1}, {"rate_burst": 0}, {"max_conns": -1},
                {"max_conns_per_ip": -1}, {"handshake_timeout": 0}, {"auth_secret": "short"},
                {"certfile": "a.pem"}):
        with pytest.raises(ConfigError):
            Config(**bad)  # type: ignore[arg-type]


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--certfile", "c.pem", "--keyfile", "k.pem", "--auth-secret", SECRET, "--allowed-origins",
            "https://a.example, https://b.example", "--rate-limit", "5", "--rate-limit-bytes", "1000",
            "--rate-burst", "3", "--max-conns-per-ip", "7", "--max-conns", "100", "--handshake-timeout", "2.5",
            "--no-tcp-migrate-req"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.certfile == "c.pem" and cfg.keyfile == "k.pem" and cfg.auth_secret == SECRET
    assert cfg.allowed_origins == ("https://a.example", "https://b.example")
    assert (cfg.rate_limit, cfg.rate_limit_bytes, cfg.rate_burst) == (5.0, 1000.0, 3.0)
    assert (cfg.max_conns_per_ip, cfg.max_conns, cfg.handshake_timeout) == (7, 100, 2.5)
    assert cfg.tcp_migrate_req is False and cfg.scheme == "wss"
    env = {"FANWIRE_AUTH_SECRET": SECRET, "FANWIRE_ALLOWED_ORIGINS": "https://c.example",
           "FANWIRE_RATE_LIMIT": "9", "FANWIRE_RATE_LIMIT_BYTES": "99", "FANWIRE_RATE_BURST": "0.5",
           "FANWIRE_MAX_CONNS_PER_IP": "3", "FANWIRE_MAX_CONNS": "4", "FANWIRE_HANDSHAKE_TIMEOUT": "1",
           "FANWIRE_TCP_MIGRATE_REQ": "0", "FANWIRE_CERTFILE": "x.pem", "FANWIRE_KEYFILE": "y.pem"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = config_from_args(build_parser().parse_args([]))
    assert cfg.auth_secret == SECRET and cfg.allowed_origins == ("https://c.example",)
    assert (cfg.rate_limit, cfg.rate_limit_bytes, cfg.rate_burst) == (9.0, 99.0, 0.5)
    assert (cfg.max_conns_per_ip, cfg.max_conns, cfg.handshake_timeout) == (3, 4, 1.0)
    assert cfg.tcp_migrate_req is False and (cfg.certfile, cfg.keyfile) == ("x.pem", "y.pem")
    monkeypatch.setenv("FANWIRE_AUTH_SECRET", "")
    assert config_from_args(build_parser().parse_args([])).auth_secret is None


def test_token_subcommand(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["token", "--user", "alice", "--rooms", "lobby,games", "--ttl", "3600", "--broadcast",
                 "--auth-secret", SECRET]) == 0
    grant = auth.verify(SECRET, capsys.readouterr().out.strip())
    assert grant.user == "alice" and grant.rooms == {"lobby", "games"} and grant.broadcast
    assert 3590 < grant.expires - time.time() <= 3600
    monkeypatch.setenv("FANWIRE_AUTH_SECRET", SECRET)
    assert main(["token", "--user", "bob", "--rooms", "*"]) == 0
    grant = auth.verify(SECRET, capsys.readouterr().out.strip())
    assert grant.user == "bob" and grant.any_room and not grant.broadcast
    monkeypatch.delenv("FANWIRE_AUTH_SECRET")
    with pytest.raises(SystemExit) as info:
        main(["token", "--user", "alice"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["token", "--user", "alice", "--auth-secret", "short"])


def test_server_refuses_bad_certificate_and_missing_key_at_start(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SystemExit) as info:
        main(["--certfile", str(bad), "--keyfile", str(bad)])
    assert info.value.code == 2
    assert "cannot load certificate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--certfile", str(bad)])


def test_migrate_sysctl_helpers(tmp_path: Path) -> None:
    f = tmp_path / "tcp_migrate_req"
    assert migrate_req(str(f)) is None
    assert "unavailable" in enable_migrate_req(str(f))
    f.write_text("0\n")
    assert migrate_req(str(f)) is False
    assert enable_migrate_req(str(f)) == "enabled" and migrate_req(str(f)) is True
    assert enable_migrate_req(str(f)) == "already on"
