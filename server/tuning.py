"""Process-wide settings that decide tail latency and CPU per message: the allocator and the garbage collector.

Called once per worker, after its modules are imported and before its loop runs (:func:`tune_worker`).

- **The allocator** (glibc only; elsewhere nothing changes). By default glibc gives the top of its heap
  back to the kernel as soon as 128 KiB of it is free, and serves blocks over 128 KiB (the dynamic threshold
  grows to 32 MiB) with fresh ``mmap`` s. A worker echoing 16-64 KiB messages frees and reallocates such
  blocks on every loop tick, so every tick paid for page faults and zeroed pages again: a quarter of the
  server's CPU at 16 KiB (``perf``: ``exc_page_fault``, ``clear_page_erms``, ``__brk``/``unmap_page_range``).
  A trim threshold of ``TRIM_THRESHOLD`` keeps that much free heap in the process instead, and an mmap
  threshold of ``MMAP_THRESHOLD`` (a fixed one: the dynamic one only grows after the first fault) keeps
  messages up to the default ``--max-message-size`` on the heap.

  The threshold is high (1 GiB) because one busy tick can leave far more free heap than it holds live:
  orjson's parser takes a buffer of about 16 times the document for each large JSON message, and the
  replies that stay queued until the tick's flush sit in its holes, so every message extends the heap anew
  (16 KiB JSON ping/pong: one ``brk`` and a few faulted pages per message, 38 us of server CPU per round
  trip with a 32 MiB threshold, 20 us with this one; ``perf`` and ``strace -e brk`` on a worker). What the
  process keeps is given back by :class:`MemoryRelease` every ``RELEASE_EVERY_S`` seconds instead
  (``malloc_trim``), so a worker's memory still falls back after a burst.
- **The garbage collector.** ``gc.freeze()`` after boot moves every object that exists then (modules,
  classes, functions: tens of thousands) to the permanent generation, so a full collection no longer walks
  them; what is left to walk is the connections themselves. The hub keeps the collector off while a tick's
  output is queued (see :meth:`server.hub.Hub.push`), so fan-out's per-receiver queues never get promoted
  and never trigger the full collections that were the tail of fan-out latency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any, Final

from . import hub

log = logging.getLogger("fanwire.worker")

TRIM_THRESHOLD: Final = 1 << 30  # bytes of free heap top kept in the process instead of given back at once
MMAP_THRESHOLD: Final = 4 << 20  # blocks below this come from the heap (reused), not from fresh mmaps
RELEASE_EVERY_S: Final = 10.0  # how often MemoryRelease gives free heap back
RELEASE_KEEP: Final = 32 << 20  # free heap top it leaves in the process
_M_TRIM_THRESHOLD: Final = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD: Final = -3


def _glibc(name: str) -> Any:
    """The C function ``name`` of glibc, or None (not Linux, or a libc without it: musl has no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def tune_allocator(trim: int = TRIM_THRESHOLD, mmap: int = MMAP_THRESHOLD) -> bool:
    """glibc: keep freed memory for reuse instead of returning it at once. True when applied."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False  # not glibc: nothing to tune
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, trim)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap))


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim.argtypes = (ctypes.c_size_t,)
        trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class MemoryRelease:
    """Gives the free heap back to the kernel (``malloc_trim``, keeping ``keep`` bytes), at most once every
    ``every`` seconds: called from a worker's periodic upkeep. ``trim`` is injectable for tests; without
    glibc it does nothing."""

    __slots__ = ("calls", "every", "keep", "next_at", "trim")

    def __init__(self, every: float = RELEASE_EVERY_S, keep: int = RELEASE_KEEP,
                 trim: Callable[[int], int] | None = None) -> None:
        self.every = every
        self.keep = keep
        self.trim = trim if trim is not None else _malloc_trim()
        self.next_at = 0.0
        self.calls = 0

    def __call__(self, now: float) -> None:
        if self.trim is None or now < self.next_at:
            return
        self.next_at = now + self.every
        self.calls += 1
        self.trim(self.keep)


def freeze_boot_objects() -> None:
    """Collect once, then exempt everything alive (the boot's objects) from every later collection."""
    gc.collect()
    gc.freeze()


def tune_worker(loop: str = "") -> None:
    """Both, for a worker about to run ``loop`` (imported first, so its module objects are frozen too)."""
    if not tune_allocator():
        log.debug("allocator not tuned (not glibc)")
    if loop == "uvloop":
        import uvloop  # noqa: F401
    hub.gc_window(True)
    freeze_boot_objects()
