"""A mergeable latency histogram (log-linear buckets, like HdrHistogram). Pure.

Values are integers (the stress tool records microseconds). Values below 128 get a bucket each; above,
each power of two is split into 64 buckets, so a reported value is within 1/128 (0.8 %) of the truth.
Histograms from several processes merge exactly by adding bucket counts, and survive a round trip
through JSON (:meth:`Histogram.to_dict`, :meth:`Histogram.from_dict`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Histogram"]

_SUB_BITS = 6  # 64 buckets per power of two above the exact range
_EXACT = 1 << (_SUB_BITS + 1)  # 128: values below are exact


def bucket_index(value: int) -> int:
    """The bucket holding ``value`` (>= 0)."""
    if value < _EXACT:
        return value
    shift = value.bit_length() - (_SUB_BITS + 1)
    mantissa = value >> shift  # in [64, 128)
    return _EXACT + (shift - 1) * (1 << _SUB_BITS) + (mantissa - (1 << _SUB_BITS))


def bucket_bounds(index: int) -> tuple[int, int]:
    """Inclusive lowest and highest value that fall into bucket ``index``."""
    if index < _EXACT:
        return index, index
    shift = (index - _EXACT) // (1 << _SUB_BITS) + 1
    mantissa = (index - _EXACT) % (1 << _SUB_BITS) + (1 << _SUB_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of integer values in log-linear buckets, with exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def record(self, value: int) -> None:
        value = max(0, int(value))
        idx = bucket_index(value)
        self.counts[idx] = self.counts.get(idx, 0) + 1
        self.count += 1
        self.total += value
        self.min = value if self.min is None or value < self.min else self.min
        self.max = value if self.max is None or value > self.max else self.max

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other`` into this histogram; returns self."""
        for idx, n in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + n
        self.count += other.count
        self.total += other.total
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)
        return self

    def percentile(self, p: float) -> float | None:
        """The value at percentile ``p`` (0-100): the smallest value with at least ``p`` % of the
        recorded values at or below it, as the middle of its bucket, clamped to [min, max]."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within [0, 100], not {p!r}")
        if self.count == 0 or self.min is None or self.max is None:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                low, high = bucket_bounds(idx)
                return float(min(max((low + high) / 2, self.min), self.max))
        return float(self.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        hist.counts = {int(k): int(v) for k, v in data["counts"].items()}
        hist.count = int(data["count"])
        hist.total = int(data["total"])
        hist.min = None if data["min"] is None else int(data["min"])
        hist.max = None if data["max"] is None else int(data["max"])
        return hist
