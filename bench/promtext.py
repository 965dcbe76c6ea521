"""Just enough of the Prometheus text format to read fanwire's ``/metrics``: our own, so the harness
depends on the server only through its HTTP route, never on its modules. Pure, apart from :func:`fetch`.
"""

from __future__ import annotations

import re
import socket
from typing import Final

__all__ = ["Metrics", "fetch", "parse"]

_LINE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


class Metrics(dict[str, dict[Labels, float]]):
    """name -> {labels: value}; labels are sorted (name, value) pairs."""

    def total(self, name: str, **match: str) -> float | None:
        """The sum of ``name`` over every label set that has the ``match`` labels; None when absent."""
        series = self.get(name)
        if series is None:
            return None
        return sum(v for labels, v in series.items() if all((k, val) in labels for k, val in match.items()))


def parse(text: str) -> Metrics:
    out = Metrics()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out.setdefault(m.group(1), {})[labels] = value
    return out


def fetch(host: str, port: int, path: str = "/metrics", timeout: float = 5.0) -> Metrics:
    """GET ``path`` over a plain HTTP/1.1 connection and parse the body."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"GET {path}: {head[:60]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return parse(body.decode("utf-8", "replace"))


def _unchunk(body: bytes) -> bytes:
    out = []
    pos = 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(body[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)
