"""RFC 6455 frames: the server frames fanwire builds, and the reader of client frames."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server import codecs
from server.errors import WsProtocolError
from server.ws.frames import (
    BINARY,
    CLOSE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PING,
    PONG,
    TEXT,
    Event,
    Reader,
    build_close,
    build_frame,
    check_close,
    close_code_of,
    close_payload,
    encode_frame,
    frame_header,
    valid_close_code,
)
from tests.helpers import mask_frame

KEY = b"\x37\xfa\x21\x3d"
RSV1, RSV2, RSV3 = 0x4, 0x2, 0x1  # as the ``rsv`` argument of cf(): bits 6, 5, 4 of the first byte


def cf(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True,
       length: int | None = None, key: bytes = KEY) -> bytes:
    """A client frame: masked with ``key`` unless told otherwise; ``length`` lies about the payload size."""
    return mask_frame(opcode, payload, fin, masked, rsv, length, key)


def read_all(reader: Reader, budget: int = 1 << 30) -> list[Event]:
    """Every event the reader can produce from what it holds, whatever the budget."""
    events: list[Event] = []
    while True:
        events += reader.read(budget)
        if not reader.more:
            return events


def refusal(data: bytes, max_size: int = 1 << 20, max_fragments: int = 1000,
            inflate: PerMessageDeflate | None = None) -> WsProtocolError:
    reader = Reader(max_size, max_fragments, inflate)
    reader.feed(data)
    with pytest.raises(WsProtocolError) as info:
        read_all(reader)
    return info.value


def parse_server_frame(data: bytes, extensions: list[PerMessageDeflate] | None = None) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("incomplete frame")


def deflate() -> PerMessageDeflate:
    """The extension object a negotiation with context takeover and 15-bit windows yields."""
    return PerMessageDeflate(False, False, 15, 15)


def compress(data: bytes, comp: zlib._Compress, final: bool = True) -> bytes:
    """permessage-deflate data (RFC 7692 7.2.1): a sync flush, its 00 00 ff ff tail removed on the last frame."""
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4] if final else out


def compressor() -> zlib._Compress:
    return zlib.compressobj(wbits=-15)


# --- builders ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_build_frame_round_trips(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = parse_server_frame(build_frame(codecs.OP_BINARY, payload))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_build_frame_uses_the_shortest_length_encoding(size: int, header: bytes) -> None:
    payload = b"p" * size
    assert build_frame(OP_TEXT, payload) == header + payload
    assert frame_header(OP_TEXT, size) == header


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG])
def test_frame_header_then_payload_is_build_frame(opcode: int) -> None:
    for size in (3, 300, 70_000):
        payload = bytes([size % 251]) * size
        assert frame_header(opcode, size) + payload == build_frame(opcode, payload)
        assert build_frame(opcode, payload)[0] == 0x80 | opcode  # FIN, no RSV bits, never masked
        assert not build_frame(opcode, payload)[1] & 0x80


def test_close_payload_is_the_code_then_the_reason() -> None:
    assert close_payload(1000) == b"\x03\xe8"
    assert close_payload(4001, "bye now") == b"\x0f\xa1bye now"
    assert close_code_of(close_payload(1013, "slow")) == 1013
    assert close_code_of(b"") == 1005


def test_close_payload_cuts_a_long_reason_to_fit_a_control_frame() -> None:
    payload = close_payload(1000, "r" * 500)
    assert len(payload) == 125 and payload[2:] == b"r" * 123


def test_close_payload_cuts_on_a_character_boundary() -> None:
    # 'é' is two bytes: 61 of them fit in 122 bytes, the 62nd would be cut in half at byte 123
    payload = close_payload(1001, "é" * 100)
    assert payload[2:] == ("é" * 61).encode() and len(payload) == 124
    payload = close_payload(1001, "a" + "€" * 60)  # 3-byte characters: 1 + 40 * 3 = 121 bytes
    assert payload[2:].decode() == "a" + "€" * 40
    assert check_close(payload) == payload  # valid UTF-8, valid code: what a peer would accept


def test_build_close_is_a_close_frame_a_client_can_parse() -> None:
    frame = parse_server_frame(build_close(1011, "heartbeat timeout"))
    assert frame.opcode is Opcode.CLOSE and frame.fin
    assert frame.data == b"\x03\xf3heartbeat timeout"
    assert build_close(1000) == b"\x88\x02\x03\xe8"


def test_encode_frame_without_extensions_is_build_frame() -> None:
    assert encode_frame(OP_TEXT, b"hello", []) == build_frame(OP_TEXT, b"hello")
    assert encode_frame(OP_BINARY, b"x" * 70_000, []) == build_frame(OP_BINARY, b"x" * 70_000)


def test_encode_frame_compresses_through_permessage_deflate() -> None:
    payload = b'{"type":"chat","text":"' + b"la" * 2000 + b'"}'
    ours, theirs = deflate(), deflate()
    wire = encode_frame(OP_TEXT, payload, [ours])
    assert wire[0] == 0x80 | 0x40 | OP_TEXT  # FIN and RSV1: a compressed message
    assert len(wire) < len(payload) // 10
    frame = parse_server_frame(wire, [theirs])
    assert frame.opcode is Opcode.TEXT and frame.data == payload
    # context takeover: the second message goes through the same compressor state
    wire2 = encode_frame(OP_TEXT, payload, [ours])
    assert len(wire2) < len(wire)
    assert parse_server_frame(wire2, [theirs]).data == payload


# --- the reader: messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
def test_reader_unmasks_text_and_binary_messages(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"q" * (size % 256)
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, payload) + cf(OP_BINARY, payload[::-1]))
    assert reader.read(10) == [(TEXT, payload), (BINARY, payload[::-1])]
    assert reader.more is False and reader.buffered == 0
    head = 6 if size < 126 else 8 if size < 65536 else 14
    assert reader.frames == 2 and reader.wire_bytes == 2 * (head + size)


def test_reader_waits_for_a_complete_frame_whatever_part_is_missing() -> None:
    wire = cf(OP_BINARY, b"z" * 70_000)  # 64-bit length: a 14-byte header
    for cut in (1, 2, 5, 9, 10, 13, 14, 1000, len(wire) - 1):
        reader = Reader(1 << 20, 16)
        reader.feed(wire[:cut])
        assert reader.read(10) == [] and reader.more is False
        assert reader.buffered == cut and reader.frames == 0 and reader.wire_bytes == 0
        reader.feed(wire[cut:])
        assert reader.read(10) == [(BINARY, b"z" * 70_000)]
        assert reader.buffered == 0 and reader.wire_bytes == len(wire)


def test_reader_joins_fragments_into_one_message() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"hel", fin=False) + cf(OP_CONT, b"", fin=False) + cf(OP_CONT, b"lo ", fin=False)
                + cf(OP_CONT, "wörld".encode()))
    assert reader.read(10) == [(TEXT, "hello wörld".encode())]
    assert reader.frames == 4
    reader.feed(cf(OP_BINARY, b"\x00\x01", fin=False) + cf(OP_CONT, b"\x02"))
    assert reader.read(10) == [(BINARY, b"\x00\x01\x02")]


def test_reader_lets_control_frames_interleave_with_fragments() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"a", fin=False) + cf(OP_PING, b"p1") + cf(OP_CONT, b"b", fin=False)
                + cf(OP_PONG, b"p2") + cf(OP_CONT, b"c"))
    assert reader.read(10) == [(PING, b"p1"), (PONG, b"p2"), (TEXT, b"abc")]


def test_reader_reads_pings_and_pongs_with_their_data() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_PING, b"") + cf(OP_PING, b"x" * 125) + cf(OP_PONG, b"fanwire"))
    assert reader.read(10) == [(PING, b""), (PING, b"x" * 125), (PONG, b"fanwire")]


def test_a_fragmented_message_is_one_bytearray_until_its_last_fragment() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"ab", fin=False) + cf(OP_CONT, b"cd", fin=False))
    assert reader.read(10) == []
    assert isinstance(reader.frag, bytearray) and bytes(reader.frag) == b"abcd" and reader.frag_count == 2
    reader.feed(cf(OP_CONT, b"e"))
    assert reader.read(10) == [(TEXT, b"abcde")]
    assert reader.frag is None


# --- the reader: the frame budget ------------------------------------------------------------------------


def test_read_stops_at_its_frame_budget_and_says_more() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(b"".join(cf(OP_TEXT, b"%d" % i) for i in range(5)))
    assert reader.read(2) == [(TEXT, b"0"), (TEXT, b"1")] and reader.more is True
    assert reader.frames == 2
    assert reader.read(2) == [(TEXT, b"2"), (TEXT, b"3")] and reader.more is True
    assert reader.read(2) == [(TEXT, b"4")] and reader.more is False
    assert reader.frames == 5 and reader.buffered == 0


def test_the_budget_counts_frames_not_messages() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"a", fin=False) + cf(OP_CONT, b"b", fin=False) + cf(OP_PING)
                + cf(OP_CONT, b"c"))
    assert reader.read(2) == [] and reader.more is True
    assert reader.read(2) == [(PING, b""), (TEXT, b"abc")] and reader.more is False
    assert reader.frames == 4


def test_more_is_false_when_the_budget_ends_exactly_with_the_frames() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"a") + cf(OP_TEXT, b"b"))
    assert reader.read(2) == [(TEXT, b"a"), (TEXT, b"b")] and reader.more is False


def test_more_is_false_when_the_budget_ends_before_an_incomplete_header() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"a") + cf(OP_TEXT, b"b")[:1])  # one byte: not even a header
    assert reader.read(1) == [(TEXT, b"a")] and reader.more is False


def test_more_is_false_when_only_a_partial_frame_is_left_at_the_budget() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"a") + cf(OP_TEXT, b"b") + cf(OP_TEXT, b"c")[:3])
    assert reader.read(2) == [(TEXT, b"a"), (TEXT, b"b")]
    assert reader.more is False


# --- the reader: limits ------------------------------------------------------------------------------------


def test_a_message_of_exactly_max_size_is_accepted() -> None:
    reader = Reader(1000, 16)
    reader.feed(cf(OP_BINARY, b"m" * 1000) + cf(OP_TEXT, b"f" * 500, fin=False) + cf(OP_CONT, b"g" * 500))
    assert reader.read(10) == [(BINARY, b"m" * 1000), (TEXT, b"f" * 500 + b"g" * 500)]


@pytest.mark.parametrize("length", [1001, 65536, 1 << 40, (1 << 63) + 5])
def test_an_oversize_frame_is_refused_from_its_header(length: int) -> None:
    header = cf(OP_BINARY, length=length)  # the header (and mask) alone: no payload was sent
    assert len(header) in (8, 14)
    reader = Reader(1000, 16)
    reader.feed(header)
    with pytest.raises(WsProtocolError) as info:
        reader.read(10)
    assert info.value.code == 1009


def test_a_fragment_taking_the_message_over_max_size_is_refused_from_its_header() -> None:
    reader = Reader(1000, 16)
    reader.feed(cf(OP_TEXT, b"a" * 600, fin=False))
    assert reader.read(10) == []
    reader.feed(cf(OP_CONT, length=401)[:8])  # its header only
    with pytest.raises(WsProtocolError) as info:
        reader.read(10)
    assert info.value.code == 1009


def test_max_fragments_frames_are_accepted_one_more_is_refused() -> None:
    ok = cf(OP_TEXT, b"0", fin=False) + b"".join(cf(OP_CONT, b"%d" % i, fin=False) for i in range(1, 3))
    reader = Reader(1 << 20, 4)
    reader.feed(ok + cf(OP_CONT, b"3"))
    assert reader.read(10) == [(TEXT, b"0123")]
    reader = Reader(1 << 20, 4)
    reader.feed(ok + cf(OP_CONT, b"3", fin=False) + cf(OP_CONT, b"4"))
    with pytest.raises(WsProtocolError) as info:
        reader.read(10)
    assert info.value.code == 1009
    assert reader.frames == 4  # the fifth frame was refused before it was consumed


# --- the reader: framing rules (1002) ----------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "what"), [
    (cf(OP_TEXT, b"hi", masked=False), "unmasked frame from a client"),
    (cf(OP_PING, b"hi", masked=False), "unmasked frame from a client"),
    (cf(OP_PING, b"x", fin=False), "fragmented control frame"),
    (cf(OP_CLOSE, b"", fin=False), "fragmented control frame"),
    (cf(OP_PONG, length=126), "control frame longer than 125 bytes"),
    (cf(OP_PING, b"x" * 126), "control frame longer than 125 bytes"),
    (cf(OP_PING, b"x", rsv=RSV1), "reserved bits set on a control frame"),
    (cf(OP_CLOSE, b"", rsv=RSV3), "reserved bits set on a control frame"),
    (cf(OP_CONT, b"x"), "continuation frame without a message to continue"),
    (cf(OP_TEXT, b"x", rsv=RSV1), "reserved bits set without an extension that defines them"),
    (cf(OP_BINARY, b"x", rsv=RSV2), "reserved bits set without an extension that defines them"),
    (cf(OP_TEXT, b"a", fin=False) + cf(OP_TEXT, b"b"), "new message inside a fragmented one"),
    (cf(OP_TEXT, b"a", fin=False) + cf(OP_BINARY, b"b"), "new message inside a fragmented one"),
    (cf(OP_TEXT, b"a", fin=False) + cf(OP_CONT, b"b", rsv=RSV1), "reserved bits set on a continuation frame"),
])
def test_framing_errors_close_with_1002(wire: bytes, what: str) -> None:
    exc = refusal(wire)
    assert (exc.code, exc.reason) == (1002, what)


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_close_with_1002(opcode: int) -> None:
    exc = refusal(cf(opcode, b"x"))
    assert exc.code == 1002 and exc.reason == f"reserved opcode {opcode:#x}"


def test_rsv2_and_rsv3_stay_reserved_with_permessage_deflate() -> None:
    for rsv in (RSV2, RSV3, RSV1 | RSV2):
        assert refusal(cf(OP_TEXT, b"x", rsv=rsv), inflate=deflate()).code == 1002


@pytest.mark.parametrize("entry", ["read", "feed_read", "feed_read after a partial frame"])
def test_the_frames_before_a_framing_error_are_returned_and_the_error_raised_on_the_next_read(entry: str) -> None:
    # Autobahn 3.2, 4.1.3, 5.15...: a valid message then a broken frame in one segment. The message is
    # handled (as it would be had it come alone), then the connection fails; nothing after the error is parsed.
    good = cf(OP_TEXT, b"ok") + cf(OP_PING, b"p")
    wire = good + cf(OP_TEXT, b"bad", rsv=RSV2) + cf(OP_TEXT, b"never")
    reader = Reader(1 << 20, 16)
    if entry == "read":
        reader.feed(wire)
        events = reader.read(10)
    elif entry == "feed_read":
        events = reader.feed_read(wire, 10)
    else:
        assert reader.feed_read(wire[:3], 10) == []
        events = reader.feed_read(wire[3:], 10)
    assert events == [(TEXT, b"ok"), (PING, b"p")]
    assert reader.more  # the caller comes back...
    assert reader.frames == 2 and reader.wire_bytes == len(good)
    for _ in range(2):  # ... and the error is raised, on every later call
        with pytest.raises(WsProtocolError) as exc:
            reader.read(10)
        assert exc.value.code == 1002
    with pytest.raises(WsProtocolError):
        reader.feed_read(cf(OP_TEXT, b"more"), 10)
    assert reader.frames == 2 and reader.buffered == 0


def test_a_framing_error_first_in_a_read_raises_at_once() -> None:
    reader = Reader(1 << 20, 16)
    with pytest.raises(WsProtocolError):
        reader.feed_read(cf(OP_TEXT, b"bad", masked=False) + cf(OP_TEXT, b"ok"), 10)
    assert reader.frames == 0


# --- the reader: close frames ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"",
    struct.pack("!H", 1000),
    struct.pack("!H", 1001) + b"going away",
    struct.pack("!H", 4999) + "adiós".encode(),
    struct.pack("!H", 3000) + b"x" * 123,
])
def test_a_valid_close_is_an_event_with_its_payload(payload: bytes) -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_CLOSE, payload))
    assert reader.read(10) == [(CLOSE, payload)]
    assert reader.closed is True


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                                  3000, 3999, 4000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)
    assert check_close(struct.pack("!H", code)) == struct.pack("!H", code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_close_with_1002(code: int) -> None:
    assert not valid_close_code(code)
    exc = refusal(cf(OP_CLOSE, struct.pack("!H", code) + b"why"))
    assert (exc.code, exc.reason) == (1002, f"invalid close code {code}")


def test_a_one_byte_close_payload_closes_with_1002() -> None:
    exc = refusal(cf(OP_CLOSE, b"\x03"))
    assert (exc.code, exc.reason) == (1002, "close frame with a one-byte payload")


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_a_close_reason_that_is_not_utf8_closes_with_1007(reason: bytes) -> None:
    exc = refusal(cf(OP_CLOSE, struct.pack("!H", 1000) + reason))
    assert (exc.code, exc.reason) == (1007, "close reason is not valid UTF-8")


def test_nothing_is_read_after_a_close() -> None:
    reader = Reader(1 << 20, 16)
    after = cf(OP_TEXT, b"late") + cf(OP_TEXT, b"bad", masked=False) + cf(OP_PING)
    reader.feed(cf(OP_TEXT, b"first") + cf(OP_CLOSE, b"\x03\xe8") + after)
    assert reader.read(10) == [(TEXT, b"first"), (CLOSE, b"\x03\xe8")]
    assert reader.buffered == 0 and reader.more is False
    assert reader.frames == 2 and reader.wire_bytes == len(cf(OP_TEXT, b"first")) + len(cf(OP_CLOSE, b"\x03\xe8"))
    reader.feed(after)  # discarded: never buffered, never parsed (the unmasked frame raises nothing)
    assert reader.buffered == 0
    assert reader.read(10) == [] and reader.frames == 2


def test_a_close_ends_a_fragmented_message_unfinished() -> None:
    reader = Reader(1 << 20, 16)
    reader.feed(cf(OP_TEXT, b"part", fin=False) + cf(OP_CLOSE, b"\x03\xe9") + cf(OP_CONT, b"rest"))
    assert reader.read(10) == [(CLOSE, b"\x03\xe9")]
    assert reader.read(10) == []


# --- the reader: permessage-deflate ------------------------------------------------------------------------


def test_a_compressed_message_is_inflated() -> None:
    payload = b'{"type":"chat","text":"' + b"ha" * 1000 + b'"}'
    comp = compressor()
    reader = Reader(1 << 20, 16, deflate())
    wire = cf(OP_TEXT, compress(payload, comp), rsv=RSV1)
    reader.feed(wire)
    assert reader.read(10) == [(TEXT, payload)]
    assert reader.wire_bytes == len(wire) < len(payload)
    # context takeover: the next message refers back to the first one's window
    reader.feed(cf(OP_TEXT, compress(payload, comp), rsv=RSV1))
    assert reader.read(10) == [(TEXT, payload)]


def test_a_compressed_fragmented_message_is_inflated_and_joined() -> None:
    payload = bytes(range(256)) * 40
    comp = compressor()
    parts = [payload[:3000], payload[3000:7000], payload[7000:]]
    wire = (cf(OP_BINARY, compress(parts[0], comp, final=False), fin=False, rsv=RSV1)
            + cf(OP_PING, b"between")
            + cf(OP_CONT, compress(parts[1], comp, final=False), fin=False)
            + cf(OP_CONT, compress(parts[2], comp)))
    reader = Reader(1 << 20, 16, deflate())
    reader.feed(wire)
    assert reader.read(10) == [(PING, b"between"), (BINARY, payload)]


def test_an_uncompressed_message_passes_when_deflate_was_negotiated() -> None:
    reader = Reader(1 << 20, 16, deflate())
    reader.feed(cf(OP_TEXT, b"plain") + cf(OP_BINARY, b"a", fin=False) + cf(OP_CONT, b"b"))
    assert reader.read(10) == [(TEXT, b"plain"), (BINARY, b"ab")]


def test_a_message_inflating_over_max_size_closes_with_1009() -> None:
    bomb = compress(b"\x00" * 100_000, compressor())
    assert len(bomb) < 200
    exc = refusal(cf(OP_BINARY, bomb, rsv=RSV1), max_size=10_000, inflate=deflate())
    assert exc.code == 1009


def test_fragments_inflating_over_max_size_close_with_1009() -> None:
    comp = compressor()
    wire = (cf(OP_BINARY, compress(b"a" * 6000, comp, final=False), fin=False, rsv=RSV1)
            + cf(OP_CONT, compress(b"b" * 6000, comp)))
    assert refusal(wire, max_size=10_000, inflate=deflate()).code == 1009


def test_corrupt_deflate_data_closes_with_1002() -> None:
    exc = refusal(cf(OP_TEXT, b"\xff\xff\xff\xff not deflate", rsv=RSV1), inflate=deflate())
    assert exc.code == 1002


def test_an_uncompressed_fragmented_message_over_max_size_is_refused_with_deflate_negotiated() -> None:
    wire = cf(OP_TEXT, b"a" * 90, fin=False) + cf(OP_CONT, b"b" * 90, fin=False) + cf(OP_CONT, b"c" * 90)
    assert refusal(wire, max_size=100).code == 1009  # without the extension: refused
    assert refusal(wire, max_size=100, inflate=deflate()).code == 1009


def test_a_compressed_frame_announcing_an_absurd_length_is_refused_from_its_header() -> None:
    reader = Reader(1 << 20, 16, deflate())
    reader.feed(cf(OP_BINARY, length=1 << 40, rsv=RSV1))
    with pytest.raises(WsProtocolError) as info:
        reader.read(10)
    assert info.value.code == 1009


def test_a_fragment_inflating_past_a_full_message_is_refused() -> None:
    comp = compressor()
    wire = (cf(OP_TEXT, compress(b"x" * 100, comp, final=False), fin=False, rsv=RSV1)
            + cf(OP_CONT, compress(b"y" * 100_000, comp)))
    assert refusal(wire, max_size=100, inflate=deflate()).code == 1009


# --- properties (hypothesis) -------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# a message: opcode, payload, how many fragments it is sent in, and pings to slip between its fragments
# (a text message is valid UTF-8, which the reader checks fragment by fragment; fragments may split characters)
messages = st.one_of(
    st.tuples(st.just(OP_TEXT), st.text(max_size=100).map(str.encode), st.integers(1, 5),
              st.lists(st.binary(max_size=20), max_size=3)),
    st.tuples(st.just(OP_BINARY), st.binary(max_size=300), st.integers(1, 5),
              st.lists(st.binary(max_size=20), max_size=3)),
)


def wire_of(msgs: list[tuple[int, bytes, int, list[bytes]]]) -> tuple[bytes, list[Event]]:
    """The client's byte stream for ``msgs`` and the events a reader must make of it."""
    wire = bytearray()
    expected: list[Event] = []
    for opcode, payload, nfrags, pings in msgs:
        step = max(1, -(-len(payload) // nfrags))
        pieces = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            wire += cf(opcode if i == 0 else OP_CONT, piece, fin=last, key=bytes((i, 7, len(piece) % 256, 3)))
            if not last and i < len(pings):
                wire += cf(OP_PING, pings[i])
                expected.append((PING, pings[i]))
        expected.append((opcode, payload))
    return bytes(wire), expected


@FAST
@given(st.lists(messages, max_size=6), st.data())
def test_any_split_of_the_stream_yields_the_same_events(msgs: list[tuple[int, bytes, int, list[bytes]]],
                                                        data: st.DataObject) -> None:
    wire, expected = wire_of(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts"))
    budget = data.draw(st.integers(1, 8), label="budget")
    reader = Reader(1 << 20, 16)
    events: list[Event] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        reader.feed(wire[start:cut])
        start = cut
        events += read_all(reader, budget)
    assert events == expected
    assert reader.buffered == 0 and reader.frag is None
    assert reader.wire_bytes == len(wire)
    whole = Reader(1 << 20, 16)
    whole.feed(wire)
    assert read_all(whole) == expected and whole.frames == reader.frames


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(3_000, 8_000), st.sampled_from([16, 97, 1024]))
def test_a_message_of_one_byte_fragments_costs_memory_near_its_size(n: int, per_feed: int) -> None:
    # frames of a 1-byte payload masked with a zero key: 7 bytes each on the wire
    first = bytes((OP_BINARY, 0x81, 0, 0, 0, 0)) + b"m"
    cont = bytes((OP_CONT, 0x81, 0, 0, 0, 0)) + b"m"
    last = bytes((0x80 | OP_CONT, 0x81, 0, 0, 0, 0)) + b"m"
    wire = first + cont * (n - 2) + last
    step = 7 * per_feed
    reader = Reader(1 << 30, 1 << 30)
    events: list[Event] = []
    tracemalloc.start()
    try:
        for i in range(0, len(wire), step):
            reader.feed(wire[i : i + step])
            events += reader.read(1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [(BINARY, b"m" * n)]
    assert peak <= 2.25 * n + step + 16 * 1024, f"{n} one-byte fragments peaked at {peak} bytes"


frame_fields = st.tuples(st.integers(0, 255), st.integers(0, 140), st.binary(max_size=140),
                         st.booleans(), st.sampled_from([None, 126, 127]))


def random_frame(b0: int, n: int, body: bytes, masked: bool, ext: int | None) -> bytes:
    """Almost a frame: any first byte, a length that may lie, any bytes after it."""
    b1 = (0x80 if masked else 0) | (n & 0x7F if ext is None else ext)
    if ext == 126:
        return bytes((b0, b1)) + struct.pack("!H", n) + body
    if ext == 127:
        return bytes((b0, b1)) + struct.pack("!Q", n) + body
    return bytes((b0, b1)) + body


@FAST
@given(st.binary(max_size=400) | st.lists(frame_fields, max_size=8).map(
    lambda fs: b"".join(random_frame(*f) for f in fs)), st.booleans(), st.integers(1, 4), st.data())
def test_hostile_bytes_raise_nothing_but_ws_protocol_errors(data: bytes, with_deflate: bool, budget: int,
                                                           draw: st.DataObject) -> None:
    reader = Reader(200, 4, deflate() if with_deflate else None)
    start = 0
    try:
        for cut in [*sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4))), len(data)]:
            reader.feed(data[start:cut])
            start = cut
            for _ in range(len(data) + 2):  # each read consumes a frame or stops: this always ends
                events = reader.read(budget)
                for kind, payload in events:
                    assert kind in (TEXT, BINARY, PING, PONG, CLOSE) and isinstance(payload, bytes)
                    if kind in (TEXT, BINARY):
                        assert len(payload) <= 200
                if not reader.more:
                    break
            else:
                raise AssertionError("read() never ran out of frames")
    except WsProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)



