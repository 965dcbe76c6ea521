"""A live auction on fanwire: bidders connect with a shared passcode, bid over their WebSocket, and see
every accepted bid and every announcement of the auctioneer live.

Run it with ONE worker::

    python -m server --app examples.auction.app:app --workers 1 --api-key "$FANWIRE_API_KEY"

Why one worker: a bid is a check-and-set ("higher than the current price? then it is the new price"),
and the lot's state must live in exactly one place for that to be true. fanwire's workers are separate
processes; with two of them each would hold its own copy of the lot, and two bids arriving on two workers
could both be "higher" and both be accepted. In one worker the check and the set run with no ``await``
between them, so on its event loop nothing can interleave: bids are decided one at a time, in the order
they arrive. One worker carries thousands of bidders; an auction house with many lots would run one such
server per group of lots, or keep the lots in a store with an atomic compare-and-set (a Redis script, a
database row lock) and then may use as many workers as it likes. The ``bid`` action refuses to run on any
worker but worker 0, so a misconfigured server fails loudly instead of selling twice.

Who may do what (the ``authenticate`` hook): anyone with the bidders' passcode connects under the name
they chose (``ws://host:port/?name=alice&passcode=...``) and may use the auction room only; the name
``auctioneer`` needs the auctioneer's passcode and may knock the hammer down (``hammer``), which closes the
lot. The back end (backend.py) runs the clock: it announces "closing in N s" over the HTTP API, knocks
the hammer down, and announces the sale.

Messages (``{"type":"custom","action":...,"data":...,"id":...}`` from clients):

- ``bid`` ``{"amount": 150}`` -> ``result`` ``{"accepted": true, "amount": 150, "offset": 4}``, and every
  bidder gets ``{"type":"publication","room":"auction","data":{"kind":"bid","amount":150,"bidder":"bob"}}``;
  or ``{"accepted": false, "reason": "...", "price": 150}`` (too low, not an integer, lot sold...);
- ``lot`` -> the lot as it stands (also sent to each bidder on connecting, as ``{"type":"lot",...}``);
- ``hammer`` (the auctioneer only) -> closes the lot: ``{"item", "price", "winner", "bids"}``.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Final

from server import Accept, App, Context, Refuse, Request

ROOM: Final = "auction"
AUCTIONEER: Final = "auctioneer"
MAX_BID: Final = 10**12  # keeps amounts to sane integers
NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")

log = logging.getLogger("auction")


@dataclass(slots=True)
class Lot:
    """The one lot on sale: its current price (the opening price until the first bid) and high bidder."""

    item: str
    price: int
    winner: str | None = None
    bids: int = 0
    open: bool = True

    def public(self) -> dict[str, Any]:
        return asdict(self)


def make_app(passcode: str, auctioneer_passcode: str, item: str, opening: int) -> App:
    """An auction of ``item`` starting at ``opening``. The state lives in this closure, in one worker."""
    if not passcode or not auctioneer_passcode or passcode == auctioneer_passcode:
        raise ValueError("the bidders' and the auctioneer's passcodes must be set and differ")
    app = App()
    lot = Lot(item, opening)

    @app.authenticate
    def admit(request: Request) -> Accept | Refuse:
        name = request.query.get("name", "")
        given = request.query.get("passcode", "")
        if not NAME.fullmatch(name):
            return Refuse(400, "name: 1 to 32 letters, digits, '_' or '-'")
        expected = auctioneer_passcode if name == AUCTIONEER else passcode
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Refuse(403, "wrong passcode")
        return Accept(name, rooms=(ROOM,))

    @app.on_connect
    def seat(ctx: Context) -> None:
        ctx.join(ROOM)
        ctx.reply({"type": "lot", **lot.public()})

    @app.action("lot")
    def show(ctx: Context, data: Any) -> Any:
        return lot.public()

    @app.action("bid")
    async def bid(ctx: Context, data: Any) -> Any:
        amount = data.get("amount") if isinstance(data, dict) else None
        refusal = _refusal(ctx, lot, amount)
        if refusal is not None:
            return {"accepted": False, "reason": refusal, "price": lot.price}
        assert isinstance(amount, int)
        # the check above and the set below run with no await in between: see the module docstring
        lot.price, lot.winner, lot.bids = amount, ctx.user, lot.bids + 1
        try:
            pos = await ctx.publish(ROOM, {"kind": "bid", "amount": amount, "bidder": ctx.user})
        except Exception as exc:  # the bid stands (the lot says so); only its announcement failed
            log.warning("bid %d by %s not announced: %s", amount, ctx.user, exc)
            return {"accepted": True, "amount": amount, "announced": False}
        return {"accepted": True, "amount": amount, "offset": pos["offset"]}

    @app.action("hammer")
    def hammer(ctx: Context, data: Any) -> Any:
        if ctx.user != AUCTIONEER:
            ctx.reply({"type": "error", "code": "forbidden", "detail": "only the auctioneer closes the lot",
                       "id": ctx.id})
            return None
        lot.open = False  # a second hammer answers the same result: the back end may retry
        return {"item": lot.item, "price": lot.price, "winner": lot.winner, "bids": lot.bids}

    return app


def _refusal(ctx: Context, lot: Lot, amount: object) -> str | None:
    """Why this bid cannot be accepted, or None."""
    if ctx.worker != 0:
        return "misconfigured server: the auction runs with --workers 1 (see examples/auction/README.md)"
    if ctx.user == AUCTIONEER:
        return "the auctioneer does not bid"
    if not lot.open:
        return f"sold to {lot.winner} for {lot.price}" if lot.winner else "the lot is closed"
    if isinstance(amount, bool) or not isinstance(amount, int):
        return "amount must be an integer"
    if amount > MAX_BID:
        return f"amount must be at most {MAX_BID}"
    if amount <= lot.price:
        return f"a bid must be higher than {lot.price}"
    return None


def _from_env() -> App:
    opening = os.environ.get("AUCTION_OPENING", "100")
    if not opening.isdigit():
        raise ValueError(f"AUCTION_OPENING must be a whole number, not {opening!r}")
    return make_app(os.environ.get("AUCTION_PASSCODE", "open-sesame"),
                    os.environ.get("AUCTIONEER_PASSCODE", "hammer-time"),
                    os.environ.get("AUCTION_ITEM", "a first edition of 'The Hobbit'"), int(opening))


app = _from_env()  # python -m server --app examples.auction.app:app
