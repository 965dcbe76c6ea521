"""Starting a server from a Config: the checks that must fail before any worker starts, then the supervisor.

The command line (:mod:`.cli`) and the library (:class:`server.Server`) both go through here.
"""

from __future__ import annotations

import importlib
import os
import sys

from .application import App
from .bus.registry import BUSES
from .config import Config
from .errors import BootError, ConfigError
from .listener import reserve_port


def preflight(cfg: Config) -> None:
    """Refuse, with one clear ConfigError, what would make every worker fail: a missing optional
    dependency, a malformed Redis URL, a certificate that does not load."""
    kind = BUSES[cfg.bus]
    if kind.needs:
        try:
            importlib.import_module(kind.needs)
        except ImportError:
            raise ConfigError(f"--bus {cfg.bus} needs {kind.needs.split('.')[0]}: "
                              f"pip install 'fanwire[{kind.extra}]'") from None
    if kind.check is not None:
        kind.check(cfg.bus_settings("", 0))
    if cfg.certfile and cfg.keyfile:
        from .security.tls import server_context

        try:
            server_context(cfg.certfile, cfg.keyfile)  # fail here, clearly, rather than in every worker
        except BootError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.auth_secret:
        try:
            importlib.import_module("jwt")
        except ImportError:
            raise ConfigError("--auth-secret needs PyJWT: pip install 'fanwire[auth]'") from None


def load_app(cfg: Config, app: App | None = None) -> App | None:
    """The application to run: the object given, or the one ``--app`` names (ConfigError if it cannot)."""
    if app is not None:
        return app
    if cfg.app:
        from .application import load

        cwd = os.getcwd()  # like uvicorn: the application may live in the current directory, whatever
        if "" not in sys.path and cwd not in sys.path:  # started us (python -m puts it there, a script not)
            sys.path.insert(0, cwd)
        return load(cfg.app)
    return None


def serve(cfg: Config, app: App | None = None, ready_fd: int | None = None) -> int:
    """Run the supervisor until SIGINT/SIGTERM; returns the exit code."""
    from .logs import setup_logging
    from .supervisor import Supervisor

    setup_logging(cfg.log_level, "supervisor")
    cfg, reservation = reserve_port(cfg)  # port 0: one free port for every worker
    try:
        return Supervisor(cfg, app=app, ready_fd=ready_fd).run()
    finally:
        if reservation is not None:
            reservation.close()