# --- feed_read: frames parsed in place from a buffer the caller reuses -------------------------------------------


def feed_read_all(reader: Reader, data: bytes | bytearray, budget: int, end: int = -1) -> list[Event]:
    """feed_read, then read() until nothing complete is left (what a connection does over wake-ups)."""
    events = reader.feed_read(data, budget, end)
    while reader.more:
        events += reader.read(budget)
    return events


@FAST
@given(st.lists(messages, max_size=6), st.data())
def test_feed_read_yields_what_feed_then_read_yields(msgs: list[tuple[int, bytes, int, list[bytes]]],
                                                     data: st.DataObject) -> None:
    wire, expected = wire_of(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts"))
    budget = data.draw(st.integers(1, 8), label="budget")
    shared = bytearray(len(wire) + 64)  # one receive buffer, overwritten by every read
    reader = Reader(1 << 20, 16)
    events: list[Event] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        n = cut - start
        shared[:n] = wire[start:cut]
        start = cut
        events += feed_read_all(reader, shared, budget, n)
        shared[:] = b"\xee" * len(shared)  # the next read reuses the buffer: no event may refer to it
    assert events == expected
    assert reader.buffered == 0 and reader.frag is None
    assert reader.wire_bytes == len(wire)
    whole = Reader(1 << 20, 16)
    whole.feed(wire)
    assert read_all(whole) == expected and whole.frames == reader.frames


def test_feed_read_copies_only_the_partial_frame_left_at_the_end() -> None:
    a, b = cf(OP_TEXT, b"a" * 300), cf(OP_BINARY, b"b" * 40)
    reader = Reader(1 << 20, 16)
    assert reader.feed_read(a + b[:7], 10) == [(TEXT, b"a" * 300)]
    assert reader.buffered == 7  # the start of the second frame, nothing else
    assert reader.feed_read(b[7:] + a[:1], 10) == [(BINARY, b"b" * 40)]
    assert reader.buffered == 1
    assert reader.feed_read(a[1:], 10) == [(TEXT, b"a" * 300)]
    assert reader.buffered == 0 and reader.wire_bytes == 2 * len(a) + len(b)


def test_feed_read_completes_a_header_split_anywhere() -> None:
    frame = cf(OP_BINARY, bytes(range(256)) * 300)  # a 64-bit length: a 14-byte header
    for cut in range(1, 15):
        reader = Reader(1 << 20, 16)
        assert reader.feed_read(frame[:cut], 10) == []
        assert reader.feed_read(frame[cut:], 10) == [(BINARY, bytes(range(256)) * 300)]
        assert reader.buffered == 0


def test_feed_read_keeps_what_is_over_the_budget_and_says_more() -> None:
    reader = Reader(1 << 20, 16)
    wire = b"".join(cf(OP_TEXT, b"%d" % i) for i in range(5))
    assert reader.feed_read(wire, 2) == [(TEXT, b"0"), (TEXT, b"1")]
    assert reader.more and reader.buffered == len(wire) - 2 * 7
    assert reader.read(2) == [(TEXT, b"2"), (TEXT, b"3")] and reader.more
    assert reader.read(2) == [(TEXT, b"4")] and not reader.more


def test_feed_read_budget_counts_the_frame_it_completed() -> None:
    reader = Reader(1 << 20, 16)
    first = cf(OP_TEXT, b"x" * 10)
    reader.feed_read(first[:3], 1)
    rest = first[3:] + cf(OP_TEXT, b"y")
    assert reader.feed_read(rest, 1) == [(TEXT, b"x" * 10)]
    assert reader.more and reader.read(1) == [(TEXT, b"y")]


def test_feed_read_checks_a_header_before_its_payload_arrives() -> None:
    reader = Reader(100, 16)
    head = cf(OP_BINARY, b"z" * 1000)[:8]
    reader.feed_read(head[:1], 10)
    with pytest.raises(WsProtocolError) as info:
        reader.feed_read(head[1:], 10)
    assert info.value.code == 1009


def test_feed_read_after_a_close_keeps_nothing() -> None:
    reader = Reader(1 << 20, 16)
    events = reader.feed_read(cf(OP_CLOSE, struct.pack("!H", 1000)) + cf(OP_TEXT, b"after"), 10)
    assert events == [(CLOSE, struct.pack("!H", 1000))] and reader.closed and reader.buffered == 0
    assert reader.feed_read(cf(OP_TEXT, b"more"), 10) == [] and reader.buffered == 0


@FAST
@given(st.binary(max_size=400) | st.lists(frame_fields, max_size=8).map(
    lambda fs: b"".join(random_frame(*f) for f in fs)), st.booleans(), st.integers(1, 4), st.data())
def test_hostile_bytes_through_feed_read_raise_nothing_but_ws_protocol_errors(
        data: bytes, with_deflate: bool, budget: int, draw: st.DataObject) -> None:
    reader = Reader(200, 4, deflate() if with_deflate else None)
    start = 0
    try:
        for cut in [*sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4))), len(data)]:
            events = reader.feed_read(data[start:cut], budget)
            start = cut
            for _ in range(len(data) + 2):
                for kind, payload in events:
                    assert kind in (TEXT, BINARY, PING, PONG, CLOSE) and isinstance(payload, bytes)
                    if kind in (TEXT, BINARY):
                        assert len(payload) <= 200
                if not reader.more:
                    break
                events = reader.read(budget)
            else:
                raise AssertionError("read() never ran out of frames")
    except WsProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)


