"""One fanwire server per port: a lock the supervisor holds for its whole life.

SO_REUSEPORT lets any process of the same user bind a port that a fanwire server already listens on; a
second server would then silently take half of the new connections (and its clients would never see the
first server's broadcasts). The supervisor therefore binds an abstract Unix socket named after the port
before it forks (``\\0fanwire-port-<port>``): the kernel refuses a second bind of the same name in the same
network namespace, and releases it when the process dies, however it dies. The lock is per port, whatever
the address: two fanwire servers on one port of two addresses of one machine would be refused too.
"""

from __future__ import annotations

import socket

from ..errors import BootError


def lock_port(port: int) -> socket.socket:
    """Take the lock for ``port`` (keep the returned socket open); raises BootError if a server holds it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0fanwire-port-{port}")
    except OSError as exc:
        s.close()
        raise BootError(f"port {port} is already in use by another fanwire server ({exc.strerror or exc})") from None
    s.set_inheritable(False)
    return s
