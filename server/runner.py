"""fanwire as a library: :class:`Server` runs the same supervisor as ``python -m server``.

::

    from server import App, Server

    Server(app=app, port=8765, workers=2).start()     # blocks until SIGINT/SIGTERM, like the command

    with Server(app=app, port=0) as srv:              # in the background (an application's own tests)
        connect(srv.url)                              # ws://127.0.0.1:<the port picked>
    # leaving the block stops it (SIGTERM, then SIGKILL past shutdown_timeout + 5 s)

Every keyword is a :class:`~server.config.Config` field, checked at once (a ConfigError names the bad one);
the command line builds its Config from the same fields and then calls :meth:`Server.start`.

In the background the server runs in a forked child process (the supervisor, which forks the workers): the
application object travels by fork, so handlers defined in a test file work as they are.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import fields, replace
from types import TracebackType
from typing import Any

from .application import App
from .config import Config
from .errors import BootError, ConfigError

READY_TIMEOUT_S = 60.0


class Server:
    """One fanwire server (a supervisor and its workers). See the module docstring."""

    def __init__(self, app: App | None = None, *, config: Config | None = None, **options: Any) -> None:
        known = {f.name for f in fields(Config)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
        self.config = replace(config, **options) if config is not None else Config(**options)
        self.app = app
        self.url: str | None = None  # set once a background server is ready
        self.pid: int | None = None  # the supervisor's pid, in the background

    # --- in the foreground: like the command ---------------------------------------------------------------

    def start(self) -> int:
        """Run until SIGINT/SIGTERM (or :meth:`stop` from another thread); returns the exit code."""
        from .serve import load_app, preflight, serve

        preflight(self.config)
        app = load_app(self.config, self.app)
        self.pid = os.getpid()
        return serve(self.config, app)

    # --- in the background ------------------------------------------------------------------------------------

    def start_background(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Fork the supervisor, wait until every worker is ready, and return the URL (``.url``)."""
        from .serve import load_app, preflight

        if self.pid is not None:
            raise RuntimeError("this Server is already running")
        preflight(self.config)
        app = load_app(self.config, self.app)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the supervisor
            code = 1
            try:
                os.close(r)
                _forget_parent_loop()
                from .serve import serve

                code = serve(self.config, app, ready_fd=w)
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        try:
            self.url = self._await_ready(r, timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(r)
        return self.url

    def _await_ready(self, fd: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"the server was not ready within {timeout:g} s")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # the supervisor exited before it was ready
                code = self._reap(5.0)
                raise BootError(f"the server exited before it was ready (exit code {code})")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self) -> int | None:
        """Stop the server: SIGTERM (clients are closed with 1001), then SIGKILL past the deadline.
        Returns the exit code of a background server (None in the foreground, where the caller's
        :meth:`start` returns it)."""
        if self.pid is None:
            return None
        if self.pid == os.getpid():  # start() is running in this process: ask it to stop
            os.kill(self.pid, signal.SIGTERM)
            return None
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        code = self._reap(self.config.shutdown_timeout + 5.0)
        if code is None:
            os.kill(self.pid, signal.SIGKILL)
            code = self._reap(5.0)
        self.pid = None
        self.url = None
        return code

    def _reap(self, timeout: float) -> int | None:
        assert self.pid is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def __enter__(self) -> Server:
        self.start_background()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _forget_parent_loop() -> None:
    """A child forked from inside a running asyncio loop (an async test) must not believe it runs it."""
    import asyncio.events

    asyncio.events._set_running_loop(None)
