"""Admission at the handshake: the order of the checks and their answers."""

from __future__ import annotations

from server.config import Config
from server.security import auth
from server.security.admission import Gate
from server.security.iptable import IpTable

from ...conftest import SECRET

NOW = 1_800_000_000.0


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
