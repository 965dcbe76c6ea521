"""Charts, drawn from the result JSON alone (``python -m bench charts``): one PNG per scenario.

Meant to be read at a glance by someone who has not read the docs: one message per panel, a title that
says what is measured and under which conditions, units and thousands separators on the axes, every
server in a fixed colour with its name in one legend below the panels (never on the data), the median of
the repeats with a min-max error bar, "not run" where a server has no figure, hatched bars / hollow
markers where a server was saturated, and reference lines only on the panel (and the part of it) they
apply to: the documented target dashed red, our goal dotted green, each labelled on the line. The
subtitle carries the machine, the commit and every caveat (quick run, uncommitted changes, busy machine,
re-run alone).
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from .report import flags, load_results, set_of
from .servers import SERVER_LABELS, SERVER_ORDER
from .targets import DOC, GOALS

__all__ = ["CHARTS", "draw_all"]

COLORS = {"fanwire": "#1f77b4", "baseline": "#ff7f0e", "baseline-uvloop": "#d62728", "picows": "#9467bd",
          "floor": "#7f7f7f", "ceiling": "#444444", "fanwire-2w": "#17becf", "fanwire-redis": "#2ca02c", "history-on": "#1f77b4",
          "history-off": "#9ecae1", "recovery-cuts": "#17becf"}
LABELS = {**SERVER_LABELS, "fanwire-2w": "fanwire, 2 workers (pipe bus)",
          "fanwire-redis": "fanwire, Redis bus (2 nodes x 1 worker)",
          "history-on": "fanwire, history on (default, 256 per stream)",
          "history-off": "fanwire, history off (--history-size 0)",
          "recovery-cuts": "fanwire under cuts (workers as titled)"}
OTHER_RUN_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf")
DOC_STYLE: dict[str, Any] = {"color": "#d62728", "linestyle": "--", "linewidth": 1.3}
GOAL_STYLE: dict[str, Any] = {"color": "#2ca02c", "linestyle": ":", "linewidth": 2.0}
PCT_STYLE = {"p50": (":", "s"), "p99": ("-", "o"), "p99_9": ("--", "^")}


# --- helpers ---------------------------------------------------------------------------------------------

def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1:
        return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 or abs(v) >= 100 else f"{v:,.1f}"
    return f"{v:.3g}"


def thousands(ax: Axes, axis: str = "y") -> None:
    """Plain numbers with thousands separators on an axis (no 2x10^5); on a log axis spanning less than
    two decades, the 2, 3 and 5 minor ticks are labelled too."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_tick(v)))

    def minor(v: float, _pos: Any) -> str:
        lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
        if lo <= 0 or hi / lo > 100:
            return ""
        lead = f"{v:e}"[0]
        return _fmt_tick(v) if lead in "235" else ""

    if axis == "y":
        target.set_minor_formatter(FuncFormatter(minor))


def server_of(run: dict[str, Any]) -> str:
    return str(run.get("server") or run["target"])


def servers_in(runs: Sequence[dict[str, Any]]) -> list[str]:
    present = {server_of(r) for r in runs}
    return [s for s in SERVER_ORDER if s in present] + sorted(present - set(SERVER_ORDER))


def _msgs(r: dict[str, Any]) -> float | None:
    return _num(r.get("msgs_per_s"))


def _p99(r: dict[str, Any]) -> float | None:
    return _num(r["latency_ms"].get("p99"))


