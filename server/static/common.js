// common.js: what the chat page and the dashboard share: where to connect, the token, the connection
// state line, and DOM helpers that only ever set text (never HTML).

import { defaultUrl } from "../fanwire.js";

/**
 * The WebSocket URL: the page's own host, or `?ws=ws://host:port/` when it names the same host name as
 * the page (another port: a development set-up). Other hosts are refused, so a crafted link cannot send
 * a token typed into the page to somebody else's server.
 * @returns {{url: string, note: string|null}}
 */
export function pageWsUrl() {
  const params = new URLSearchParams(location.search);
  const ws = params.get("ws");
  if (!ws) return { url: defaultUrl(), note: null };
  try {
    const u = new URL(ws);
    if ((u.protocol === "ws:" || u.protocol === "wss:") && u.hostname === location.hostname) {
      return { url: u.toString(), note: null };
    }
  } catch {
    /* not a URL */
  }
  return { url: defaultUrl(), note: `ignored ?ws=${ws}: only ws:// or wss:// URLs on ${location.hostname} are allowed` };
}

/**
 * The token from `?token=`, removed from the address bar (and so from the history) once read.
 * @returns {string|null}
 */
export function takeTokenFromUrl() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token !== null) {
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.toString());
  }
  return token ? token.trim() : null;
}

/** Carry `?ws=` over to a link to the other page. @param {HTMLAnchorElement|null} a */
export function keepWsParam(a) {
  if (!a) return;
  const ws = new URLSearchParams(location.search).get("ws");
  if (!ws) return;
  const u = new URL(a.href);
  u.searchParams.set("ws", ws);
  a.href = u.toString();
}

/**
 * An element with text content and classes; children appended (strings become text nodes).
 * @param {string} tag @param {string} [cls] @param {...(Node|string|null|undefined)} children
 * @returns {HTMLElement}
 */
export function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const c of children) if (c !== null && c !== undefined) e.append(c); // strings become text nodes
  return e;
}

/** @param {string} id @returns {HTMLElement} */
export function $(id) {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing`);
  return e;
}

/**
 * Shows the client's state in `node` (text and data-state) and drives the "reconnecting in N s" countdown.
 * Returns a function to call with each "state" event.
 * @param {HTMLElement} node @param {(text: string, detail: any) => void} [onText]
 */
export function stateLine(node, onText) {
  let timer = null;
  /** @param {any} d */
  const show = (d) => {
    clearInterval(timer);
    timer = null;
    const render = () => {
      let text = d.state;
      if (d.state === "connected") text = "open";
      else if ((d.state === "reconnecting" || d.state === "connecting") && d.retryAt) {
        const left = (d.retryAt - Date.now()) / 1000;
        text = left > 0.05 ? `${d.state} in ${left.toFixed(1)} s` : `${d.state}…`;
      } else if (d.state === "connecting" || d.state === "reconnecting") text = `${d.state}…`;
      else if (d.state === "closed") text = d.error ? `closed: ${d.error.message}` : "closed";
      node.textContent = text;
      node.dataset.state = d.state;
      if (onText) onText(text, d);
    };
    render();
    if (d.retryAt && d.retryAt > Date.now()) {
      timer = setInterval(() => {
        render();
        if (d.retryAt <= Date.now()) {
          clearInterval(timer);
          timer = null;
        }
      }, 100);
    }
  };
  return show;
}

/** A short time of day for a server timestamp in ms (now when missing). @param {number} [ts] */
export function timeOf(ts) {
  const d = typeof ts === "number" ? new Date(ts) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
