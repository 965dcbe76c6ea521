"""Nothing lost, proven under chaos (issue 12): subscribers cut every few hundred milliseconds while
publishers on other workers publish numbered, acknowledged messages; with a worker SIGKILL, a rolling
restart, and (Redis bus) a node restart and a Redis restart in the middle.

What must hold:
- without a lost history: every subscriber holds exactly the observer's sequence of every stream (no gap,
  no duplicate, same order), every acknowledged message is in it exactly once, and no loss is reported;
- when a history is lost (the worker that sequenced a stream, or Redis, restarted): the stream's epoch
  changes and every subscriber that was in it reports it (``recovered: false``); within each epoch nothing
  is missing or doubled without a report; every message acknowledged in the final epoch is in it once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import Any

from server.streams.owner import owner_slot

from ..helpers import RedisServer, ServerProcess, T, free_port
from .chaos import BROADCAST, Outcome, run_chaos

ROOMS = ("alpha", "beta")
STREAMS = (*ROOMS, BROADCAST)


def run(coro: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T(timeout)))


def assert_complete(out: Outcome) -> None:
    """No history was lost: everyone holds the same full sequence, and every ack is in it once."""
    assert out.cuts > 5, "the chaos did not happen"
    assert out.duplicates == 0, "the server sent duplicates (the clients dropped them)"
    assert not out.failed, out.failed[:5]
    for stream in STREAMS:
        seq = out.observer.messages.get(stream, [])
        assert seq, f"nothing published to {stream}"
        epochs = {e for e, _, _ in seq}
        assert len(epochs) == 1, f"{stream} changed epoch: {epochs}"
        offsets = [o for _, o, _ in seq]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), f"{stream}: gaps in {offsets}"
        texts = [t for _, _, t in seq]
        assert Counter(texts) == Counter(t for t, _ in out.acks[stream]), f"{stream}: acked != published"
        assert len(set(texts)) == len(texts), f"{stream}: a message published twice"
        by_offset = {o: t for _, o, t in seq}
        for text, ack in out.acks[stream]:
            assert by_offset.get(ack.offset) == text, (stream, text, ack)
        for sub in out.subscribers:
            assert sub.texts(stream) == texts, f"{sub.name} in {stream}: not the observer's sequence"
            assert not sub.losses(stream), f"{sub.name} reported a loss in {stream}: {sub.losses(stream)}"


def assert_no_silent_gap(out: Outcome, reset: set[str]) -> None:
    """Histories of ``reset`` streams were lost (a sequencer, or Redis, restarted): every client that missed
    something said so, nobody got a duplicate, and all agree on what each position holds."""
    assert out.duplicates == 0
    for stream in STREAMS:
        truth: dict[tuple[str, int], str] = {}
        for text, ack in out.acks[stream]:
            truth[(ack.epoch, ack.offset)] = text
        for rec in (out.observer, *out.subscribers):
            for epoch, offset, text in rec.messages.get(stream, []):
                assert truth.setdefault((epoch, offset), text) == text, (stream, epoch, offset, text)
        if stream not in reset:
            assert len({e for e, _, _ in out.observer.messages[stream]}) == 1, f"{stream} changed epoch"
        for rec in (out.observer, *out.subscribers):
            mine = rec.messages.get(stream, [])
            epochs = list(dict.fromkeys(e for e, _, _ in mine))
            losses = len(rec.losses(stream))
            assert losses >= len(epochs) - 1, f"{rec.name}: {stream} changed epoch without a report"
            for epoch in epochs:
                offs = [o for e, o, _ in mine if e == epoch]
                assert len(set(offs)) == len(offs), f"{rec.name}: a duplicate in {stream}"
                if offs != list(range(offs[0], offs[0] + len(offs))):
                    assert losses, f"{rec.name}: a gap in {stream} without a report: {offs}"


# --- the pipe bus ----------------------------------------------------------------------------------------------

def test_cuts_lose_nothing() -> None:
    with ServerProcess(workers=2) as srv:
        out = run(run_chaos(srv.url, srv.port, duration=4.0))
    assert_complete(out)


def test_a_rolling_restart_loses_nothing() -> None:
    with ServerProcess(workers=2) as srv:
        async def restart() -> None:
            old = set(srv.worker_pids().values())
            os.kill(srv.pid, signal.SIGHUP)
            await asyncio.get_running_loop().run_in_executor(None, srv.wait_pids_gone, list(old), 30.0)

        out = run(run_chaos(srv.url, srv.port, duration=6.0, fault=restart, fault_at=0.3))
    assert_complete(out)


def test_a_worker_sigkill_changes_the_epochs_of_its_streams_and_says_so() -> None:
    with ServerProcess(workers=2) as srv:
        victim = owner_slot("alpha", 2)
        pid = srv.worker_pids()[victim]

        async def kill() -> None:
            os.kill(pid, signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, srv.wait_worker_replaced, victim, pid, 10.0)

        out = run(run_chaos(srv.url, srv.port, duration=5.0, fault=kill, fault_at=0.4))
    reset = {s for s in STREAMS if owner_slot(s, 2) == victim}
    assert "alpha" in reset
    alpha = out.observer.messages["alpha"]
    assert len({e for e, _, _ in alpha}) == 2, "alpha's history was lost: it must have a new epoch"
    assert_no_silent_gap(out, reset)


# --- the Redis bus -----------------------------------------------------------------------------------------------

def _node(redis: RedisServer, name: str, port: int | None = None) -> ServerProcess:
    return ServerProcess(workers=2, port=port, extra_args=["--bus", "redis", "--redis-url", redis.url,
                                                            "--node-id", name])


def test_redis_cuts_and_a_node_restart_lose_nothing(redis_server: RedisServer) -> None:
    a = _node(redis_server, "node-a").start()
    b = _node(redis_server, "node-b", port=free_port()).start()
    try:
        async def restart_b() -> None:  # node b's clients reconnect to it once it is back: history is in Redis
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, b.stop)
            await loop.run_in_executor(None, b.start)

        out = run(run_chaos(b.url, b.port, duration=6.0, fault=restart_b, fault_at=0.3, observer_url=a.url))
    finally:
        b.stop()
        a.stop()
    assert_complete(out)


def test_a_redis_restart_changes_every_epoch_and_says_so(redis_server: RedisServer) -> None:
    a = _node(redis_server, "node-a").start()
    b = _node(redis_server, "node-b", port=free_port()).start()
    try:
        async def restart_redis() -> None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, redis_server.kill)
            await asyncio.sleep(0.5)
            await loop.run_in_executor(None, redis_server.start)

        out = run(run_chaos(b.url, b.port, duration=8.0, fault=restart_redis, fault_at=0.3, observer_url=a.url))
    finally:
        b.stop()
        a.stop()
    for stream in STREAMS:
        assert len({e for e, _, _ in out.observer.messages[stream]}) >= 2, f"{stream} kept its epoch"
    assert_no_silent_gap(out, set(STREAMS))
