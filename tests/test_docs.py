"""The docs stand on their own and say what the code does: the generated tables are current, and no doc
points outside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import doctables

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_tables_are_current(path: Path) -> None:
    text = path.read_text()
    assert doctables.sync(text) == text, f"{path.name} is stale: run `make docs`"


def test_the_option_tables_are_embedded() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated: options -->" in readme and "<!-- generated: metrics -->" in readme
    assert "| `--max-queue` | 1048576 |" in readme  # the block is filled, not just marked


@pytest.mark.parametrize("path", [*DOCS, *sorted(ROOT.glob("server/**/*.py")), *sorted(ROOT.glob("client/*.py")),
                                  *sorted(ROOT.glob("bench/**/*.py"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    for needle in ("../shared", "FIELD-NOTES", "/work/"):
        assert needle not in text, f"{path.relative_to(ROOT)} mentions {needle!r}"


def test_unknown_blocks_are_refused() -> None:
    with pytest.raises(KeyError):
        doctables.sync("<!-- generated: nonsense -->\n<!-- end generated -->")
