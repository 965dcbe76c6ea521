"""Fixtures for the client tests: one real 2-worker server per test module; for the TLS and auth tests,
certificates made at test time (trustme) and a shared secret for signed tokens."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.helpers import ServerProcess

#: HS256 secret of the auth-enabled test servers (the server wants >= 32 bytes).
SECRET = "client-tests-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2) as srv:
        yield srv


@dataclass(frozen=True)
class Certs:
    cafile: Path  # the test CA's certificate: what clients trust
    server_pem: Path  # the server's certificate chain and private key, one file

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("client-certs")
    ca = trustme.CA()
    pem = d / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    cafile = d / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return Certs(cafile, pem)