def _percentile(key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        return _num(r["latency_ms"].get(key))
    return get


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def _delivered(r: dict[str, Any]) -> float | None:
    return _num(r.get("deliveries_per_s"))


def agg(runs: Sequence[dict[str, Any]], fn: Callable[[dict[str, Any]], float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of ``fn`` over the valid runs (repeats), None when there is none."""
    vals = [v for r in runs if r.get("valid", True) for v in [fn(r)] if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def series(xs: Sequence[Any], get: Callable[[Any], tuple[float, float, float] | None]
           ) -> list[tuple[Any, tuple[float, float, float]]]:
    """(x, (median, min, max)) for every x that has a value."""
    out = []
    for x in xs:
        v = get(x)
        if v is not None:
            out.append((x, v))
    return out


def any_saturated(runs: Sequence[dict[str, Any]]) -> bool:
    return any(r.get("saturated") for r in runs)


def pick(runs: Sequence[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        if all((server_of(r) if k == "server" else r.get(k)) == v for k, v in match.items()):
            out.append(r)
    return out


def ref_line(ax: Axes, y: float, text: str, style: dict[str, Any], x0: float | None = None,
             x1: float | None = None) -> None:
    """A reference line, across the panel (labelled just outside its right edge, off the data) or from x0
    to x1 (data units, labelled above its right end)."""
    box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}
    if x0 is None or x1 is None:
        ax.axhline(y, zorder=4, **style)
        ax.annotate("\n".join(textwrap.wrap(text, 14)), (1.0, y), xycoords=("axes fraction", "data"), xytext=(3, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=7, color=style["color"],
                    annotation_clip=False)
    else:
        ax.plot([x0, x1], [y, y], zorder=4, **style)
        ax.annotate(text, (x1, y), xytext=(0, 2), textcoords="offset points", ha="right", va="bottom", fontsize=7,
                    color=style["color"], zorder=6, bbox=box)


def bars(ax: Axes, groups: Sequence[str], servers: Sequence[str],
         get: Callable[[str, int], tuple[tuple[float, float, float] | None, bool]], fmt: str = "{:,.0f}",
         log: bool = False) -> dict[tuple[int, str], float]:
    """Grouped bars: one group per setting, one bar per server (median, min-max error bar). ``get(server,
    group index)`` returns ((median, min, max) or None, saturated). Returns each bar's x position."""
    n = max(1, len(servers))
    width = 0.8 / n
    xs: dict[tuple[int, str], float] = {}
    top = 0.0
    for gi in range(len(groups)):
        for s in servers:
            v, _ = get(s, gi)
            if v:
                top = max(top, v[2])
    for si, s in enumerate(servers):
        for gi in range(len(groups)):
            x = gi + (si - (n - 1) / 2) * width
            xs[(gi, s)] = x
            v, sat = get(s, gi)
            if v is None:
                ax.text(x, 0.02, "not run", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                        va="bottom", fontsize=6.5, color="#777777")
                continue
            med, lo, hi = v
            ax.bar(x, med, width * 0.92, color=COLORS.get(s, "#444444"), hatch="//" if sat else None,
                   edgecolor="white" if not sat else "black", linewidth=0.5,
                   yerr=[[med - lo], [hi - med]] if hi > lo else None, capsize=2, ecolor="#333333")
            ax.annotate(fmt.format(med) + (" sat." if sat else ""), (x, hi), ha="center", va="bottom", fontsize=6.5,
                        xytext=(0, 2), textcoords="offset points", rotation=90 if n > 3 else 0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.margins(y=0.18)
    if log:
        ax.set_yscale("log")
    thousands(ax)
    return xs


def legend(fig: Figure, servers: Sequence[str], extra: Sequence[tuple[Any, str]] = (), saturated: bool = False) -> None:
    """One legend for the whole figure, below the panels."""
    handles: list[Any] = [Patch(color=COLORS.get(s, "#444444"), label=LABELS.get(s, s)) for s in servers]
    labels = [LABELS.get(s, s) for s in servers]
    if saturated:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//"))
        labels.append("saturated (latency includes queueing)")
    for h, label in extra:
        handles.append(h)
        labels.append(label)
    _LEGENDS[id(fig)] = (handles, labels)


_LEGENDS: dict[int, tuple[list[Any], list[str]]] = {}


def subtitle(res: dict[str, Any], the_set: dict[str, Any] | None = None) -> tuple[str, bool]:
    e = res["env"]
    base = (f"{e.get('cpu_model')}, {e.get('cores')} cores, commit {str(e.get('git_commit'))[:10]}, "
            f"{str(e.get('date', ''))[:10]}; median of {res.get('repeats', 1)} run(s), bars: min-max")
    fl = [f if len(f) <= 160 else f[:157] + "..." for f in flags(res, the_set)]
    text = "; ".join(f.upper() if i == 0 else f for i, f in enumerate(fl))
    return (base + ("\n" + text if fl else "")), bool(fl)


def finish(fig: Figure, res: dict[str, Any], title: str, path: Path, the_set: dict[str, Any] | None) -> Path:
    """Title on top; below the panels one legend, then the provenance line(s); space reserved for each, so
    nothing overlaps whatever the figure's size."""
    sub, warn = subtitle(res, the_set)
    width, height = fig.get_size_inches()
    title_lines = textwrap.wrap(title, int(width * 9))
    fig.suptitle("\n".join(title_lines), fontsize=12, fontweight="bold", y=1 - 0.08 / height, va="top")
    sub = "\n".join(line for part in sub.split("\n") for line in textwrap.wrap(part, int(width * 17)))
    sub_lines = sub.count("\n") + 1
    fig.text(0.5, 0.06 / height, sub, ha="center", va="bottom", fontsize=7.5, color="#b00000" if warn else "#444444")
    bottom = (0.1 + 0.16 * sub_lines) / height
    handles, labels = _LEGENDS.pop(id(fig), ([], []))
    if handles:
        longest = max(len(x) for x in labels)
        ncol = max(1, min(len(labels), int(width * 72 / (longest * 5.2 + 40))))
        rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, bottom), ncol=ncol, fontsize=8,
                   frameon=False)
        bottom += (0.08 + 0.22 * rows) / height
    top = 1 - (0.05 + 0.22 * len(title_lines)) / height
    fig.tight_layout(rect=(0, bottom, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def new_figure(rows: int, cols: int, w: float, h: float) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), squeeze=False)
    return fig, axes


def wrap_title(ax: Axes, text: str, width: int = 60) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, width)), fontsize=9.5)


