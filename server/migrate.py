"""``net.ipv4.tcp_migrate_req``: let a closing SO_REUSEPORT listener hand its queue to a sibling.

When a listener of a SO_REUSEPORT group closes, Linux resets the connections waiting in its accept queue
(and drops its half-open ones) -- the clients see "connection reset" during a rolling restart. With
``tcp_migrate_req = 1`` (Linux >= 5.14) the kernel moves them to another listener of the same group
instead. The setting is per network namespace; writing it needs CAP_NET_ADMIN there (root in a container).

The supervisor turns it on at start unless ``--no-tcp-migrate-req``; a worker that stops checks it and,
when it is off, accepts its own queue right before closing (see ``Worker._take_backlog``).
"""

from __future__ import annotations

from typing import Final

SYSCTL: Final = "/proc/sys/net/ipv4/tcp_migrate_req"


def migrate_req(path: str = SYSCTL) -> bool | None:
    """True/False: the current setting; None: this kernel has no such setting."""
    try:
        with open(path) as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return None


def enable_migrate_req(path: str = SYSCTL) -> str:
    """Turn the setting on if possible; returns what happened, for the log."""
    state = migrate_req(path)
    if state is None:
        return "unavailable (Linux < 5.14?): a stopping worker accepts its queue itself before closing"
    if state:
        return "already on"
    try:
        with open(path, "w") as f:
            f.write("1\n")
    except OSError as exc:
        return (f"cannot enable ({exc.strerror or exc}): a stopping worker accepts its queue itself before"
                " closing")
    return "enabled" if migrate_req(path) else "write ignored"
