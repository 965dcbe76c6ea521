"""The Python client's v1.1 scenarios against the real server (2 workers, both codecs): recovery after a
cut, exactly-once resends, acknowledged sends queued while down. The same scenarios run against the fake
v1.1 server in tests/client/."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.fakes import ChaosProxy
from tests.client.scenarios import exactly_once_after_cut, queued_while_down_is_sent_once, recovery_after_cut

from ..helpers import ServerProcess, T


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with ServerProcess(workers=2) as s:
        yield s


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_recovery_after_a_cut(srv: ServerProcess, codec: str) -> None:
    async def main() -> None:
        with ChaosProxy(srv.port) as proxy:
            sub, _ = await recovery_after_cut(srv.url, proxy, codec)
            await sub.disconnect()

    run(main())


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_exactly_once_after_a_cut(srv: ServerProcess, codec: str) -> None:
    async def main() -> None:
        with ChaosProxy(srv.port) as proxy:
            await exactly_once_after_cut(srv.url, proxy, room=f"auction-{codec}", codec=codec)

    run(main())


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_queued_while_down_is_sent_once(srv: ServerProcess, codec: str) -> None:
    async def main() -> None:
        with ChaosProxy(srv.port) as proxy:
            await queued_while_down_is_sent_once(srv.url, proxy, room=f"queue-{codec}", codec=codec)

    run(main())
