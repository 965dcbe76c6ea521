"""Fixtures for the hardening tests: certificates made at test time (trustme) and an auth secret."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

SECRET = "hardening-tests-secret-0123456789abcdef"  # >= 32 bytes, as the server requires


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    cafile: Path
    server_pem: Path  # certificate chain and private key, one file

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = d / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    cafile = d / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    yield Certs(ca, cafile, pem)
