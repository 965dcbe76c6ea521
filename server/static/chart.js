// chart.js: a small moving line chart on a <canvas>, no dependencies. The legend is DOM text
// (textContent only); series colours come from the palette classes .c0 ... .c7 in dashboard.css.

import { compact } from "./stats.js";

/** The same colours as .c0 ... .c7 in dashboard.css. */
export const PALETTE = Object.freeze(["#4e9af1", "#f1a14e", "#5cc98a", "#e8605c", "#b28ef0", "#e2d35b", "#5fd0d6", "#d47fb8"]);

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{windowS?: number, format?: (v: number) => string, legend?: HTMLElement|null, min?: number}} [opts]
   */
  constructor(canvas, { windowS = 120, format = compact, legend = null, min = 0 } = {}) {
    this.canvas = canvas;
    this.windowS = windowS;
    this.format = format;
    /** axis labels: like `format`, but small fractions keep two decimals (0.25, not 0.3) */
    this.axisFormat = (/** @type {number} */ v) => (v > 0 && v < 10 && !Number.isInteger(v) && format === compact
      ? String(Number(v.toFixed(2))) : format(v));
    this.legend = legend;
    this.min = min;
    /** @type {Map<string, Array<[number, number]>>} */
    this.series = new Map();
    /** @type {Map<string, number>} */
    this.colours = new Map();
    this.lastT = 0;
  }

  /**
   * Add one reading per series at time tMs; a series not given this time gets no point (a gap).
   * @param {number} tMs @param {Record<string, number|null|undefined>} values
   */
  push(tMs, values) {
    for (const [name, v] of Object.entries(values)) {
      if (v === null || v === undefined || !Number.isFinite(v)) continue;
      let s = this.series.get(name);
      if (!s) {
        this.series.set(name, (s = []));
        this.colours.set(name, this.colours.size % PALETTE.length);
      }
      s.push([tMs, v]);
    }
    this.lastT = Math.max(this.lastT, tMs);
    const from = this.lastT - this.windowS * 1000;
    for (const [name, s] of this.series) {
      while (s.length && s[0][0] < from) s.shift();
      if (!s.length) this.series.delete(name);
    }
  }

  /** Latest value of each series. @returns {Array<[string, number]>} */
  latest() {
    return [...this.series].map(([name, s]) => [name, s[s.length - 1][1]]);
  }

  draw() {
    const c = this.canvas;
    const dpr = globalThis.devicePixelRatio || 1;
    const w = Math.max(50, c.clientWidth || 300);
    const h = Math.max(50, c.clientHeight || 140);
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px system-ui, sans-serif";
    let max = this.min;
    for (const s of this.series.values()) for (const [, v] of s) if (v > max) max = v;
    const step = niceCeil(max / 4);
    const yMax = step * 4;
    let labelWidth = 0;
    for (let i = 0; i <= 4; i++) labelWidth = Math.max(labelWidth, ctx.measureText(this.axisFormat(step * i)).width);
    const left = Math.ceil(labelWidth) + 8;
    const right = 6;
    const top = 6;
    const bottom = 16;
    const pw = w - left - right;
    const ph = h - top - bottom;
    const t1 = this.lastT || Date.now();
    const t0 = t1 - this.windowS * 1000;
    const x = (/** @type {number} */ t) => left + ((t - t0) / (t1 - t0)) * pw;
    const y = (/** @type {number} */ v) => top + ph - (v / yMax) * ph;

    ctx.lineWidth = 1;
    ctx.strokeStyle = "rgba(128,128,128,0.25)";
    ctx.fillStyle = "rgba(160,160,160,0.9)";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = step * i;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + pw, yy);
      ctx.stroke();
      ctx.fillText(this.axisFormat(v), left - 4, yy);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(`-${this.windowS}s`, left, h - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", left + pw, h - 3);

    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const [name, s] of this.series) {
      ctx.strokeStyle = PALETTE[this.colours.get(name) ?? 0];
      ctx.beginPath();
      s.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.stroke();
      if (s.length === 1) {
        ctx.fillStyle = ctx.strokeStyle;
        ctx.fillRect(x(s[0][0]) - 1.5, y(s[0][1]) - 1.5, 3, 3);
      }
    }
    this.drawLegend();
  }

  drawLegend() {
    const el = this.legend;
    if (!el) return;
    const items = this.latest();
    const doc = el.ownerDocument;
    const rows = [];
    for (const [name, v] of items) {
      const item = doc.createElement("span");
      item.className = "legend-item";
      const sw = doc.createElement("span");
      sw.className = `swatch c${this.colours.get(name) ?? 0}`;
      const label = doc.createElement("span");
      label.className = "legend-label";
      label.textContent = name;
      const value = doc.createElement("span");
      value.className = "legend-value";
      value.textContent = this.format(v);
      item.append(sw, label, value);
      rows.push(item);
    }
    el.replaceChildren(...rows);
  }
}

/** A round number >= v for the axis (1, 2, 5 x 10^n); 1 for 0. @param {number} v */
export function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
