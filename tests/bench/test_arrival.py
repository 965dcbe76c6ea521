"""bench.arrival: the arrival of one broadcast at each receiving socket, over real loopback TCP connections.

The server side of each connection is a plain socket that writes server frames; the client side is what a
load client holds (a socket behind a transport). What matters: an arrival is never taken earlier than the
frame was sent, nor moved later by a ping that came after it; a ping that came first is handed to the
client (which answers it) and the frame behind it is still stamped; frames that are not ours, sockets that
close and sockets that get nothing are counted, not dropped. And the scale scenario runs end to end, small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from bench.arrival import SO_TIMESTAMPNS, ArrivalWatch, StampedReads, realtime_offset_ns, stamping_live
from bench.wsproto import OP_PING, OP_TEXT, Expect, frame_header, server_frame

ROOT = Path(__file__).resolve().parent.parent.parent
MARKER = b"arrival-test-marker"
OURS = server_frame(OP_TEXT, b'{"type":"broadcast","text":"1 ' + MARKER + b'"}')
PING = server_frame(OP_PING, b"fanwire")

pytestmark = pytest.mark.timeout(60)


class _Transport:
    """The two things the watch asks of a client's transport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket:
        assert name == "socket"
        return self.sock

    def is_closing(self) -> bool:
        return False


class _Client:
    """A load client: its transport, and the bytes the watch read off for it."""

    def __init__(self, sock: socket.socket) -> None:
        self.transport = _Transport(sock)
        self.got: list[bytes] = []
        self.worker = 0

    def data_received(self, data: bytes) -> None:
        self.got.append(data)


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    with _connections() as out:
        yield out


