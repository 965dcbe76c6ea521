"""``make conformance``: Autobahn|Testsuite against fanwire and, in the same run, a plain websockets server.

Two runs of ``wstest -m fuzzingclient``, each against both servers:

- ``core``: cases 1-10 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handshake,
  9.*: performance, messages up to 16 MiB, about a minute; 10.*: misc) against
  ``python -m server --mode echo --workers 1`` (no extension: pre-built frames) and websockets' own echo
  server (``websockets.asyncio.server.serve``, asyncio, an ``async for`` echo handler). Both get the same
  raised limits for 9.*: 32 MiB messages, 131,072 fragments per message. ``--no-performance`` skips 9.*.
- ``deflate``: cases 12-13 (permessage-deflate, 1,000 messages per case up to 128 KiB: 13-17 minutes
  on 2 cores, the two servers tested at the same time) against fanwire started with ``--compression``
  and the same websockets server (compression is on by default there). ``--quick-deflate`` keeps every
  parameter set but only messages up to 16 KiB (about 3 minutes); ``--no-deflate`` skips it.

It writes ``results/conformance.json`` (per run, per agent, per case: ``behavior``, ``behaviorClose``,
``duration`` in ms; totals per behavior class; versions, commit, date; what the case checks and each
agent's result for every case that is not OK for one of them) and leaves the full HTML/JSON reports of
Autobahn in ``.conformance/reports/`` (ignored by git). It exits 1 if fanwire has a FAILED case or a case
worse than websockets' server, 2 if it cannot run at all (no Python 2.7, install failed, a server did not
start), 0 otherwise.

Autobahn|Testsuite (PyPI ``autobahntestsuite`` 25.10.1) is Python 2.7 code. On first use this module
creates ``.conformance/ab27`` with ``virtualenv<20.22`` (the last line that can make a 2.7 environment)
from a Python 2.7 interpreter: ``$FANWIRE_PYTHON27``, else pyenv's newest 2.7, else ``python2.7`` on
``PATH``; later runs reuse it.

``summary_markdown(data)`` renders the summary table for ``results/README.md``.

Internal: ``python -m bench.conformance --websockets-echo --port N`` is the websockets echo server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .stopsignal import stop_on_signals

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1
AUTOBAHN_VERSION = "25.10.1"
WORK = ROOT / ".conformance"
DEFAULT_OUT = ROOT / "results" / "conformance.json"

MAX_SIZE = 1 << 25  # 32 MiB: 9.* sends 16 MiB messages; both servers get the same limit
MAX_QUEUE = 1 << 26  # fanwire closes a client with more unsent output than this (a 16 MiB echo must fit)
MAX_FRAGMENTS = 1 << 17  # 9.3.1 and 9.4.1 send 4 MiB in 64-byte fragments (65,536 frames); websockets 17 stops
                         # at 4,096 by default (WEBSOCKETS_MAX_FRAGMENTS): both servers get this limit

CORE_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
PERFORMANCE_CASES = ["9.*"]
DEFLATE_CASES = ["12.*", "13.*"]
# --quick-deflate: every parameter set of 12-13 with messages up to 16 KiB, whole and in 256-byte fragments
# (x.y.1-7, x.y.11-12): about 3 minutes instead of 13-17 on 2 cores
# (Autobahn matches a pattern as a regex prefix: "12.*.1" would take 12.1.1x too, so the ids are explicit)
QUICK_DEFLATE_CASES = [f"{m}.{sub}.{n}" for m, subs in ((12, 5), (13, 7)) for sub in range(1, subs + 1)
                       for n in (1, 2, 3, 4, 5, 6, 7, 11, 12)]

AGENTS = ("fanwire", "websockets")
# behaviors, best first; OK and INFORMATIONAL (no verdict) rank the same
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
_RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2, "FAILED": 3}
_CLOSE_RANK = {"OK": 0, "INFORMATIONAL": 0}  # anything else (WRONG CODE, UNCLEAN, ...) ranks 1
MISSING = {"behavior": "FAILED", "behaviorClose": "MISSING", "duration": 0}
# one case in the result file: [behavior, behaviorClose, duration in ms] (+ the close code the server sent
# when the case is not OK for it)
CASE_FIELDS = ("behavior", "behaviorClose", "duration", "remoteCloseCode")


class SetupError(RuntimeError):
    """The suite cannot run here (no Python 2.7, install failed, a server did not start)."""


# --- the Python 2.7 environment ---------------------------------------------------------------------

def find_python27() -> Path | None:
    """A Python 2.7 interpreter: $FANWIRE_PYTHON27, pyenv's newest 2.7.x, or python2.7 on PATH."""
    env = os.environ.get("FANWIRE_PYTHON27")
    if env:
        return Path(env) if os.access(env, os.X_OK) else None
    roots: list[Path] = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            roots.append(Path(out))
    roots.append(Path.home() / ".pyenv")
    for root in roots:
        versions = sorted((root / "versions").glob("2.7*"), key=lambda p: _version_key(p.name), reverse=True)
        for v in versions:
            exe = v / "bin" / "python"
            if os.access(exe, os.X_OK):
                return exe
    found = shutil.which("python2.7")
    return Path(found) if found else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in name.split("."))