# --- the reader: UTF-8 of fragmented text messages ----------------------------------------------------------


def test_a_fragmented_text_message_fails_at_the_fragment_that_breaks_its_utf8() -> None:
    # Autobahn 6.4.1-2: fail fast (RFC 6455 8.1), not when the last fragment comes (which may be never)
    reader = Reader(1 << 20, 16)
    assert reader.feed_read(cf(OP_TEXT, "κό".encode() + b"\xce", fin=False), 10) == []  # a split character: fine
    assert reader.feed_read(cf(OP_CONT, b"\xbd", fin=False), 10) == []
    with pytest.raises(WsProtocolError) as exc:
        reader.feed_read(cf(OP_CONT, b"\xf4\x90\x80\x80", fin=False), 10)  # over U+10FFFF: never valid
    assert exc.value.code == 1007


def test_a_fragmented_text_message_cut_inside_a_character_fails_at_its_last_fragment() -> None:
    reader = Reader(1 << 20, 16)
    assert reader.feed_read(cf(OP_TEXT, b"ok\xce", fin=False), 10) == []
    with pytest.raises(WsProtocolError) as exc:
        reader.feed_read(cf(OP_CONT, b""), 10)
    assert exc.value.code == 1007


def test_fragmented_binary_and_valid_text_messages_are_not_judged_as_utf8() -> None:
    reader = Reader(1 << 20, 16)
    wire = cf(OP_BINARY, b"\xff", fin=False) + cf(OP_CONT, b"\xfe") + cf(OP_TEXT, "é".encode()[:1], fin=False) \
        + cf(OP_CONT, "é".encode()[1:])
    assert reader.feed_read(wire, 10) == [(BINARY, b"\xff\xfe"), (TEXT, "é".encode())]


def test_a_compressed_fragmented_text_message_is_judged_after_inflating() -> None:
    raw = "añb".encode()  # the first fragment ends inside "ñ"
    comp = compressor()
    wire = (cf(OP_TEXT, compress(raw[:2], comp, final=False), fin=False, rsv=RSV1)
            + cf(OP_CONT, compress(raw[2:], comp)))
    reader = Reader(1 << 20, 16, inflate=deflate())
    assert reader.feed_read(wire, 10) == [(TEXT, raw)]
    comp = compressor()
    broken = cf(OP_TEXT, compress(b"a", comp, final=False), fin=False, rsv=RSV1) \
        + cf(OP_CONT, compress(b"\xff", comp, final=False), fin=False)
    reader = Reader(1 << 20, 16, inflate=deflate())
    with pytest.raises(WsProtocolError) as exc:
        reader.feed_read(broken, 10)
    assert exc.value.code == 1007
