"""The pipe bus's framing: records, batches, packets, reassembly."""

from __future__ import annotations

import pytest

from server.bus import pipeframe as bf
from server.errors import BusFrameError


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
