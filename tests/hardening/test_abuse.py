"""Misbehaving peers over raw sockets: broken frames, slowloris handshakes, oversized and malformed HTTP.

Each gets its RFC 6455 close code or a 4xx, is counted, and costs nobody else: a well-behaved client keeps
a ping round trip going throughout, and the worker process is the same one at the end.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from ..helpers import (
    HANDSHAKE,
    FrameReader,
    ServerProcess,
    T,
    connect,
    mask_frame,
    raw_connect,
    raw_http,
    recv,
    scrape_metrics,
    send,
    status_of,
)

HANDSHAKE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    args = ["--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--max-message-size", "65536"]
    with ServerProcess(workers=1, extra_args=args) as s:
        yield s


class Bystander:
    """A well-behaved client in a thread, pinging all along; records the worst round trip."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.pongs = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        try:
            ws = await connect(self.url)
            while not self._stop.is_set():
                t0 = time.monotonic()
                await send(ws, {"type": "ping"})
                assert (await recv(ws))["type"] == "pong"
                self.worst = max(self.worst, time.monotonic() - t0)
                self.pongs += 1
                await asyncio.sleep(0.02)
            await ws.close()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(T(10))
        assert self.error is None, repr(self.error)
        assert self.pongs > 0
        assert self.worst < T(0.5), f"a bystander waited {self.worst:.3f} s for a pong"


def close_code_after(port: int, payload: bytes) -> int | None:
    sock, rest = raw_connect(port)
    try:
        sock.sendall(payload)
        code, _ = FrameReader(sock, rest).read_until_close(timeout=5)
        return code
    finally:
        sock.close()


