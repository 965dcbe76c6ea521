"""fanwire.js and stats.js unit tests, run inside a page in Chromium (tests/browser/pages/unit.js)."""

from __future__ import annotations

from tests.browser.conftest import Pages
from tests.browser.site import StaticSite
from tests.helpers import T


def test_js_units(pages: Pages, site: StaticSite) -> None:
    page = pages.open(f"{site.url}/test/unit.html")
    page.wait_for_function("() => window.__unit && window.__unit.done", timeout=T(30) * 1000)
    results = page.evaluate("window.__unit.results")
    failed = [f"{r['name']}: {r.get('error')}" for r in results if not r["ok"]]
    assert len(results) >= 25, results
    assert not failed, "\n\n".join(failed)