# --- one function per scenario -----------------------------------------------------------------------


def chart_connect(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    cfg = res.get("config", {})
    if runs and "what" not in runs[0]:  # the previous harness: one run per level
        for r in runs:
            r["what"] = "handshake" if r.get("rate") else ("idle" if r["conns"] == cfg.get("rss_reference_conns")
                                                           else "capacity")
    servers = servers_in(runs)
    fig, axes = new_figure(2, 2, 12.5, 9)

    def get(what: str, fn: Callable[[dict[str, Any]], float | None]) -> Callable[[str, int], Any]:
        return lambda s, _gi: (agg(pick(runs, server=s, what=what), fn), any_saturated(pick(runs, server=s, what=what)))

    hs = pick(runs, what="handshake")
    n_hs = hs[0]["conns"] if hs else 0
    rate = hs[0].get("rate") if hs else 0
    ax = axes[0][0]
    bars(ax, ["p50", "p99"], servers, lambda s, gi: get("handshake", lambda r: r["handshake_ms"]["p50" if gi == 0
                                                                                                 else "p99"])(s, gi),
         "{:.2f}", log=True)
    ref_line(ax, DOC["handshake_ms"], "documented ~10 ms", DOC_STYLE)
    ref_line(ax, GOALS["handshake_p99_ms"], "goal: p99 <= 2 ms", GOAL_STYLE, 0.6, 1.4)
    ax.set_ylabel("handshake time (ms, log)")
    if all("early_starts" in r for r in hs):
        how = f"from each connection's real start; {sum(r['early_starts'] or 0 for r in hs)} early starts"
    else:
        how = "from the scheduled start; early starts not counted (previous harness)"
    wrap_title(ax, f"Handshake time, {n_hs:,} connections at {rate or 0:,} conn/s, one server core ({how})")

    idle = pick(runs, what="idle")
    n_idle = idle[0]["conns"] if idle else 0
    ax = axes[0][1]
    bars(ax, [f"{n_idle:,} idle connections"], servers, get("idle", lambda r: r["rss_per_conn_kb"]), "{:.1f}")
    ref_line(ax, DOC["rss_per_conn_kb"], "documented 16 KB", DOC_STYLE)
    ref_line(ax, GOALS["rss_per_conn_kb"], "goal <= 6 KB", GOAL_STYLE)
    ax.set_ylabel("server memory per idle connection (KB)")
    wrap_title(ax, "Memory per idle connection (RSS after - before, / connections)")

    ax = axes[1][0]
    bars(ax, [f"{n_idle:,} connections, unthrottled"], servers, get("idle", lambda r: r["conn_per_s"]))
    ax.set_ylabel("connections opened per second (conn/s)")
    wrap_title(ax, f"Connection rate, {idle[0]['workers'] if idle else 1} server process(es), as fast as the "
                   "load opens them")

    ax = axes[1][1]
    cap = pick(runs, what="capacity")
    held = {s: max([r["conns"] for r in cap if server_of(r) == s and r.get("held_all")], default=None)
            for s in servers}
    failed = {s: next((r for r in cap if server_of(r) == s and not r.get("held_all")), None) for s in servers}
    xs = list(range(len(servers)))
    for x, s in zip(xs, servers):
        v = held[s]
        if v is None and failed[s] is None:
            ax.text(x, 0.02, "not run", transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="bottom",
                    fontsize=7, color="#777777")
            continue
        ax.bar(x, v or 0, 0.6, color=COLORS.get(s))
        f = failed[s]
        text = f"{v or 0:,}" + (f"\nfailed at {f['conns']:,}\n({f['opened']:,} opened)" if f else "\nall levels held")
        ax.annotate(text, (x, v or 0), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs)
    ax.set_xticklabels([LABELS.get(s, s).replace(", ", ",\n") for s in servers], fontsize=7)
    ref_line(ax, DOC["connections"], "documented 5,000+", DOC_STYLE)
    ref_line(ax, GOALS["max_connections"], "goal >= 60,000", GOAL_STYLE)
    ax.margins(y=0.3)
    thousands(ax)
    ax.set_ylabel("connections held (all reached by a broadcast)")
    workers = cap[0]["workers"] if cap else "?"
    levels = ", ".join(f"{x:,}" for x in cfg.get("capacity", {}).get("levels", []))
    wrap_title(ax, (f"Connections held: up the ladder ({levels}) until the first failure; " if levels else
                    "Connections held (the previous harness tried the others at fewer levels); ")
               + f"fanwire {workers} workers, the others one process")
    legend(fig, servers, saturated=any_saturated(runs))
    return finish(fig, res, "Connections: handshake time, memory, rate, capacity", path, the_set)


def chart_throughput(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    for r in runs:
        r.setdefault("kind", "echo" if r["target"] == "fanwire-echo" else "chat")
    chat = [r for r in runs if r["kind"] == "chat"]
    echo = [r for r in runs if r["kind"] == "echo"]
    panels = [("64 B ping/pong (JSON, msgpack)", [r for r in chat if r["size"] <= 1024], "small"),
              ("16 KiB ping/pong (JSON, msgpack)", [r for r in chat if r["size"] > 1024], "large")]
    if echo:
        panels.append(("Plain echo (text 64 B, 16 KiB; binary 64 KiB)", echo, "echo"))
    fig, axes = new_figure(1, len(panels), 5.2 * len(panels), 5.6)
    every: list[str] = []
    for ax, (title, mine, what) in zip(axes[0], panels):
        servers = servers_in(mine)
        every += [s for s in servers if s not in every]
        settings = list(dict.fromkeys((r["size"], r["codec"]) for r in mine))
        names = [f"{size // 1024} KiB {codec}" if size >= 1024 else f"{size} B {codec}" for size, codec in settings]
        def rate(s: str, gi: int, mine: list[dict[str, Any]] = mine,
                 settings: list[tuple[int, str]] = settings) -> Any:
            return agg(pick(mine, server=s, size=settings[gi][0], codec=settings[gi][1]), _msgs), False

        bars(ax, names, servers, rate, log=what == "echo")
        if what == "small":
            ref_line(ax, DOC["small_msgs_per_s"], "documented 15,000 msg/s", DOC_STYLE)
            ref_line(ax, GOALS["small_msgs_per_s"], "goal >= 100,000 msg/s", GOAL_STYLE)
        elif what == "large":
            ref_line(ax, DOC["large_msgs_per_s"], "documented 5,000 msg/s", DOC_STYLE)
            ref_line(ax, GOALS["large_msgs_per_s"], "goal >= 30,000 msg/s", GOAL_STYLE)
        ax.set_ylabel("round trips per second (msg/s" + (", log)" if what == "echo" else ")"))
        conns = mine[0]["conns"] if mine else 0
        shapes = list(dict.fromkeys(r.get("load_shape", {}).get("inflight_per_conn", "?") for r in mine))
        inflight = " or ".join(str(x) for x in shapes)
        wrap_title(ax, f"{title}: {conns} connections x {inflight} in flight, one server core", 48)
    legend(fig, every)
    return finish(fig, res, "Throughput: pipelined round trips per second, one server core", path, the_set)


def chart_latency(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    servers = servers_in(runs)
    ref = res["config"].get("reference_rate", 20000)
    fig, axes = new_figure(1, len(servers), 4.6 * len(servers), 5.4)
    for ax, s in zip(axes[0], servers):
        mine = pick(runs, server=s)
        rates = sorted({r["offered_per_s"] for r in mine})
        ax.axhspan(DOC["latency_ms_low"], DOC["latency_ms_high"], color="#d62728", alpha=0.06)
        ax.annotate("documented 1-10 ms", (0.01, DOC["latency_ms_high"]), xycoords=("axes fraction", "data"),
                    fontsize=7, color="#d62728", va="top", xytext=(2, -2), textcoords="offset points")
        for key, (style, marker) in PCT_STYLE.items():
            def at_rate(rate: int, key: str = key, mine: list[dict[str, Any]] = mine
                        ) -> tuple[float, float, float] | None:
                return agg(pick(mine, offered_per_s=rate), _percentile(key))

            pts = series(rates, at_rate)
            if not pts:
                continue
            ax.plot([x for x, _ in pts], [v[0] for _, v in pts], style, color=COLORS.get(s), linewidth=1.4)
            for x, v in pts:
                sat = any_saturated(pick(mine, offered_per_s=x))
                ax.plot([x], [v[0]], marker, color=COLORS.get(s), markersize=5,
                        markerfacecolor="white" if sat else COLORS.get(s))
            x, v = pts[-1]
            ax.annotate(key.replace("_", "."), (x, v[0]), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        va="center", color=COLORS.get(s))
        ax.plot([ref / 1.4, ref * 1.4], [GOALS["latency_p99_ms"]] * 2, **GOAL_STYLE)
        ax.axvline(ref, color="#999999", linewidth=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        thousands(ax, "x")
        thousands(ax, "y")
        ax.set_xlabel("offered load (msg/s, log)")
        ax.set_ylabel("round-trip latency (ms, log)")
        ax.grid(True, which="both", alpha=0.2)
        wrap_title(ax, f"{LABELS.get(s, s)}, one server process", 40)
    extra: list[tuple[Any, str]] = [(Line2D([], [], color="black", linestyle=st, marker=mk),  # type: ignore[arg-type]
                                     k.replace("_", ".")) for k, (st, mk) in PCT_STYLE.items()]
    extra.append((Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle=""),
                  "hollow: saturated"))
    extra.append((Line2D([], [], **GOAL_STYLE), f"goal: p99 <= 1 ms at {ref:,} msg/s"))
    extra.append((Line2D([], [], color="#999999", linewidth=0.7), f"{ref:,} msg/s (the headline rate)"))
    legend(fig, servers, extra)
    conns = runs[0]["conns"] if runs else 0
    return finish(fig, res, f"Latency: open-loop round trips against offered load, {conns} connections, one server "
                            "core (send time from the schedule)", path, the_set)


def chart_fanout(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    if runs and "group" not in runs[0]:  # the previous harness
        for r in runs:
            r["group"] = r["subscribers"]
    single = [r for r in runs if r["target"] not in ("fanwire-redis", "fanwire-2w")]
    multi = [r for r in runs if r["target"] in ("fanwire-redis", "fanwire-2w")]
    groups = sorted({r["group"] for r in single})
    servers = servers_in(single)
    fw_workers = {r["workers"] for r in single if server_of(r) == "fanwire"}
    procs = ("one server process each" if fw_workers <= {1} else
             f"fanwire {', '.join(str(w) for w in sorted(fw_workers))} workers, the others one process")
    ncols = len(groups) + (1 if multi else 0)
    fig, axes = new_figure(2, max(1, ncols), 5.0 * max(1, ncols), 9.5)
    for gi, g in enumerate(groups):
        mine = [r for r in single if r["group"] == g]
        rates = sorted({r["rate"] for r in mine})
        names = [f"{rate}/s\n({rate * g:,} deliv/s)" for rate in rates]
        ax = axes[0][gi]

        def lat(s: str, ri: int, mine: list[dict[str, Any]] = mine, rates: list[int] = rates) -> Any:
            at = pick(mine, server=s, rate=rates[ri])
            return agg(at, _p99), any_saturated(at)

        xs = bars(ax, names, servers, lat, "{:.1f}", log=True)
        floor = [(ri, agg(pick(mine, server="floor", rate=rate), lambda r: r["latency_ms"]["p99"]))
                 for ri, rate in enumerate(rates)]
        for ri, v in floor:
            if v is not None and (ri, "fanwire") in xs:
                x = xs[(ri, "fanwire")]
                ref_line(ax, v[0] * GOALS["fanout_vs_floor"], "1.2x floor", GOAL_STYLE, x - 0.12, x + 0.12)
        if g >= 10000 and 10 in rates:
            ri = rates.index(10)
            ref_line(ax, GOALS["fanout_p99_ms"], "50 ms (the goal for the p99 to the read)", GOAL_STYLE, ri - 0.4,
                     ri + 0.4)
        stamped = bool(mine) and mine[0].get("latency_to") == "arrival"
        span = "each broadcast's send to its arrival at the socket" if stamped else "publish schedule to the read"
        ax.set_ylabel("delivery latency p99 (ms, log)")
        wrap_title(ax, f"Delivery latency p99, {g:,} subscribers, {procs} ({span})")
        ax = axes[1][gi]

        def rx(s: str, ri: int, mine: list[dict[str, Any]] = mine, rates: list[int] = rates) -> Any:
            at = pick(mine, server=s, rate=rates[ri])
            return agg(at, _delivered), any_saturated(at)

        bars(ax, names, servers, rx)
        for ri, rate in enumerate(rates):
            ref_line(ax, rate * g, "offered", {"color": "#444444", "linestyle": "-", "linewidth": 0.8},
                     ri - 0.4, ri + 0.4)
        if g >= 10000:
            ref_line(ax, GOALS["fanout_deliveries_per_s"], "goal >= 500,000 deliv/s", GOAL_STYLE)
        ax.set_ylabel("deliveries received per second")
        wrap_title(ax, f"Deliveries per second, {g:,} subscribers, {procs} (line: offered)")
    if multi:
        ax = axes[0][ncols - 1]
        targets = [t for t in ("fanwire-2w", "fanwire-redis") if any(r["target"] == t for r in multi)]
        rates = sorted({r["rate"] for r in multi})
        for t in targets:
            def p99_at(rate: int, t: str = t) -> tuple[float, float, float] | None:
                return agg(pick(multi, target=t, rate=rate), _p99)

            pts = series(rates, p99_at)
            ax.errorbar([x for x, _ in pts], [v[0] for _, v in pts],
                        yerr=[[v[0] - v[1] for _, v in pts], [v[2] - v[0] for _, v in pts]], marker="o",
                        color=COLORS.get(t), capsize=2)
            for x, v in pts:
                ax.annotate(f"{v[0]:.1f}", (x, v[0]), xytext=(4, 2), textcoords="offset points", fontsize=7)
        two = [r for r in multi if r["target"] == "fanwire-2w" and (r.get("cross_worker_ms") or {}).get("count")]
        if two:
            for key, marker in (("same_worker_ms", "^"), ("cross_worker_ms", "v")):
                def part_at(rate: int, key: str = key) -> tuple[float, float, float] | None:
                    return agg(pick(two, rate=rate), lambda r: _num(r[key].get("p99")))

                pts = series(rates, part_at)
                ax.plot([x for x, _ in pts], [v[0] for _, v in pts], marker=marker, linestyle=":",
                        color=COLORS["fanwire-2w"], alpha=0.7)
        ax.set_xticks(rates)
        ax.set_xlabel("broadcasts per second")
        ax.set_ylabel("delivery latency p99 (ms)")
        thousands(ax)
        subs = multi[0]["group"]
        wrap_title(ax, f"fanwire across workers and nodes, {subs:,} subscribers (^ same worker, v other worker)", 45)
        ax = axes[1][ncols - 1]
        for t in targets:
            def rx_at(rate: int, t: str = t) -> tuple[float, float, float] | None:
                return agg(pick(multi, target=t, rate=rate), _delivered)

            pts = series(rates, rx_at)
            ax.plot([x for x, _ in pts], [v[0] for _, v in pts], marker="o", color=COLORS.get(t))
        ax.plot(rates, [rate * subs for rate in rates], color="#444444", linewidth=0.8)
        ax.annotate("offered", (rates[-1], rates[-1] * subs), fontsize=7, ha="right", va="bottom")
        ax.set_xticks(rates)
        ax.set_xlabel("broadcasts per second")
        ax.set_ylabel("deliveries received per second")
        thousands(ax)
        wrap_title(ax, "Deliveries per second across workers and nodes")
        servers = servers + targets
    legend(fig, servers, saturated=any_saturated(runs))
    return finish(fig, res, "Fan-out: one broadcast to every subscriber, fanwire next to the raw-socket floor",
                  path, the_set)


def chart_codecs(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    servers = servers_in(runs)
    codecs = ["json", "msgpack"]
    fig, axes = new_figure(1, 3, 14, 5)

    def get(fn: Callable[[dict[str, Any]], float | None]) -> Callable[[str, int], Any]:
        return lambda s, gi: (agg(pick(runs, server=s, codec=codecs[gi]), fn), False)

    bars(axes[0][0], codecs, servers, get(lambda r: r["msgs_per_s"]))
    axes[0][0].set_ylabel("round trips per second (msg/s)")
    wrap_title(axes[0][0], "Throughput, typical ~200 B message, one server core", 45)
    bars(axes[0][1], codecs, servers, get(lambda r: r["server_us_per_msg"]), "{:.1f}")
    axes[0][1].set_ylabel("server CPU per round trip (us)")
    wrap_title(axes[0][1], "Server CPU per round trip", 45)
    bars(axes[0][2], codecs, servers,
         get(lambda r: r["wire_bytes_out_per_msg"] + (r["wire_bytes_in_per_msg"] or 0)), "{:.0f}")
    axes[0][2].set_ylabel("WebSocket bytes per round trip (request + reply)")
    wrap_title(axes[0][2], "Bytes on the wire", 45)
    legend(fig, servers)
    return finish(fig, res, "Codecs: JSON vs msgpack for a typical message", path, the_set)


def chart_scaling(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None,
                  others: Sequence[dict[str, Any]] = ()) -> Path:
    fig, axes = new_figure(1, 1, 10, 6)
    ax = axes[0][0]
    maxw = 1
    top = 0.0
    for i, r in enumerate([res, *others]):
        mine = [x for x in r["runs"] if server_of(x) == "fanwire"]
        if not mine:
            continue
        ws = sorted({x["workers"] for x in mine})
        maxw = max(maxw, *ws)
        tag = r.get("label") or "this machine"
        color = COLORS["fanwire"] if i == 0 else OTHER_RUN_COLORS[(i - 1) % len(OTHER_RUN_COLORS)]
        def at_w(w: int, mine: list[dict[str, Any]] = mine) -> tuple[float, float, float] | None:
            return agg(pick(mine, workers=w), _msgs)

        pts = series(ws, at_w)
        if not pts:
            continue
        ax.errorbar([w for w, _ in pts], [v[0] for _, v in pts],
                    yerr=[[v[0] - v[1] for _, v in pts], [v[2] - v[0] for _, v in pts]],
                    fmt="-o" if i == 0 else "--o", color=color, capsize=2,
                    label=f"fanwire, {r['env'].get('cores')} cores ({tag}, commit {str(r['env'].get('git_commit'))[:7]})")
        w, v = pts[-1]
        top = max(top, max(p[0] for _, p in pts))
        ax.annotate(f"{v[0]:,.0f}", (w, v[0]), xytext=(4, 0), textcoords="offset points", fontsize=7, color=color)
        for s in ("baseline", "baseline-uvloop"):
            base = [x for x in r["runs"] if server_of(x) == s]
            b = agg(base, _msgs)
            if b:
                ax.axhline(b[0], color=COLORS[s], linestyle="-" if i == 0 else "--", linewidth=1.2,
                           label=f"{LABELS[s]}, one process ({tag})")
                if i == 0:
                    ax.annotate(f"{LABELS[s]}: {b[0]:,.0f}", (1.0, b[0]), xycoords=("axes fraction", "data"),
                                xytext=(-2, 2), textcoords="offset points", ha="right", fontsize=7, color=COLORS[s])
    ws = list(range(1, maxw + 1))
    ax.plot(ws, [GOALS["small_msgs_per_s"] * w for w in ws], **GOAL_STYLE, label="goal: 100,000 msg/s per worker core")
    ax.set_yscale("log")
    thousands(ax)
    ax.set_xlabel("server workers")
    ax.set_ylabel("round trips per second, 64 B JSON (msg/s, log)")
    ax.set_xticks(ws)
    ax.grid(True, which="both", alpha=0.2)
    wrap_title(ax, "Throughput against worker count (server and load share the cores once workers >= cores)", 90)
    handles, labels = ax.get_legend_handles_labels()
    _LEGENDS[id(fig)] = (list(handles), list(labels))
    return finish(fig, res, "Scaling: round trips per second against workers", path, the_set)


def chart_scale(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    fig, axes = new_figure(1, 4, 16, 4.8)
    if not runs:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return finish(fig, res, "Scale: not run", path, the_set)
    conns = runs[0]["conns"]
    panels: list[tuple[str, Callable[[dict[str, Any]], float | None], str, float | None, str]] = [
        ("server memory per idle connection (KB)", lambda r: r["rss_per_conn_kb"], "{:.2f}",
         GOALS["scale_rss_per_conn_kb"], "goal <= 4 KB"),
        ("connections opened per second", lambda r: r["conn_per_s"], "{:,.0f}", None, ""),
        ("one broadcast to all: p99 of its arrival (ms)", lambda r: (r["broadcast"] or {}).get("ms", {}).get("p99"),
         "{:,.0f}", GOALS["scale_broadcast_p99_ms"], "goal: p99 <= 1 s"),
        ("server CPU while idle, heartbeats (% of one core)", lambda r: r["hold_server_cpu"]["cpu_pct"], "{:.1f}",
         None, ""),
    ]
    for ax, (label, fn, fmt, goal, goal_text) in zip(axes[0], panels):
        def one(s: str, gi: int, fn: Callable[[dict[str, Any]], float | None] = fn) -> Any:
            return agg(runs, fn), False

        bars(ax, [f"{conns:,} conns"], ["fanwire"], one, fmt)
        if goal is not None:
            ref_line(ax, goal, goal_text, GOAL_STYLE)
        ax.set_ylabel(label)
        wrap_title(ax, label, 40)
    r0 = runs[0]
    title = (f"Scale: {conns:,} connections to fanwire x{r0['workers']} ({r0['held_alive']:,} held, {r0['dropped']:,} "
             f"dropped in a {r0['hold_s']:.0f} s heartbeat hold)")
    legend(fig, ["fanwire"])
    return finish(fig, res, title, path, the_set)


def chart_recovery(res: dict[str, Any], path: Path, the_set: dict[str, Any] | None = None) -> Path:
    runs = res["runs"]
    summary = res.get("summary", {})
    chaos = [r for r in runs if r.get("kind") == "chaos"]
    fig, axes = new_figure(1, 4, 18, 5.6)
    # 1: the delivered fraction, run by run, with every failure count beside it
    ax = axes[0][0]
    if chaos:
        xs = list(range(len(chaos)))
        vals = [r["delivered_pct"] or 0.0 for r in chaos]
        lo = min(min(vals) - 0.05, 99.9)
        for x, r, v in zip(xs, chaos, vals):
            ok = r.get("goal_met")
            ax.bar(x, v - lo, 0.6, bottom=lo, color=COLORS["recovery-cuts"] if ok else "#d62728",
                   hatch=None if r.get("valid", True) else "xx", edgecolor="white")
            text = (f"{v:.2f} %\n{r['completeness']['owed']:,} owed\n{r['duplicates']} dup.\n{r['out_of_order']} "
                    f"out of order\n{r['history_lost']} hist. lost")
            ax.annotate(text, (x, v), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"run {r['repeat'] + 1}" + ("" if r.get("valid", True) else "\n(invalid)")
                            for r in chaos], fontsize=8)
        ax.set_ylim(lo, 100 + (100 - lo) * 1.3)
        ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= 100.0])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.2f}"))
        ref_line(ax, GOALS["recovery_delivered_pct"], "goal: 100.00 %", GOAL_STYLE)
        r0 = chaos[0]
        wrap_title(ax, f"Delivered (each owed offset exactly once, in order): {r0['subscribers']:,} subscribers x "
                       f"{r0['streams']} streams, each cut every {r0['cut_every_s']} s, fanwire x{r0['workers']}", 48)
    else:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("owed deliveries that arrived (%)")
    # 2: the time to recover
    ax = axes[0][1]
    keys = [("recover_ms", "p50"), ("recover_ms", "p99"), ("recover_ms", "max"), ("handshake_ms", "p50"),
            ("handshake_ms", "p99")]

    def rec(s: str, gi: int) -> Any:
        field, key = keys[gi]
        return agg(chaos, lambda r: _num(r[field].get(key))), any_saturated(chaos)

    bars(ax, ["p50", "p99", "max", "handshake\np50", "handshake\np99"], ["recovery-cuts"], rec, "{:.1f}", log=True)
    ax.set_ylabel("time to recover (ms, log)")
    n = sum(r.get("recoveries", 0) for r in chaos)
    wrap_title(ax, f"Time to recover: reconnect (TCP connect) to caught up (last joined), {n:,} recoveries; "
                   "and its handshake part", 48)

    # 3 and 4: the price of history, on vs off
    price = [r for r in runs if r.get("kind") in ("pingpong", "fanout")]
    servers = ["history-on", "history-off"]
    fo = [r for r in price if r["kind"] == "fanout"]
    groups = list(dict.fromkeys((r["group"], r["rate"]) for r in fo))
    ax = axes[0][2]

    def cpu(s: str, gi: int) -> Any:
        at = [r for r in fo if (r["group"], r["rate"]) == groups[gi] and r["history"] == s.split("-")[1]]
        return agg(at, lambda r: _num(r.get("server_us_per_delivery"))), any_saturated(at)

    names = []
    for subs, rate in groups:
        ratio = (summary.get(f"fanout_cpu_ratio_{subs // 1000}k_{rate}" if subs >= 1000 and subs % 1000 == 0
                             else f"fanout_cpu_ratio_{subs}_{rate}") or {}).get("fanwire")
        names.append(f"{subs:,} x {rate}/s" + (f"\non/off {ratio:.3f}x" if isinstance(ratio, (int, float)) else ""))
    if groups:
        bars(ax, names, servers, cpu, "{:.2f}")
    else:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("server CPU per delivery (us)")
    wrap_title(ax, "The price of history in fan-out: server CPU per delivery, one server core "
                   f"(goal: on <= {GOALS['recovery_cpu_ratio']:.2f}x off)", 48)
    ax = axes[0][3]
    pp = [r for r in price if r["kind"] == "pingpong"]

    def rtt(s: str, gi: int) -> Any:
        at = [r for r in pp if r["history"] == s.split("-")[1]]
        return agg(at, _msgs), any_saturated(at)

    ratio = (summary.get("pingpong_ratio") or {}).get("fanwire")
    size = pp[0]["size"] if pp else 64
    bars(ax, [f"{size} B JSON ping/pong" + (f"\non/off {ratio:.3f}x" if isinstance(ratio, (int, float)) else "")],
         servers, rtt)
    ax.set_ylabel("round trips per second (msg/s)")
    wrap_title(ax, "Ping/pong with history on and off, one server core (goal: unchanged, on >= "
                   f"{GOALS['recovery_pingpong_ratio']:.2f}x off)", 48)
    legend(fig, ["recovery-cuts", *servers], saturated=any_saturated(runs))
    return finish(fig, res, "Recovery: nothing lost across repeated connection cuts, and the price of history",
                  path, the_set)


CHARTS: dict[str, Callable[[dict[str, Any], Path, dict[str, Any] | None], Path]] = {
    "connect": chart_connect,
    "throughput": chart_throughput,
    "latency": chart_latency,
    "fanout": chart_fanout,
    "recovery": chart_recovery,
    "codecs": chart_codecs,
    "scaling": chart_scaling,
    "scale": chart_scale,
}


def draw_all(out: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Draw every chart whose JSON is in ``out``; returns the files written."""
    results = load_results(out)
    the_set = set_of(results)
    written = []
    for name, fn in CHARTS.items():
        main = results.get(name)
        labelled = [r for stem, r in sorted(results.items()) if r["scenario"] == name and stem != name]
        res = main or (labelled[0] if labelled else None)
        if res is None:
            log(f"charts: no {name}.json in {out}; skipped")
            continue
        path = out / f"{name}.png"
        try:
            if name == "scaling":
                written.append(chart_scaling(res, path, the_set, [r for r in labelled if r is not res]))
            else:
                written.append(fn(res, path, the_set))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            plt.close("all")
            log(f"charts: {name}: cannot draw from {name}.json ({type(exc).__name__}: {exc})")
    return written
