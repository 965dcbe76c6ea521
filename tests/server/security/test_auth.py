"""Signed tokens: issue, verify, claims, where a handshake carries them, the policy they drive."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from server.errors import AuthError, ProtocolViolation
from server.protocol import Session, handle
from server.security import auth

from ...conftest import SECRET

NOW = 1_800_000_000.0


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
        with pytest.raises(ProtocolViolation) as info:
            handle(s, msg, 0, policy=policy)
        assert info.value.code == "forbidden"
    [pub] = handle(s, {"type": "chat", "room": "games", "text": "hi", "user": "mallory"}, 0, policy=policy)
    assert pub.msg["user"] == "alice"  # type: ignore[attr-defined]
    anyroom = auth.GrantPolicy(auth.Grant("bob", frozenset({"*"}), True, NOW + 60))
    assert anyroom.may_join(s, "whatever") and anyroom.may_broadcast(s)


def test_issue_refuses_nonsense() -> None:
    for kwargs in ({"user": ""}, {"user": "a" * 65}, {"ttl": 0}, {"rooms": [""]}):
        args: dict[str, object] = {"user": "a", "rooms": ["lobby"], "ttl": 10, **kwargs}
        with pytest.raises(ValueError):
            auth.issue(SECRET, **args)  # type: ignore[arg-type]
