"""The floor of fan-out and the ceiling of ping/pong: a minimal hand-written uvloop server. Not a server
anyone should run.

It does the least a WebSocket broadcast can cost: answer the upgrade (the ``Sec-WebSocket-Accept`` and
nothing else; no header validation), unmask each client frame (websockets' C ``apply_mask``), build the
server frame of each data message once, and ``write`` the frames of one read to every open connection,
the sender included, in one write each (when one read brings several broadcasts, a receiver gets them in
one ``send()``; nothing ever waits for more, so this adds no latency). No
UTF-8 check, no size limit, no fragmentation, no per-client queue, no heartbeats, no protocol: whatever a
client sends is relayed as is (so a fanwire ``broadcast`` message comes out with its ``text`` intact and
the generator reads the same timestamp from it). Pings are answered, a close is echoed. Its clients are
kept in a dict, so a broadcast writes them in the order they connected, as fanwire's hub does: a set
would walk them in hash order, scattered across memory, which costs a floor several per cent more CPU
per delivery at 10,000 receivers (``docs/bench.md``, "Fan-out order").

Measured next to fanwire in the same run, it shows how much of a broadcast's latency is the kernel's
(one ``send()`` per receiver, and the receivers' reads on the same machine) and how much the server's.

With ``--mode pong`` it is the ceiling of JSON ping/pong instead: the least a server can do to answer
fanwire's ``ping`` (``{"type": "ping", "ts": ...}``) with its ``pong``. Each text frame is parsed with
orjson, ``{"type": "pong", "server_ts": <ms>, "ts": <the ping's ts>}`` is encoded with orjson and framed,
and the replies to one read go out in one write; nothing is validated (no type check, no limits, no
rate limits, no per-connection state but the buffer).

Run: ``python -m bench.floor_server --port 8767 [--mode pong]``; prints ``floor: ready ...`` (``ceiling:
ready ...``); stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import struct
import time
from collections.abc import Sequence

import orjson

from .stopsignal import stop_on_signals

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships with websockets wheels
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY_RE = re.compile(rb"(?i)\r\nsec-websocket-key:\s*(\S+)")
_PROTO_RE = re.compile(rb"(?i)\r\nsec-websocket-protocol:\s*([^,\r]+)")
_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack

CLIENTS: dict[asyncio.Transport, None] = {}
PONG = False  # --mode pong: answer each message with a pong, to its sender only


def server_frame(b0: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _H16(b0, 126, n) + payload
    return _H64(b0, 127, n) + payload


class Relay(asyncio.Protocol):
    __slots__ = ("buf", "open", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            CLIENTS.pop(self.transport, None)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end + 2], buf[end + 4:]
            m = _KEY_RE.search(head)
            t = self.transport
            if m is None or t is None:
                if t is not None:
                    t.close()
                return
            accept = base64.b64encode(hashlib.sha1(m.group(1) + GUID).digest())
            proto = _PROTO_RE.search(head)
            extra = b"Sec-WebSocket-Protocol: " + proto.group(1).strip() + b"\r\n" if proto else b""
            t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n")
            self.open = True
            CLIENTS[t] = None
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        while n - pos >= 6:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 8:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif ln == 127:
                if n - pos < 14:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            end = pos + hl + 4 + ln
            if end > n:
                break
            mask = buf[pos + hl:pos + hl + 4]
            payload = apply_mask(buf[pos + hl + 4:end], mask)
            pos = end
            if b0 & 0x08:
                self._control(b0 & 0x0F, payload)
            elif PONG:
                out.append(server_frame(0x81, orjson.dumps({"type": "pong", "server_ts": int(time.time() * 1000),
                                                            "ts": orjson.loads(payload).get("ts")})))
            else:
                out.append(server_frame(b0 & 0x8F, payload))
        self.buf = buf[pos:]
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            if PONG:
                if self.transport is not None:
                    self.transport.write(data)
                return
            for c in CLIENTS:
                c.write(data)

    def _control(self, op: int, payload: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if op == 0x9:  # ping
            t.write(server_frame(0x8A, payload))
        elif op == 0x8:  # close
            t.write(server_frame(0x88, payload[:2]))
            t.close()


async def main(host: str, port: int) -> None:
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Relay, host, port, backlog=4096)
    print(f"{'ceiling' if PONG else 'floor'}: ready on ws://{host}:{port} (pid {os.getpid()})", flush=True)
    await stop
    server.close()
    for t in list(CLIENTS):
        t.abort()


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--mode", choices=("relay", "pong"), default="relay",
                   help="relay: every message to every connection (the floor of fan-out); pong: a JSON pong to "
                        "each ping, to its sender (the ceiling of ping/pong)")
    ns = p.parse_args(argv)
    global PONG
    PONG = ns.mode == "pong"
    import uvloop

    uvloop.run(main(ns.host, ns.port))


if __name__ == "__main__":
    cli()
