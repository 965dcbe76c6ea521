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


def _csv(value: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _flag(name: str, default: bool) -> bool:
    value = str(_env(name, "1" if default else "0")).strip().lower()
    return value not in ("0", "false", "no", "off", "")


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
    g.add_argument("--max-fragments", type=int, default=int(_env("max_fragments", d.max_fragments)),
                   help="frames per fragmented message; more closes with 1009 (default %(default)s)")
    g.add_argument("--frame-budget", type=int, default=int(_env("frame_budget", d.frame_budget)),
                   help="frames of one client handled per wake-up before the others get their turn "
                        "(default %(default)s)")
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
    g.add_argument("--worker-liveness-timeout", type=float,
                   default=float(_env("worker_liveness_timeout", d.worker_liveness_timeout)),
                   help="seconds a worker's loop may be unresponsive before the supervisor kills it "
                        "(default %(default)s)")
    g = p.add_argument_group("bus")
    g.add_argument("--bus", choices=BUSES, default=_env("bus", d.bus),
                   help="pipe: workers of one machine; redis: several nodes (default %(default)s)")
    g.add_argument("--redis-url", default=_env("redis_url", d.redis_url),
                   help="with --bus redis: the Redis every node of the cluster shares (default %(default)s)")
    g.add_argument("--node-id", default=_env("node_id", d.node_id),
                   help="name of this node, unique within a cluster (default host:port; with --bus redis "
                        "hostname:port:pid)")
    g = p.add_argument_group("security and limits (all off by default)")
    g.add_argument("--certfile", default=_env("certfile", None) or None,
                   help="PEM certificate (chain): serve wss:// (with --keyfile)")
    g.add_argument("--keyfile", default=_env("keyfile", None) or None, help="PEM private key of --certfile")
    g.add_argument("--auth-secret", default=_env("auth_secret", None) or None,
                   help="HS256 secret (>= 32 bytes): require a signed token (JWT) at the handshake; prefer "
                        "FANWIRE_AUTH_SECRET, command lines are visible to other users")
    g.add_argument("--allowed-origins", type=_csv, default=_csv(_env("allowed_origins", "")),
                   help="comma-separated Origin values browsers may connect from, e.g. "
                        "https://chat.example.com; others get 403 (default: any)")
    g.add_argument("--rate-limit", type=float, default=float(_env("rate_limit", d.rate_limit)),
                   metavar="MSGS_PER_S", help="messages per second per connection; 0 = off (default)")
    g.add_argument("--rate-limit-bytes", type=float, default=float(_env("rate_limit_bytes", d.rate_limit_bytes)),
                   metavar="BYTES_PER_S", help="payload bytes per second per connection; 0 = off (default)")
    g.add_argument("--rate-burst", type=float, default=float(_env("rate_burst", d.rate_burst)),
                   metavar="SECONDS", help="bucket size of both rate limits, in seconds of the rate "
                                           "(default %(default)s)")
    g.add_argument("--max-conns-per-ip", type=int, default=int(_env("max_conns_per_ip", d.max_conns_per_ip)),
                   help="concurrent connections per client address, all workers together; 0 = off (default)")
    g.add_argument("--max-conns", type=int, default=int(_env("max_conns", d.max_conns)),
                   help="open WebSocket connections per worker; 0 = off (default)")
    g.add_argument("--handshake-timeout", type=float, default=float(_env("handshake_timeout", d.handshake_timeout)),
                   help="seconds a client gets to complete the TLS and WebSocket handshakes (default %(default)s)")
    g.add_argument("--no-tcp-migrate-req", dest="tcp_migrate_req", action="store_false",
                   default=_flag("tcp_migrate_req", d.tcp_migrate_req),
                   help="leave the net.ipv4.tcp_migrate_req sysctl alone (by default it is set to 1 when "
                        "possible, so a rolling restart resets no queued connection)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default=_env("log_level", d.log_level),
                   choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(ns: argparse.Namespace) -> Config:
    fields = {f: getattr(ns, f) for f in Config.__dataclass_fields__ if hasattr(ns, f)}
    return Config(**fields)


def build_token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server token",
        description="Print a signed token (JWT, HS256) for a client of a server started with --auth-secret.",
    )
    p.add_argument("--user", required=True, help="user name (the token's 'sub'), 1 to 64 characters")
    p.add_argument("--rooms", type=_csv, default=(),
                   help="comma-separated rooms the user may join and publish to; '*' = every room")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)")
    p.add_argument("--broadcast", action="store_true", help="allow 'broadcast' messages")
    p.add_argument("--auth-secret", default=_env("auth_secret", None) or None,
                   help="the server's secret (default: FANWIRE_AUTH_SECRET)")
    return p


def token_main(argv: Sequence[str]) -> int:
    parser = build_token_parser()
    ns = parser.parse_args(list(argv))
    if not ns.auth_secret:
        parser.error("no secret: pass --auth-secret or set FANWIRE_AUTH_SECRET")
    try:
        Config(auth_secret=ns.auth_secret)
        from .auth import issue

        print(issue(ns.auth_secret, ns.user, ns.rooms, ns.ttl, ns.broadcast))
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_args(ns)
    except ConfigError as exc:
        parser.error(str(exc))
    if cfg.bus == "redis":
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            parser.error("--bus redis needs redis-py: pip install 'fanwire[redis]'")
        from .redisbus import check_url

        try:
            check_url(cfg.redis_url)
        except ConfigError as exc:
            parser.error(str(exc))
    if cfg.certfile and cfg.keyfile:
        from .errors import BootError
        from .tls import server_context

        try:
            server_context(cfg.certfile, cfg.keyfile)  # fail here, clearly, rather than in every worker
        except BootError as exc:
            parser.error(str(exc))
    if cfg.auth_secret:
        try:
            import jwt  # noqa: F401
        except ImportError:
            parser.error("--auth-secret needs PyJWT: pip install 'fanwire[auth]'")
    from .logs import setup_logging
    from .supervisor import Supervisor

    setup_logging(cfg.log_level, "supervisor")
    return Supervisor(cfg).run()
