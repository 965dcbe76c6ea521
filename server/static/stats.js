// stats.js: pure helpers of the dashboard (no DOM): label parsing, counter rates from consecutive
// `$stats` snapshots (counter resets never give negative rates), and merging of several publishers.
//
// A snapshot (docs/browser.md): {ts_ms, node, bus: {name, up, nodes}, workers: [{id, node, pid,
// connections, loop_lag_ms}], families: {"<prometheus family>": {"<label text>": value}}}.

/** @typedef {Record<string, Record<string, number>>} Families */
/**
 * @typedef {object} Snapshot
 * @property {number} ts_ms
 * @property {string} [node]
 * @property {{name?: string, up?: boolean, nodes?: string[]}} [bus]
 * @property {Array<{id: number, node?: string, pid?: number, connections?: number, loop_lag_ms?: number}>} [workers]
 * @property {Families} [families]
 */

/** Message types whose output counts as deliveries (fan-out to subscribers). */
export const DELIVERY_TYPES = Object.freeze(["chat", "broadcast", "publication"]);

/**
 * Parse a Prometheus label text: `type="chat",node="a"` -> {type: "chat", node: "a"}; "" -> {}.
 * Escapes \\ \" \n are understood; anything unparsable yields what was read so far.
 * @param {string} text @returns {Record<string, string>}
 */
export function parseLabels(text) {
  /** @type {Record<string, string>} */
  const out = {};
  const s = String(text ?? "");
  let i = 0;
  while (i < s.length) {
    while (i < s.length && (s[i] === "," || s[i] === " ")) i++;
    const eq = s.indexOf("=", i);
    if (eq < 0) break;
    const name = s.slice(i, eq).trim();
    i = eq + 1;
    if (s[i] !== '"') break;
    i++;
    let value = "";
    while (i < s.length && s[i] !== '"') {
      if (s[i] === "\\" && i + 1 < s.length) {
        const c = s[i + 1];
        value += c === "n" ? "\n" : c;
        i += 2;
      } else {
        value += s[i++];
      }
    }
    i++; // closing quote
    if (name) out[name] = value;
  }
  return out;
}

/**
 * One family of a snapshot's families, or {} when missing or malformed. Non-finite values are skipped.
 * @param {Families|undefined|null} families @param {string} name @returns {Record<string, number>}
 */
export function family(families, name) {
  const f = families && typeof families === "object" ? families[name] : undefined;
  if (!f || typeof f !== "object") return {};
  /** @type {Record<string, number>} */
  const out = {};
  for (const [k, v] of Object.entries(f)) {
    const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
    if (Number.isFinite(n)) out[k] = n;
  }
  return out;
}

/** Sum of every series of a family. @param {Record<string, number>} fam @returns {number} */
export function total(fam) {
  let t = 0;
  for (const v of Object.values(fam)) t += v;
  return t;
}

/**
 * Values of a family grouped by one label (summed over the others); series without that label go to
 * `missing` (default "").
 * @param {Record<string, number>} fam @param {string} label @param {string} [missing]
 * @returns {Map<string, number>}
 */
export function byLabel(fam, label, missing = "") {
  const out = new Map();
  for (const [k, v] of Object.entries(fam)) {
    const key = parseLabels(k)[label] ?? missing;
    out.set(key, (out.get(key) ?? 0) + v);
  }
  return out;
}

/**
 * The increase of a counter between two readings: never negative. A reading lower than the previous
 * one means a reset (a worker restarted and its counters started again from 0): the interval counts
 * as 0 instead of a negative or a spurious huge rate. A series absent before counts from 0.
 * @param {number|undefined} prev @param {number} cur @returns {number}
 */
export function counterIncrease(prev, cur) {
  if (prev === undefined) return Math.max(0, cur);
  return cur >= prev ? cur - prev : 0;
}

/** @param {string} name */
export const isCounter = (name) => name.endsWith("_total");

/**
 * Per-second rates of every counter family between two snapshots of the same publisher.
 * Returns null when they cannot be compared (no previous one, time not moving forward).
 * @param {Snapshot|null|undefined} prev @param {Snapshot} cur
 * @returns {{dt: number, rates: Record<string, Record<string, number>>}|null}
 */
export function ratesBetween(prev, cur) {
  if (!prev || typeof prev.ts_ms !== "number" || typeof cur.ts_ms !== "number") return null;
  const dt = (cur.ts_ms - prev.ts_ms) / 1000;
  if (!(dt > 0)) return null;
  /** @type {Record<string, Record<string, number>>} */
  const rates = {};
  const fams = cur.families && typeof cur.families === "object" ? cur.families : {};
  for (const name of Object.keys(fams)) {
    if (!isCounter(name)) continue;
    const before = family(prev.families, name);
    const now = family(fams, name);
    /** @type {Record<string, number>} */
    const r = {};
    for (const [k, v] of Object.entries(now)) r[k] = counterIncrease(before[k], v) / dt;
    rates[name] = r;
  }
  return { dt, rates };
}

/**
 * Merges the snapshots of one or several publishers (keyed by `node`): each publisher's rates come
 * from its own consecutive snapshots; the view adds up every publisher heard from within `maxAgeMs`.
 * A server publishes either one cluster-wide snapshot per second or one per node covering only its
 * own workers; several publishers each covering the whole cluster would be counted twice.
 */
