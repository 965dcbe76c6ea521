"""Charts, drawn from the result JSON alone (``python -m bench charts``): one PNG per scenario.

Every chart has a title, units on its axes, the documented target as a red dashed reference line, our
goal as a green dotted one, and fanwire and the baseline side by side in fixed colours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .report import load_results
from .targets import DOC

__all__ = ["CHARTS", "draw_all"]

COLORS = {"fanwire": "tab:blue", "baseline": "tab:orange", "fanwire-echo": "tab:cyan", "fanwire-redis": "tab:red"}
LABELS = {"fanwire": "fanwire", "baseline": "baseline (websockets serve)", "fanwire-echo": "fanwire --mode echo",
          "fanwire-redis": "fanwire, Redis bus (2 nodes x 1 worker)"}
OTHER_RUN_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive")
DOC_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": "--", "linewidth": 1.4}
GOAL_STYLE: dict[str, Any] = {"color": "tab:green", "linestyle": ":", "linewidth": 1.8}


def _ref(ax: Axes, y: float, text: str, style: dict[str, Any]) -> None:
    ax.axhline(y, label=text, **style)


def _subtitle(res: dict[str, Any]) -> str:
    e = res["env"]
    quick = " -- QUICK RUN, not a measurement" if res.get("quick") else ""
    return f"{e.get('cpu_model')}, {e.get('cores')} cores, {e.get('date', '')[:10]}{quick}"


def _finish(fig: Figure, res: dict[str, Any], title: str, path: Path) -> Path:
    fig.suptitle(f"{title}\n{_subtitle(res)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grouped_bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float | None]],
                  fmt: str = "{:,.0f}") -> None:
    n = max(1, len(series))
    width = 0.8 / n
    for i, (target, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, vals, width, label=LABELS.get(target, target), color=COLORS.get(target))
        for b, v in zip(bars, values):
            if v is not None:
                ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.margins(y=0.25)  # room for the value labels and the legend


def _targets_in(runs: Sequence[dict[str, Any]]) -> list[str]:
    order = ["fanwire", "baseline", "fanwire-echo"]
    present = {r["target"] for r in runs}
    return [t for t in order if t in present] + sorted(present - set(order))


# --- one function per scenario -----------------------------------------------------------------------


def chart_connect(res: dict[str, Any], path: Path) -> Path:
    runs = res["runs"]
    levels: list[tuple[int, Any]] = []
    for r in runs:
        key = (r["conns"], r["rate"])
        if key not in levels:
            levels.append(key)
    names = [f"{c:,} conns\n@{rate or 'max'} conn/s" for c, rate in levels]
    targets = _targets_in(runs)

    def series(get: Callable[[dict[str, Any]], float | None]) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for t in targets:
            vals: list[float | None] = []
            for c, rate in levels:
                m = [r for r in runs if r["target"] == t and r["conns"] == c and r["rate"] == rate]
                vals.append(get(m[0]) if m else None)
            out[t] = vals
        return out

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    _grouped_bars(ax, names, series(lambda r: r["handshake_ms"]["p99"]), "{:.2f}")
    _ref(ax, DOC["handshake_ms"], "documented ~10 ms", DOC_STYLE)
    _ref(ax, 2.0, "goal: p99 <= 2 ms", GOAL_STYLE)
    ax.set_yscale("log")
    ax.set_ylabel("handshake time p99 (ms, log)")
    ax.set_title("Handshake time p99 (TCP connect to 101)")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    _grouped_bars(ax, names, series(lambda r: r["rss_per_conn_kb"]), "{:.1f}")
    _ref(ax, DOC["rss_per_conn_kb"], "documented 16 KB", DOC_STYLE)
    _ref(ax, 6.0, "goal <= 6 KB", GOAL_STYLE)
    ax.set_ylabel("server RSS per idle connection (KB)")
    ax.set_title("Memory per idle connection")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    _grouped_bars(ax, names, series(lambda r: r["conn_per_s"]))
    ax.set_ylabel("connections opened per second (conn/s)")
    ax.set_title("Connection rate (arrival rate capped where given)")
    ax.legend(fontsize=7)

    ax = axes[1][1]
    _grouped_bars(ax, names, series(lambda r: r["broadcast"]["ms"]["max"]), "{:.1f}")
    ax.set_ylabel("time until the last connection has it (ms)")
    held = {t: max([r["conns"] for r in runs if r["target"] == t and r["held_all"]], default=0) for t in targets}
    ax.set_title("One broadcast reaching every connection\nconnections held: "
                 + ", ".join(f"{t} {n:,}" for t, n in held.items()) + " (documented 5,000+, goal >= 60,000)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return _finish(fig, res, "Connections", path)


def chart_throughput(res: dict[str, Any], path: Path) -> Path:
    runs = res["runs"]
    targets = _targets_in(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, large in zip(axes, (False, True)):
        mine = [r for r in runs if (r["size"] > 1024) == large]
        codecs = sorted({r["codec"] for r in mine}, key=lambda c: c != "json")
        ser: dict[str, list[float | None]] = {}
        for t in targets:
            ser[t] = [next((r["msgs_per_s"] for r in mine if r["target"] == t and r["codec"] == c), None)
                      for c in codecs]
        _grouped_bars(ax, codecs, ser)
        if large:
            _ref(ax, DOC["large_msgs_per_s"], "documented 5,000 msg/s", DOC_STYLE)
            _ref(ax, 30000, "goal >= 30,000 msg/s", GOAL_STYLE)
        else:
            _ref(ax, DOC["small_msgs_per_s"], "documented 15,000 msg/s", DOC_STYLE)
            _ref(ax, 100000, "goal >= 100,000 msg/s per worker core", GOAL_STYLE)
        size = mine[0]["size"] if mine else 0
        ax.set_title(f"{size:,} B messages, {mine[0]['conns'] if mine else 0} connections, pipelined")
        ax.set_ylabel("round trips per second (msg/s)")
        ax.set_xlabel("codec (one server worker / one process)")
        ax.legend(fontsize=7)
    return _finish(fig, res, "Throughput: ping/pong round trips", path)


def chart_latency(res: dict[str, Any], path: Path) -> Path:
    runs = res["runs"]
    fig, ax = plt.subplots(figsize=(10, 6))
    ax.axhspan(1.0, 10.0, color="tab:red", alpha=0.07, label="documented 1-10 ms")
    _ref(ax, 1.0, "goal: p99 <= 1 ms at 20k msg/s", GOAL_STYLE)
    ax.axvline(res["config"].get("reference_rate", 20000), color="grey", linewidth=0.8)
    for t in _targets_in(runs):
        mine = sorted((r for r in runs if r["target"] == t), key=lambda r: r["offered_per_s"])
        xs = [r["offered_per_s"] for r in mine]
        for key, style in (("p50", ":"), ("p99", "-"), ("p99_9", "--")):
            ys = [r["latency_ms"][key] for r in mine]
            ax.plot(xs, ys, style, marker="o", markersize=4, color=COLORS.get(t),
                    label=f"{LABELS.get(t, t)} {key.replace('_', '.')}")
        sat = [r for r in mine if r["saturated"]]
        if sat:
            ax.scatter([r["offered_per_s"] for r in sat], [r["latency_ms"]["p99"] for r in sat], marker="x",
                       s=80, color="black", zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (msg/s, log; x = saturated)")
    ax.set_ylabel("round-trip latency (ms, log)")
    ax.set_title("Open-loop latency against offered load (send time from the schedule)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.2)
    return _finish(fig, res, "Latency", path)


def chart_fanout(res: dict[str, Any], path: Path) -> Path:
    runs = res["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    subs = sorted({r["subscribers"] for r in runs})
    styles = ["-", "--", "-.", ":"]
    ax = axes[0]
    top = max((r["offered_deliveries_per_s"] for r in runs), default=1)
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="all delivered")
    for t in _targets_in(runs):
        for i, n in enumerate(subs):
            mine = sorted((r for r in runs if r["target"] == t and r["subscribers"] == n),
                          key=lambda r: r["offered_deliveries_per_s"])
            if mine:
                ax.plot([r["offered_deliveries_per_s"] for r in mine], [r["deliveries_per_s"] for r in mine],
                        styles[i % 4], marker="o", color=COLORS.get(t), label=f"{LABELS.get(t, t)}, {n:,} subs")
    _ref(ax, DOC["fanout_deliveries_per_s"], "goal >= 500,000 deliveries/s", GOAL_STYLE)
    ax.set_xlabel("offered deliveries per second (broadcasts/s x subscribers)")
    ax.set_ylabel("deliveries per second received")
    ax.set_title("Deliveries per second")
    ax.legend(fontsize=7)
    ax = axes[1]
    for t in _targets_in(runs):
        for i, n in enumerate(subs):
            mine = sorted((r for r in runs if r["target"] == t and r["subscribers"] == n),
                          key=lambda r: r["offered_deliveries_per_s"])
            if not mine:
                continue
            xs = [r["offered_deliveries_per_s"] for r in mine]
            ax.plot(xs, [r["latency_ms"]["p99"] for r in mine], styles[i % 4], marker="o", color=COLORS.get(t),
                    label=f"{LABELS.get(t, t)}, {n:,} subs, p99")
            if t == "fanwire" and any(r["cross_worker_ms"]["count"] for r in mine):
                ax.plot(xs, [r["same_worker_ms"]["p99"] for r in mine], styles[i % 4], marker="^",
                        color="tab:purple", alpha=0.7, label=f"fanwire, {n:,} subs, same-worker p99")
                ax.plot(xs, [r["cross_worker_ms"]["p99"] for r in mine], styles[i % 4], marker="v",
                        color="tab:green", alpha=0.7, label=f"fanwire, {n:,} subs, cross-worker p99")
    _ref(ax, DOC["fanout_p99_ms"], "goal: p99 <= 50 ms", DOC_STYLE)
    ax.set_yscale("log")
    ax.set_xlabel("offered deliveries per second")
    ax.set_ylabel("delivery latency p99 (ms, log)")
    ax.set_title("Delivery latency (publish schedule to arrival)")
    ax.legend(fontsize=6)
    return _finish(fig, res, "Fan-out: broadcast to every subscriber", path)


def chart_codecs(res: dict[str, Any], path: Path) -> Path:
    runs = res["runs"]
    targets = _targets_in(runs)
    codecs = ["json", "msgpack"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))

    def ser(get: Callable[[dict[str, Any]], float | None]) -> dict[str, list[float | None]]:
        return {t: [next((get(r) for r in runs if r["target"] == t and r["codec"] == c), None) for c in codecs]
                for t in targets}

    _grouped_bars(axes[0], codecs, ser(lambda r: r["msgs_per_s"]))
    _ref(axes[0], DOC["small_msgs_per_s"], "documented 15,000 msg/s", DOC_STYLE)
    axes[0].set_ylabel("round trips per second (msg/s)")
    axes[0].set_title("Throughput, typical message")
    _grouped_bars(axes[1], codecs, ser(lambda r: r["server_us_per_msg"]), "{:.1f}")
    _ref(axes[1], 10.0, "goal <= 10 us (100k msg/s per core)", GOAL_STYLE)
    axes[1].set_ylabel("server CPU per round trip (us)")
    axes[1].set_title("Server CPU per message")
    _grouped_bars(axes[2], codecs, ser(lambda r: r["wire_bytes_out_per_msg"] + (r["wire_bytes_in_per_msg"] or 0)),
                  "{:.0f}")
    axes[2].set_ylabel("WebSocket bytes per round trip (request + reply)")
    axes[2].set_title("Bytes on the wire")
    for ax in axes:
        ax.legend(fontsize=7)
    return _finish(fig, res, "Codecs: JSON vs msgpack", path)


def chart_scaling(res: dict[str, Any], path: Path, others: Sequence[dict[str, Any]] = ()) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    maxw = 1
    for i, r in enumerate([res, *others]):
        mine = sorted((x for x in r["runs"] if x["target"] == "fanwire"), key=lambda x: x["workers"])
        if not mine:
            continue
        maxw = max(maxw, *(x["workers"] for x in mine))
        tag = r.get("label") or "this machine"
        color = COLORS["fanwire"] if i == 0 else OTHER_RUN_COLORS[(i - 1) % len(OTHER_RUN_COLORS)]
        ax.plot([x["workers"] for x in mine], [x["msgs_per_s"] for x in mine], "-" if i == 0 else "--",
                marker="o", color=color, label=f"fanwire, {r['env'].get('cores')} cores ({tag})")
        base = [x for x in r["runs"] if x["target"] == "baseline"]
        if base:
            ax.axhline(base[0]["msgs_per_s"], color=COLORS["baseline"], linestyle="-" if i == 0 else "--",
                       label=f"baseline (1 process), {r['env'].get('cores')} cores")
    ws = list(range(1, maxw + 1))
    ax.plot(ws, [100000 * w for w in ws], **GOAL_STYLE, label="goal: 100,000 msg/s per worker core")
    _ref(ax, DOC["small_msgs_per_s"], "documented 15,000 msg/s", DOC_STYLE)
    ax.set_xlabel("server workers")
    ax.set_ylabel("round trips per second, 64 B JSON (msg/s)")
    ax.set_xticks(ws)
    ax.set_title("Throughput against worker count (server and load share cores once workers >= cores)")
    ax.legend(fontsize=7)
    return _finish(fig, res, "Scaling", path)


CHARTS: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    "connect": chart_connect,
    "throughput": chart_throughput,
    "latency": chart_latency,
    "fanout": chart_fanout,
    "codecs": chart_codecs,
    "scaling": chart_scaling,
}


def draw_all(out: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Draw every chart whose JSON is in ``out``; returns the files written."""
    results = load_results(out)
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
                written.append(chart_scaling(res, path, [r for r in labelled if r is not res]))
            else:
                written.append(fn(res, path))
        except (KeyError, ValueError, TypeError) as exc:
            log(f"charts: {name}: cannot draw from {name}.json ({type(exc).__name__}: {exc})")
    return written
