"""A mergeable latency histogram with log-linear buckets (HdrHistogram-like). Pure, no I/O.

One histogram for the whole project: the stress tool (:mod:`client.stress`) and the benchmark harness
(:mod:`bench.hist` re-exports this module) record and merge the same buckets.

Values are integers (microseconds, by convention). A negative value is never clamped: it is counted
in :attr:`Histogram.negative` and left out of the buckets, so a reader sees that something measured time
backwards (a timer that fired early, a clock mix-up) instead of a run of zeros. Values below 128 get a bucket each;
above, every power of two is split into 64 buckets, so any reported value is within 1/128 (0.8 %) of
the truth. Load processes each keep their own histogram; the parent merges them exactly by adding bucket
counts. Histograms travel between processes and into the result JSON as plain dicts (:meth:`to_dict`).

Recording is the hot path of a load process, so :meth:`record` does integer arithmetic on a flat list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = ["PERCENTILES", "Histogram", "bucket_bounds", "bucket_index"]

_SUB_BITS: Final = 6  # 64 buckets per power of two above the exact range
_SUB: Final = 1 << _SUB_BITS
_EXACT: Final = 1 << (_SUB_BITS + 1)  # 128: values below are exact
_MAX_BITS: Final = 48  # values up to 2**48 us (~9 years): anything larger is clamped
_NBUCKETS: Final = _EXACT + (_MAX_BITS - _SUB_BITS) * _SUB
_MAX_VALUE: Final = (1 << _MAX_BITS) - 1

PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


def bucket_index(value: int) -> int:
    """The bucket holding ``value`` (clamped to 0 .. 2**48 - 1)."""
    if value < _EXACT:
        return max(value, 0)
    if value > _MAX_VALUE:
        value = _MAX_VALUE
    shift = value.bit_length() - (_SUB_BITS + 1)
    return _EXACT + (shift - 1) * _SUB + ((value >> shift) - _SUB)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Inclusive lowest and highest value that fall into bucket ``index``."""
    if index < _EXACT:
        return index, index
    shift = (index - _EXACT) // _SUB + 1
    mantissa = (index - _EXACT) % _SUB + _SUB
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of integer values in log-linear buckets, with exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max", "min", "negative", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * _NBUCKETS
        self.count = 0
        self.total = 0
        self.min = -1  # -1: empty
        self.max = -1
        self.negative = 0  # values below zero: counted here, never put in a bucket

    def record(self, value: int) -> None:
        if value < _EXACT:
            if value < 0:
                self.negative += 1
                return
            self.counts[value] += 1
        else:
            if value > _MAX_VALUE:
                value = _MAX_VALUE
            shift = value.bit_length() - 7
            self.counts[_EXACT + (shift - 1) * _SUB + (value >> shift) - _SUB] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        if value < self.min or self.min < 0:
            self.min = value

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other`` into this histogram; returns self."""
        self.negative += other.negative
        if other.count == 0:
            return self
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = other.min if self.min < 0 else min(self.min, other.min)
        return self

    def percentile(self, p: float) -> float | None:
        """The value at percentile ``p`` (0-100): the smallest recorded value with at least ``p`` % of
        the values at or below it, reported as the middle of its bucket, clamped to [min, max]."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within [0, 100], not {p!r}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(p / 100 * self.count - 1e-9))
        seen = 0
        for idx, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    low, high = bucket_bounds(idx)
                    return float(min(max((low + high) / 2, self.min), self.max))
        return float(self.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self, scale: float = 1.0, percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
        """count, mean, min, max and percentiles as ``p50``, ``p99``, ``p99_9``..., each divided by
        ``scale`` (e.g. 1000 to turn microseconds into milliseconds)."""

        def s(v: float | None) -> float | None:
            return None if v is None else round(v / scale, 4)

        out: dict[str, Any] = {"count": self.count, "negative": self.negative, "mean": s(self.mean),
                               "min": s(self.min if self.count else None),
                               "max": s(self.max if self.count else None)}
        for p in percentiles:
            out[pct_key(p)] = s(self.percentile(p))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Sparse, JSON-friendly form: {"counts": {bucket: n}, "count", "total", "min", "max"}."""
        return {
            "counts": {str(i): n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "negative": self.negative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        for k, v in data["counts"].items():
            h.counts[int(k)] = int(v)
        h.count = int(data["count"])
        h.total = int(data["total"])
        h.min = -1 if data["min"] is None else int(data["min"])
        h.max = -1 if data["max"] is None else int(data["max"])
        h.negative = int(data.get("negative", 0))
        return h

    @classmethod
    def merged(cls, dicts: Iterable[dict[str, Any] | Histogram]) -> Histogram:
        h = cls()
        for d in dicts:
            h.merge(d if isinstance(d, Histogram) else cls.from_dict(d))
        return h


def pct_key(p: float) -> str:
    """50 -> "p50", 99.9 -> "p99_9"."""
    text = f"{p:g}".replace(".", "_")
    return f"p{text}"
