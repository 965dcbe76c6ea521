"""Per-connection rate limits: token buckets on messages/s and bytes/s. Pure: the caller passes the time.

Each bucket holds ``rate * burst`` tokens (``burst`` in seconds of the rate) and refills continuously. A
message costs one message token and ``len(payload)`` byte tokens. It passes when both buckets hold its
cost -- a message larger than the whole byte bucket passes when that bucket is full, and the bucket goes
into debt, so the long-run byte rate still holds. A refused message costs nothing; it is answered with an
``error`` (code ``rate_limited``) by the caller.

A client that *keeps going* is closed (1008): a refusal starts an *episode*, which ends after ``burst``
seconds without a refusal; the client is closed when one episode lasts longer than ``burst`` seconds, or
holds more refusals than ``max(16, 2 * message bucket)``. A client that slows down when it sees the first
``rate_limited`` error is never closed.
"""

from __future__ import annotations

from typing import Final

OK: Final = 0
REFUSED: Final = 1  # refused; answer with an error
KICK: Final = 2  # refused, and the client kept going: close it with 1008

MIN_STRIKES: Final = 16


class RateLimiter:
    __slots__ = ("bcap", "brate", "btokens", "cap", "grace", "last", "last_refusal", "limit", "max_refused",
                 "over_since", "rate", "refused", "tokens")

    def __init__(self, rate: float, rate_bytes: float, burst: float, now: float) -> None:
        self.rate = rate  # messages per second, 0 = no limit
        self.brate = rate_bytes  # bytes per second, 0 = no limit
        self.cap = max(1.0, rate * burst)
        self.bcap = max(1.0, rate_bytes * burst)
        self.tokens = self.cap
        self.btokens = self.bcap
        self.last = now
        self.grace = burst
        self.max_refused = max(MIN_STRIKES, int(2 * self.cap) if rate else 0)
        self.over_since = 0.0
        self.last_refusal = 0.0
        self.refused = 0
        self.limit = ""  # which limit refused the last refused message: "messages" or "bytes"

    def take(self, nbytes: int, now: float) -> int:
        """OK if the message may pass (its cost is taken), else REFUSED or KICK (``limit`` says which)."""
        elapsed = now - self.last
        self.last = now
        if self.rate:
            t = self.tokens + elapsed * self.rate
            if t > self.cap:
                t = self.cap
            self.tokens = t
            if t < 1.0:
                return self._refuse("messages", now)
        if self.brate:
            b = self.btokens + elapsed * self.brate
            if b > self.bcap:
                b = self.bcap
            self.btokens = b
            if b < (nbytes if nbytes < self.bcap else self.bcap):
                return self._refuse("bytes", now)
            self.btokens = b - nbytes
        if self.rate:
            self.tokens -= 1.0
        return OK

    def debit(self, nbytes: int) -> None:
        """Charge bytes that are not a message (frame headers, fragments): the byte bucket may go into
        debt, so the next messages wait for it."""
        if self.brate:
            self.btokens -= nbytes

    def _refuse(self, limit: str, now: float) -> int:
        self.limit = limit
        if self.refused == 0 or now - self.last_refusal > self.grace:
            self.over_since = now
            self.refused = 0
        self.refused += 1
        self.last_refusal = now
        if self.refused > self.max_refused or now - self.over_since > self.grace:
            return KICK
        return REFUSED
