"""Acknowledged sends waiting for their ack (client/outbox.py), without sockets: unit cases and a property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import OutboxFull, PublishFailed
from client.outbox import Outbox

pytestmark = pytest.mark.timeout(60)


def msg(i: int) -> dict[str, object]:
    return {"type": "publish", "room": "r", "data": i, "id": i}


def test_bounded_and_ids_unique() -> None:
    box = Outbox(2)
    box.add(msg(1))
    with pytest.raises(ValueError, match="already waiting"):
        box.add(msg(1))
    box.add(msg(2))
    with pytest.raises(OutboxFull) as info:
        box.add(msg(3))
    assert isinstance(info.value, PublishFailed) and info.value.id == 3 and info.value.retryable
    assert len(box) == 2 and 3 not in box
    assert box.pop(1) is not None and box.pop(1) is None
    box.add(msg(3))
    with pytest.raises(ValueError):
        Outbox(0)


def test_what_is_resent_and_in_which_order() -> None:
    box = Outbox(10)
    for i in range(1, 6):
        box.add(msg(i))
    box.sent(1, gen=1)
    box.sent(2, gen=1)
    box.sent(4, gen=2)
    box.sent(5, gen=2)
    box.unsent(5)  # the write failed: it is in the queue again, not a re-send
    assert [e.id for e in box.to_resend(gen=3)] == [1, 2, 4]  # submission order; 3 and 5 never went out
    assert [e.id for e in box.to_resend(gen=2)] == [1, 2]  # 4 went out on connection 2 already
    box.sent(1, gen=3)
    entry = box.get(1)
    assert entry is not None and entry.sends == 2 and entry.sent_on == 3
    assert box.unavailable(1) == 1 and box.unavailable(1) == 2 and box.unavailable(99) == 0
    assert [e.id for e in box.clear()] == [1, 2, 3, 4, 5] and len(box) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "send", "ack", "drop", "fail"]), st.integers(0, 7)), max_size=60))
def test_resend_list_matches_a_model(ops: list[tuple[str, int]]) -> None:
    """Against a plain model: the outbox never holds more than its capacity, and after any history of
    adds, writes on successive connections, acks and drops, the re-send list is exactly the messages
    written on an earlier connection and not acked, in the order they were added."""
    capacity = 5
    box = Outbox(capacity)
    order: list[int] = []  # ids in the outbox, in add order
    sent_on: dict[int, int | None] = {}
    gen = 1
    for op, i in ops:
        if op == "add":
            if i in sent_on:
                continue
            if len(order) >= capacity:
                with pytest.raises(OutboxFull):
                    box.add(msg(i))
                continue
            box.add(msg(i))
            order.append(i)
            sent_on[i] = None
        elif op == "send" and i in sent_on:
            box.sent(i, gen)
            sent_on[i] = gen
        elif op in ("ack", "drop") and i in sent_on:
            assert box.pop(i) is not None
            order.remove(i)
            del sent_on[i]
        elif op == "fail":
            gen += 1  # the connection dropped; the next writes go on a new one
        assert len(box) == len(order) <= capacity
        expect = [j for j in order if sent_on[j] is not None and sent_on[j] != gen]
        assert [e.id for e in box.to_resend(gen)] == expect
