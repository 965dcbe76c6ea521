"""Small helpers that drive and read the chat page and the dashboard (by element ids, see server/static)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.helpers import T

if TYPE_CHECKING:  # playwright may be missing: the tests then skip (conftest.py)
    from playwright.sync_api import Page


def wait_state(page: Page, state: str, timeout: float = 10.0) -> None:
    """Wait until the page's connection state (``#state[data-state]``) is ``state``."""
    page.wait_for_selector(f'#state[data-state="{state}"]', timeout=T(timeout) * 1000)


def worker_of(page: Page) -> int:
    return int(page.evaluate("() => fanwireChat.client.worker"))


def send_chat(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def send_broadcast(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#broadcast")


def texts(page: Page, kind: str = "chat") -> list[str]:
    """The texts of the messages of one kind shown so far (``chat``, ``broadcast``, ``publication``)."""
    return page.locator(f"#messages li.msg.{kind} .text").all_text_contents()


def senders(page: Page, kind: str = "chat") -> list[str]:
    return page.locator(f"#messages li.msg.{kind} .sender").all_text_contents()


def notices(page: Page) -> list[str]:
    return page.locator("#messages li.notice .text").all_text_contents()


def wait_text(page: Page, text: str, kind: str = "chat", timeout: float = 10.0) -> None:
    """Wait until a message of this kind with exactly this text is shown."""
    page.locator(f"#messages li.msg.{kind} .text", has_text=text).first.wait_for(timeout=T(timeout) * 1000)


def poll(fn: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call ``fn`` until it returns something truthy; return it (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + T(timeout)
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def tile_value(page: Page, tile: str) -> float | None:
    """A dashboard tile's current value (``data-value``), or None while it has none."""
    v = page.get_attribute(f"#t-{tile}", "data-value")
    return float(v) if v else None
