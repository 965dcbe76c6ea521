"""Build server-to-client WebSocket frames once, for writing to many connections. Pure.

A server frame is never masked, so the same bytes can go to every receiver of a fan-out. Used only for
connections without extensions (permessage-deflate needs per-connection compression state).
"""

from __future__ import annotations

import struct

_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack


def build_frame(opcode: int, payload: bytes) -> bytes:
    """One final (FIN) unmasked frame carrying ``payload``."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _H16(b0, 126, n) + payload
    return _H64(b0, 127, n) + payload
