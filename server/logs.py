"""Logging set-up: one logger per role, the role (supervisor / worker N) and pid in every line."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str, role: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s fanwire[{role} pid {os.getpid()}] %(levelname)s "
                                           "%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # websockets logs every connection at INFO: keep it for debugging only
    logging.getLogger("websockets").setLevel(logging.WARNING if level.lower() != "debug" else logging.DEBUG)
