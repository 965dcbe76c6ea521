"""When one broadcast reached each receiving socket, stamped by the kernel while the receivers stay idle.

On a machine where the load processes share the cores with the server, reading 100,000 messages costs
the load about as much CPU as delivering them costs the server, and the two compete: the time at which a
busy load process *reads* a message then measures the load as much as the server. For one broadcast to
every connection of a load process, the process can step aside instead (:class:`ArrivalWatch`):

1. ``ArrivalWatch(...)``: every receiving socket gets ``SO_TIMESTAMPNS`` (the kernel stamps each segment
   as it reaches the receiving host's TCP stack); the clients go on reading as usual;
2. :meth:`ArrivalWatch.arm`, just before the broadcast is due: one ``epoll`` (``EPOLLONESHOT``) over the
   sockets says, cheaply, which ones have had something arrive;
3. :meth:`ArrivalWatch.wait` *blocks the process's event loop* (the load idles: no client reads, and
   the kernel has no reader to wake) and wakes every ``POLL_S`` to collect the sockets that became
   readable. Once all have (or the time is up), it peeks at each one's first frame (``MSG_PEEK``, its
   stamp in the ancillary data). A control frame the server sent first (a heartbeat ping) is read off and
   handed to the client, which answers it, and the next frame is peeked. A data frame is checked against
   the broadcast's :class:`~bench.wsproto.Expect` (our marker); its stamp is its arrival. A socket with
   nothing of ours yet is armed again;
4. :meth:`ArrivalWatch.close`; back in the event loop the clients read the broadcast and count it as
   they would any message, so what was missing or unexpected is counted there as well.

A frame's arrival is never taken earlier than it was. The kernel's stamp can be later: segments that
queue up unread are merged into one buffer that carries the *latest* stamp, so a heartbeat ping that came
after the broadcast moves the broadcast's stamp to the ping's arrival (with 100,000 connections pinged
every 10 s, one in ten sockets gets one within a second). When the broadcast is the first frame waiting
on its socket, the time the poll saw the socket readable bounds its arrival too (by ``POLL_S`` and the
process's wake-up), and the earlier of the two is taken (counted in ``by_poll``). A frame without a
stamp (none came with the peek) gets the time of the peek, which is later, and is counted in ``late``;
nothing is dropped.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from .wsproto import Expect, frame_header

__all__ = ["POLL_S", "SO_TIMESTAMPNS", "ArrivalWatch", "StampedReads", "realtime_offset_ns"]

POLL_S: Final = 0.02  # seconds between two looks at which sockets became readable
MAX_CONTROL: Final = 8  # control frames read off one socket per look before it is left for the next
SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
_SCM_TIMESTAMPNS: Final = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
_CMSG: Final = socket.CMSG_SPACE(16)
_ARM: Final = select.EPOLLIN | select.EPOLLONESHOT
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
_TIMESPEC = struct.Struct("@qq")


class Receiver(Protocol):
    """What the watch needs of a load client: its transport, and its reader for the frames it reads off."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def data_received(self, data: bytes) -> None: ...


def stamping_live(timeout: float = 1.0) -> bool:
    """Wait until the kernel stamps what arrives; False if it still does not after ``timeout`` s.

    Turning ``SO_TIMESTAMPNS`` on is not enough by itself: while no socket of the machine had it on, the
    kernel starts stamping received packets only once a deferred job has run, and a segment that arrives
    before that carries no stamp (measured here: a byte sent right after the option was set came without
    one 96 times in 100; 1 ms later, never). A probe connection of its own, stamped too, says when."""
    deadline = time.monotonic() + timeout
    with socket.create_server(("127.0.0.1", 0)) as lst, socket.create_connection(lst.getsockname()) as c:
        s, _ = lst.accept()
        with s:
            c.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            c.settimeout(timeout)
            while True:
                s.sendall(b"?")
                _, anc, _, _ = c.recvmsg(1, _CMSG)
                if _stamp_of(anc) is not None:
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)


