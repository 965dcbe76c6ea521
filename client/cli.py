"""Command line: ``python -m client [demo|chat|stress] [options]``; ``demo`` is the default.

Exit status: 0 success, 1 failure at run time (server unreachable, a demo step failed, stress errors),
2 bad arguments, 130 interrupted.

Every command takes ``--url``, ``--codec``, ``--user``, ``--cafile`` and ``--token``; ``--url``,
``--cafile`` and ``--token`` default to ``$FANWIRE_URL``, ``$FANWIRE_CAFILE`` and ``$FANWIRE_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Sequence

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from . import protocol
from .aio import DEFAULT_URL

__all__ = ["build_parser", "main"]

COMMANDS = ("demo", "chat", "stress", "publish")


def _url(value: str) -> str:
    try:
        parse_uri(value)
    except InvalidURI:
        raise argparse.ArgumentTypeError(f"not a ws:// or wss:// URL: {value!r}") from None
    return value


def _user(value: str) -> str:
    try:
        protocol.chat("x", user=value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _cafile(value: str) -> str:
    try:
        ssl.create_default_context(cafile=value)
    except (OSError, ssl.SSLError) as exc:
        raise argparse.ArgumentTypeError(f"cannot load CA file {value!r}: {exc}") from None
    return value


def _token(value: str) -> str:
    try:
        return protocol.check_token(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _room(value: str) -> str:
    try:
        protocol.join(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _int_at_least(low: int) -> type[int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, not {n}")
        return n

    parse.__name__ = f"integer >= {low}"
    return parse  # type: ignore[return-value]


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x > 0 or x != x or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return x


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument(
        "--url",
        type=_url,
        default=os.environ.get("FANWIRE_URL", DEFAULT_URL),
        help="server URL (default: $FANWIRE_URL or %(default)s)",
    )
    g.add_argument("--codec", choices=sorted(protocol.CODECS), default="json", help="wire codec (default: json)")
    g.add_argument("--user", type=_user, default=None, help="user name shown on your messages (1-64 chars)")
    g.add_argument(
        "--cafile",
        type=_cafile,
        default=None,
        metavar="PEM",
        help="for wss:// URLs: trust the CA certificate(s) in this file instead of the system CAs "
        "(default: $FANWIRE_CAFILE)",
    )
    g.add_argument(
        "--token",
        type=_token,
        default=None,
        help="token for a server with authentication, sent as 'Authorization: Bearer' (default: "
        "$FANWIRE_TOKEN, the better place for it: command lines are visible to other users)",
    )
    g.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")

    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="fanwire client: a tour of the features (demo, the default), an interactive chat, "
        "or a load generator (stress).",
        epilog="'python -m client COMMAND --help' describes a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "demo",
        parents=[common],
        help="show every feature and exit (default)",
        description="Connect, show every feature (welcome, chat, broadcast, ping, join/leave, stats, "
        "msgpack vs JSON) and exit 0.",
    )
    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="interactive chat (also reads piped input)",
        description="Interactive chat. Plain text sends a chat message; /help lists the commands. "
        "With piped input, lines are handled in order and the command exits at the end of input "
        "once the answers to what it sent have arrived.",
    )
    chat.add_argument("--room", type=_room, default=None, help="join this room first")
    chat.add_argument(
        "--wait",
        type=_positive_float,
        default=5.0,
        help="seconds to wait for an answer, and at exit for your own messages (default: 5)",
    )
    stress = sub.add_parser(
        "stress",
        parents=[common],
        help="round-trip load test",
        description="Open N connections, send pings with a timestamp and match their pongs; print "
        "msg/s, errors and latency percentiles.",
    )
    stress.add_argument("--connections", "-c", type=_int_at_least(1), default=10, help="connections (default: 10)")
    load = stress.add_mutually_exclusive_group()
    load.add_argument("--messages", "-n", type=_int_at_least(1), default=None, help="pings per connection (default: 100)")
    load.add_argument("--duration", "-d", type=_positive_float, default=None, help="run for this many seconds")
    stress.add_argument("--size", type=_int_at_least(0), default=64, help="approximate bytes per ping (default: 64)")
    stress.add_argument(
        "--processes",
        "-p",
        type=_int_at_least(0),
        default=0,
        help="load processes (default 0: one per 1000 connections, at most the CPU count)",
    )
    stress.add_argument("--inflight", type=_int_at_least(1), default=1, help="pings outstanding per connection (default: 1)")
    stress.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds to wait for a reply (default: 5)")
    stress.add_argument(
        "--max-time", type=_positive_float, default=600.0, help="hard limit on the load phase in seconds (default: 600)"
    )
    stress.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    stress.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal)")
    from .publish import add_parser as add_publish_parser

    add_publish_parser(sub, common)
    return parser


def _normalize(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``demo`` is the default command: ``python -m client --url X`` means ``python -m client demo --url X``;
    a first word that is no command (and no option) is an error naming the commands."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)}")
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        return ["demo", *argv]
    return argv


def _security(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``args.cafile`` and ``args.token`` from the environment, and check them against the URL.

    ``--cafile`` with a ``ws://`` URL is an error; ``$FANWIRE_CAFILE`` is ignored for ``ws://`` URLs (it
    may be set for another server).
    """
    secure = parse_uri(args.url).secure
    if args.cafile is not None and not secure:
        parser.error(f"--cafile needs a wss:// URL, not {args.url!r}")
    env_cafile = os.environ.get("FANWIRE_CAFILE") or None
    if args.cafile is None and env_cafile is not None and secure:
        try:
            args.cafile = _cafile(env_cafile)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"$FANWIRE_CAFILE: {exc}")
    env_token = os.environ.get("FANWIRE_TOKEN") or None
    if args.token is None and env_token is not None:
        try:
            args.token = _token(env_token)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"$FANWIRE_TOKEN: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalize(list(sys.argv[1:] if argv is None else argv), parser))
    _security(parser, args)
    logging.basicConfig(
        level={0: logging.ERROR, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.url, args.codec, args.user, cafile=args.cafile, token=args.token)
        if args.command == "chat":
            from .chat import run_chat

            return asyncio.run(
                run_chat(args.url, args.codec, args.user, args.room, args.wait, cafile=args.cafile, token=args.token)
            )
        if args.command == "publish":
            from .publish import run_publish

            return run_publish(args)
        return _stress(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: not an error worth a traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _stress(args: argparse.Namespace) -> int:
    from .stress import StressConfig, format_table, run_stress

    cfg = StressConfig(
        url=args.url,
        codec=args.codec,
        connections=args.connections,
        messages=None if args.duration is not None else (args.messages or 100),
        duration=args.duration,
        size=args.size,
        processes=args.processes,
        inflight=args.inflight,
        timeout=args.timeout,
        max_time=args.max_time,
        user=args.user,
        cafile=args.cafile,
        token=args.token,
    )
    show_bar = not args.no_progress and sys.stderr.isatty()
    result = run_stress(cfg, progress_stream=sys.stderr if show_bar else None)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    ok = result["connections"]["opened"] > 0 and result["errors"]["total"] == 0
    return 0 if ok else 1
