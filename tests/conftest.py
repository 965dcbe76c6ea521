"""Fixtures shared by every test package: an auth secret, certificates made at test time (trustme), and a
private redis-server (skipped, loudly, where the binary is missing)."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import NO_REDIS_REASON, RedisServer, redis_server_binary  # noqa: E402

SECRET = "hardening-tests-secret-0123456789abcdef"  # >= 32 bytes, as the server requires


@dataclass(frozen=True)
class Certs:
    ca: object  # trustme.CA
    cafile: Path
    server_pem: Path  # certificate chain and private key, one file

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    import trustme

    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = d / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    cafile = d / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    yield Certs(ca, cafile, pem)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test module's own on a free port."""
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)
    with RedisServer() as server:
        yield server
