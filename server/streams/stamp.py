"""A sequenced message's position, at the front of its JSON payload. Pure.

The sequencer turns ``{"type":"chat",...}`` into ``{"offset":12,"epoch":"k3v9x","type":"chat",...}``
by splicing bytes (no decode, no re-encode), and any receiver reads the position back from the first bytes
of the payload, so no other metadata has to travel with a message on either bus. Epochs are short and
made of ``[0-9a-z]`` only: they never need escaping in JSON.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

PREFIX: Final = b'{"offset":'
_POSITION = re.compile(rb'\{"offset":(0|[1-9]\d{0,18}),"epoch":"([0-9a-z]{1,32})",')
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
EPOCH_LEN: Final = 8


def new_epoch() -> str:
    """A fresh, unguessable epoch name (8 characters of [0-9a-z], about 41 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(EPOCH_LEN))


def valid_epoch(epoch: object) -> bool:
    return type(epoch) is str and 0 < len(epoch) <= 32 and all(c in _ALPHABET for c in epoch)


def stamp(payload: bytes, offset: int, epoch: str) -> bytes:
    """``payload`` (a JSON object with at least one member) with its position in front."""
    return b'{"offset":%d,"epoch":"%s",%s' % (offset, epoch.encode(), payload[1:])


def position(payload: bytes) -> tuple[int, str] | None:
    """``(offset, epoch)`` of a stamped payload, or None when it carries none."""
    m = _POSITION.match(payload)
    if m is None:
        return None
    return int(m.group(1)), m.group(2).decode()
