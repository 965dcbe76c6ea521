"""The pure backoff generator: bounds, growth, cap, jitter, attempt limit."""

from __future__ import annotations

import email.utils
import itertools
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.backoff import Backoff, backoff, ceiling

pytestmark = pytest.mark.timeout(30)


def test_defaults_are_half_a_second_base_five_second_cap_unlimited() -> None:
    policy = Backoff()
    assert (policy.base, policy.cap, policy.max_attempts) == (0.5, 5.0, None)
    # unlimited: far more delays than any outage would need, and still going
    delays = list(itertools.islice(policy.delays(lambda: 0.999), 1000))
    assert len(delays) == 1000


def test_ceiling_doubles_from_base_then_stays_at_cap() -> None:
    assert [ceiling(n, 0.5, 5.0) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_max_rng_value_tracks_the_ceiling_and_zero_gives_zero() -> None:
    top = list(itertools.islice(backoff(0.5, 5.0, rng=lambda: 1.0), 6))
    assert top == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert list(itertools.islice(backoff(0.5, 5.0, rng=lambda: 0.0), 6)) == [0.0] * 6


def test_attempt_limit_ends_the_generator() -> None:
    assert len(list(backoff(0.1, 1.0, max_attempts=4))) == 4
    assert list(backoff(0.1, 1.0, max_attempts=0)) == []


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert ceiling(10_000, 0.5, 5.0) == 5.0
    gen = backoff(0.5, 5.0, rng=lambda: 1.0)
    for _ in range(3000):
        last = next(gen)
    assert last == 5.0


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    rng = random.Random(1234)
    n = 4000
    # attempt 5 and later: window [0, 5)
    samples = [list(itertools.islice(backoff(0.5, 5.0, rng=rng.random), 6))[5] for _ in range(n)]
    assert all(0.0 <= s < 5.0 for s in samples)
    assert statistics.mean(samples) == pytest.approx(2.5, abs=0.15)
    # every fifth of the window gets a fair share: full jitter, not "cap minus a little"
    buckets = [0] * 5
    for s in samples:
        buckets[int(s)] += 1
    assert min(buckets) > n / 5 * 0.8
    assert len(set(samples)) > n * 0.99  # no two clients in lock step


def test_two_clients_with_different_randomness_do_not_retry_together() -> None:
    a = list(backoff(0.5, 5.0, 8, rng=random.Random(1).random))
    b = list(backoff(0.5, 5.0, 8, rng=random.Random(2).random))
    assert a != b


@pytest.mark.parametrize(
    ("base", "cap", "attempts"), [(0, 5, None), (-1, 5, None), (1, 0.5, None), (0.5, 5, -1)]
)
def test_invalid_parameters_are_refused(base: float, cap: float, attempts: int | None) -> None:
    with pytest.raises(ValueError):
        next(backoff(base, cap, attempts))
    with pytest.raises(ValueError):
        Backoff(base, cap, attempts)


@given(
    base=st.floats(0.001, 10),
    factor=st.floats(1, 100),
    attempts=st.integers(0, 80),
    u=st.floats(0, 1, exclude_max=True),
)
def test_every_delay_is_within_zero_and_min_cap_base_two_to_the_n(
    base: float, factor: float, attempts: int, u: float
) -> None:
    cap = base * factor
    delays = list(backoff(base, cap, attempts, rng=lambda: u))
    assert len(delays) == attempts
    for n, d in enumerate(delays):
        assert 0 <= d <= min(cap, base * 2**n)
        assert d <= cap


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    from client.backoff import parse_retry_after

    now = 1_700_000_000.0
    assert parse_retry_after("1", now) == 1.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after(None, now) is None
    for bad in ("", "-1", "1.5", "soon", "Wed, 99 Foo 2023 00:00:00 GMT"):
        assert parse_retry_after(bad, now) is None, bad
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0  # in the past


@pytest.mark.parametrize(("delay", "retry_after", "cap", "expected"), [
    (0.1, None, 5.0, 0.1),  # no Retry-After: the backoff delay
    (0.1, 1.0, 5.0, 1.0),  # at least what the server asked for
    (3.0, 1.0, 5.0, 3.0),  # a longer backoff delay stays
    (0.1, 30.0, 5.0, 5.0),  # but never more than the cap
    (0.1, 0.0, 5.0, 0.1),
])
def test_floored(delay: float, retry_after: float | None, cap: float, expected: float) -> None:
    from client.backoff import floored

    assert floored(delay, retry_after, cap) == expected
