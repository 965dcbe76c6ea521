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