def ensure_wstest(work: Path, log: Path) -> Path:
    """``wstest`` in ``work/ab27``, created on first use (about 40 s); raises SetupError saying why not."""
    wstest = work / "ab27" / "bin" / "wstest"
    stamp = work / "ab27" / ".installed"
    if wstest.exists() and stamp.exists() and stamp.read_text().strip() == AUTOBAHN_VERSION:
        return wstest
    py27 = find_python27()
    if py27 is None:
        raise SetupError(
            "no Python 2.7 interpreter found: Autobahn|Testsuite (autobahntestsuite "
            f"{AUTOBAHN_VERSION}) is Python 2.7 code. Install one (pyenv install 2.7.18) or point "
            "FANWIRE_PYTHON27 at it.")
    work.mkdir(parents=True, exist_ok=True)
    print(f"conformance: creating {_rel(work / 'ab27')} with {py27} (first run only, about a minute)",
          flush=True)
    tools = work / "tools"
    steps: list[list[str]] = []
    if not (tools / "bin" / "virtualenv").exists():
        steps += [[sys.executable, "-m", "venv", str(tools)],
                  [str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "virtualenv<20.22"]]
    if (work / "ab27").exists():
        shutil.rmtree(work / "ab27")
    steps += [[str(tools / "bin" / "virtualenv"), "-q", "-p", str(py27), str(work / "ab27")],
              [str(work / "ab27" / "bin" / "pip"), "install", "-q", f"autobahntestsuite=={AUTOBAHN_VERSION}"]]
    with open(log, "ab") as out:
        for cmd in steps:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                raise SetupError(f"installing Autobahn|Testsuite failed ({' '.join(cmd[:3])}... exited {rc});"
                                 f" see {_rel(log)}:\n{_tail(log)}")
    if not wstest.exists():
        raise SetupError(f"installed, but {_rel(wstest)} is missing; see {_rel(log)}")
    stamp.write_text(AUTOBAHN_VERSION + "\n")
    return wstest


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines[-n:])


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# --- the websockets echo server -------------------------------------------------------------------------

WS_READY = "websockets-echo: ready"


