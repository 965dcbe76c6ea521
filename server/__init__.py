"""fanwire server: a supervisor forks uvloop workers that share a port with SO_REUSEPORT."""

from __future__ import annotations

from .application import Accept, App, Context, Refuse, Request
from .config import Config
from .runner import Server

__all__ = ["Accept", "App", "Config", "Context", "Refuse", "Request", "Server"]
__version__ = "0.1.0"
