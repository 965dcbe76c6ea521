"""Test helpers: real server processes on 127.0.0.1 and random free ports, and small WebSocket utilities.

``FANWIRE_TEST_TIMESCALE`` (default 1) multiplies every timeout here, for slow machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import ClientConnection

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TIMESCALE = float(os.environ.get("FANWIRE_TEST_TIMESCALE", "1"))


def T(seconds: float) -> float:
    """A timeout, scaled for slow machines."""
    return seconds * TIMESCALE


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for SO_REUSEPORT servers, which cannot bind port 0 as a group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_WORKER_RE = re.compile(r"fanwire: worker (\d+) pid (\d+) listening")


def pid_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (``Z``: exited, not reaped yet), None when it is gone (the
    process may also go between opening its stat file and reading it: ``ProcessLookupError``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """The pids still running (not gone, not a zombie) after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + T(timeout)
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_state(p) not in (None, "Z")]
        if left:
            time.sleep(0.02)
    return left


class ServerProcess:
    """``python -m server`` as a real child process.

    ``start()`` waits for the ``fanwire: ready`` line. ``stop()`` sends SIGTERM and returns the exit code.
    ``worker_pids()`` maps worker id to the pid of its current process (from the workers' ready lines).
    """

    def __init__(self, workers: int = 2, port: int | None = None, extra_args: Sequence[str] = (),
                 host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        self.workers = workers
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._pids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        scheme = "wss" if "--certfile" in self.extra_args else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def args(self) -> list[str]:
        return [PYTHON, "-m", "server", "--host", self.host, "--port", str(self.port), "--workers",
                str(self.workers), *self.extra_args]

    def start(self, wait: bool = True, timeout: float = 20.0) -> ServerProcess:
        self._ready.clear()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(self.args(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines, False), daemon=True).start()
        if wait:
            self.wait_ready(timeout)
        return self

    def _read(self, stream: Any, sink: list[str], is_stdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                sink.append(line)
                m = _WORKER_RE.search(line)
                if m:
                    self._pids[int(m.group(1))] = int(m.group(2))
            if line.startswith("fanwire: ready"):
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + T(timeout)
        while not self._ready.wait(0.05):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready in {timeout}s:\n{self.output()}")

    def worker_pids(self) -> dict[int, int]:
        with self._lock:
            return dict(self._pids)

    def wait_worker_replaced(self, worker: int, old_pid: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + T(timeout)
        while time.monotonic() < deadline:
            pid = self.worker_pids().get(worker)
            if pid and pid != old_pid:
                return pid
            time.sleep(0.01)
        raise TimeoutError(f"worker {worker} not replaced:\n{self.output()}")

    def wait_pids_gone(self, pids: Sequence[int], timeout: float = 15.0) -> None:
        """Wait until these processes (e.g. workers retired by a rolling restart) have exited and been reaped."""
        left = wait_gone(pids, timeout)  # (an exited one may still be a zombie: its supervisor reaps it soon)
        if left:
            raise TimeoutError(f"pids {left} still running:\n{self.output()}")

    def output(self) -> str:
        with self._lock:
            return "\n".join([*self.lines, "--- stderr ---", *self.err_lines[-80:]])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(T(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers (only processes this object started)."""
        if self.proc is None:
            return
        pids = list(self.worker_pids().values())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
        finally:
            self.kill()


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[ServerProcess]:
    srv = ServerProcess(**kwargs)
    srv.start()
    try:
        yield srv
    finally:
        srv.__exit__()


# --- WebSocket helpers --------------------------------------------------------------------------------

SUBPROTOCOL = {"json": "fanwire.json", "msgpack": "fanwire.msgpack"}


async def connect(url: str, codec: str = "json", **kwargs: Any) -> ClientConnection:
    """Open a connection with the codec's subprotocol ("none" offers none) and read the welcome."""
    subprotocols = [SUBPROTOCOL[codec]] if codec in SUBPROTOCOL else None
    ws = await websockets.connect(url, subprotocols=subprotocols, open_timeout=T(10), max_size=None,
                                  **kwargs)  # type: ignore[arg-type]
    welcome = await recv(ws)
    assert welcome["type"] == "welcome", welcome
    ws.welcome = welcome  # type: ignore[attr-defined]
    return ws


def decode(data: str | bytes) -> Any:
    if isinstance(data, str):
        return json.loads(data)
    return msgpack.unpackb(data, raw=False)


def encode(ws: ClientConnection, msg: Any) -> str | bytes:
    if ws.subprotocol == "fanwire.msgpack":
        return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(msg)


async def send(ws: ClientConnection, msg: Any) -> None:
    await ws.send(encode(ws, msg))


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return decode(await asyncio.wait_for(ws.recv(), T(timeout)))


async def recv_until(ws: ClientConnection, pred: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """The first message matching ``pred`` (others are skipped)."""
    deadline = time.monotonic() + T(timeout)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching message")
        msg = decode(await asyncio.wait_for(ws.recv(), left))
        if pred(msg):
            return msg


async def request(ws: ClientConnection, msg: dict[str, Any], timeout: float = 5.0) -> Any:
    """Send a message with a fresh id and return the reply carrying that id."""
    request.counter += 1  # type: ignore[attr-defined]
    mid = request.counter  # type: ignore[attr-defined]
    await send(ws, {**msg, "id": mid})
    return await recv_until(ws, lambda m: isinstance(m, dict) and m.get("id") == mid, timeout)


request.counter = 0  # type: ignore[attr-defined]


async def connect_spread(url: str, n_workers: int, per_worker: int = 1, codec: str = "json",
                         max_tries: int = 200, **kwargs: Any) -> dict[int, list[ClientConnection]]:
    """Open connections until each worker holds at least ``per_worker`` (SO_REUSEPORT spreads them)."""
    by_worker: dict[int, list[ClientConnection]] = {}
    extra: list[ClientConnection] = []
    for _ in range(max_tries):
        if len(by_worker) == n_workers and all(len(v) >= per_worker for v in by_worker.values()):
            break
        ws = await connect(url, codec, **kwargs)
        w = ws.welcome["worker"]  # type: ignore[attr-defined]
        if len(by_worker.get(w, [])) < per_worker:
            by_worker.setdefault(w, []).append(ws)
        else:
            extra.append(ws)
    for ws in extra:
        await ws.close()
    assert len(by_worker) == n_workers, f"connections reached only workers {sorted(by_worker)}"
    return by_worker


def http_get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0,
             raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 request over a socket; returns (status, headers, body)."""
    with socket.create_connection((host, port), timeout=T(timeout)) as s:
        s.sendall(raw or f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- raw WebSocket clients (for misbehaving peers) -------------------------------------------------------

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def raw_connect(port: int, host: str = "127.0.0.1", rcvbuf: int | None = None, path: str = "/",
                extra_headers: str = "", timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """A TCP socket that completed the WebSocket handshake by hand; returns it and any bytes after the
    response headers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(T(timeout))
    s.connect((host, port))
    s.sendall(HANDSHAKE.format(path=path, extra=extra_headers).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during handshake: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head!r}")
    return s, rest


def mask_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0,
               length_override: int | None = None, key: bytes | None = None) -> bytes:
    """A client frame (masked, with ``key`` or a random one, unless told otherwise), optionally lying about
    its length. The one frame builder of the tests."""
    import struct

    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    if key is None:
        key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameReader:
    """Reads unmasked server frames from a raw socket."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buf = buffered

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame."""
        import struct

        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        self._need(pos + n)
        payload = self.buf[pos : pos + n]
        self.buf = self.buf[pos + n :]
        return b0 & 0x0F, payload

    def read_until_close(self, timeout: float = 5.0) -> tuple[int | None, list[tuple[int, bytes]]]:
        """Read frames until a close frame; returns (close code or None on EOF, frames before it)."""
        import struct

        self.sock.settimeout(T(timeout))
        seen = []
        while True:
            try:
                op, payload = self.read()
            except (EOFError, ConnectionResetError):
                return None, seen
            if op == 0x8:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005), seen
            seen.append((op, payload))


# --- a private redis-server (for the Redis bus tests) ------------------------------------------------------

def redis_server_binary() -> str | None:
    """The redis-server binary, or None (the Redis tests then skip, saying so)."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


NO_REDIS_REASON = ("NO redis-server BINARY: the Redis bus tests did NOT run. Install it (Debian: apt-get install "
                   "redis-server; .ci/run does this) to test the Redis bus")


class RedisServer:
    """A ``redis-server`` of our own on 127.0.0.1 and a free port, no persistence; never a system instance.

    ``kill()`` SIGKILLs it (an outage); ``start()`` again brings it back on the same port, empty.
    """

    def __init__(self, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(NO_REDIS_REASON)
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="fanwire-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", self.dir, "--loglevel", "warning", "--databases", "4"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + T(timeout)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server not answering on port {self.port}")
            time.sleep(0.02)

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """One command over a plain socket (RESP); returns the raw reply."""
        cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=T(timeout)) as s:
            s.sendall(cmd.encode())
            return s.recv(1 << 20)

    def kill(self) -> None:
        """SIGKILL this redis-server (only the process this object started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


# --- hardening: TLS, raw HTTP, metrics (added for tests/hardening) ---------------------------------------

def raw_http(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0,
             ssl_context: Any = None, source: str | None = None) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (b"" if reset)."""
    s = socket.create_connection((host, port), timeout=T(timeout),
                                 source_address=(source, 0) if source else None)
    if ssl_context is not None:
        s = ssl_context.wrap_socket(s, server_hostname=host)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return out


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 if there is none)."""
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def scrape_metrics(port: int, ssl_context: Any = None) -> dict[str, float]:
    """``/metrics`` of a server (plain or TLS), parsed."""
    from server import metrics as prom

    raw = raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   ssl_context=ssl_context)
    return prom.parse(raw.partition(b"\r\n\r\n")[2].decode())