async def _websockets_echo(host: str, port: int, max_size: int) -> None:
    """websockets' own echo server, as its documentation and its compliance suite write it."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    stop = stop_on_signals()
    async with serve(echo, host, port, max_size=max_size):
        print(f"{WS_READY} on ws://{host}:{port} (pid {os.getpid()})", flush=True)
        await stop


_FANWIRE_READY = re.compile(r"fanwire: ready, ")
_FANWIRE_WORKER = re.compile(r"fanwire: worker \d+ pid (\d+) listening")
_WS_READY = re.compile(re.escape(WS_READY))


class Child:
    """A server under test as a child process on a free port of 127.0.0.1; output to a log file.

    Stopped with SIGTERM to its own pid (SIGKILL after a deadline), then any fanwire worker it named in its
    log that outlived it is killed by pid. Never a process this object did not start."""

    def __init__(self, name: str, args: Sequence[str], ready: re.Pattern[str], log_dir: Path,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.name = name
        self.args = list(args)  # after ``python``; "{port}" is replaced by the port
        self.ready = ready
        self.log_dir = log_dir
        self.env = env or {}
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{name}.log"

    def command(self) -> list[str]:
        return [sys.executable, *(a.replace("{port}", str(self.port)) for a in self.args)]

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + "python " + " ".join(self.args).replace("{port}", "<port>")

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port(self.host)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.ready.search(self.log_path.read_text(errors="replace")):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            self.stop()
        raise SetupError(f"{self.name} did not start ({self.describe()}):\n{_tail(self.log_path)}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        try:
            workers = [int(pid) for pid in _FANWIRE_WORKER.findall(self.log_path.read_text(errors="replace"))]
        except OSError:
            workers = []
        for pid in workers:  # a worker that outlived its supervisor would hold the port
            if pid != proc.pid and _running(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def websockets_echo(log_dir: Path) -> Child:
    return Child("websockets", ["-m", "bench.conformance", "--websockets-echo", "--port", "{port}",
                                "--max-size", str(MAX_SIZE)],
                 _WS_READY, log_dir, env={"WEBSOCKETS_MAX_FRAGMENTS": str(MAX_FRAGMENTS)})


# --- running the suite ------------------------------------------------------------------------------------

def fanwire_options() -> str:
    """``python -m server --help``: which limits this version of the server has."""
    try:
        return subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def fanwire_server(log_dir: Path, compression: bool, options: str) -> Child:
    args = ["-m", "server", "--mode", "echo", "--workers", "1", "--port", "{port}", "--log-level", "warning",
            "--max-message-size", str(MAX_SIZE), "--max-queue", str(MAX_QUEUE)]
    if "--max-fragments" in options:  # a server that limits fragments per message: raise it for 9.*
        args += ["--max-fragments", str(MAX_FRAGMENTS)]
    if compression:
        args.append("--compression")
    return Child("fanwire-deflate" if compression else "fanwire", args, _FANWIRE_READY, log_dir)


def run_wstest(wstest: Path, work: Path, name: str, servers: dict[str, str], cases: Sequence[str],
               timeout: float, parallel: bool = False) -> dict[str, Any]:
    """One fuzzingclient run; returns Autobahn's index (agent -> case -> result).

    ``parallel``: one wstest per server at the same time (each server still sees one client at a time);
    otherwise one wstest tests the servers one after the other."""
    outdir = work / "reports" / name
    if outdir.exists():
        shutil.rmtree(outdir)
    groups = [{a: u} for a, u in servers.items()] if parallel else [dict(servers)]
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for group in groups:
            label = name + ("-" + next(iter(group)) if parallel else "")
            sub = outdir / next(iter(group)) if parallel else outdir
            sub.mkdir(parents=True)
            spec = {"outdir": str(sub), "servers": [{"agent": a, "url": u} for a, u in group.items()],
                    "cases": list(cases), "exclude-cases": [], "exclude-agent-cases": {}}
            spec_path = work / f"spec-{label}.json"
            spec_path.write_text(json.dumps(spec, indent=2) + "\n")
            log_path = work / "logs" / f"wstest-{label}.log"
            with open(log_path, "wb") as log:
                procs.append((subprocess.Popen([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
                                               cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True),
                              log_path, sub))
        deadline = time.monotonic() + timeout
        index: dict[str, Any] = {}
        for proc, log_path, sub in procs:
            try:
                rc = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise SetupError(f"wstest ({name}) did not finish within {timeout:.0f} s; see "
                                 f"{_rel(log_path)}") from None
            index_path = sub / "index.json"
            if rc != 0 or not index_path.exists():
                raise SetupError(f"wstest ({name}) exited {rc} without a report; see {_rel(log_path)}:\n"
                                 f"{_tail(log_path)}")
            for agent, cases_ in json.loads(index_path.read_text()).items():
                index[agent] = {c: {**r, "reportfile": str(sub.relative_to(outdir) / r["reportfile"])
                                    if r.get("reportfile") else None} for c, r in cases_.items()}
        return index
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this run created for that wstest only
                proc.wait(5)


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in case.split("."))


def pack(entry: dict[str, Any]) -> list[Any]:
    return [entry.get(f) for f in CASE_FIELDS if f in entry]


def unpack(value: list[Any] | dict[str, Any]) -> dict[str, Any]:
    return dict(zip(CASE_FIELDS, value)) if isinstance(value, list) else value


def agent_cases(run: dict[str, Any], agent: str) -> dict[str, dict[str, Any]]:
    """One agent's results in one run of a result file: case -> {behavior, behaviorClose, duration, ...}."""
    return {c: unpack(v) for c, v in run["results"][agent]["cases"].items()}


