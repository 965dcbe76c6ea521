"""The listener's helpers: the tcp_migrate_req sysctl."""

from __future__ import annotations

from pathlib import Path

from server.listener import enable_migrate_req, migrate_req


def test_migrate_sysctl_helpers(tmp_path: Path) -> None:
    f = tmp_path / "tcp_migrate_req"
    assert migrate_req(str(f)) is None
    assert "unavailable" in enable_migrate_req(str(f))
    f.write_text("0\n")
    assert migrate_req(str(f)) is False
    assert enable_migrate_req(str(f)) == "enabled" and migrate_req(str(f)) is True
    assert enable_migrate_req(str(f)) == "already on"