@contextlib.contextmanager
def _connections() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Four real TCP connections on 127.0.0.1: (server side, client side)."""
    lst = socket.create_server(("127.0.0.1", 0))
    out: list[tuple[socket.socket, socket.socket]] = []
    for _ in range(4):
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        out.append((s, c))
    lst.close()
    try:
        yield out
    finally:
        for s, c in out:
            s.close()
            c.close()


def _watch(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[ArrivalWatch, list[_Client]]:
    clients = [_Client(c) for _, c in pairs]
    w = ArrivalWatch(clients, Expect((MARKER,), head=256))
    w.arm()
    return w, clients


def test_a_frame_sent_as_soon_as_the_watch_is_made_has_the_kernels_stamp() -> None:
    """The kernel starts stamping only after a deferred job once the first socket turns stamps on (and
    stops after one once the last turns them off): the watch waits for it when it is made, so even a frame
    sent before arm() (and found unread) is stamped. Fresh connections each time, the last ones closed
    just before. The race is the kernel's timing: without the wait, a bare socket pair sent a byte right
    after turning stamps on got none 96 times in 100, and a full ``make test`` once had one frame of
    ``test_each_arrival_lies_between_its_send_and_the_look`` unstamped; this test alone did not catch it."""
    for _ in range(8):
        with _connections() as conns:
            w = ArrivalWatch([_Client(c) for _, c in conns], Expect((MARKER,), head=256))
            for s, _ in conns:
                s.sendall(OURS)
            w.arm()
            w.wait(time.monotonic() + 5)
            w.close()
            assert w.stamping and len(w.stamps) == 4 and w.late == 0


def test_frame_header_reads_all_three_lengths() -> None:
    assert frame_header(server_frame(OP_TEXT, b"x" * 5)) == (0x81, 2, 5)
    assert frame_header(server_frame(OP_TEXT, b"x" * 300)) == (0x81, 4, 300)
    assert frame_header(server_frame(OP_TEXT, b"x" * 70000)) == (0x81, 10, 70000)
    assert frame_header(server_frame(OP_TEXT, b"x" * 300)[:3]) is None
    assert frame_header(b"\x81") is None


def test_each_arrival_lies_between_its_send_and_the_look(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    w, clients = _watch(pairs)
    sent = []
    for s, _ in pairs:
        sent.append(time.monotonic_ns())
        s.sendall(OURS)
        time.sleep(0.005)
    w.wait(time.monotonic() + 5)
    after = time.monotonic_ns()
    w.close()
    assert not w.pending and len(w.stamps) == 4 and w.other == w.late == 0
    stamp = dict(zip(map(id, w.whose), w.stamps, strict=True))
    arrivals = [stamp[id(c)] for c in clients]
    for t_sent, ts in zip(sent, arrivals, strict=True):
        assert t_sent <= ts <= after, (t_sent, ts, after)
    # the sends were 5 ms apart: so are the arrivals, in the same order
    assert arrivals == sorted(arrivals) and arrivals[-1] - arrivals[0] >= 10_000_000


def test_a_ping_that_came_after_the_broadcast_does_not_move_its_arrival(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """The kernel merges the later ping into the broadcast's buffer and gives it the ping's stamp: the
    time the poll saw the socket readable keeps the arrival where it was."""
    w, clients = _watch(pairs[:1])
    s, _ = pairs[0]
    t_sent = time.monotonic_ns()
    s.sendall(OURS)
    time.sleep(0.05)
    w.poll()
    t_ping = time.monotonic_ns()
    s.sendall(PING)
    time.sleep(0.05)
    w.look()
    w.close()
    assert len(w.stamps) == 1 and w.by_poll == 1
    assert t_sent <= w.stamps[0] < t_ping
    assert clients[0].got == []  # the ping is behind our frame: left for the client to read


def _ping_seen(pairs: list[tuple[socket.socket, socket.socket]]
               ) -> tuple[ArrivalWatch, _Client, socket.socket]:
    """One connection watched, a heartbeat ping sent on it, and a poll that saw it readable (the ping)."""
    w, clients = _watch(pairs[:1])
    s, _ = pairs[0]
    s.sendall(PING)
    time.sleep(0.05)
    w.poll()
    return w, clients[0], s


def test_a_ping_before_the_broadcast_is_handed_to_the_client_and_the_broadcast_still_stamped(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    w, client, s = _ping_seen(pairs)
    t_sent = time.monotonic_ns()
    s.sendall(OURS)
    time.sleep(0.02)
    w.look()
    w.close()
    assert client.got == [PING] and w.controls == 1
    assert len(w.stamps) == 1 and w.by_poll == 0  # the poll saw the ping, not our frame
    assert t_sent <= w.stamps[0]


def test_a_ping_alone_leaves_the_socket_pending_and_armed_again(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    w, client, s = _ping_seen(pairs)
    w.look()
    assert client.got == [PING] and w.pending and not w.stamps
    s.sendall(OURS)
    w.wait(time.monotonic() + 5)
    w.close()
    assert not w.pending and len(w.stamps) == 1


def test_what_is_not_ours_closed_or_missing_is_counted(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    w, _ = _watch(pairs)
    pairs[0][0].sendall(OURS)
    pairs[1][0].sendall(server_frame(OP_TEXT, b'{"type":"error","text":"someone else"}'))
    pairs[2][0].shutdown(socket.SHUT_WR)  # the server went away
    t0 = time.monotonic()
    w.wait(time.monotonic() + 0.3)  # the fourth gets nothing
    w.close()
    assert time.monotonic() - t0 < 2
    assert len(w.stamps) == 1 and w.other == 1 and w.ended == 1 and len(w.pending) == 1


def test_close_leaves_the_clients_sockets_open_and_readable(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    w, _ = _watch(pairs)
    for s, _ in pairs:
        s.sendall(OURS)
    w.wait(time.monotonic() + 5)
    w.close()
    for _, c in pairs:
        assert c.fileno() >= 0
        assert c.recv(4096) == OURS  # peeked, never read: the client reads it as usual
        assert c.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_scale_scenario_runs_small_with_both_broadcasts(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--quick", "--scenario", "scale", "--out", str(out),
                           "--no-charts", "--allow-dirty"], cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((out / "scale.json").read_text())
    (run,) = data["runs"]
    assert run["valid"] is True, run
    bc, rbc = run["broadcast"], run["broadcast_read"]
    assert bc["timed"] == "arrival" and rbc["timed"] == "read"
    assert bc["stamped"] == bc["reached"] == rbc["reached"] == run["opened"] == 3000
    assert bc["missing"] == bc["unexpected"] == bc["late_start"] == 0
    assert bc["ms"]["count"] == 3000 and bc["ms"]["negative"] == 0
    assert set(bc["per_worker_ms"]) == {"0", "1"}
    for key in ("scale_broadcast_p99_ms", "scale_broadcast_read_p99_ms", "scale_broadcast_server_cpu_s"):
        assert "fanwire" in data["summary"][key], key


# --- StampedReads: a stream of messages, each read with its arrival -------------------------------------------


class _Proto(asyncio.Protocol):
    """A client's protocol: what its transport read, and whether it saw the end."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.got.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def test_stamped_reads_time_each_read_by_its_arrival_then_hand_the_socket_back() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with _connections() as pairs:
            s, c = pairs[0]
            t, proto = await loop.create_connection(_Proto, sock=c)
            assert stamping_live()
            reads: list[tuple[bytes, int | None, int]] = []
            sr = StampedReads(loop, t, realtime_offset_ns(), lambda d, at: reads.append((d, at, time.monotonic_ns())))
            sent = time.monotonic_ns()
            s.sendall(OURS)
            time.sleep(0.05)  # the loop is not running: the frame waits, read 50 ms after it came
            await asyncio.sleep(0.05)
            assert [d for d, _, _ in reads] == [OURS] and proto.got == []  # read by us, not the transport
            _, arrived, read_at = reads[0]
            assert arrived is not None and sent <= arrived < sent + 20_000_000 <= read_at
            sr.close()
            sr.close()  # idempotent
            s.sendall(PING)
            await asyncio.sleep(0.05)
            assert proto.got == [PING] and len(reads) == 1  # the transport reads again
            sr2 = StampedReads(loop, t, realtime_offset_ns(), lambda d, at: reads.append((d, at, 0)))
            s.close()
            await asyncio.sleep(0.05)
            assert sr2.sock is None and proto.lost  # the end: handed back, and the transport saw it
            t.close()

    uvloop.run(main())
