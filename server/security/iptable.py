"""Concurrent connections per client IP address, counted across all workers of one server.

The supervisor creates the table (anonymous shared memory) before it forks, so every worker sees the same
pages. Each bus endpoint owns one row and only the worker on that endpoint writes it: no locks, and a dead
worker's row is simply zeroed by the supervisor when it reaps it. A reader adds up every row.

Addresses are not stored: each row is a count-min sketch, two arrays of counters indexed by two halves of
a keyed hash of the address (Python's string hash: SipHash with a per-process secret that forked workers
share, so clients cannot aim collisions at someone else's address). A collision can only over-count, and
only when both counters of an address are shared with other busy addresses: with N addresses connected,
about (N / 32768)^2 of them, 0.1% for N = 1,000 (and then only if their sum crosses the cap).
"""

from __future__ import annotations

import mmap
from typing import Final

BUCKETS: Final = 1 << 15  # per hash; 2 hashes x 4 bytes -> 256 KiB of address space per row
_MASK: Final = BUCKETS - 1
_ROW: Final = 2 * BUCKETS


class IpTable:
    __slots__ = ("counts", "mm", "row", "rows")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.mm = mmap.mmap(-1, rows * _ROW * 4)  # MAP_SHARED | MAP_ANONYMOUS: survives fork, zero-filled
        self.counts = memoryview(self.mm).cast("I")
        self.row = 0

    def bind(self, row: int) -> None:
        """Make ``row`` the one this process writes (the worker's bus endpoint)."""
        if not 0 <= row < self.rows:
            raise ValueError(f"row {row} out of range 0..{self.rows - 1}")
        self.row = row

    @staticmethod
    def _slots(ip: str) -> tuple[int, int]:
        h = hash(ip) & 0xFFFF_FFFF_FFFF_FFFF
        return h & _MASK, BUCKETS + ((h >> 32) & _MASK)

    def add(self, ip: str, delta: int) -> None:
        """Count ``delta`` more (or fewer) connections from ``ip`` in this process's row."""
        a, b = self._slots(ip)
        base = self.row * _ROW
        c = self.counts
        c[base + a] = max(0, c[base + a] + delta)
        c[base + b] = max(0, c[base + b] + delta)

    def count(self, ip: str) -> int:
        """Connections from ``ip`` across all rows (never under the truth; over it only on collisions)."""
        a, b = self._slots(ip)
        c = self.counts
        na = nb = 0
        for base in range(0, self.rows * _ROW, _ROW):
            na += c[base + a]
            nb += c[base + b]
        return na if na < nb else nb

    def clear(self, row: int) -> None:
        """Forget a row (its worker is gone)."""
        start = row * _ROW
        self.counts[start : start + _ROW] = memoryview(bytes(_ROW * 4)).cast("I")
