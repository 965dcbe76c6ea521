"""The auction's back end: it runs the clock and makes the announcements.

::

    FANWIRE_API_KEY=... AUCTIONEER_PASSCODE=... python -m examples.auction.backend --url ws://127.0.0.1:8765 \\
        --countdown 30,10,5

1. "closing in N s" for each N of the countdown, published to the auction room through the server's HTTP
   API (``POST /api/publish``): a back end has announcements to make, not a conversation to hold, so it
   needs no WebSocket for them, and each carries an idempotency ``id`` so a retry never announces twice;
2. at zero it knocks the hammer down: the ``hammer`` action, over a WebSocket as the auctioneer, because the
   lot's state lives in the application and only the application can close it atomically (no bid can slip
   in between "closed" and "sold");
3. "sold" with the winner and the price ("unsold" when nobody bid), again through the HTTP API (where a
   real back end would first record the sale in its own database: the announcement follows the record).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from client.publish import UsageError, build_request, send

from .app import AUCTIONEER, ROOM

TIMEOUT_S: Final = 10.0  # every network step (connect, request, answer)
MAX_SKIPPED: Final = 1000  # messages the auctioneer's connection may skip while waiting for its answer


class AnnounceError(RuntimeError):
    """The server refused an announcement (its error code and detail are in the message)."""


def announce(url: str, api_key: str, data: Any, msg_id: str | None = None) -> dict[str, Any]:
    """Publish ``data`` to the auction room over the HTTP API; returns ``{"room","offset","epoch"}``."""
    answer = send(build_request(url, data, api_key, room=ROOM, msg_id=msg_id), TIMEOUT_S)
    if not answer.ok:
        raise AnnounceError(answer.error_line())
    return answer.json  # type: ignore[no-any-return]


def hammer(url: str, passcode: str) -> dict[str, Any]:
    """Close the lot (the ``hammer`` action, as the auctioneer) and return the result of the sale."""
    query = urlencode({"name": AUCTIONEER, "passcode": passcode})
    with connect(f"{url.rstrip('/')}/?{query}", open_timeout=TIMEOUT_S, close_timeout=TIMEOUT_S) as ws:
        ws.send(json.dumps({"type": "custom", "action": "hammer", "id": "hammer"}))
        deadline = time.monotonic() + TIMEOUT_S
        for _ in range(MAX_SKIPPED):
            msg = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if msg.get("id") != "hammer":
                continue  # the welcome, the lot, the room's traffic
            if msg.get("type") != "result":
                raise AnnounceError(f"the hammer was refused: {msg}")
            return msg["data"]  # type: ignore[no-any-return]
    raise AnnounceError("no answer to the hammer")


def run(url: str, api_key: str, passcode: str, countdown: Sequence[float] = (30, 10, 5),
        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The whole closing sequence (see the module docstring); returns the sale. ``countdown`` is in
    seconds, decreasing; ``sleep`` is there for tests (the clock is the back end's business)."""
    marks = list(countdown)
    if any(b >= a for a, b in itertools.pairwise(marks)) or any(m <= 0 for m in marks):
        raise ValueError(f"the countdown must be decreasing positive seconds, not {marks}")
    for i, left in enumerate(marks):
        announce(url, api_key, {"kind": "closing", "in": left}, msg_id=f"closing-{left:g}")
        sleep(left - (marks[i + 1] if i + 1 < len(marks) else 0))
    sale = hammer(url, passcode)
    kind = "sold" if sale.get("winner") else "unsold"  # no bid above the opening price
    announce(url, api_key, {"kind": kind, **sale}, msg_id=kind)
    return sale


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.auction.backend", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("FANWIRE_URL", "ws://127.0.0.1:8765"))
    p.add_argument("--countdown", default="30,10,5", help="seconds left at each announcement (default: 30,10,5)")
    args = p.parse_args(argv)
    key = os.environ.get("FANWIRE_API_KEY", "")
    passcode = os.environ.get("AUCTIONEER_PASSCODE", "hammer-time")
    try:
        countdown = [float(x) for x in args.countdown.split(",")]
        sale = run(args.url, key, passcode, countdown)
    except (ValueError, UsageError) as exc:
        p.error(str(exc))
    except (OSError, AnnounceError, WebSocketException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(sale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
