// dashboard.js: live figures from the `$stats` room (one snapshot per second while subscribed).
// Rates come from differencing consecutive snapshots (stats.js); charts are plain canvas (chart.js).
// Unknown or missing families only leave their figure empty.

import { FanwireClient } from "../fanwire.js";
import { LineChart } from "./chart.js";
import { $, el, keepWsParam, pageWsUrl, stateLine, takeTokenFromUrl } from "./common.js";
import { byLabel, bytes, compact, deliveriesPerSecond, family, parseLabels, StatsView, total } from "./stats.js";

const STATS_ROOM = "$stats";
const STALE_MS = 3000;

const { url, note } = pageWsUrl();
let token = takeTokenFromUrl();

const client = new FanwireClient(url, { token: () => token, rooms: [], broadcasts: false });
const view = new StatsView();
/** For tests and the browser console. */
globalThis.fanwireDashboard = { client, view };

keepWsParam(/** @type {HTMLAnchorElement} */ (document.getElementById("to-chat")));
const authBox = /** @type {HTMLDetailsElement} */ ($("auth"));
const authError = $("auth-error");
const tokenInput = /** @type {HTMLInputElement} */ ($("token"));
const noticeEl = $("notice");
if (note) showNotice(note);

/** @param {string} id @param {string} legendId @param {(v: number) => string} [format] */
const chart = (id, legendId, format) => new LineChart(/** @type {HTMLCanvasElement} */ ($(id)), { legend: $(legendId), format });
const charts = {
  conns: chart("c-conns", "l-conns"),
  in: chart("c-in", "l-in"),
  out: chart("c-out", "l-out"),
  deliveries: chart("c-deliveries", "l-deliveries"),
  bytes: chart("c-bytes", "l-bytes", bytes),
  bus: chart("c-bus", "l-bus"),
  lag: chart("c-lag", "l-lag", (v) => (v < 10 ? v.toFixed(2) : compact(v))),
  problems: chart("c-problems", "l-problems"),
};

// ---------------------------------------------------------------------------------------------------
// Connection

const showState = stateLine($("state"));
let lastSnapshotAt = 0;
let connectedAt = 0;
client.on("state", (d) => {
  showState(d);
  if (d.state === "connected") {
    connectedAt = Date.now();
    authError.hidden = true;
  }
  if (d.state === "closed" && d.error) {
    const e = d.error;
    authError.textContent = e.kind === "refused"
      ? `The server refused the connection. ${e.message}. The dashboard needs an admin token (python -m server token --admin ...): enter it below or open the page with ?token=...`
      : `Closed: ${e.message}`;
    authError.hidden = false;
    authBox.open = true;
  }
});
client.on("welcome", (w) => {
  $("node").textContent = `connected to ${w.node ? `node ${w.node}, ` : ""}worker ${w.worker}`;
});
client.on("error", (m) => {
  if (m.code === "forbidden") {
    showNotice(`The ${STATS_ROOM} room needs an admin token (python -m server token --admin ...): ${m.detail ?? ""}`);
    authBox.open = true;
  } else if (m.code === "bad_room") {
    showNotice(`This server has no ${STATS_ROOM} room: ${m.detail ?? ""}`);
  } else {
    showNotice(`error ${m.code}: ${m.detail ?? ""}`);
  }
});

client.on("publication", (m) => {
  if (m.room !== STATS_ROOM || !m.data || typeof m.data !== "object") return;
  if (!view.add(m.data)) return;
  if (!lastSnapshotAt) hideNotice();
  lastSnapshotAt = Date.now();
  render();
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = tokenInput.value.trim() || null;
  tokenInput.value = "";
  authError.hidden = true;
  authBox.open = false;
  client.close();
  client.forgetSession();
  client.connect().catch(() => { /* shown by the state handler */ });
});

// ---------------------------------------------------------------------------------------------------
// Rendering

/** @param {string} id @param {number|null} value @param {string} text */
function tile(id, value, text) {
  const t = $(id);
  const v = /** @type {HTMLElement} */ (t.querySelector(".value"));
  v.textContent = text;
  t.dataset.value = value === null || !Number.isFinite(value) ? "" : String(value);
}

/** @param {Record<string, Record<string, number>>|null} rates @param {string} name */
const rateTotal = (rates, name) => (rates && rates[name] ? total(rates[name]) : null);
/** @param {Record<string, Record<string, number>>|null} rates @param {string} name @param {string} label */
const rateBy = (rates, name, label) => (rates ? Object.fromEntries(byLabel(rates[name] ?? {}, label, "(none)")) : {});

