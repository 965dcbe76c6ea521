"""The layering the docs promise (docs/architecture.md), checked on the code itself.

- The import graph of ``server`` has no cycle, not even through imports made only for type checking.
- Pure modules import nothing that does I/O (no asyncio, socket, os, subprocess...).
- ``client`` imports only the server's pure modules; ``bench`` sees the server only as a process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PURE = ["server/protocol.py", "server/codecs.py", "server/stats.py", "server/metrics.py", "server/backoff.py",
        "server/errors.py", "server/ws/frames.py", "server/http/request.py", "server/http/response.py",
        "server/bus/pipeframe.py", "server/bus/redisframe.py", "server/bus/cluster.py",
        "server/security/auth.py", "server/security/ratelimit.py", "server/security/admission.py",
        "server/streams/stamp.py", "server/streams/table.py", "server/streams/stitch.py", "server/streams/owner.py",
        "server/application.py"]
IO_MODULES = {"asyncio", "socket", "os", "subprocess", "select", "signal", "ssl", "mmap", "threading",
              "uvloop", "redis", "selectors"}
CLIENT_MAY_USE = {"server.backoff", "server.protocol", "server.codecs", "server.errors"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), TYPE_CHECKING blocks and function bodies included."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = {f"{target}.{a.name}" for a in node.names}
            modules = {n for n in names if _is_module(n)}
            out.update(modules or {target})  # "from . import codecs" imports server.codecs, not server
    return out


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def test_no_import_cycle_in_the_server() -> None:
    g = graph("server")
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n):], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_no_io(rel: str) -> None:
    used = {i.split(".")[0] for i in imports(ROOT / rel)}
    assert not used & IO_MODULES, f"{rel} imports {sorted(used & IO_MODULES)}"


SERVER_MODULES = {module_name(p) for p in (ROOT / "server").rglob("*.py")}


def test_client_uses_only_the_servers_pure_modules() -> None:
    for p in (ROOT / "client").rglob("*.py"):
        used = {i for i in imports(p) if i in SERVER_MODULES}
        assert used <= CLIENT_MAY_USE, f"{p.relative_to(ROOT)} imports {sorted(used - CLIENT_MAY_USE)}"


def test_bench_sees_the_server_only_as_a_process() -> None:
    for p in (ROOT / "bench").rglob("*.py"):
        if "micro" in p.parts:  # micro-benchmarks time the server's pure functions, by design
            continue
        if "apps" in p.parts:  # applications the server loads (--app): they run inside the server
            continue
        used = {i for i in imports(p) if i in SERVER_MODULES}
        assert not used, f"{p.relative_to(ROOT)} imports {sorted(used)}"


def test_modules_stay_small_or_say_why() -> None:
    for p in (ROOT / "server").rglob("*.py"):
        text = p.read_text()
        if text.count("\n") > 350:
            assert "Why this module is long" in text, f"{p.relative_to(ROOT)}: {text.count(chr(10))} lines"
