"""The benchmark harness's latency histogram: the project's one histogram, :mod:`client.histogram` (the
stress tool records into the same buckets, so their figures compare and merge exactly)."""

from __future__ import annotations

from client.histogram import PERCENTILES, Histogram, bucket_bounds, bucket_index, pct_key

__all__ = ["PERCENTILES", "Histogram", "bucket_bounds", "bucket_index", "pct_key"]