function render() {
  const now = Date.now();
  const v = view.view(now);
  if (!v) return;
  const f = v.families;
  const r = v.rates;
  const t = v.ts_ms;
  const multiNode = new Set(v.workers.map((w) => w.node)).size > 1;
  const wname = (/** @type {{node: string, id: number}} */ w) => (multiNode ? `${w.node}/worker ${w.id}` : `worker ${w.id}`);

  // header
  $("node").textContent = `${v.nodes.length > 1 ? `nodes ${v.nodes.join(", ")}` : `node ${v.nodes[0] ?? "?"}`} · via worker ${client.worker ?? "?"}`;
  const bus = $("bus");
  bus.textContent = `bus ${v.bus.name}${v.bus.up === null ? "" : v.bus.up ? " up" : " DOWN"}${v.bus.nodes.length ? ` · nodes ${v.bus.nodes.join(", ")}` : ""}`;
  bus.dataset.up = v.bus.up === null ? "unknown" : String(v.bus.up);

  // tiles
  const connsFam = family(f, "fanwire_connections");
  const conns = Object.keys(connsFam).length ? total(connsFam) : v.workers.reduce((a, w) => a + w.connections, 0);
  tile("t-connections", conns, compact(conns));
  tile("t-workers", v.workers.length, String(v.workers.length));
  const inRate = rateTotal(r, "fanwire_messages_in_total");
  const outRate = rateTotal(r, "fanwire_messages_out_total");
  const deliveries = deliveriesPerSecond(r);
  tile("t-in", inRate, compact(inRate));
  tile("t-out", outRate, compact(outRate));
  tile("t-deliveries", deliveries, compact(deliveries));
  const bIn = rateTotal(r, "fanwire_bytes_in_total");
  const bOut = rateTotal(r, "fanwire_bytes_out_total");
  tile("t-bytes-in", bIn, bytes(bIn));
  tile("t-bytes-out", bOut, bytes(bOut));
  const busIn = rateTotal(r, "fanwire_bus_frames_in_total");
  const busOut = rateTotal(r, "fanwire_bus_frames_out_total");
  tile("t-bus", busIn === null || busOut === null ? null : busIn + busOut, `${compact(busIn)} / ${compact(busOut)}`);
  const drops = r ? (rateTotal(r, "fanwire_dropped_messages_total") ?? 0) + (rateTotal(r, "fanwire_bus_dropped_total") ?? 0) : null;
  tile("t-drops", drops, compact(drops));
  const errors = r ? rateTotal(r, "fanwire_errors_total") ?? 0 : null;
  tile("t-errors", errors, compact(errors));
  const slow = total(family(f, "fanwire_slow_consumers_total"));
  tile("t-slow", slow, compact(slow));
  const hb = total(family(f, "fanwire_heartbeat_timeouts_total"));
  tile("t-heartbeat", hb, compact(hb));
  const refusedFam = family(f, "fanwire_handshakes_refused_total");
  const refused = total(Object.keys(refusedFam).length ? refusedFam : family(f, "fanwire_handshakes_failed_total"));
  tile("t-refused", refused, compact(refused));
  const lags = v.workers.map((w) => w.loop_lag_ms).filter((x) => x !== null);
  const maxLag = lags.length ? Math.max(.../** @type {number[]} */ (lags)) : null;
  tile("t-lag", maxLag, maxLag === null ? "–" : `${maxLag.toFixed(maxLag < 10 ? 2 : 0)} ms`);

  // charts
  charts.conns.push(t, Object.fromEntries(v.workers.map((w) => [wname(w), w.connections])));
  charts.lag.push(t, Object.fromEntries(v.workers.filter((w) => w.loop_lag_ms !== null).map((w) => [wname(w), w.loop_lag_ms])));
  if (r) {
    charts.in.push(t, rateBy(r, "fanwire_messages_in_total", "type"));
    charts.out.push(t, rateBy(r, "fanwire_messages_out_total", "type"));
    charts.deliveries.push(t, { deliveries: deliveries ?? 0 });
    charts.bytes.push(t, { in: bIn ?? 0, out: bOut ?? 0,
      "bus in": rateTotal(r, "fanwire_bus_bytes_in_total"), "bus out": rateTotal(r, "fanwire_bus_bytes_out_total") });
    charts.bus.push(t, { "frames in": busIn, "frames out": busOut,
      "redis in": rateTotal(r, "fanwire_redis_messages_in_total"), "redis out": rateTotal(r, "fanwire_redis_messages_out_total") });
    /** @type {Record<string, number>} */
    const problems = {};
    for (const [k, x] of byLabel(r.fanwire_dropped_messages_total ?? {}, "reason", "(none)")) problems[`dropped: ${k}`] = x;
    for (const [k, x] of byLabel(r.fanwire_bus_dropped_total ?? {}, "reason", "(none)")) problems[`bus dropped: ${k}`] = x;
    for (const [k, x] of byLabel(r.fanwire_errors_total ?? {}, "code", "(none)")) problems[`error: ${k}`] = x;
    problems["slow consumers"] = rateTotal(r, "fanwire_slow_consumers_total") ?? 0;
    problems["heartbeat timeouts"] = rateTotal(r, "fanwire_heartbeat_timeouts_total") ?? 0;
    charts.problems.push(t, problems);
  }
  for (const c of Object.values(charts)) c.draw();

  // tables
  $("workers").querySelector("tbody")?.replaceChildren(...v.workers.map((w) => {
    const tr = el("tr", "", el("td", "", w.node), el("td", "", String(w.id)), el("td", "", w.pid === null ? "–" : String(w.pid)),
      el("td", "num", compact(w.connections)),
      el("td", "num", w.loop_lag_ms === null ? "–" : `${w.loop_lag_ms.toFixed(2)} ms`));
    tr.dataset.worker = `${w.node}/${w.id}`;
    return tr;
  }));
  renderNodes(v);
  renderProblems(f, r);
}

