"""Connections per address across workers: the shared count-min table."""

from __future__ import annotations

import os

import pytest

from server.security.iptable import IpTable


def test_ip_table_sums_rows_and_is_shared_across_fork() -> None:
    table = IpTable(3)
    table.bind(0)
    table.add("10.0.0.1", 2)
    table.bind(2)
    table.add("10.0.0.1", 1)
    table.add("10.0.0.2", 1)
    assert table.count("10.0.0.1") == 3 and table.count("10.0.0.2") == 1 and table.count("10.9.9.9") == 0
    pid = os.fork()
    if pid == 0:  # a worker: writes its own row
        table.bind(1)
        table.add("10.0.0.1", 5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.count("10.0.0.1") == 8
    table.clear(1)  # the supervisor reaped that worker
    assert table.count("10.0.0.1") == 3
    table.bind(2)
    table.add("10.0.0.2", -5)  # never below zero
    assert table.count("10.0.0.2") == 0
    with pytest.raises(ValueError):
        table.bind(3)
