"""The supervisor's pure helpers (its behaviour with real processes is in test_lifecycle.py)."""

from __future__ import annotations

from server.supervisor import default_node_id


def test_default_node_id() -> None:
    assert default_node_id("0.0.0.0", 8765, "pipe") == "0.0.0.0:8765"
    host, port, pid = default_node_id("0.0.0.0", 8765, "redis").rsplit(":", 2)
    assert host and port == "8765" and pid.isdigit()
