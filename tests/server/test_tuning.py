"""Process tuning of a worker: the allocator keeps freed memory for reuse, the collector skips the boot's objects."""

from __future__ import annotations

import gc
import sys

import pytest

from server import hub, tuning


def test_the_allocator_is_tuned_on_glibc() -> None:
    applied = tuning.tune_allocator(tuning.TRIM_THRESHOLD, tuning.MMAP_THRESHOLD)
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert applied
    else:
        assert applied in (True, False)


def test_the_boot_objects_are_frozen_out_of_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(tuning, "tune_allocator", lambda: True)
    try:
        tuning.tune_worker("asyncio")
        assert calls == ["freeze"] and hub._gc_window
    finally:
        hub.gc_window(False)


def test_free_memory_is_given_back_at_most_once_per_interval() -> None:
    kept: list[int] = []
    release = tuning.MemoryRelease(every=10.0, keep=1234, trim=lambda keep: kept.append(keep) or 1)
    for now in (100.0, 100.5, 109.9, 110.0, 115.0, 120.1):
        release(now)
    assert kept == [1234, 1234, 1234]  # at 100, 110 and 120.1
    assert release.calls == 3


def test_memory_release_calls_glibcs_malloc_trim() -> None:
    release = tuning.MemoryRelease(every=0.0, keep=0)
    if release.trim is None:
        pytest.skip("no malloc_trim here (not glibc)")
    blocks = [bytearray(256 * 1024) for _ in range(64)]  # 16 MiB on the heap or in mmaps
    del blocks
    release(0.0)
    assert release.calls == 1
    assert release.trim(0) in (0, 1)  # 1: memory was released, 0: none was left to release
