"""orjson vs msgpack: encode and decode the messages fanwire moves most."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

MESSAGES: dict[str, dict[str, Any]] = {
    "ping": {"type": "ping", "ts": 1764125000123, "id": 17},
    "pong": {"type": "pong", "ts": 1764125000123, "server_ts": 1764125000125, "id": 17},
    "chat": {"type": "chat", "from": "1-a3", "user": "alice", "room": "lobby",
             "text": "hello everyone, how is it going today?", "ts": 1764125000124},
    "welcome": {"type": "welcome", "client_id": "0-1f", "worker": 0, "node": "127.0.0.1:8765",
                "codec": "json", "rooms": ["lobby"], "server_ts": 1764125000000, "protocol": 1,
                "heartbeat_s": 20.0, "max_message_size": 1048576},
    "data_1k": {"type": "broadcast", "from": "0-2", "user": "bot",
                "data": {"items": [{"id": i, "name": f"item-{i}", "price": i * 1.5, "ok": i % 2 == 0}
                                   for i in range(20)]}, "ts": 1764125000124},
}
NAMES = list(MESSAGES)


@pytest.mark.parametrize("name", NAMES)
def test_encode_json(benchmark: BenchmarkFixture, name: str) -> None:
    msg = MESSAGES[name]
    benchmark.extra_info["bytes"] = len(orjson.dumps(msg))
    benchmark(orjson.dumps, msg)


@pytest.mark.parametrize("name", NAMES)
def test_encode_msgpack(benchmark: BenchmarkFixture, name: str) -> None:
    msg = MESSAGES[name]
    benchmark.extra_info["bytes"] = len(msgpack.packb(msg, use_bin_type=True))
    benchmark(msgpack.packb, msg, use_bin_type=True)


@pytest.mark.parametrize("name", NAMES)
def test_decode_json(benchmark: BenchmarkFixture, name: str) -> None:
    data = orjson.dumps(MESSAGES[name])
    assert benchmark(orjson.loads, data) == MESSAGES[name]


@pytest.mark.parametrize("name", NAMES)
def test_decode_msgpack(benchmark: BenchmarkFixture, name: str) -> None:
    data = msgpack.packb(MESSAGES[name], use_bin_type=True)
    assert benchmark(msgpack.unpackb, data, raw=False, strict_map_key=True) == MESSAGES[name]
