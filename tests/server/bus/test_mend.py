"""The Mender (server/bus/mend.py), on a fake history: what a path delivers in order passes through; a jump in
offsets (or a new epoch that does not start at 1) is mended from the history before anything later is
delivered, each message once, in order; what the history no longer has shows as the jump (counted), never a
silent hole; joins answered meanwhile wait for the mending; a stream no longer followed starts afresh."""

from __future__ import annotations

from server.bus.base import Publication, ReplayDone
from server.bus.mend import Mender
from server.metrics import Metrics
from server.streams import stamp
from server.streams.table import Replay

E1, E2 = "epocha", "epochb"


def msg(offset: int, epoch: str = E1, room: str | None = "r") -> Publication:
    return Publication(room, stamp.stamp(b'{"type":"chat","n":%d}' % offset, offset, epoch), 0)


class Setup:
    def __init__(self, max_held: int = 100) -> None:
        self.got: list[tuple[str | None, int, str]] = []
        self.asked: list[tuple[str, tuple[int, str] | None, ReplayDone]] = []
        self.metrics = Metrics()
        self.mender = Mender(self.deliver, self.history, self.metrics, max_held=max_held)
        self.mender.follow("r", True)

    def deliver(self, pub: Publication) -> None:
        pos = stamp.position(pub.payload)
        assert pos is not None
        self.got.append((pub.room, *pos))

    def history(self, stream: str, since: tuple[int, str] | None, done: ReplayDone) -> None:
        self.asked.append((stream, since, done))

    def offsets(self, room: str | None = "r") -> list[int]:
        return [o for r, o, _ in self.got if r == room]

    def answer(self, epoch: str, latest: int, first: int, recovered: bool | None) -> None:
        _, _, done = self.asked.pop(0)
        done(Replay(epoch, latest, [msg(o, epoch).payload for o in range(first, latest + 1)], recovered))


def test_in_order_passes_through_and_duplicates_are_dropped() -> None:
    s = Setup()
    for o in (4, 5, 6, 6, 5):
        s.mender.on_publication(msg(o))
    assert s.offsets() == [4, 5, 6] and s.asked == []  # the first one seen is where it starts


def test_a_jump_is_mended_from_the_history_before_anything_later() -> None:
    s = Setup()
    s.mender.on_publication(msg(1))
    s.mender.on_publication(msg(5))  # 2..4 missed
    assert s.offsets() == [1] and [(a[0], a[1]) for a in s.asked] == [("r", (1, E1))]
    s.mender.on_publication(msg(6))  # held meanwhile
    s.mender.on_publication(msg(7))
    assert s.offsets() == [1]
    s.answer(E1, 6, 2, True)  # the history as of when it was asked: up to 6
    assert s.offsets() == [1, 2, 3, 4, 5, 6, 7]
    s.mender.on_publication(msg(7))  # (arrived late: already delivered)
    s.mender.on_publication(msg(8))
    assert s.offsets() == list(range(1, 9)) and s.metrics.bus_dropped == {}


def test_a_new_epoch_that_does_not_start_at_one_is_mended_from_its_start() -> None:
    s = Setup()
    s.mender.on_publication(msg(9))
    s.mender.on_publication(msg(3, E2))
    assert [(a[0], a[1]) for a in s.asked] == [("r", (0, E2))]
    s.answer(E2, 3, 1, True)
    assert s.got[1:] == [("r", 1, E2), ("r", 2, E2), ("r", 3, E2)]
    s.mender.on_publication(msg(1, "epochc"))  # a new epoch from its start: nothing missed
    assert s.got[-1] == ("r", 1, "epochc") and s.asked == []


def test_what_the_history_lost_shows_as_a_jump_and_is_counted() -> None:
    s = Setup()
    s.mender.on_publication(msg(1))
    s.mender.on_publication(msg(50))
    s.answer(E1, 50, 40, False)  # trimmed: 2..39 are gone
    assert s.offsets() == [1, *range(40, 51)]
    assert s.metrics.bus_dropped == {"unmended": 1}
    s.mender.on_publication(msg(60))
    _, _, done = s.asked.pop(0)
    done("unavailable")  # no answer: what was held goes on as it came
    assert s.offsets()[-1] == 60 and s.metrics.bus_dropped == {"unmended": 2}


def test_joins_answered_while_a_stream_is_mended_wait_for_it() -> None:
    s = Setup()
    order: list[str] = []
    s.mender.on_publication(msg(1))
    s.mender.after("r", lambda: order.append("join before"))
    s.mender.on_publication(msg(3))
    s.mender.after("r", lambda: order.append("join during"))
    s.mender.after(None, lambda: order.append("other stream"))  # not being mended: at once
    assert order == ["join before", "other stream"]
    s.answer(E1, 3, 2, True)
    assert order[-1] == "join during" and s.offsets() == [1, 2, 3]


def test_a_stream_no_longer_followed_starts_afresh() -> None:
    s = Setup()
    s.mender.on_publication(msg(1))
    s.mender.on_publication(msg(4))
    waited: list[int] = []
    s.mender.after("r", lambda: waited.append(1))
    s.mender.follow("r", False)  # its last member left while it was mended: what was held goes on
    assert s.offsets() == [1, 4] and waited == [1]
    s.answer(E1, 4, 2, True)  # a late answer is ignored
    assert s.offsets() == [1, 4]
    s.mender.on_publication(msg(9))  # not followed: untouched
    s.mender.follow("r", True)
    s.mender.on_publication(msg(20))  # followed again: where it starts, no mending of what nobody asked
    assert s.offsets() == [1, 4, 9, 20] and s.asked == []


def test_the_broadcast_stream_is_always_followed_and_holding_is_bounded() -> None:
    s = Setup(max_held=3)
    s.mender.on_publication(msg(1, room=None))
    s.mender.on_publication(msg(3, room=None))
    for o in (4, 5, 6):
        s.mender.on_publication(msg(o, room=None))
    assert s.offsets(None) == [1, 3, 4, 5, 6]  # gave up: delivered as it came
    assert s.metrics.bus_dropped == {"unmended": 1}
    s.answer(E1, 6, 2, True)  # too late: ignored
    assert s.offsets(None) == [1, 3, 4, 5, 6]
