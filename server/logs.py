"""Logging: one logger per role, the role (supervisor / worker N) and pid in every line; lifecycle events on
their own logger.

- ``fanwire.<role>`` loggers (``fanwire.supervisor``, ``fanwire.worker``, ``fanwire.bus``...) write
  timestamped lines to stderr at ``--log-level``.
- ``fanwire.lifecycle`` carries the events an operator (or a script) waits for, as plain one-line messages
  whatever the log level: ``fanwire: worker 0 pid 123 listening on ws://...`` and ``fanwire: ready, ...``
  on stdout, ``fanwire: error: ...`` on stderr. Each line is written in one ``write()``, so the lines of
  several workers sharing a terminal never interleave.
"""

from __future__ import annotations

import logging
import os
import sys

lifecycle = logging.getLogger("fanwire.lifecycle")


class _Lifecycle(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR:
                sys.stderr.write(f"fanwire: error: {record.getMessage()}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(f"fanwire: {record.getMessage()}\n")
                sys.stdout.flush()
        except (OSError, ValueError):  # a closed stream: nothing to tell anyone
            pass


def setup_logging(level: str, role: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s fanwire[{role} pid {os.getpid()}] %(levelname)s "
                                           "%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for h in list(lifecycle.handlers):
        lifecycle.removeHandler(h)
    lifecycle.addHandler(_Lifecycle())
    lifecycle.setLevel(logging.INFO)
    lifecycle.propagate = False
    # websockets logs every connection at INFO: keep it for debugging only
    logging.getLogger("websockets").setLevel(logging.WARNING if level.lower() != "debug" else logging.DEBUG)