export class StatsView {
  /** @param {{maxAgeMs?: number}} [opts] */
  constructor({ maxAgeMs = 5000 } = {}) {
    this.maxAgeMs = maxAgeMs;
    /** @type {Map<string, {snap: Snapshot, rates: Record<string, Record<string, number>>|null, at: number}>} */
    this.publishers = new Map();
    this.count = 0;
  }

  /**
   * Add a snapshot; returns false (and ignores it) when it is not newer than the last of its publisher.
   * @param {Snapshot} snap @param {number} [nowMs] @returns {boolean}
   */
  add(snap, nowMs = Date.now()) {
    if (!snap || typeof snap !== "object" || typeof snap.ts_ms !== "number") return false;
    const key = typeof snap.node === "string" ? snap.node : "";
    const prev = this.publishers.get(key);
    if (prev && snap.ts_ms <= prev.snap.ts_ms) return false;
    const between = prev ? ratesBetween(prev.snap, snap) : null;
    this.publishers.set(key, { snap, rates: between ? between.rates : null, at: nowMs });
    this.count++;
    return true;
  }

  /** Forget everything (e.g. after the dashboard re-subscribed). */
  reset() {
    this.publishers.clear();
  }

  /**
   * The combined view of the publishers heard from recently.
   * @param {number} [nowMs]
   * @returns {{ts_ms: number, nodes: string[], bus: {name: string, up: boolean|null, nodes: string[]},
   *   workers: Array<{id: number, node: string, pid: number|null, connections: number, loop_lag_ms: number|null}>,
   *   families: Record<string, Record<string, number>>, rates: Record<string, Record<string, number>>|null,
   *   publishers: number}|null}
   */
  view(nowMs = Date.now()) {
    const live = [...this.publishers.values()].filter((p) => nowMs - p.at <= this.maxAgeMs);
    if (!live.length) return null;
    live.sort((a, b) => a.snap.ts_ms - b.snap.ts_ms);
    const newest = live[live.length - 1].snap;
    /** @type {Record<string, Record<string, number>>} */
    const families = {};
    /** @type {Record<string, Record<string, number>>|null} */
    let rates = null;
    const workers = new Map();
    const nodes = new Set();
    let busUp = /** @type {boolean|null} */ (null);
    for (const { snap, rates: r } of live) {
      if (typeof snap.node === "string") nodes.add(snap.node);
      const fams = snap.families && typeof snap.families === "object" ? snap.families : {};
      for (const name of Object.keys(fams)) {
        const dst = (families[name] ??= {});
        for (const [k, v] of Object.entries(family(fams, name))) dst[k] = (dst[k] ?? 0) + v;
      }
      if (r) {
        rates ??= {};
        for (const [name, series] of Object.entries(r)) {
          const dst = (rates[name] ??= {});
          for (const [k, v] of Object.entries(series)) dst[k] = (dst[k] ?? 0) + v;
        }
      }
      for (const w of Array.isArray(snap.workers) ? snap.workers : []) {
        if (!w || typeof w !== "object") continue;
        const node = typeof w.node === "string" ? w.node : (snap.node ?? "");
        workers.set(`${node}\u0000${w.id}`, {
          id: Number(w.id), node,
          pid: typeof w.pid === "number" ? w.pid : null,
          connections: typeof w.connections === "number" ? w.connections : 0,
          loop_lag_ms: typeof w.loop_lag_ms === "number" ? w.loop_lag_ms : null,
        });
      }
      const bus = snap.bus && typeof snap.bus === "object" ? snap.bus : {};
      for (const n of Array.isArray(bus.nodes) ? bus.nodes : []) if (typeof n === "string") nodes.add(n);
      if (typeof bus.up === "boolean") busUp = busUp === null ? bus.up : busUp && bus.up;
    }
    const bus = newest.bus && typeof newest.bus === "object" ? newest.bus : {};
    const ws = [...workers.values()].sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : a.id - b.id));
    return {
      ts_ms: newest.ts_ms,
      nodes: [...nodes].sort(),
      bus: { name: typeof bus.name === "string" ? bus.name : "?", up: busUp,
        nodes: Array.isArray(bus.nodes) ? bus.nodes.filter((n) => typeof n === "string") : [] },
      workers: ws,
      families,
      rates,
      publishers: live.length,
    };
  }
}

/**
 * Deliveries per second: the rate of fanwire_messages_out_total over chat, broadcast and publication.
 * @param {Record<string, Record<string, number>>|null} rates @returns {number|null}
 */
export function deliveriesPerSecond(rates) {
  if (!rates) return null;
  const byType = byLabel(rates.fanwire_messages_out_total ?? {}, "type");
  let t = 0;
  for (const ty of DELIVERY_TYPES) t += byType.get(ty) ?? 0;
  return t;
}

/**
 * A compact number: 950, 1.2k, 3.4M.
 * @param {number|null|undefined} v @param {number} [digits] @returns {string}
 */
export function compact(v, digits = 1) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(digits)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(digits)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(digits)}k`;
  if (a >= 100 || Number.isInteger(v)) return `${Math.round(v)}`;
  return v.toFixed(digits);
}

/**
 * Bytes: 512 B, 1.5 KiB, 2.0 MiB.
 * @param {number|null|undefined} v @returns {string}
 */
export function bytes(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let x = v;
  let i = 0;
  while (Math.abs(x) >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? Math.round(x) : x.toFixed(1)} ${units[i]}`;
}
