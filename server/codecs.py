"""Message codecs: a registry of :class:`Codec` objects, one per encoding. Pure, no I/O.

==========  =====================  ======  =============================================================
name        subprotocol            frames  encoding
==========  =====================  ======  =============================================================
``json``    ``fanwire.json``       text    JSON (orjson); also what a client offering no subprotocol gets
``msgpack`` ``fanwire.msgpack``    binary  MessagePack
==========  =====================  ======  =============================================================

The subprotocol a client offers picks its codec for the life of the connection (msgpack wins when both are
offered). JSON is the bus's canonical form: a publication travels as JSON and each receiving worker
re-encodes it once per other codec (:attr:`Codec.from_json`).

Incoming values that JSON cannot carry (msgpack ``bin``, extension types, timestamps, non-string keys)
are refused where they would be relayed (:func:`encode_json` raises ``BadMessage``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import orjson

from .errors import BadEncoding, BadMessage

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2

_json_dumps = orjson.dumps
_json_loads = orjson.loads
_msgpack_packb = msgpack.packb
_msgpack_unpackb = msgpack.unpackb


@dataclass(frozen=True, slots=True, eq=False)
class Codec:
    """One encoding of fanwire messages. Compared by identity (one object per codec)."""

    name: str
    subprotocol: str
    opcode: int  # OP_TEXT or OP_BINARY
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]  # raises BadEncoding
    from_json: Callable[[bytes], bytes]  # a JSON payload (the bus's form) re-encoded for this codec

    @property
    def text(self) -> bool:
        return self.opcode == OP_TEXT

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"


def encode_json(msg: Any) -> bytes:
    """JSON-encode; raises BadMessage for values JSON cannot carry (bytes, extension types, deep nesting...)."""
    try:
        return _json_dumps(msg)
    except orjson.JSONEncodeError as exc:
        raise BadMessage(f"value not representable in JSON: {exc}") from None


def _decode_json(payload: bytes) -> Any:
    try:
        return _json_loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadEncoding(f"invalid json payload: {exc}") from None


def encode_msgpack(msg: Any) -> bytes:
    return _msgpack_packb(msg, use_bin_type=True)  # type: ignore[no-any-return]


def _decode_msgpack(payload: bytes) -> Any:
    try:
        return _msgpack_unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadEncoding(f"invalid msgpack payload: {type(exc).__name__}: {exc}") from None


def json_to_msgpack(payload: bytes) -> bytes:
    """Re-encode a JSON payload (the bus's canonical form) for msgpack receivers."""
    return encode_msgpack(_json_loads(payload))


def _same(payload: bytes) -> bytes:
    return payload


JSON: Final = Codec("json", "fanwire.json", OP_TEXT, encode_json, _decode_json, _same)
MSGPACK: Final = Codec("msgpack", "fanwire.msgpack", OP_BINARY, encode_msgpack, _decode_msgpack, json_to_msgpack)

CODECS: Final[dict[str, Codec]] = {c.name: c for c in (JSON, MSGPACK)}
_BY_SUBPROTOCOL: Final = {c.subprotocol: c for c in CODECS.values()}
SUBPROTOCOLS: Final = (MSGPACK.subprotocol, JSON.subprotocol)  # in order of preference


def codec_for_subprotocol(subprotocol: str | None) -> Codec:
    """The codec of a negotiated subprotocol (none means JSON)."""
    return _BY_SUBPROTOCOL.get(subprotocol or "", JSON)


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer with: the preferred one among those offered, or none."""
    for sp in SUBPROTOCOLS:
        if sp in offered:
            return sp
    return None
