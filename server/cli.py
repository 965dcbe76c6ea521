"""Command line: ``python -m server [options]`` serves; options also come from FANWIRE_* variables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .config import BUSES, LOOPS, MODES, Config
from .errors import ConfigError


def _env(name: str, default: Any) -> Any:
    return os.environ.get(f"FANWIRE_{name.upper()}", default)


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m server",
        description="fanwire: a sharded real-time WebSocket server (supervisor + uvloop workers on "
                    "SO_REUSEPORT). Every option can also be set as FANWIRE_<OPTION> in the environment.",
    )
    g = p.add_argument_group("where")
    g.add_argument("--host", default=_env("host", d.host), help="address to listen on (default %(default)s)")
    g.add_argument("--port", type=int, default=int(_env("port", d.port)), help="port (default %(default)s)")
    g.add_argument("--workers", type=int, default=int(_env("workers", d.workers)),
                   help="worker processes; 0 = one per CPU core (default %(default)s)")
    g.add_argument("--backlog", type=int, default=int(_env("backlog", d.backlog)), help="listen backlog")
    g.add_argument("--mode", choices=MODES, default=_env("mode", d.mode),
                   help="chat: the fanwire protocol; echo: plain WebSocket echo (default %(default)s)")
    g.add_argument("--loop", choices=LOOPS, default=_env("loop", d.loop), help="event loop")
    g = p.add_argument_group("messages")
    g.add_argument("--max-message-size", type=int, default=int(_env("max_message_size", d.max_message_size)),
                   help="bytes; larger messages close with 1009 (default %(default)s)")
    g.add_argument("--max-queue", type=int, default=int(_env("max_queue", d.max_queue)),
                   help="bytes of unsent output per client before it is closed with 1013 (default %(default)s)")
    g.add_argument("--max-rooms", type=int, default=int(_env("max_rooms", d.max_rooms)),
                   help="rooms per connection (default %(default)s)")
    g.add_argument("--compression", action="store_true", default=bool(int(_env("compression", 0))),
                   help="enable permessage-deflate (off by default: it costs memory per connection)")
    g = p.add_argument_group("timing")
    g.add_argument("--ping-interval", type=float, default=float(_env("ping_interval", d.ping_interval)),
                   help="seconds of silence before the server pings a client (default %(default)s)")
    g.add_argument("--ping-timeout", type=float, default=float(_env("ping_timeout", d.ping_timeout)),
                   help="seconds to wait for an answer before closing with 1011 (default %(default)s)")
    g.add_argument("--close-timeout", type=float, default=float(_env("close_timeout", d.close_timeout)))
    g.add_argument("--shutdown-timeout", type=float, default=float(_env("shutdown_timeout", d.shutdown_timeout)),
                   help="seconds workers get to close their clients on SIGTERM (default %(default)s)")
    g.add_argument("--stats-timeout", type=float, default=float(_env("stats_timeout", d.stats_timeout)))
    g = p.add_argument_group("bus")
    g.add_argument("--bus", choices=BUSES, default=_env("bus", d.bus),
                   help="pipe: workers of one machine; redis: several nodes (default %(default)s)")
    g.add_argument("--redis-url", default=_env("redis_url", d.redis_url))
    g.add_argument("--node-id", default=_env("node_id", d.node_id), help="name of this node (default host:port)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default=_env("log_level", d.log_level),
                   choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(ns: argparse.Namespace) -> Config:
    fields = {f: getattr(ns, f) for f in Config.__dataclass_fields__ if hasattr(ns, f)}
    return Config(**fields)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_args(ns)
    except ConfigError as exc:
        parser.error(str(exc))
    if cfg.bus == "redis":
        parser.error("--bus redis is not available yet")
    from .logs import setup_logging
    from .supervisor import Supervisor

    setup_logging(cfg.log_level, "supervisor")
    return Supervisor(cfg).run()