def summarize_run(index: dict[str, Any], report_dir: Path) -> dict[str, Any]:
    """Autobahn's index for one run -> {"results": agent -> {"totals", "cases"}, "notes": case -> ...}."""
    all_cases = sorted({c for a in AGENTS for c in index.get(a, {})}, key=case_key)
    results: dict[str, Any] = {}
    unpacked: dict[str, dict[str, dict[str, Any]]] = {}
    for agent in AGENTS:
        got = index.get(agent, {})
        cases: dict[str, dict[str, Any]] = {}
        for case in all_cases:
            r = got.get(case)
            if r is None:
                cases[case] = dict(MISSING)
                continue
            entry: dict[str, Any] = {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"],
                                     "duration": r.get("duration", 0)}
            if r["behavior"] != "OK" or r["behaviorClose"] != "OK":
                entry["remoteCloseCode"] = r.get("remoteCloseCode")
            cases[case] = entry
        unpacked[agent] = cases
        results[agent] = {"totals": totals(cases.values()), "cases": {c: pack(e) for c, e in cases.items()}}
    notes: dict[str, Any] = {}
    for case in all_cases:
        entries = {a: unpacked[a][case] for a in AGENTS}
        if all(e["behavior"] == "OK" and e["behaviorClose"] == "OK" for e in entries.values()):
            continue
        note: dict[str, Any] = {}
        for agent in AGENTS:
            report = _case_report(index.get(agent, {}).get(case), report_dir)
            if report is None:
                continue
            note.setdefault("description", _one_line(report.get("description", "")))
            note.setdefault("expectation", _one_line(report.get("expectation", "")))
            if entries[agent]["behavior"] != "OK":
                note[agent] = _one_line(report.get("result", ""))
                if entries[agent]["behavior"] == "FAILED" and report.get("received") is not None:
                    note[f"{agent}_received"] = _short(report.get("received"))
                    note.setdefault("expected", _short(report.get("expected")))
        notes[case] = note
    return {"results": results, "notes": notes}


def _case_report(entry: dict[str, Any] | None, report_dir: Path) -> dict[str, Any] | None:
    if not entry or not entry.get("reportfile"):
        return None
    try:
        report: dict[str, Any] = json.loads((report_dir / entry["reportfile"]).read_text())
    except (OSError, ValueError):
        return None
    return report


