"""bench.hist: the load processes' mergeable histogram."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.hist import Histogram, bucket_bounds, bucket_index, pct_key

pytestmark = pytest.mark.timeout(30)


def exact(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


@given(st.integers(0, 2**47))
def test_every_value_falls_inside_its_bucket(v: int) -> None:
    low, high = bucket_bounds(bucket_index(v))
    assert low <= v <= high
    assert high - low <= max(0, low) / 64


@given(st.integers(0, 2**47))
def test_record_uses_the_same_bucket_as_bucket_index(v: int) -> None:
    h = Histogram()
    h.record(v)
    assert h.counts[bucket_index(v)] == 1


def test_buckets_are_contiguous() -> None:
    prev_high = -1
    for idx in range(3000):
        low, high = bucket_bounds(idx)
        assert low == prev_high + 1
        prev_high = high


def test_percentiles_within_one_percent_of_exact() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(6, 1.5)) for _ in range(20_000)]
    h = Histogram()
    h.record_many(values)
    for p in (50, 90, 99, 99.9, 100):
        got = h.percentile(p)
        assert got is not None
        assert abs(got - exact(values, p)) <= exact(values, p) / 100 + 1


def test_merge_is_exact_and_survives_json() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(0, 10**6) for _ in range(1000)] for _ in range(4)]
    hists = []
    for part in parts:
        h = Histogram()
        h.record_many(part)
        hists.append(json.loads(json.dumps(h.to_dict())))
    merged = Histogram.merged(hists)
    whole = Histogram()
    whole.record_many(v for part in parts for v in part)
    assert merged.counts == whole.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (whole.count, whole.total, whole.min, whole.max)


def test_empty_and_clamping() -> None:
    h = Histogram()
    assert h.percentile(99) is None and h.mean is None
    assert h.summary()["p99"] is None and h.to_dict()["min"] is None
    h.record(-5)  # counted apart, never clamped to 0
    h.record(2**60)  # clamped to 2**48 - 1 (~9 years in us)
    assert h.negative == 1 and h.count == 1 and h.min == h.max == 2**48 - 1
    with pytest.raises(ValueError):
        h.percentile(101)


def test_summary_scales_and_names_percentiles() -> None:
    h = Histogram()
    h.record_many([1000, 2000, 3000])
    s = h.summary(1000)
    assert s["count"] == 3 and s["max"] == 3.0 and s["min"] == 1.0
    assert set(s) >= {"p50", "p90", "p99", "p99_9"}
    assert pct_key(99.9) == "p99_9" and pct_key(50) == "p50"
