"""The server's one configuration object: frozen, picklable, validated once, and the single source of truth
for every option: its default, its type, its command-line flag, its ``FANWIRE_*`` variable, its help text
and the option tables of the docs (:func:`options_markdown`) all come from the fields below.

Each field carries :func:`option` metadata: the group it is listed under, its help, and how its value is
read from a string (a flag or an environment variable). Pluggable parts (``mode``, ``bus``, ``loop``) are
checked against their registries (:mod:`.handlers`, :mod:`.bus.registry`, :mod:`.loops`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final

from .bus.base import BusSettings
from .bus.registry import BUSES
from .errors import ConfigError
from .handlers import MODES
from .loops import LOOPS

MIN_API_KEY_BYTES: Final = 16
MIN_SECRET_BYTES: Final = 32  # an HS256 key MUST be at least as long as the hash output (RFC 7518 3.2)
TRUE: Final = frozenset(("1", "true", "yes", "on"))
FALSE: Final = frozenset(("0", "false", "no", "off"))


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"expected true/false/yes/no/on/off/1/0, not {text!r}")


def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_optional(text: str) -> str | None:
    return text or None


@dataclass(frozen=True, slots=True)
class Option:
    """How one Config field is offered to users."""

    group: str
    help: str
    parse: Callable[[str], Any]
    flag: str = ""  # default: --<name with dashes>
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    shown_default: str | None = None  # how the default reads in --help and the docs, when not str(default)
    negative: bool = False  # a boolean offered as --no-<name> (its default is True)


def option(default: Any, group: str, help: str, parse: Callable[[str], Any] | None = None, **kw: Any) -> Any:
    """A dataclass field with its :class:`Option` metadata."""
    parsers: dict[type, Callable[[str], Any]] = {bool: parse_bool, int: int, float: float, str: str}
    meta = {"option": Option(group, help, parse or parsers[type(default)], **kw)}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Config:
    """Every option of a fanwire server, with its default; validated when built (raises ConfigError)."""

    # --- where and how many --------------------------------------------------------------------------
    host: str = option("127.0.0.1", "where", "address to listen on")
    port: int = option(8765, "where", "port")
    workers: int = option(0, "where", "worker processes; 0 = one per CPU core")
    backlog: int = option(4096, "where", "listen backlog of each worker")
    mode: str = option("chat", "where", "chat: the fanwire protocol; echo: plain WebSocket echo on the same "
                       "engine (for comparisons and conformance suites)", choices=tuple(MODES))
    loop: str = option("uvloop", "where", "event loop of the workers (asyncio: for comparison)",
                       choices=tuple(LOOPS))
    app: str | None = option(None, "where", "the application to run in every worker: an import string "
                             "'module:attribute' naming a server.App (custom actions, hooks, authentication)",
                             parse_optional, shown_default="none", metavar="MODULE:APP")
    # --- messages and connections ------------------------------------------------------------------
    max_message_size: int = option(1 << 20, "messages", "bytes; a larger message closes with 1009")
    max_queue: int = option(1 << 20, "messages", "bytes of unsent output per client; beyond it the client "
                            "is closed with 1013 and counted")
    max_rooms: int = option(64, "messages", "rooms per connection")
    max_fragments: int = option(4096, "messages", "frames per fragmented message; more closes with 1009")
    frame_budget: int = option(256, "messages", "frames of one client handled per wake-up before the "
                               "others get their turn")
    compression: bool = option(False, "messages", "permessage-deflate (costs tens of KB per connection)")
    # --- heartbeats and timeouts -----------------------------------------------------------------------
    ping_interval: float = option(20.0, "timing", "seconds of silence before the server pings a client")
    ping_timeout: float = option(20.0, "timing", "seconds to wait for an answer to that ping before "
                                 "closing with 1011")
    close_timeout: float = option(2.0, "timing", "seconds to wait for a closing handshake (or for output "
                                  "to drain) before aborting")
    shutdown_timeout: float = option(5.0, "timing", "seconds workers get to close their clients on SIGTERM")
    stats_timeout: float = option(0.5, "timing", "seconds to wait for the other workers' stats")
    handshake_timeout: float = option(10.0, "timing", "seconds to complete the TLS and WebSocket "
                                      "handshakes (slowloris): 408")
    worker_boot_timeout: float = option(30.0, "timing", "seconds a worker may take to be ready before the "
                                        "supervisor gives up on it")
    worker_liveness_timeout: float = option(30.0, "timing", "seconds a worker's loop may be unresponsive "
                                            "before the supervisor kills it")
    # --- bus -------------------------------------------------------------------------------------------
    bus: str = option("pipe", "bus", "pipe: the workers of one machine; redis: several nodes",
                      choices=tuple(BUSES))
    redis_url: str = option("redis://127.0.0.1:6379/0", "bus", "with --bus redis: the Redis every node of "
                            "the cluster shares")
    node_id: str = option("", "bus", "name of this node, unique within a cluster", shown_default="host:port; "
                          "with --bus redis hostname:port:pid")
    bus_high_water: int = option(4 << 20, "bus", "bytes waiting on the bus, or submitted to other workers and "
                                 "not sequenced yet, above which publishing clients are paused (back-pressure)")
    bus_max_queue: int = option(64 << 20, "bus", "bytes waiting on the bus per peer beyond which "
                                "publications are dropped (counted)")
    # --- streams: history, recovery, acknowledgements ---------------------------------------------------------
    history_size: int = option(256, "streams", "messages each room (and the broadcast stream) keeps for "
                               "recovery; 0 keeps none (offsets are still assigned)")
    history_ttl: float = option(300.0, "streams", "seconds a message stays in its stream's history")
    history_max_bytes: int = option(64 << 20, "streams", "bytes of history per worker (pipe bus), all streams "
                                    "together; beyond it the least recently published streams lose their "
                                    "oldest messages first")
    dedup_window: float = option(60.0, "streams", "seconds a resend with the same id from the same session "
                                 "is recognised (and acknowledged again without publishing twice)")
    presence_max_members: int = option(1000, "streams", "members of one room one worker tracks for presence "
                                       "(joins with presence: true); beyond it a join succeeds without presence "
                                       "and says so")
    # --- HTTP API for back ends (off by default) -------------------------------------------------------------
    api_key: str | None = option(None, "api", "Bearer key of the HTTP API (/api/...; >= 16 bytes); without it "
                                 "(and without --auth-secret, whose admin tokens also open it) /api/ answers 404; "
                                 "prefer FANWIRE_API_KEY", parse_optional, shown_default="off")
    api_rate: float = option(1000.0, "api", "HTTP API requests per second per worker (bursts of one second); "
                             "beyond it 429", metavar="REQS_PER_S")
    # --- security and limits (all off by default) --------------------------------------------------------
    certfile: str | None = option(None, "security", "PEM certificate chain: serve wss:// (with --keyfile)",
                                  parse_optional, shown_default="off")
    keyfile: str | None = option(None, "security", "PEM private key of --certfile", parse_optional,
                                 shown_default="off")
    auth_secret: str | None = option(None, "security", "HS256 secret (>= 32 bytes): every handshake needs a "
                                     "signed token (401 otherwise); prefer FANWIRE_AUTH_SECRET, command lines "
                                     "are visible to other users", parse_optional, shown_default="off")
    allowed_origins: tuple[str, ...] = option((), "security", "comma-separated Origin values browsers may "
                                              "connect from; others get 403", parse_csv, shown_default="any")
    rate_limit: float = option(0.0, "security", "messages per second per connection; 0 = off",
                               metavar="MSGS_PER_S")
    rate_limit_bytes: float = option(0.0, "security", "bytes per second per connection (payloads, frame "
                                     "headers and control frames); 0 = off", metavar="BYTES_PER_S")
    rate_burst: float = option(2.0, "security", "bucket size of both rate limits, in seconds of the rate",
                               metavar="SECONDS")
    max_conns_per_ip: int = option(0, "security", "concurrent connections per client address, all workers "
                                   "together; 0 = off (503 beyond)")
    max_conns: int = option(0, "security", "open WebSocket connections per worker; 0 = off (503 beyond)")
    tcp_migrate_req: bool = option(True, "security", "set net.ipv4.tcp_migrate_req=1 at start, so a "
                                   "rolling restart resets no queued connection; --no-tcp-migrate-req leaves "
                                   "the sysctl alone", negative=True)
    # --- logging -----------------------------------------------------------------------------------------
    log_level: str = option("info", "logging", "log level", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        for f in fields(self):
            choices = f.metadata["option"].choices
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        for name in ("max_message_size", "max_queue", "max_rooms", "backlog", "max_fragments", "frame_budget",
                     "bus_high_water", "bus_max_queue", "history_max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        for name in ("ping_interval", "ping_timeout", "close_timeout", "shutdown_timeout", "stats_timeout",
                     "handshake_timeout", "worker_boot_timeout", "worker_liveness_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("--certfile and --keyfile go together")
        for name in ("rate_limit", "rate_limit_bytes", "max_conns_per_ip", "max_conns"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off)")
        if self.history_size < 0:
            raise ConfigError("history_size must be >= 0 (0 = no history)")
        for name in ("history_ttl", "dedup_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds")
        if self.presence_max_members < 0:
            raise ConfigError("presence_max_members must be >= 0 (0 = no presence)")
        if self.api_key is not None and len(self.api_key.encode()) < MIN_API_KEY_BYTES:
            raise ConfigError(f"the API key must be at least {MIN_API_KEY_BYTES} bytes; make one with: "
                              "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if self.api_rate <= 0:
            raise ConfigError("api_rate must be > 0")
        if self.rate_burst <= 0:
            raise ConfigError("rate_burst must be > 0 seconds")
        if self.auth_secret is not None and len(self.auth_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"the auth secret must be at least {MIN_SECRET_BYTES} bytes (HS256, RFC 7518 3.2);"
                              " make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")

    def bus_settings(self, node: str, worker_id: int, endpoint: int = 0, takeover: bool = False) -> BusSettings:
        """What the bus of one worker needs of the options."""
        return BusSettings(node, worker_id, endpoint, self.redis_url, self.max_message_size, self.bus_high_water,
                           self.bus_max_queue, self.worker_count, takeover, self.history_size, self.history_ttl,
                           self.history_max_bytes, self.dedup_window)

    @property
    def api_enabled(self) -> bool:
        return self.api_key is not None or self.auth_secret is not None

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


# --- the option table ------------------------------------------------------------------------------------

GROUPS: Final = {"where": "where and how many", "messages": "messages and connections",
                 "timing": "heartbeats and timeouts", "bus": "bus (workers and nodes)",
                 "streams": "streams: history, recovery, acknowledgements",
                 "security": "security and limits (all off by default)",
                 "api": "HTTP API for back ends (off by default)", "logging": "logging"}


@dataclass(frozen=True, slots=True)
class OptionInfo:
    name: str  # the Config field
    flag: str
    env: str
    default: Any
    meta: Option

    @property
    def shown_default(self) -> str:
        if self.meta.shown_default is not None:
            return self.meta.shown_default
        if self.meta.negative:
            return "on"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)


def options() -> list[OptionInfo]:
    """Every option, in Config order."""
    out = []
    for f in fields(Config):
        meta: Option = f.metadata["option"]
        default = f.default if f.default is not MISSING else None
        flag = meta.flag or "--" + f.name.replace("_", "-")
        if meta.negative:
            flag = "--no-" + f.name.replace("_", "-")
        out.append(OptionInfo(f.name, flag, "FANWIRE_" + f.name.upper(), default, meta))
    return out


def config_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The options set in ``FANWIRE_*`` variables, parsed; raises ConfigError naming the variable."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for o in options():
        raw = env.get(o.env)
        if raw is None:
            continue
        try:
            out[o.name] = o.meta.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{o.env}={raw!r}: {exc}") from None
    return out


def options_markdown(group: str | None = None) -> str:
    """The options table of the docs (of one group, or all), generated from the Config."""
    lines = ["| option (env `FANWIRE_...`) | default | meaning |", "|---|---|---|"]
    for o in options():
        if group is None or o.meta.group == group:
            lines.append(f"| `{o.flag}` | {o.shown_default} | {o.meta.help} |")
    return "\n".join(lines)
