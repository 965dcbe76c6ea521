"""Protocol v1.1 in the browser ("nothing lost": recovery, history lost, acks and exactly-once re-sends)
and the refused-handshake check, against the fake v1.1 server of tests/browser/fakeserver.py. The fake
serves the pages itself, on the origin of its WebSockets, as the real server is meant to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.conftest import Pages
from tests.browser.fakeserver import FakeServer
from tests.browser.ui import notices, poll, send_chat, texts, wait_state, wait_text


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as f:
        yield f


def test_recovers_the_messages_missed_while_disconnected(pages: Pages, fake: FakeServer) -> None:
    page = pages.open(fake.http + "/")
    wait_state(page, "connected")
    assert page.evaluate("() => fanwireChat.client.version") == "1.1"
    session = page.evaluate("() => fanwireChat.client.session")
    fake.publish_chat("lobby", "before 1")
    fake.publish_chat("lobby", "before 2")
    wait_text(page, "before 2")

    fake.refuse(503)  # the server is "away": handshakes fail until it comes back
    fake.drop_all()
    wait_state(page, "reconnecting")
    missed = [f"while away {i}" for i in range(3)]
    for text in missed:
        fake.publish_chat("lobby", text)
    fake.refuse(None)

    wait_state(page, "connected")
    for text in missed:
        wait_text(page, text)
    assert texts(page) == ["before 1", "before 2", *missed], "every message once, in order"
    poll(lambda: page.text_content("#recovery") == "recovered 3 missed", "the recovered badge")
    joins = [m for s, m in fake.received("join") if m["room"] == "lobby" and "since" in m]
    assert joins and joins[-1]["since"]["offset"] == 2
    assert {s for s, m in fake.received("join")} == {session}, "reconnected with the same session"


def test_history_lost_is_shown(pages: Pages, fake: FakeServer) -> None:
    page = pages.open(fake.http + "/")
    wait_state(page, "connected")
    fake.publish_chat("lobby", "old")
    wait_text(page, "old")
    fake.refuse(503)
    fake.drop_all()
    wait_state(page, "reconnecting")
    fake.reset_epoch("lobby")  # the history is gone (a restart of what held it)
    fake.publish_chat("lobby", "new epoch")
    fake.refuse(None)
    wait_state(page, "connected")
    wait_text(page, "new epoch")
    poll(lambda: (page.text_content("#recovery") or "").startswith("history lost"), "the history-lost badge")
    assert page.get_attribute("#recovery", "data-kind") == "lost"
    poll(lambda: any(n.startswith("history lost in lobby") for n in notices(page)), "the history-lost notice")


def test_unacknowledged_chat_is_resent_with_the_same_id_and_published_once(pages: Pages, fake: FakeServer) -> None:
    page = pages.open(fake.http + "/")
    wait_state(page, "connected")
    fake.hold_acks = True  # the ack gets "lost" with the connection
    send_chat(page, "exactly once")
    wait_text(page, "exactly once")
    assert page.evaluate("() => fanwireChat.client.unacked") == 1
    fake.hold_acks = False
    fake.drop_all()
    poll(lambda: len(fake.received("chat")) == 2, "the re-send")
    wait_state(page, "connected")
    poll(lambda: page.evaluate("() => fanwireChat.client.unacked") == 0, "the duplicate ack")
    (s1, m1), (s2, m2) = fake.received("chat")
    assert m1["id"] == m2["id"] and s1 == s2, "the same id, from the same session"
    assert fake.call(lambda: fake.stream("lobby").offset) == 1, "published once"
    assert texts(page).count("exactly once") == 1


def test_acks_resolve_the_promise(pages: Pages, fake: FakeServer) -> None:
    page = pages.open(fake.http + "/")
    wait_state(page, "connected")
    ack = page.evaluate("() => fanwireChat.client.chat('acked?')")
    assert ack["type"] == "ack" and ack["room"] == "lobby" and ack["offset"] == 1
    ack = page.evaluate("() => fanwireChat.client.broadcast(null, {data: {n: 1}})")
    assert ack["room"] == "$broadcast"
    ack = page.evaluate("() => fanwireChat.client.publish('auction', {bid: 3})")
    assert ack["room"] == "auction"
    err = page.evaluate("() => fanwireChat.client.chat('x', {room: '$stats'}).catch(e => e.code)")
    assert err == "bad_room"


def test_a_refused_handshake_stops_at_once_when_the_server_says_401(pages: Pages) -> None:
    with FakeServer(token="user-token-0123456789") as fake:
        page = pages.open(fake.http + "/")
        wait_state(page, "closed")
        page.wait_for_selector("#auth-error:visible")
        assert "HTTP 401" in (page.text_content("#auth-error") or "")
        assert page.evaluate("() => fanwireChat.client.closedReason.status") == 401
        assert fake.handshakes == 1, "no retry loop"
        assert page.evaluate("() => document.getElementById('auth').open")
        page.fill("#token", "user-token-0123456789")
        page.click("#token-form button")
        wait_state(page, "connected")
        assert page.is_hidden("#auth-error")


def test_token_from_the_url_is_used_and_removed_from_the_address_bar(pages: Pages) -> None:
    with FakeServer(token="user-token-0123456789") as fake:
        page = pages.open(fake.http + "/?token=user-token-0123456789")
        wait_state(page, "connected")
        assert "token" not in page.url
        assert fake.handshakes == 1