CASES: list[tuple[str, bytes, int]] = [
    ("unmasked client frame", mask_frame(0x1, b'{"type":"ping"}', masked=False), 1002),
    ("reserved opcode 0x3", mask_frame(0x3, b"x"), 1002),
    ("reserved control opcode 0xB", mask_frame(0xB, b"x"), 1002),
    ("RSV1 without an extension", mask_frame(0x1, b"{}", rsv=4), 1002),
    ("invalid UTF-8 in a text frame", mask_frame(0x1, b'{"type":"chat","text":"\xff\xfe"}'), 1007),
    ("invalid UTF-8 across fragments", mask_frame(0x1, b'{"t":"\xe2', fin=False)
     + mask_frame(0x0, b'\x28"}'), 1007),
    ("2^63 length header", mask_frame(0x2, b"", length_override=2**63), 1009),
    ("2^63-1 length header", mask_frame(0x2, b"", length_override=2**63 - 1), 1009),
    ("ping over 125 bytes", mask_frame(0x9, b"p" * 126), 1002),
    ("close over 125 bytes", mask_frame(0x8, struct.pack("!H", 1000) + b"r" * 124), 1002),
    ("fragmented ping", mask_frame(0x9, b"p", fin=False), 1002),
    ("fragmented close", mask_frame(0x8, struct.pack("!H", 1000), fin=False), 1002),
    ("continuation with nothing to continue", mask_frame(0x0, b"x"), 1002),
    ("new message inside a fragmented one", mask_frame(0x1, b"{", fin=False) + mask_frame(0x1, b"}"), 1002),
    ("close with a 1-byte payload", mask_frame(0x8, b"\x03"), 1002),
    ("close with an invalid code", mask_frame(0x8, struct.pack("!H", 999)), 1002),
    ("close reason not UTF-8", mask_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
    ("message over max size", mask_frame(0x1, b"x" * 70000), 1009),
    ("garbage bytes", bytes(range(256)) * 4, 1002),
]


def test_bad_frames_get_their_close_code_and_others_are_unaffected(srv: ServerProcess) -> None:
    pid = srv.worker_pids()[0]
    before = scrape_metrics(srv.port)
    results = {}
    with Bystander(srv.url):
        for name, payload, _ in CASES:
            results[name] = close_code_after(srv.port, payload)
    assert results == {name: code for name, _, code in CASES}
    assert srv.worker_pids()[0] == pid and srv.proc is not None and srv.proc.poll() is None
    after = scrape_metrics(srv.port)
    for code in (1002, 1007, 1009):
        key = f'fanwire_connections_closed_total{{code="{code}"}}'
        expected = sum(1 for _, _, c in CASES if c == code)
        assert after.get(key, 0) - before.get(key, 0) == expected, key


def test_clients_choosing_close_codes_cannot_grow_the_metric(srv: ServerProcess) -> None:
    """Every close code of the applications' ranges is one label per range: 200 clients closing with 200
    different codes add two label values to fanwire_connections_closed_total, not 200."""
    codes = [3000 + i for i in range(100)] + [4000 + i for i in range(100)]
    for code in codes:
        assert close_code_after(srv.port, mask_frame(0x8, struct.pack("!H", code))) == code  # echoed
    deadline = time.monotonic() + T(5)
    while True:
        m = scrape_metrics(srv.port)
        labels = {k for k in m if k.startswith("fanwire_connections_closed_total")}
        if m.get('fanwire_connections_closed_total{code="3xxx"}', 0) >= 100 and \
                m.get('fanwire_connections_closed_total{code="4xxx"}', 0) >= 100:
            break
        assert time.monotonic() < deadline, sorted(labels)
        time.sleep(0.05)
    assert not any(str(c) in k for k in labels for c in codes), sorted(labels)


def test_slowloris_handshakes_time_out_with_408_and_cost_nobody(srv: ServerProcess) -> None:
    before = scrape_metrics(srv.port)
    n_silent, n_partial, n_drip = 10, 10, 3
    socks: list[socket.socket] = []
    with Bystander(srv.url):
        for i in range(n_silent + n_partial + n_drip):
            s = socket.create_connection(("127.0.0.1", srv.port))
            if n_silent <= i < n_silent + n_partial:
                s.sendall(HANDSHAKE.format(path="/", extra="").encode()[:60])  # half a request line
            socks.append(s)
        t0 = time.monotonic()
        drip = HANDSHAKE.format(path="/", extra="X-Pad: " + "y" * 100 + "\r\n").encode()
        for k in range(int(HANDSHAKE_TIMEOUT / 0.1) + 5):  # one byte per 0.1 s: never finishes in time
            for s in socks[-n_drip:]:
                try:
                    s.sendall(drip[k : k + 1])
                except OSError:
                    pass
            time.sleep(0.1)
        answers = []
        for s in socks:
            s.settimeout(T(HANDSHAKE_TIMEOUT + 3))
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            answers.append(status_of(data))
            s.close()
        elapsed = time.monotonic() - t0
    assert answers == [408] * len(socks), answers
    assert elapsed < T(HANDSHAKE_TIMEOUT + 3)
    after = scrape_metrics(srv.port)
    key = 'fanwire_handshakes_refused_total{reason="handshake_timeout"}'
    assert after.get(key, 0) - before.get(key, 0) == len(socks)
    assert after['fanwire_handshakes_failed_total{status="408"}'] >= len(socks)


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 10_000 + b"\r\n\r\n", 431, "too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431,
     "too_large"),
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too_large"),
    # a TLS ClientHello on the plain port has no line end: it waits for the handshake timeout
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 408, "handshake_timeout"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", 505, "bad_request"),  # HTTP Version Not Supported
    (b"\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400, "bad_request"),  # no key
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "bad_request"),
])
def test_oversized_and_malformed_http_gets_4xx(srv: ServerProcess, request_bytes: bytes, status: int,
                                               reason: str) -> None:
    before = scrape_metrics(srv.port)
    reply = raw_http(srv.port, request_bytes)
    assert status_of(reply) == status, reply[:300]
    assert b"Traceback" not in reply
    after = scrape_metrics(srv.port)
    key = f'fanwire_handshakes_refused_total{{reason="{reason}"}}'
    assert after.get(key, 0) - before.get(key, 0) == 1, (key, after.get(key), before.get(key))
    assert status_of(raw_http(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


def test_a_flood_of_bad_requests_costs_nobody(srv: ServerProcess) -> None:
    pid = srv.worker_pids()[0]
    frames = [payload for _, payload, _ in CASES[:6]]
    answered = []

    def flood() -> None:
        n = 0
        for i in range(300):
            if i % 2:
                n += status_of(raw_http(srv.port, b"GET / HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n")) == 431
            else:
                n += close_code_after(srv.port, frames[i % len(frames)]) in (1002, 1007)
        answered.append(n)

    with Bystander(srv.url):
        threads = [threading.Thread(target=flood) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(60))
    assert answered == [300, 300, 300]
    assert srv.worker_pids()[0] == pid
