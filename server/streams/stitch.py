"""Joining a stream whose history and live messages arrive on different paths. Pure.

On the Redis bus a worker subscribes to a stream's channel, then reads its history (XRANGE): live messages
that arrive in between may also be in the history, and live messages may arrive before the history reply.
A :class:`Stitch` buffers the live messages of one pending join and, given the history, yields what the
client must receive: the replayed messages after ``since``, then the live ones past the history, each
exactly once, in offset order. A live message of another epoch than the history's ends the stitch as
not recovered (the stream was reset meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import stamp


@dataclass(slots=True)
class Stitch:
    since: tuple[int, str] | None
    live: list[tuple[int, str, bytes]] = field(default_factory=list)  # (offset, epoch, payload) in arrival order
    size: int = 0  # bytes buffered (the caller bounds it)

    def add_live(self, payload: bytes) -> None:
        pos = stamp.position(payload)
        if pos is not None:
            self.live.append((pos[0], pos[1], payload))
            self.size += len(payload)

    def finish(self, epoch: str, latest: int, history: list[bytes],
               recovered: bool | None) -> tuple[list[bytes], int, bool | None]:
        """``(messages to send, last offset sent (or latest), recovered)`` once the history is known.

        ``history`` holds the stream's messages up to ``latest`` (those after ``since`` when it recovered,
        else what is left); ``recovered`` is the history's own verdict for ``since``.
        """
        out: list[bytes] = []
        last = -1 if self.since is None or recovered is False else self.since[0]
        if self.since is None:
            last = latest  # no replay: only what comes after the join
        for payload in history:
            pos = stamp.position(payload)
            if pos is None or pos[1] != epoch or pos[0] <= last:
                continue
            out.append(payload)
            last = pos[0]
        last = max(last, latest)
        for offset, ep, payload in sorted(self.live, key=lambda e: e[0]):
            if ep != epoch:
                recovered = False if recovered is not None else None
                continue
            if offset <= last:
                continue  # already in the history (or replayed)
            if offset != last + 1 and recovered:
                recovered = False  # a hole between the history and the live messages
            out.append(payload)
            last = offset
        return out, last, recovered
