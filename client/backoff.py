"""Reconnect delays for the client: the shared generator (exponential backoff with full jitter, in
:mod:`server.backoff`, pure) and the server's ``Retry-After``. Pure: no I/O, no clock, no event loop.

Attempt ``n`` (counting from 0) waits a uniformly random time in ``[0, min(cap, base * 2**n))``
("full jitter", as in the AWS architecture blog's *Exponential Backoff And Jitter*). Full jitter spreads
a crowd of clients that lost the same server over the whole window, so a restarted server is not hit by
every client at the same instant.

A server that refuses a handshake with ``Retry-After`` (503 at a connection cap) sets a floor under the
next delay: :func:`floored` waits at least that long, but never longer than the cap.
"""

from __future__ import annotations

import email.utils
import math

from server.backoff import Backoff, backoff, ceiling

__all__ = ["Backoff", "backoff", "ceiling", "floored", "parse_retry_after"]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header (RFC 9110: delay-seconds or an HTTP-date);
    ``now`` is the current Unix time (for the date form). ``None`` when absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def floored(delay: float, retry_after: float | None, cap: float) -> float:
    """``delay``, raised to the server's ``retry_after`` (at most ``cap``) when it asked for one."""
    if retry_after is None or not retry_after > 0:
        return delay
    return max(delay, min(retry_after, cap))