def _one_line(text: str) -> str:
    """Autobahn's descriptions carry HTML (<b>, <br>): plain text on one line."""
    return " ".join(re.sub(r"<[^>]*>", " ", str(text)).split())


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def totals(cases: Iterable[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(BEHAVIORS, 0)
    for c in cases:
        out[c["behavior"]] = out.get(c["behavior"], 0) + 1
    return out


def worse(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True if result ``a`` is worse than ``b`` (behavior first, then the closing behavior)."""
    ra, rb = _RANK.get(a["behavior"], 3), _RANK.get(b["behavior"], 3)
    if ra != rb:
        return ra > rb
    return _CLOSE_RANK.get(a["behaviorClose"], 1) > _CLOSE_RANK.get(b["behaviorClose"], 1)


def verdict(runs: dict[str, Any]) -> dict[str, Any]:
    failed: list[str] = []
    worse_than: list[str] = []
    for name, run in runs.items():
        fw, ws = agent_cases(run, "fanwire"), agent_cases(run, "websockets")
        for case, r in fw.items():
            if r["behavior"] == "FAILED":
                failed.append(f"{name}:{case}")
            if case in ws and worse(r, ws[case]):
                worse_than.append(f"{name}:{case}")
    return {"pass": not failed and not worse_than, "fanwire_failed": failed,
            "fanwire_worse_than_websockets": worse_than,
            "rule": "no FAILED case for fanwire and no case worse than websockets' own server"}


# --- the result file ------------------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def versions(wstest: Path) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("websockets", "uvloop", "fanwire"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    try:
        got = subprocess.run([str(wstest.parent / "python"), "-c",
                              "import autobahntestsuite as t, autobahn as a, platform as p; "
                              "print(t.__version__ + ' ' + a.__version__ + ' ' + p.python_version())"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        out["autobahntestsuite"], out["autobahn"], out["python_wstest"] = got[0], got[1], got[2]
    except (OSError, subprocess.SubprocessError, IndexError):
        out["autobahntestsuite"] = AUTOBAHN_VERSION
    return out


def write_result(data: dict[str, Any], path: Path) -> None:
    """Indented at the top, one line per case: small enough for git, readable in a diff."""
    def dump(value: Any, indent: int, key: str | None = None) -> str:
        if not isinstance(value, dict) or not value:
            return json.dumps(value)
        pad = " " * indent
        items = []
        for k, v in value.items():
            # the values of "cases" (per case) and "notes" (per case) each on one line
            text = json.dumps(v) if key in ("cases", "notes") else dump(v, indent + 2, k)
            items.append(f"{pad}  {json.dumps(k)}: {text}")
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(data, 0) + "\n")


# --- the summary --------------------------------------------------------------------------------------

def run_title(name: str, run: dict[str, Any]) -> str:
    """"1-10" for the patterns 1.* .. 10.*, "1-8, 10" without 9.*; the run's name in brackets."""
    nums = sorted({int(c.split(".")[0]) for c in run.get("cases", []) if c.split(".")[0].isdigit()})
    if 7 in nums and 9 in nums:
        nums.append(8)  # Autobahn has no case 8
        nums.sort()
    spans: list[str] = []
    for n in nums:
        if spans and int(spans[-1].split("-")[-1]) == n - 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{n}"
        else:
            spans.append(str(n))
    return f"{', '.join(spans) or '?'} ({name})"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    text = str(r["behavior"])
    if r.get("behaviorClose") not in (None, "OK", r["behavior"]):
        text += f", close {r['behaviorClose']}"
    if r.get("remoteCloseCode") is not None:
        text += f" ({r['remoteCloseCode']})"
    return text


def summary_markdown(data: dict[str, Any]) -> str:
    """The summary of ``results/conformance.json``: behavior counts per run and agent, then every case
    that is not OK for one of the two servers, with both results. Markdown, no heading above level 3."""
    runs: dict[str, Any] = data.get("runs", {})
    if not runs:
        return "No Autobahn|Testsuite run in this result.\n"
    v = data.get("versions", {})
    commit = str(data.get("commit", ""))[:10]
    lines = [
        f"Autobahn|Testsuite {v.get('autobahntestsuite', '?')} (`wstest -m fuzzingclient`), fanwire "
        f"(`--mode echo --workers 1`; `--compression` for 12-13) and websockets {v.get('websockets', '?')}'s own "
        f"echo server (`serve()`, asyncio) in the same run; commit `{commit}`, {data.get('date', '?')}.",
        "",
        "| run | server | " + " | ".join(BEHAVIORS) + " | cases |",
        "|---|---|" + "---:|" * (len(BEHAVIORS) + 1),
    ]
    for name, run in runs.items():
        title = run_title(name, run)
        for agent in AGENTS:
            t = run["results"][agent]["totals"]
            counts = [str(t.get(b, 0)) for b in BEHAVIORS]
            if agent == "fanwire" and t.get("FAILED"):
                counts[-1] = f"**{counts[-1]}**"
            lines.append(f"| {title} | {agent} | " + " | ".join(counts) + f" | {sum(t.values())} |")
    verdict_ = data.get("verdict", {})
    lines.append("")
    if verdict_.get("pass"):
        lines.append("Goal met: no FAILED case for fanwire and no case worse than websockets' own server.")
    else:
        bad = sorted(set(verdict_.get("fanwire_failed", [])) | set(verdict_.get("fanwire_worse_than_websockets", [])),
                     key=lambda s: (s.split(":")[0], case_key(s.split(":")[-1])))
        lines.append("Goal **not met** (no FAILED case, none worse than websockets): "
                     + ", ".join(b.split(":")[-1] for b in bad) + ".")
    rows: list[str] = []
    for run in runs.values():
        fw, ws = agent_cases(run, "fanwire"), agent_cases(run, "websockets")
        notes = run.get("notes", {})
        for case in sorted(set(fw) | set(ws), key=case_key):
            a, b = fw.get(case), ws.get(case)
            if all(r is None or (r["behavior"] == "OK" and r["behaviorClose"] == "OK") for r in (a, b)):
                continue
            mark = "**" if a is not None and b is not None and (a["behavior"] == "FAILED" or worse(a, b)) else ""
            what = notes.get(case, {}).get("description", "")
            if len(what) > 110:
                what = what[:107] + "..."
            rows.append(f"| {case} | {mark}{_cell(a)}{mark} | {_cell(b)} | {what.replace('|', '/')} |")
    if rows:
        lines += ["", "Cases not OK for at least one server (close code received in brackets; bold: fanwire "
                  "FAILED or worse than websockets):", "",
                  "| case | fanwire | websockets | what the case sends |", "|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------

def run(ns: argparse.Namespace) -> dict[str, Any]:
    work: Path = ns.workdir
    (work / "logs").mkdir(parents=True, exist_ok=True)
    wstest = ensure_wstest(work, work / "logs" / "install.log")
    started = time.monotonic()
    plan: list[tuple[str, list[str], bool]] = []
    if not ns.no_core:
        core = CORE_CASES + ([] if ns.no_performance else PERFORMANCE_CASES)
        plan.append(("core", sorted(core, key=case_key), False))
    if not ns.no_deflate:
        if ns.quick_deflate:
            plan.append(("deflate-quick", QUICK_DEFLATE_CASES, True))
        else:
            plan.append(("deflate", DEFLATE_CASES, True))
    runs: dict[str, Any] = {}
    options = fanwire_options()
    with websockets_echo(work / "logs") as ws_echo:
        for name, cases, compression in plan:
            with fanwire_server(work / "logs", compression, options) as fw:
                servers = {"fanwire": fw.url, "websockets": ws_echo.url}
                shown = ", ".join(cases) if len(cases) <= 12 else f"{len(cases)} cases, {cases[0]} to {cases[-1]}"
                print(f"conformance: {name}: {shown} against fanwire {fw.url} and websockets {ws_echo.url} ...",
                      flush=True)
                t0 = time.monotonic()
                index = run_wstest(wstest, work, name, servers, cases, ns.timeout, parallel=compression)
                run_ = summarize_run(index, work / "reports" / name)
                for child in (fw, ws_echo):
                    if not child.alive():
                        raise SetupError(f"{child.name} exited during the {name} run; see {_rel(child.log_path)}")
                run_["cases"] = cases
                run_["servers"] = {"fanwire": fw.describe(), "websockets": ws_echo.describe()}
                run_["seconds"] = round(time.monotonic() - t0, 1)
                runs[name] = run_
                for agent in AGENTS:
                    t = run_["results"][agent]["totals"]
                    print(f"conformance: {name}: {agent:<10} " + ", ".join(f"{b} {n}" for b, n in t.items() if n)
                          + f" ({run_['seconds']:.0f} s)", flush=True)
    head = _git("rev-parse", "HEAD")
    data: dict[str, Any] = {
        "kind": "conformance",
        "schema": SCHEMA,
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "commit": head,
        "server_uncommitted_changes": bool(_git("status", "--porcelain", "--", "server")),
        "versions": versions(wstest),
        "seconds": round(time.monotonic() - started, 1),
        "reports": _rel(work / "reports"),
        "runs": runs,
    }
    data["totals"] = {a: {b: sum(r["results"][a]["totals"].get(b, 0) for r in runs.values()) for b in BEHAVIORS}
                      for a in AGENTS}
    data["verdict"] = verdict(runs)
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.conformance",
                                description="Autobahn|Testsuite against fanwire and a plain websockets server")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result file (default results/conformance.json)")
    p.add_argument("--workdir", type=Path, default=WORK,
                   help="Python 2.7 environment, Autobahn's reports and logs (default .conformance/)")
    p.add_argument("--no-performance", action="store_true",
                   help="skip 9.* (messages up to 16 MiB; about a minute)")
    p.add_argument("--no-core", action="store_true", help="skip cases 1-10")
    p.add_argument("--no-deflate", action="store_true", help="skip cases 12-13 (permessage-deflate)")
    p.add_argument("--quick-deflate", action="store_true",
                   help="12-13 with messages up to 16 KiB only (about 3 minutes instead of 13-17)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one wstest run may take (default 3600)")
    p.add_argument("--summary", action="store_true", help="print the summary of the result file (--out) and exit")
    p.add_argument("--websockets-echo", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-size", type=int, default=MAX_SIZE, help=argparse.SUPPRESS)
    return p


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.websockets_echo:
        asyncio.run(_websockets_echo(ns.host, ns.port, ns.max_size))
        return 0
    if ns.summary:
        print(summary_markdown(json.loads(ns.out.read_text())), end="")
        return 0
    # SIGTERM (a timeout, make's or CI's) unwinds like Ctrl-C, so the servers and wstest started so far are
    # stopped by the blocks that started them instead of being left running
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ns.workdir = ns.workdir.resolve()
    try:
        data = run(ns)
    except SetupError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr, flush=True)
        return 2
    write_result(data, ns.out)
    print(f"conformance: wrote {_rel(ns.out.resolve())}; reports in {data['reports']}/", flush=True)
    print(summary_markdown(data), end="", flush=True)
    v = data["verdict"]
    if not v["pass"]:
        print(f"conformance: FAIL: fanwire FAILED {v['fanwire_failed'] or 'none'}; worse than websockets "
              f"{v['fanwire_worse_than_websockets'] or 'none'}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