def realtime_offset_ns(samples: int = 5) -> int:
    """``CLOCK_REALTIME - CLOCK_MONOTONIC`` in ns (kernel stamps are real time; the harness's are
    monotonic), from the tightest of a few bracketed readings."""
    best = (1 << 62, 0)
    for _ in range(samples):
        t0 = time.monotonic_ns()
        r = time.time_ns()
        t1 = time.monotonic_ns()
        best = min(best, (t1 - t0, r - (t0 + t1) // 2))
    return best[1]


def _stamp_of(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


class ArrivalWatch:
    """The receivers' sockets, stamped, until one message of ours has arrived on each.

    ``stamps``: the arrival of each (``CLOCK_MONOTONIC`` ns); ``pending``: the sockets still without it;
    ``late``: stamps that are the time of the peek (no kernel stamp came; ``stamping``: whether the kernel
    was stamping once the watch was made, see :func:`stamping_live`); ``by_poll``: stamps that are the
    time a poll saw the socket readable, earlier than the kernel's (see the module's docstring);
    ``other``: sockets whose first data frame was not ours; ``controls``: control frames read off and
    handed to their client; ``ended``: sockets that closed meanwhile."""

    __slots__ = ("by_poll", "controls", "ended", "ep", "expect", "late", "offset", "other", "pending", "ready",
                 "socks", "stamping", "stamps", "whose")

    def __init__(self, receivers: Sequence[Receiver], expect: Expect) -> None:
        self.expect = expect
        self.ep: select.epoll | None = None
        self.socks: dict[int, tuple[socket.socket, Receiver]] = {}
        self.stamps: list[int] = []
        self.whose: list[Receiver] = []  # the receiver of each stamp
        self.late = self.other = self.controls = self.ended = self.by_poll = 0
        self.pending: set[int] = set()
        self.ready: dict[int, int] = {}  # fd -> when a poll saw it readable (monotonic ns)
        self.offset = 0  # CLOCK_REALTIME - CLOCK_MONOTONIC, ns
        try:
            for r in receivers:
                t = r.transport
                if t is None or t.is_closing():
                    continue
                fd = t.get_extra_info("socket").fileno()
                s = socket.socket(fileno=fd)  # the client's own descriptor: detached, never closed, by close()
                self.socks[fd] = (s, r)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except BaseException:
            self.close()
            raise
        self.stamping = stamping_live() if self.socks else True  # False: stamps may be missing (``late``)

    def arm(self) -> None:
        """Start watching every socket for what arrives from now on (plus what is there unread)."""
        self.offset = realtime_offset_ns()
        self.ep = select.epoll()
        for fd in self.socks:
            self.ep.register(fd, _ARM)
        self.pending = set(self.socks)

    def wait(self, deadline: float) -> None:
        """Block until every socket has had one message of ours arrive, or ``deadline`` (monotonic)."""
        assert self.ep is not None, "arm() first"
        while self.pending:
            time.sleep(POLL_S)
            self.poll()
            late = time.monotonic() >= deadline
            if late or len(self.ready) >= len(self.pending):
                self.look()
            if late:
                return

    def poll(self) -> None:
        """Note the sockets that became readable since the last poll, and when."""
        assert self.ep is not None, "arm() first"
        events = self.ep.poll(0, max(1, len(self.pending)))
        now = time.monotonic_ns()
        for fd, _ in events:
            self.ready[fd] = now

    def look(self) -> None:
        """Read the stamps of the sockets that became readable; arm again those with nothing of ours yet."""
        for fd, seen in self.ready.items():
            if fd not in self.pending:
                continue
            if self._stamp(fd, seen):
                self.pending.discard(fd)
            else:
                assert self.ep is not None
                self.ep.modify(fd, _ARM)
        self.ready.clear()

    def _stamp(self, fd: int, seen: int) -> bool:
        """True when ``fd`` is done: its first data frame was read (ours or not) or it ended. ``seen``: when
        a poll saw it readable, which bounds the arrival of its first frame too (not of a frame behind a
        control frame: that one may have come after the poll)."""
        s, r = self.socks[fd]
        first = True
        for _ in range(MAX_CONTROL):
            try:
                head = s.recv(10, _PEEK)
                if not head:
                    self.ended += 1
                    return True
                h = frame_header(head)
                if h is None:
                    return False  # the rest of the header is on its way
                b0, hl, ln = h
                if b0 & 0x08:  # a control frame: read it off, the client answers it
                    n = hl + ln
                    if len(s.recv(n, _PEEK)) < n:
                        return False
                    r.data_received(s.recv(n, socket.MSG_DONTWAIT))
                    self.controls += 1
                    first = False
                    continue
                need = hl + min(ln, self.expect.head)
                data, anc, _, _ = s.recvmsg(need, _CMSG, _PEEK)
            except BlockingIOError:
                return False
            except OSError:
                self.ended += 1
                return True
            if len(data) < need:
                return False
            stamp = _stamp_of(anc)
            if stamp is None:
                ts = time.monotonic_ns()
                self.late += 1
            else:
                ts = stamp - self.offset
            if first and seen < ts:  # a segment that came later was merged in, and moved the stamp
                ts = seen
                self.by_poll += 1
            if self.expect.matches(b0, ln, data, hl, need):
                self.stamps.append(ts)
                self.whose.append(r)
            else:
                self.other += 1
            return True
        return False

    def close(self) -> None:
        """Stop stamping; the sockets are their clients' alone again."""
        for s, _ in self.socks.values():
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
            except OSError:
                pass
            s.detach()
        self.socks.clear()
        if self.ep is not None:
            self.ep.close()


class StampedReads:
    """One client's socket read by us instead of its transport, each read with the kernel's arrival stamp.

    For a stream of messages (the fan-out scenario's sampled receivers) rather than one broadcast: the
    transport's reading is paused, a duplicate of its descriptor gets ``SO_TIMESTAMPNS`` and a reader in
    the event loop, and every ``recvmsg`` hands ``on_data(data, arrived)`` the bytes and the arrival
    (``CLOCK_MONOTONIC`` ns, ``offset`` being :func:`realtime_offset_ns`), or ``None`` when no stamp came.
    The transport still writes (pongs, a close). At the end of the stream (EOF or an error) the
    transport reads again and sees it for itself.

    A read that takes several segments carries the stamp of the *latest* (the kernel's rule, see the
    module's docstring): a message that waited behind a later one is taken as arriving with it, later
    than it did, never earlier."""

    __slots__ = ("loop", "offset", "on_data", "sock", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, offset: int,
                 on_data: Callable[[bytes, int | None], None]) -> None:
        self.loop = loop
        self.transport = transport
        self.offset = offset
        self.on_data = on_data
        self.sock: socket.socket | None = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        transport.pause_reading()
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        s = self.sock
        if s is None:
            return
        try:
            data, anc, _, _ = s.recvmsg(1 << 18, _CMSG)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        stamp = _stamp_of(anc)
        self.on_data(data, None if stamp is None else stamp - self.offset)

    def close(self) -> None:
        """Give the socket back to its transport (idempotent)."""
        s, self.sock = self.sock, None
        if s is None:
            return
        self.loop.remove_reader(s.fileno())
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
        except OSError:
            pass
        s.close()  # the duplicate only
        if not self.transport.is_closing():
            self.transport.resume_reading()
