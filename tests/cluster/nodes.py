"""Helpers for the cluster tests: start nodes on one Redis, poll their HTTP endpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from server.metrics import parse

from ..helpers import ServerProcess, T, http_get


def node(redis_url: str, name: str, workers: int = 2, *extra: str) -> ServerProcess:
    return ServerProcess(workers, extra_args=["--bus", "redis", "--redis-url", redis_url, "--node-id", name,
                                              "--log-level", "warning", *extra])


def health_by_worker(srv: ServerProcess, want: Callable[[dict[str, Any]], bool], timeout: float = 10.0
                     ) -> dict[int, dict[str, Any]]:
    """Poll /healthz (each request lands on some worker) until every worker has answered ``want``."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + T(timeout)
    while time.monotonic() < deadline:
        status, _, body = http_get(srv.port, "/healthz")
        assert status == 200, body
        h = json.loads(body)
        if want(h):
            seen[h["worker"]] = h
            if len(seen) == srv.workers:
                return seen
        else:
            seen.pop(h["worker"], None)
        time.sleep(0.02)
    raise TimeoutError(f"healthz: only workers {sorted(seen)} matched:\n{srv.output()}")


def metrics(srv: ServerProcess) -> dict[str, float]:
    status, _, body = http_get(srv.port, "/metrics")
    assert status == 200
    return parse(body.decode())


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + T(timeout)
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        time.sleep(0.05)