/** @param {NonNullable<ReturnType<StatsView["view"]>>} v */
function renderNodes(v) {
  const perNodeConns = byLabel(family(v.families, "fanwire_cluster_node_connections"), "node");
  const perNodeWorkers = byLabel(family(v.families, "fanwire_cluster_node_workers"), "node");
  const names = new Set([...v.nodes, ...perNodeConns.keys(), ...v.workers.map((w) => w.node)]);
  const rows = [...names].filter((n) => n).sort().map((n) => {
    const ws = v.workers.filter((w) => w.node === n);
    const conns = perNodeConns.get(n) ?? ws.reduce((a, w) => a + w.connections, 0);
    const workers = perNodeWorkers.get(n) ?? ws.length;
    return el("tr", "", el("td", "", n), el("td", "num", compact(conns)), el("td", "num", compact(workers)));
  });
  $("nodes").querySelector("tbody")?.replaceChildren(...rows);
}

/** What the problems table lists: family, label that splits it, title. */
const PROBLEMS = [
  ["fanwire_dropped_messages_total", "reason", "dropped messages"],
  ["fanwire_bus_dropped_total", "reason", "bus frames dropped"],
  ["fanwire_errors_total", "code", "error replies"],
  ["fanwire_slow_consumers_total", "", "slow consumers"],
  ["fanwire_heartbeat_timeouts_total", "", "heartbeat timeouts"],
  ["fanwire_handshakes_refused_total", "reason", "refused handshakes"],
  ["fanwire_handshakes_failed_total", "status", "failed handshakes"],
  ["fanwire_rate_limited_total", "limit", "rate limited"],
  ["fanwire_policy_closes_total", "reason", "policy closes (1008)"],
  ["fanwire_connections_closed_total", "code", "closes"],
];

/** @param {Record<string, Record<string, number>>} f @param {Record<string, Record<string, number>>|null} r */
function renderProblems(f, r) {
  const rows = [];
  for (const [name, label, title] of PROBLEMS) {
    const fam = family(f, name);
    const keys = Object.keys(fam);
    if (!keys.length && label) continue; // nothing counted yet
    const totals = label ? byLabel(fam, label, "(none)") : new Map([["", total(fam)]]);
    const rates = label ? byLabel(r?.[name] ?? {}, label, "(none)") : new Map([["", total(r?.[name] ?? {})]]);
    for (const [by, value] of [...totals].sort((a, b) => b[1] - a[1])) {
      const rate = r ? rates.get(by) ?? 0 : null;
      const tr = el("tr", value > 0 && label !== "code" || (rate ?? 0) > 0 ? "hot" : "",
        el("td", "", title), el("td", "", by), el("td", "num", compact(value)), el("td", "num", compact(rate)));
      tr.dataset.family = name;
      tr.dataset.by = by;
      rows.push(tr);
    }
  }
  $("problems").querySelector("tbody")?.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------------

/** @param {string} text */
function showNotice(text) {
  noticeEl.textContent = text;
  noticeEl.hidden = false;
}
function hideNotice() {
  noticeEl.hidden = true;
}

setInterval(() => {
  const age = $("age");
  if (!lastSnapshotAt) {
    age.textContent = client.connected ? `waiting for ${STATS_ROOM}…` : "no data";
    age.dataset.stale = "true";
    if (client.connected && Date.now() - connectedAt > 5000) {
      age.textContent = `no ${STATS_ROOM} snapshot yet: does this server publish ${STATS_ROOM}?`;
    }
    return;
  }
  const s = (Date.now() - lastSnapshotAt) / 1000;
  age.textContent = `updated ${s.toFixed(1)} s ago`;
  age.dataset.stale = String(Date.now() - lastSnapshotAt > STALE_MS);
}, 250);

window.addEventListener("resize", () => {
  for (const c of Object.values(charts)) c.draw();
});

// parseLabels is re-exported for the console: fanwireDashboard.parseLabels('type="chat"')
globalThis.fanwireDashboard.parseLabels = parseLabels;

client.join(STATS_ROOM, { recover: false }).catch(() => { /* shown by the error handler */ });
client.connect().catch(() => { /* shown by the state handler */ });
