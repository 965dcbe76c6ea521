"""The codec registry: subprotocol choice, decoding errors, JSON-representability, re-encoding."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from server import codecs
from server.errors import BadEncoding, BadMessage


def test_subprotocol_selection() -> None:
    assert codecs.select_subprotocol([]) is None
    assert codecs.select_subprotocol(["fanwire.json"]) == "fanwire.json"
    assert codecs.select_subprotocol(["fanwire.json", "fanwire.msgpack"]) == "fanwire.msgpack"
    assert codecs.select_subprotocol(["other"]) is None
    assert codecs.codec_for_subprotocol(None) is codecs.JSON
    assert codecs.codec_for_subprotocol("fanwire.msgpack") is codecs.MSGPACK


def test_codec_errors() -> None:
    with pytest.raises(BadEncoding):
        codecs.JSON.decode(b"[")
    with pytest.raises(BadEncoding):
        codecs.MSGPACK.decode(b"\xc1")
    with pytest.raises(BadMessage):
        codecs.encode_json({"data": b"raw bytes"})
    msg = {"type": "chat", "text": "héllo", "n": [1, 2.5, None, True]}
    for codec in codecs.CODECS.values():
        assert codec.decode(codec.encode(msg)) == msg
        assert codec.decode(codec.from_json(orjson.dumps(msg))) == msg
    assert msgpack.unpackb(codecs.json_to_msgpack(orjson.dumps(msg))) == msg
