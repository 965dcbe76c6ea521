"""Which worker of a node sequences a stream: a stable hash of its name over the worker slots. Pure.

Every worker computes the same answer (crc32 is the same in every process, unlike ``hash()``), so a
publication goes straight to its stream's owner, whose order every receiver then sees.
"""

from __future__ import annotations

import zlib


def owner_slot(stream: str, workers: int) -> int:
    return zlib.crc32(stream.encode()) % workers
