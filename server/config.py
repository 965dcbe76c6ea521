"""The server's one configuration object: frozen, picklable, validated once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError

MODES = ("chat", "echo")
BUSES = ("pipe", "redis")
LOOPS = ("uvloop", "asyncio")
MIN_SECRET_BYTES = 32  # an HS256 key MUST be at least as long as the hash output (RFC 7518 3.2)


@dataclass(frozen=True, slots=True)
class Config:
    # --- where and how many --------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 0  # 0 = one per CPU core
    backlog: int = 4096
    mode: str = "chat"  # "chat" (fanwire protocol) or "echo" (plain WebSocket echo)
    loop: str = "uvloop"
    # --- messages and connections -----------------------------------------------------------
    max_message_size: int = 1 << 20  # bytes; larger messages close with 1009
    max_queue: int = 1 << 20  # bytes of unsent output per connection before a 1013 close
    max_rooms: int = 64  # rooms per connection
    max_fragments: int = 4096  # frames per fragmented message; more closes with 1009
    frame_budget: int = 256  # frames of one client handled per wake-up before others get their turn
    compression: bool = False  # permessage-deflate (costs ~50 KiB per connection)
    # --- heartbeats and timeouts -------------------------------------------------------------
    ping_interval: float = 20.0  # seconds of silence before the server pings
    ping_timeout: float = 20.0  # seconds to wait for any answer to that ping
    close_timeout: float = 2.0  # seconds to wait for the peer's close frame / TCP close
    shutdown_timeout: float = 5.0  # seconds a worker may take to close its clients
    stats_timeout: float = 0.5  # seconds to wait for other workers' stats
    # --- bus ------------------------------------------------------------------------------------
    bus: str = "pipe"
    redis_url: str = "redis://127.0.0.1:6379/0"
    node_id: str = ""  # defaults to host:port:pid of the supervisor
    # --- supervisor ---------------------------------------------------------------------------
    worker_boot_timeout: float = 30.0
    worker_liveness_timeout: float = 30.0  # a worker whose loop is stuck this long is killed
    # --- security and limits (all off by default) ----------------------------------------------
    certfile: str | None = None
    keyfile: str | None = None
    auth_secret: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    rate_limit: float = 0.0  # messages per second per connection, 0 = off
    rate_limit_bytes: float = 0.0  # bytes per second per connection, 0 = off
    rate_burst: float = 2.0  # bucket size, in seconds of the rate
    max_conns_per_ip: int = 0
    max_conns: int = 0  # per worker
    handshake_timeout: float = 10.0
    tcp_migrate_req: bool = True  # set net.ipv4.tcp_migrate_req=1 at start (rolling restarts refuse nobody)
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.bus not in BUSES:
            raise ConfigError(f"bus must be one of {BUSES}, got {self.bus!r}")
        if self.loop not in LOOPS:
            raise ConfigError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        for name in ("max_message_size", "max_queue", "max_rooms", "backlog", "max_fragments", "frame_budget"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        for name in ("ping_interval", "ping_timeout", "close_timeout", "shutdown_timeout", "stats_timeout",
                     "handshake_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("--certfile and --keyfile go together")
        for name in ("rate_limit", "rate_limit_bytes", "max_conns_per_ip", "max_conns"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off)")
        if self.rate_burst <= 0:
            raise ConfigError("rate_burst must be > 0 seconds")
        if self.auth_secret is not None and len(self.auth_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"the auth secret must be at least {MIN_SECRET_BYTES} bytes (HS256, RFC 7518 3.2);"
                              " make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def scheme(self) -> str:
        return "wss" if self.certfile else "ws"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)
