"""A chaos harness for the delivery guarantees (issue 12): subscribers cut off at random, publishers with
acknowledgements, one observer, and an optional fault (a worker SIGKILL, a rolling restart, a node or Redis
restart) in the middle. It records what everyone saw; the tests decide what must hold.

Each subscriber has its own :class:`ChaosProxy`, cut (no close frame) every few hundred milliseconds. The
publishers publish numbered messages (``"<publisher>:<n>"``) to every stream, one at a time, each with
``ack=True``, so a cut or a restart between send and ack is followed by a resend with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from client import Ack, AsyncClient, Backoff, RecoveryEvent, State
from tests.client.fakes import ChaosProxy

from ..helpers import T

FAST = Backoff(base=0.05, cap=0.4)
BROADCAST = "$broadcast"


def stream_of(msg: dict[str, Any]) -> str | None:
    if msg.get("type") == "broadcast":
        return BROADCAST
    if msg.get("type") in ("chat", "publication"):
        return str(msg["room"])
    return None


@dataclass
class Recorder:
    """What one client delivered to its application, per stream, and its recovery events."""

    name: str
    messages: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)  # stream -> (epoch, offset, text)
    events: list[RecoveryEvent] = field(default_factory=list)

    def attach(self, client: AsyncClient) -> None:
        client.set_message_callback(self._on_message)
        client.on_recovery(self.events.append)

    def _on_message(self, msg: dict[str, Any]) -> None:
        stream = stream_of(msg)
        if stream is not None and "offset" in msg and isinstance(msg.get("text"), str):
            self.messages.setdefault(stream, []).append((msg["epoch"], msg["offset"], msg["text"]))

    def texts(self, stream: str) -> list[str]:
        return [t for _, _, t in self.messages.get(stream, [])]

    def losses(self, stream: str) -> list[RecoveryEvent]:
        return [e for e in self.events if e.room == stream and not e.recovered]

    def last(self, stream: str) -> tuple[str, int] | None:
        seq = self.messages.get(stream)
        return (seq[-1][0], seq[-1][1]) if seq else None


@dataclass
class Outcome:
    observer: Recorder
    subscribers: list[Recorder]
    acks: dict[str, list[tuple[str, Ack]]]  # stream -> (text, ack) for every acknowledged publication
    failed: list[str]  # publications that ended in an error (after the client's own retries)
    duplicates: int  # duplicates the clients dropped (the server should send none)
    cuts: int


async def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def run_chaos(url: str, port: int, *, rooms: tuple[str, ...] = ("alpha", "beta"), subscribers: int = 4,
                    publishers: int = 2, duration: float = 4.0, cut_every: tuple[float, float] = (0.15, 0.4),
                    fault: Callable[[], Awaitable[None]] | None = None, fault_at: float = 0.4,
                    observer_url: str | None = None, codec: str = "json", seed: int = 1) -> Outcome:
    rng = random.Random(seed)
    streams = (*rooms, BROADCAST)
    proxies = [ChaosProxy(port) for _ in range(subscribers)]
    for p in proxies:
        p.__enter__()
    clients: list[AsyncClient] = []
    try:
        observer = Recorder("observer")
        obs = AsyncClient(observer_url or url, backoff=FAST, user="observer")
        observer.attach(obs)
        clients.append(obs)
        subs: list[tuple[AsyncClient, Recorder]] = []
        for i, proxy in enumerate(proxies):
            rec = Recorder(f"sub{i}")
            c = AsyncClient(proxy.url, codec if i % 2 else "json", backoff=FAST, user=f"sub{i}")
            rec.attach(c)
            subs.append((c, rec))
            clients.append(c)
        pubs = [AsyncClient(url, backoff=FAST, user=f"p{i}", ack_timeout=T(30)) for i in range(publishers)]
        clients.extend(pubs)
        for c in clients:
            await c.connect(retry=True)
        for c in [obs, *(s for s, _ in subs)]:
            for room in rooms:
                await c.join(room)

        acks: dict[str, list[tuple[str, Ack]]] = {s: [] for s in streams}
        failed: list[str] = []
        stop = asyncio.Event()

        async def publish(i: int, pub: AsyncClient) -> None:
            n = 0
            while not stop.is_set():
                stream = streams[n % len(streams)]
                text = f"p{i}:{n}"
                try:
                    if stream == BROADCAST:
                        ack = await pub.send_broadcast(text, ack=True)
                    else:
                        ack = await pub.send_chat(text, stream, ack=True)
                    assert ack is not None
                    acks[stream].append((text, ack))
                except Exception as exc:
                    failed.append(f"{text}: {type(exc).__name__}: {exc}")
                n += 1
                await asyncio.sleep(rng.uniform(0.002, 0.01))

        async def chaos() -> None:
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(*cut_every))
                rng.choice(proxies).cut()

        tasks = [asyncio.create_task(publish(i, p)) for i, p in enumerate(pubs)]
        tasks.append(asyncio.create_task(chaos()))
        if fault is not None:
            await asyncio.sleep(duration * fault_at)
            await fault()
            await asyncio.sleep(duration * (1 - fault_at))
        else:
            await asyncio.sleep(duration)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), T(60))

        # let everyone settle: every subscriber reconnected and caught up with the observer
        await _wait(lambda: all(c.state is State.CONNECTED for c, _ in subs), 30, "every subscriber reconnected")
        await _wait(lambda: all(observer.last(s) == acks_last(acks, s) for s in streams if acks[s]), 30,
                    "the observer to see the last acknowledged message of every stream")
        await _wait(lambda: all(rec.last(s) == observer.last(s) for _, rec in subs for s in streams), 30,
                    "every subscriber to catch up with the observer")
        return Outcome(observer, [r for _, r in subs], acks, failed, sum(c.duplicates for c in clients),
                       sum(p.cuts for p in proxies))
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.disconnect()
        for p in proxies:
            p.__exit__(None, None, None)


def acks_last(acks: dict[str, list[tuple[str, Ack]]], stream: str) -> tuple[str, int] | None:
    """The position of the stream's last acknowledged publication (the highest offset of its last epoch)."""
    if not acks[stream]:
        return None
    last = acks[stream][-1][1]
    best = max((a for _, a in acks[stream] if a.epoch == last.epoch), key=lambda a: a.offset)
    return best.epoch, best.offset
