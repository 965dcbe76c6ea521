"""Command line: ``python -m server [options]`` serves (also installed as ``fanwire``).

Every option comes from the :class:`~server.config.Config` fields (flag, type, default, help); each can
also be set as ``FANWIRE_<OPTION>`` in the environment. Precedence: a flag, then the environment, then the
default. A malformed value, in a flag or a variable, is a usage error (exit 2), never a traceback.

Subcommands: ``token`` prints a signed token for a server started with ``--auth-secret``; ``options``
prints the option table (Markdown) that the docs embed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .config import GROUPS, Config, config_from_env, options, options_markdown, parse_csv
from .errors import ConfigError

PROG = "fanwire" if os.path.basename(sys.argv[0]) == "fanwire" else "python -m server"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="fanwire: a sharded real-time WebSocket server (a supervisor and uvloop workers on "
                    "SO_REUSEPORT). Every option can also be set as FANWIRE_<OPTION> in the environment "
                    "(--max-queue -> FANWIRE_MAX_QUEUE; booleans: true/false/yes/no/on/off/1/0).",
        epilog="subcommands:\n"
               f"  {PROG} token --user NAME [--rooms a,b] [--ttl S] [--broadcast] [--admin]\n"
               "                         print a signed token (see: token --help)\n"
               f"  {PROG} options        print the option table (Markdown) of the docs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for o in options():
        g = groups[o.meta.group]
        help_text = f"{o.meta.help} (default: {o.shown_default})"
        if o.meta.negative:
            g.add_argument(o.flag, dest=o.name, action="store_false", default=argparse.SUPPRESS, help=help_text)
        elif isinstance(o.default, bool):
            g.add_argument(o.flag, dest=o.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(o.flag, dest=o.name, type=o.meta.parse, default=argparse.SUPPRESS, help=help_text,
                           choices=o.meta.choices or None, metavar=o.meta.metavar)
    return p


def config_from_args(ns: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Defaults, overridden by ``FANWIRE_*`` variables, overridden by flags. Raises ConfigError."""
    values: dict[str, Any] = config_from_env(environ)
    values.update(vars(ns))
    return Config(**values)


def build_token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} token",
        description="Print a signed token (JWT, HS256) for a client of a server started with --auth-secret.",
    )
    p.add_argument("--user", required=True, help="user name (the token's 'sub'), 1 to 64 characters")
    p.add_argument("--rooms", type=parse_csv, default=(),
                   help="comma-separated rooms the user may join and publish to; '*' = every room "
                        "(default: none)")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)")
    p.add_argument("--broadcast", action="store_true", help="allow 'broadcast' messages (default: no)")
    p.add_argument("--admin", action="store_true",
                   help="an operator: every room in get_stats, the $stats dashboard stream (default: no)")
    p.add_argument("--auth-secret", default=os.environ.get("FANWIRE_AUTH_SECRET") or None,
                   help="the server's secret (default: FANWIRE_AUTH_SECRET)")
    return p


def token_main(argv: Sequence[str]) -> int:
    parser = build_token_parser()
    ns = parser.parse_args(list(argv))
    if not ns.auth_secret:
        parser.error("no secret: pass --auth-secret or set FANWIRE_AUTH_SECRET")
    try:
        Config(auth_secret=ns.auth_secret)
        from .security.auth import issue

        print(issue(ns.auth_secret, ns.user, ns.rooms, ns.ttl, ns.broadcast, admin=ns.admin))
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    if argv[:1] == ["options"]:
        print(options_markdown())
        return 0
    parser = build_parser()
    ns = parser.parse_args(argv)
    from .runner import Server

    try:
        server = Server(config=config_from_args(ns))
        return server.start()  # usage errors (a bad --app, a missing extra) come before anything starts
    except ConfigError as exc:
        parser.error(str(exc))
