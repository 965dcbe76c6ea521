"""The tables the docs embed, generated from the code, and the tool that keeps the docs in step with them.

A doc marks a generated block with HTML comments::

    <!-- generated: options -->
    ...table...
    <!-- end generated -->

:func:`sync` rewrites every such block of a text; ``python -m server.doctables FILE...`` rewrites files in
place (``make docs``), and the test suite fails when a committed doc differs from what :func:`sync` makes.
Blocks: ``options`` (every option), ``options:<group>`` (one group), ``metrics`` (every metric family).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from .config import options, options_markdown
from .metrics import HELP

_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def metrics_markdown() -> str:
    lines = ["| metric | meaning |", "|---|---|"]
    lines += [f"| `{family}` | {text} |" for family, text in HELP.items()]
    return "\n".join(lines)


def _group(name: str) -> Callable[[], str]:
    return lambda: options_markdown(group=name)


def block(name: str) -> str:
    makers: dict[str, Callable[[], str]] = {"options": options_markdown, "metrics": metrics_markdown}
    makers.update({f"options:{o.meta.group}": _group(o.meta.group) for o in options()})
    if name not in makers:
        raise KeyError(f"unknown generated block {name!r}; known: {', '.join(sorted(makers))}")
    return makers[name]()


def sync(text: str) -> str:
    """``text`` with every generated block made anew."""
    return _BLOCK.sub(lambda m: m.group(1) + block(m.group("name")) + "\n" + m.group(4), text)


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    for path in paths:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = sync(old)
        if new != old:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"{path}: generated blocks updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
