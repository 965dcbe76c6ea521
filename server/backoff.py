"""Reconnect delays: exponential backoff with full jitter. Pure: no I/O, no clock, no event loop.

One generator for every reconnect loop of the project: the client library's (``client.backoff`` adds the
``Retry-After`` floor) and the Redis bus's.

Attempt ``n`` (counting from 0) waits a uniformly random time in ``[0, min(cap, base * 2**n))``
("full jitter", as in the AWS architecture blog's *Exponential Backoff And Jitter*). Full jitter spreads
a crowd of clients that lost the same server over the whole window, so a restarted server is not hit by
every client at the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff", "backoff", "ceiling"]

# 2**64 * any sane base is far above any sane cap; the bound keeps base * 2**n a finite float.
_MAX_EXPONENT = 64


def ceiling(attempt: int, base: float, cap: float) -> float:
    """Upper bound of the delay before attempt ``attempt`` (0-based): ``min(cap, base * 2**attempt)``."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return min(cap, base * float(2 ** min(attempt, _MAX_EXPONENT)))


def _check(base: float, cap: float, max_attempts: int | None) -> None:
    if not base > 0:
        raise ValueError(f"base must be > 0, not {base!r}")
    if not cap >= base:
        raise ValueError(f"cap must be >= base ({base!r}), not {cap!r}")
    if max_attempts is not None and max_attempts < 0:
        raise ValueError(f"max_attempts must be >= 0 or None, not {max_attempts!r}")


def backoff(
    base: float = 0.5,
    cap: float = 5.0,
    max_attempts: int | None = None,
    *,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield the delay in seconds to wait before each reconnect attempt.

    ``rng`` returns a float in ``[0, 1)`` (inject a seeded one in tests). The generator ends after
    ``max_attempts`` delays; ``None`` means it never ends.
    """
    _check(base, cap, max_attempts)
    attempt = 0
    while max_attempts is None or attempt < max_attempts:
        yield rng() * ceiling(attempt, base, cap)
        attempt += 1


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect policy: ``base`` and ``cap`` in seconds, ``max_attempts`` (``None``: unlimited)."""

    base: float = 0.5
    cap: float = 5.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        _check(self.base, self.cap, self.max_attempts)

    def delays(self, rng: Callable[[], float] = random.random) -> Iterator[float]:
        """A fresh delay generator for one outage."""
        return backoff(self.base, self.cap, self.max_attempts, rng=rng)
