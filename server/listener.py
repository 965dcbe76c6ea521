"""The shared port: a worker's own SO_REUSEPORT listener (:func:`bind_listener`), the reservation of a free
port when the server is started on port 0 (:func:`reserve_port`), and ``net.ipv4.tcp_migrate_req``.

``net.ipv4.tcp_migrate_req``: let a closing SO_REUSEPORT listener hand its queue to a sibling.

When a listener of a SO_REUSEPORT group closes, Linux resets the connections waiting in its accept queue
(and drops its half-open ones) -- the clients see "connection reset" during a rolling restart. With
``tcp_migrate_req = 1`` (Linux >= 5.14) the kernel moves them to another listener of the same group
instead. The setting is per network namespace; writing it needs CAP_NET_ADMIN there (root in a container).

The supervisor turns it on at start unless ``--no-tcp-migrate-req``; a worker that stops checks it and,
when it is off, accepts its own queue right before closing (see ``Worker._take_backlog``).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .config import Config

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


def bind_listener(cfg: Config) -> socket.socket:
    """A worker's own listening socket, bound with SO_REUSEPORT on the shared address."""
    infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(cfg.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(cfg: Config) -> tuple[Config, socket.socket | None]:
    """With ``port = 0``, pick a free port for the whole server: a socket bound (not listening) with
    SO_REUSEPORT holds it for the supervisor's life, and the workers bind the same port next to it.
    Returns the Config with the real port, and the reservation to keep open (None for a fixed port)."""
    if cfg.port:
        return cfg, None
    infos = socket.getaddrinfo(cfg.host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return replace(cfg, port=sock.getsockname()[1]), sock
