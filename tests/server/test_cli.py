"""The command line: options from flags and FANWIRE_* variables, the token subcommand, start-up checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.cli import build_parser, config_from_args, main
from server.config import Config
from server.errors import ConfigError
from server.security import auth

from ..conftest import SECRET


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
