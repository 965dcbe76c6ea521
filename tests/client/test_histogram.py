"""The mergeable latency histogram used by stress."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.histogram import Histogram, bucket_bounds, bucket_index

pytestmark = pytest.mark.timeout(30)


def exact(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


@given(st.integers(0, 2**40))
def test_every_value_falls_inside_its_bucket(v: int) -> None:
    low, high = bucket_bounds(bucket_index(v))
    assert low <= v <= high
    assert high - low <= max(0, low) / 64


def test_buckets_are_contiguous() -> None:
    prev_high = -1
    for idx in range(0, 2000):
        low, high = bucket_bounds(idx)
        assert low == prev_high + 1
        prev_high = high


def test_percentiles_within_one_percent_of_exact() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(6, 1.2)) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for p in (50, 90, 99, 99.9, 100):
        got = h.percentile(p)
        assert got is not None
        assert got == pytest.approx(exact(values, p), rel=0.01, abs=1)
    assert (h.min, h.max, h.count) == (min(values), max(values), len(values))
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_merge_equals_recording_everything_in_one_and_survives_json() -> None:
    rng = random.Random(3)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = rng.randrange(0, 100_000)
        (a if i % 2 else b).record(v)
        both.record(v)
    merged = Histogram.from_dict(json.loads(json.dumps(a.to_dict()))).merge(b)
    assert merged.to_dict() == both.to_dict()
    assert merged.percentile(99) == both.percentile(99)


def test_empty_and_bad_percentile() -> None:
    h = Histogram()
    assert h.percentile(50) is None and h.mean is None
    with pytest.raises(ValueError):
        h.percentile(101)
