"""The client library's presence (join with presence, get_presence, presence events, kept across a
reconnect) and application actions (call), against a real server running an App."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from client import AsyncClient, ServerError
from tests.helpers import ServerProcess, T


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(2, extra_args=["--app", "tests.app.sampleapp:app", "--log-level", "warning"]) as s:
        yield s


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def test_call_returns_the_actions_data_and_raises_its_failure(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as c:
            assert await c.call("add", {"a": 2, "b": 3}) == {"sum": 5}
            with pytest.raises(ServerError) as err:
                await c.call("boom")
            assert err.value.code == "internal_error"
            with pytest.raises(ServerError) as err:
                await c.call("no-such-action")
            assert err.value.code == "unknown_action"

    run(main())


def test_presence_events_listing_and_restore_after_a_reconnect(server: ServerProcess) -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with AsyncClient(server.url, user="watcher") as w, AsyncClient(server.url, user="mover") as m:
            w.on("presence", events.append)
            await w.join("pr", presence=True)
            await m.join("pr", presence=True)
            for _ in range(100):
                if any(e["event"] == "join" and e["client_id"] == m.client_id for e in events):
                    break
                await asyncio.sleep(0.02)
            listing = await w.get_presence("pr")
            assert {x["client_id"] for x in listing["members"]} == {w.client_id, m.client_id}
            # the mover's worker dies: the client reconnects and is listed again, by itself
            old_id = m.client_id
            os.kill(int(m.welcome["pid"]) if m.welcome and "pid" in m.welcome else server.worker_pids()[
                int(m.welcome["worker"])], signal.SIGKILL)  # type: ignore[index]
            deadline = asyncio.get_running_loop().time() + T(15)
            while asyncio.get_running_loop().time() < deadline:
                if m.connected and m.client_id != old_id:
                    ids = {x["client_id"] for x in (await w.get_presence("pr"))["members"]}
                    if m.client_id in ids:
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the reconnected client is not listed again")
            assert old_id not in {x["client_id"] for x in (await w.get_presence("pr"))["members"]}
            await m.leave("pr")
            assert {x["client_id"] for x in (await w.get_presence("pr"))["members"]} == {w.client_id}

    run(main())
