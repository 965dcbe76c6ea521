"""fanwire server: a supervisor forks uvloop workers that share a port with SO_REUSEPORT."""

from __future__ import annotations

from .config import Config

__all__ = ["Config"]
__version__ = "0.1.0"
