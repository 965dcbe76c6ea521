"""Token buckets on messages and bytes, and when a client that keeps going is kicked."""

from __future__ import annotations

import pytest

from server.security.ratelimit import KICK, OK, REFUSED, RateLimiter


def test_message_bucket_allows_burst_then_exactly_the_rate() -> None:
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    assert [rl.take(10, 0.0) for _ in range(10)] == [OK] * 10  # the burst: 10 tokens
    assert rl.take(10, 0.0) == REFUSED and rl.limit == "messages"
    # sustained: one token per 0.1 s
    t, passed = 0.0, 0
    for _ in range(100):
        t += 0.05  # offered at 20/s, twice the rate
        if rl.take(10, t) == OK:
            passed += 1
        if rl.refused > 10:  # reset the episode so this measures the rate, not the kick
            rl.refused = 0
    assert passed == pytest.approx(50, abs=1)  # 5 s at 10/s


def test_byte_bucket_and_large_messages_go_into_debt() -> None:
    rl = RateLimiter(rate=0, rate_bytes=1000, burst=1.0, now=0.0)
    assert rl.take(600, 0.0) == OK
    assert rl.take(600, 0.0) == REFUSED and rl.limit == "bytes"
    assert rl.take(600, 0.2) == OK  # 400 + 200 refilled
    assert rl.take(5000, 10.0) == OK  # bigger than the bucket: passes when full, leaves a debt
    assert rl.take(1, 11.0) == REFUSED  # -4000 + 1000
    assert rl.take(1, 14.01) == OK


def test_a_client_that_keeps_going_is_kicked_and_one_that_slows_down_is_not() -> None:
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    verdicts = [rl.take(1, 0.0) for _ in range(60)]
    assert verdicts[:10] == [OK] * 10
    assert verdicts[10:30] == [REFUSED] * 20  # max(16, 2 * bucket) refusals
    assert verdicts[30] == KICK
    # by time: over the limit for longer than the burst
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    t, last = 0.0, OK
    while last != KICK and t < 5:
        t += 0.05
        last = rl.take(1, t)
    assert last == KICK and 1.9 < t < 2.3  # empty after ~1 s at 20/s offered, then 1 s over the limit
    # one that backs off after the first error is never kicked
    rl = RateLimiter(rate=10, rate_bytes=0, burst=1.0, now=0.0)
    t = 0.0
    for _ in range(20):
        while rl.take(1, t) == OK:
            pass
        t += 2.0  # backs off
    assert rl.refused == 1
