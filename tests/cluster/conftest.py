"""Fixtures for the cluster tests: a private redis-server and fanwire nodes sharing it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..helpers import NO_REDIS_REASON, RedisServer, redis_server_binary


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.skip(NO_REDIS_REASON)
    with RedisServer() as server:
        yield server
