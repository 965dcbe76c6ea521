"""Codecs, server frame building, bus framing, metrics rendering: pure code."""

from __future__ import annotations

import msgpack
import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server import busframe as bf
from server import codecs, metrics
from server.config import Config
from server.errors import BadEncoding, BadMessage, BusFrameError, ConfigError
from server.wsframe import build_frame


def parse_server_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_build_frame_round_trips(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = parse_server_frame(build_frame(codecs.OP_BINARY, payload))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


def test_subprotocol_selection() -> None:
    assert codecs.select_subprotocol([]) is None
    assert codecs.select_subprotocol(["fanwire.json"]) == "fanwire.json"
    assert codecs.select_subprotocol(["fanwire.json", "fanwire.msgpack"]) == "fanwire.msgpack"
    assert codecs.select_subprotocol(["other"]) is None
    assert codecs.codec_for_subprotocol(None) == "json"
    assert codecs.codec_for_subprotocol("fanwire.msgpack") == "msgpack"


def test_codec_errors() -> None:
    with pytest.raises(BadEncoding):
        codecs.decode("json", b"[")
    with pytest.raises(BadEncoding):
        codecs.decode("msgpack", b"\xc1")
    with pytest.raises(BadMessage):
        codecs.encode_json({"data": b"raw bytes"})
    msg = {"type": "chat", "text": "héllo", "n": [1, 2.5, None, True]}
    assert codecs.decode("json", codecs.encode("json", msg)) == msg
    assert codecs.decode("msgpack", codecs.encode("msgpack", msg)) == msg
    assert msgpack.unpackb(codecs.json_to_msgpack(orjson.dumps(msg))) == msg


def test_bus_records_and_packets_round_trip() -> None:
    recs = [bf.record(bf.PUBLISH, 3, 123, bf.publish_body("room", b"x" * n)) for n in (0, 10, 100_000)]
    recs.append(bf.record(bf.PUBLISH, 3, 124, bf.publish_body(None, b"{}")))
    pkts = list(bf.packets(recs, 1000))
    assert len(pkts) > 100 and all(len(p) <= 1000 for p in pkts)
    r = bf.Reassembler(1 << 20)
    out = [r.feed(p) for p in pkts]
    assert all(o is None for o in out[:-1]) and out[-1] is not None
    got = bf.split_batch(out[-1])
    assert got == recs
    kind, src, ts, body = bf.parse_record(got[1])
    assert (kind, src, ts) == (bf.PUBLISH, 3, 123)
    assert bf.parse_publish(body) == ("room", b"x" * 10)
    assert bf.parse_publish(bf.parse_record(got[3])[3]) == (None, b"{}")


def test_reassembler_discards_incomplete_sequences() -> None:
    a = list(bf.packets([b"A" * 5000], 1000))
    b = list(bf.packets([b"B" * 10], 1000))
    r = bf.Reassembler(1 << 20)
    for p in a[:2]:  # the writer died after two packets
        assert r.feed(p) is None
    batch = r.feed(b[0])
    assert batch is not None and bf.split_batch(batch) == [b"B" * 10]
    assert r.discarded == 1
    assert r.feed(a[3]) is None and r.discarded == 2  # continuation without a start


def test_reassembler_limits_batch_size() -> None:
    r = bf.Reassembler(3000)
    pkts = list(bf.packets([b"C" * 10_000], 1000))
    assert all(r.feed(p) is None for p in pkts)
    assert r.discarded >= 1


def test_bad_bus_frames() -> None:
    with pytest.raises(BusFrameError):
        bf.parse_record(b"\x01")
    with pytest.raises(BusFrameError):
        bf.parse_record(bf.record(99, 0, 0))
    with pytest.raises(BusFrameError):
        bf.split_batch(b"\x00\x00\x00\x09abc")
    with pytest.raises(BusFrameError):
        bf.parse_publish(b"\x00\x10ab")


def test_metrics_merge_and_render() -> None:
    a = metrics.Metrics()
    a.count_in("chat", 10)
    a.inc(a.errors, "bad_message")
    b = metrics.Metrics()
    b.count_in("chat", 5)
    b.count_in("ping", 3)
    sa = a.snapshot(3, 1, 0, 10.0, True)
    sb = b.snapshot(4, 2, 1, 12.5, False)
    merged = metrics.merge([sa, sb])
    parsed = metrics.parse(metrics.render(merged))
    assert parsed['fanwire_messages_in_total{type="chat"}'] == 2
    assert parsed['fanwire_bytes_in_total{type="chat"}'] == 15
    assert parsed['fanwire_messages_in_total{type="ping"}'] == 1
    assert parsed["fanwire_connections"] == 7
    assert parsed["fanwire_workers"] == 2
    assert parsed['fanwire_worker_connections{worker="1"}'] == 4
    assert parsed["fanwire_uptime_seconds"] == 12.5
    assert parsed["fanwire_bus_up"] == 0
    assert parsed['fanwire_errors_total{code="bad_message"}'] == 1
    text = metrics.render(merged)
    assert "# TYPE fanwire_messages_in_total counter" in text
    assert "# TYPE fanwire_connections gauge" in text


def test_config_validation() -> None:
    assert Config().url == "ws://127.0.0.1:8765"
    assert Config(workers=3).worker_count == 3
    assert Config(workers=0).worker_count >= 1
    for bad in ({"port": 70000}, {"workers": -1}, {"mode": "x"}, {"bus": "kafka"}, {"max_queue": 0},
                {"ping_interval": 0}, {"certfile": "a.pem"}):
        with pytest.raises(ConfigError):
            Config(**bad)  # type: ignore[arg-type]
    import pickle

    c = Config(port=1234)
    assert pickle.loads(pickle.dumps(c)) == c
