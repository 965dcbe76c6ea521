"""Fixtures for the client tests: one real 2-worker server per test module (certificates and the auth
secret come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2) as srv:
        yield srv
