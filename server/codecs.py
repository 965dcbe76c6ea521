"""Message codecs: JSON (orjson, text frames) and msgpack (binary frames). Pure, no I/O.

A codec turns a message map into bytes and back. The subprotocol a client offers picks the codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgpack
import orjson

from .errors import BadEncoding, BadMessage

JSON: Final = "json"
MSGPACK: Final = "msgpack"
CODECS: Final = (JSON, MSGPACK)

SUBPROTOCOL_JSON: Final = "fanwire.json"
SUBPROTOCOL_MSGPACK: Final = "fanwire.msgpack"
SUBPROTOCOLS: Final = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2

_msgpack_packb = msgpack.packb
_msgpack_unpackb = msgpack.unpackb
_json_dumps = orjson.dumps
_json_loads = orjson.loads


def codec_for_subprotocol(subprotocol: str | None) -> str:
    """The codec for a negotiated subprotocol (none means JSON)."""
    return MSGPACK if subprotocol == SUBPROTOCOL_MSGPACK else JSON


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """Pick the subprotocol to answer with: msgpack if offered, else JSON if offered, else none."""
    if SUBPROTOCOL_MSGPACK in offered:
        return SUBPROTOCOL_MSGPACK
    if SUBPROTOCOL_JSON in offered:
        return SUBPROTOCOL_JSON
    return None


def opcode_for(codec: str) -> int:
    return OP_BINARY if codec == MSGPACK else OP_TEXT


def decode(codec: str, payload: bytes) -> Any:
    """Decode one incoming message; raises BadEncoding."""
    try:
        if codec == MSGPACK:
            return _msgpack_unpackb(payload, raw=False, strict_map_key=True)
        return _json_loads(payload)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadEncoding(f"invalid {codec} payload: {exc}") from None
    except Exception as exc:  # msgpack raises a few other types on hostile input
        raise BadEncoding(f"invalid {codec} payload: {type(exc).__name__}") from None


def encode_json(msg: Any) -> bytes:
    """JSON-encode; raises BadMessage for values JSON cannot carry (bytes, non-str keys...)."""
    try:
        return _json_dumps(msg)
    except TypeError as exc:
        raise BadMessage(f"value not representable in JSON: {exc}") from None


def encode_msgpack(msg: Any) -> bytes:
    return _msgpack_packb(msg, use_bin_type=True)  # type: ignore[no-any-return]


def encode(codec: str, msg: Any) -> bytes:
    return encode_msgpack(msg) if codec == MSGPACK else encode_json(msg)


def json_to_msgpack(payload: bytes) -> bytes:
    """Re-encode a JSON payload (the bus's canonical form) for msgpack receivers."""
    return encode_msgpack(_json_loads(payload))
