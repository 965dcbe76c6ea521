// fanwire.js: the browser client of fanwire, the JavaScript twin of the Python client (client/).
//
// An ES module with no dependencies and no build step:
//
//   import { FanwireClient } from "/fanwire.js";
//   const c = new FanwireClient("ws://127.0.0.1:8765/", { user: "alice" });
//   c.on("chat", (msg) => console.log(msg.user, msg.text));
//   await c.connect();                 // resolves with the welcome
//   await c.chat("hello");             // resolves with the ack (protocol v1.1) or null (v1 server)
//   console.log(await c.ping(), "ms");
//
// Wire protocol: docs/protocol.md (v1, and v1.1 "nothing lost": offsets, recovery, acks). JSON only.
// Reconnect: full-jitter exponential backoff with the Python client's defaults (client/backoff.py):
// attempt n (from 0) waits a uniformly random time in [0, min(cap, base * 2**n)), base 0.5 s, cap 5 s,
// unlimited attempts; a connection that lived stableAfter (10 s) starts a fresh sequence.
// The guide: docs/browser.md.

/** @typedef {Record<string, any>} Message  a decoded server message (a JSON object with a string `type`) */

/**
 * @typedef {"idle"|"connecting"|"connected"|"reconnecting"|"closed"} State
 * idle: never connected; connecting: connect() in progress; connected: welcome received and rooms
 * restored; reconnecting: connection lost, waiting `delay` seconds before the next attempt (sends are
 * queued); closed: close(), a fatal close or refusal, or attempts used up (sends reject).
 */

/**
 * @typedef {object} Ack  the answer to a chat/broadcast/publish that the server sequenced (v1.1)
 * @property {number|string} id
 * @property {string} room         the stream: a room, or "$broadcast"
 * @property {number} offset
 * @property {string} epoch
 * @property {boolean} [duplicate] true when the server had already published this id (a re-send)
 */

/**
 * @typedef {object} BackoffOptions  seconds, like client/backoff.py
 * @property {number} [base=0.5]
 * @property {number} [cap=5]
 * @property {number|null} [maxAttempts=null]  null: never give up
 */

/**
 * @typedef {object} ClientOptions
 * @property {string|(() => string|Promise<string>)|null} [token]  sent as the `token` query parameter
 *   (browsers cannot set headers on a WebSocket); a function is called before every attempt, so a
 *   fresh token can be fetched, and then a 1008 "token expired" close is retried
 * @property {string|null} [user]            default `user` on chat and broadcast
 * @property {string[]|null} [rooms]         rooms to be in (in order; the last is the current room);
 *   null (default): what the server gives (`lobby`)
 * @property {boolean} [broadcasts=true]     receive broadcasts (v1.1: join `$broadcast`)
 * @property {boolean} [recover=true]        v1.1 recovery: connect with autojoin=0 and the session,
 *   re-join with `since`, re-send unacknowledged messages
 * @property {boolean} [reconnect=true]
 * @property {BackoffOptions} [backoff]
 * @property {number} [stableAfter=10]      seconds
 * @property {number} [openTimeout=5]       seconds: handshake + welcome
 * @property {number} [requestTimeout=5]    seconds: ping, join, leave, request
 * @property {number|null} [ackTimeout=30]  seconds an unacknowledged message is kept (and re-sent);
 *   below the server's dedup window (60 s), so a re-send is never published twice
 * @property {number} [maxPending=1000]     messages queued while not connected
 * @property {string|null} [checkUrl]       HTTP endpoint that answers with the status a handshake
 *   would get (default: `/connect-check` on the WebSocket's host); null: not used
 * @property {string|null} [healthUrl]      HTTP endpoint used to tell "server down" from "server
 *   refuses" (default: `/healthz` on the WebSocket's host); null: not used
 * @property {number} [maxRefusals=3]       handshakes refused in a row (server up) before giving up,
 *   when checkUrl cannot say why
 * @property {() => number} [rng]           jitter source in [0, 1) (tests)
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (tests)
 * @property {typeof fetch} [fetch]         fetch implementation (tests)
 */

export const VERSION = "0.1.0";
export const SUBPROTOCOL = "fanwire.json";
/** The stream name of broadcasts (protocol v1.1). */
export const BROADCAST_STREAM = "$broadcast";
/** Close codes after which a client does not reconnect (client/errors.py FATAL_CLOSE_CODES). */
export const FATAL_CLOSE_CODES = Object.freeze(new Set([1002, 1003, 1007, 1008, 1009, 1010]));
/** Handshake statuses worth retrying (client/errors.py RETRYABLE_HTTP_STATUSES); others are final. */
export const RETRYABLE_HTTP_STATUSES = Object.freeze(new Set([408, 429, 500, 502, 503, 504]));
export const TOKEN_EXPIRED_REASON = "token expired";
export const DEFAULT_BACKOFF = Object.freeze({ base: 0.5, cap: 5.0, maxAttempts: null });

const MAX_EXPONENT = 64;

// ----------------------------------------------------------------------------------------------------
// Backoff (pure): the same policy as client/backoff.py

/**
 * Upper bound of the delay before attempt `attempt` (0-based): min(cap, base * 2**attempt), seconds.
 * @param {number} attempt @param {number} [base] @param {number} [cap] @returns {number}
 */
export function ceiling(attempt, base = DEFAULT_BACKOFF.base, cap = DEFAULT_BACKOFF.cap) {
  if (!(attempt >= 0)) throw new RangeError("attempt must be >= 0");
  return Math.min(cap, base * 2 ** Math.min(attempt, MAX_EXPONENT));
}

/** Reconnect policy: full-jitter exponential backoff. */
export class Backoff {
  /** @param {BackoffOptions} [options] */
  constructor({ base = DEFAULT_BACKOFF.base, cap = DEFAULT_BACKOFF.cap, maxAttempts = null } = {}) {
    if (!(base > 0)) throw new RangeError(`base must be > 0, not ${base}`);
    if (!(cap >= base)) throw new RangeError(`cap must be >= base (${base}), not ${cap}`);
    if (maxAttempts !== null && !(maxAttempts >= 0)) {
      throw new RangeError(`maxAttempts must be >= 0 or null, not ${maxAttempts}`);
    }
    this.base = base;
    this.cap = cap;
    this.maxAttempts = maxAttempts;
    Object.freeze(this);
  }

  /**
   * A fresh sequence of delays (seconds) for one outage: attempt n waits rng() * ceiling(n).
   * @param {() => number} [rng] @returns {Generator<number, void, void>}
   */
  *delays(rng = Math.random) {
    for (let n = 0; this.maxAttempts === null || n < this.maxAttempts; n++) {
      yield rng() * ceiling(n, this.base, this.cap);
    }
  }
}

/**
 * `delay`, raised to the server's Retry-After (at most `cap`) when it asked for one.
 * @param {number} delay @param {number|null|undefined} retryAfter @param {number} cap @returns {number}
 */
export function floored(delay, retryAfter, cap) {
  if (retryAfter == null || !(retryAfter > 0)) return delay;
  return Math.max(delay, Math.min(retryAfter, cap));
}

/**
 * Seconds from an HTTP Retry-After value (delay-seconds or an HTTP date); null when absent or invalid.
 * @param {string|null|undefined} value @param {number} [nowMs] @returns {number|null}
 */
export function parseRetryAfter(value, nowMs = Date.now()) {
  if (value == null) return null;
  const v = String(value).trim();
  if (/^\d+$/.test(v)) return Number(v);
  const when = Date.parse(v);
  return Number.isFinite(when) ? Math.max(0, (when - nowMs) / 1000) : null;
}

/**
 * Should a connection closed with `code` be re-established? (client/errors.py close_is_retryable)
 * @param {number|null|undefined} code @param {string} [reason] @param {{freshToken?: boolean}} [opts]
 * @returns {boolean}
 */
export function closeIsRetryable(code, reason = "", { freshToken = false } = {}) {
  if (code == null || !FATAL_CLOSE_CODES.has(code)) return true;
  return freshToken && code === 1008 && reason === TOKEN_EXPIRED_REASON;
}

/** @param {number|null|undefined} status @returns {boolean} */
export function statusIsRetryable(status) {
  return status != null && RETRYABLE_HTTP_STATUSES.has(status);
}

// ----------------------------------------------------------------------------------------------------
// Stream positions and duplicate detection (pure)

/**
 * The stream a received message belongs to: its room, "$broadcast" for a broadcast; null if none.
 * @param {Message} msg @returns {string|null}
 */
export function streamOf(msg) {
  if (msg.type === "broadcast") return BROADCAST_STREAM;
  return typeof msg.room === "string" ? msg.room : null;
}

/** Last offset seen per stream, per epoch: drops duplicates, notices gaps and new epochs. */
export class Positions {
  constructor() {
    /** @type {Map<string, {offset: number, epoch: string}>} */
    this.map = new Map();
  }

  /** @param {string} stream @returns {{offset: number, epoch: string}|undefined} */
  get(stream) {
    const p = this.map.get(stream);
    return p ? { offset: p.offset, epoch: p.epoch } : undefined;
  }

  /**
   * Classify a received message of `stream` and advance the position unless it is a duplicate.
   * "new": the next one (or the first seen); "duplicate": at or before the position in the same epoch
   * (drop it); "gap": later than the next one (messages were skipped); "epoch": another epoch.
   * @param {string} stream @param {number} offset @param {string} epoch
   * @returns {"new"|"duplicate"|"gap"|"epoch"}
   */
  accept(stream, offset, epoch) {
    const p = this.map.get(stream);
    if (!p) {
      this.map.set(stream, { offset, epoch });
      return "new";
    }
    if (p.epoch !== epoch) {
      this.map.set(stream, { offset, epoch });
      return "epoch";
    }
    if (offset <= p.offset) return "duplicate";
    const gap = offset > p.offset + 1;
    p.offset = offset;
    return gap ? "gap" : "new";
  }

  /**
   * A `joined` says where the stream stands: everything up to `offset` was replayed or is out of reach.
   * @param {string} stream @param {number} offset @param {string} epoch
   */
  joined(stream, offset, epoch) {
    const p = this.map.get(stream);
    if (!p || p.epoch !== epoch || offset > p.offset) this.map.set(stream, { offset, epoch });
  }

  /** @param {string} stream */
  delete(stream) {
    this.map.delete(stream);
  }
}

// ----------------------------------------------------------------------------------------------------
// Errors

/**
 * Every error the client rejects with or reports. `kind`:
 * "closed" (the connection closed: `code`, `reason`), "fatal" (closed with a do-not-retry code),
 * "refused" (the handshake was refused: `status` when known, e.g. 401), "server" (an `error` reply:
 * `code`, `detail`, `reply`), "timeout", "not_connected", "queue_full", "gave_up".
 */
export class FanwireError extends Error {
  /**
   * @param {string} kind @param {string} message
   * @param {{code?: number|string, reason?: string, status?: number|null, detail?: string,
   *          reply?: Message, retryAfter?: number|null, id?: number|string}} [extra]
   */
  constructor(kind, message, extra = {}) {
    super(message);
    this.name = "FanwireError";
    this.kind = kind;
    /** @type {number|string|undefined} */ this.code = extra.code;
    /** @type {string|undefined} */ this.reason = extra.reason;
    /** @type {number|null|undefined} */ this.status = extra.status;
    /** @type {string|undefined} */ this.detail = extra.detail;
    /** @type {Message|undefined} */ this.reply = extra.reply;
    /** @type {number|null|undefined} */ this.retryAfter = extra.retryAfter;
    /** @type {number|string|undefined} */ this.id = extra.id;
  }
}

/** @param {Message} reply @returns {FanwireError} */
function serverError(reply) {
  const code = String(reply.code ?? "error");
  const detail = String(reply.detail ?? "");
  return new FanwireError("server", detail ? `${code}: ${detail}` : code,
    { code, detail, reply, id: reply.id });
}

// ----------------------------------------------------------------------------------------------------
// URLs

/**
 * The WebSocket URL of an attempt: `base` with `token`, `autojoin=0` and `session` query parameters.
 * @param {string} base
 * @param {{token?: string|null, recover?: boolean, session?: string|null}} params
 * @returns {string}
 */
export function attemptUrl(base, { token = null, recover = false, session = null } = {}) {
  const u = new URL(base);
  if (token) u.searchParams.set("token", token);
  if (recover) {
    u.searchParams.set("autojoin", "0");
    if (session) u.searchParams.set("session", session);
  }
  return u.toString();
}

/**
 * An HTTP URL on the WebSocket's host: ws://h:p/x -> http://h:p/<path>.
 * @param {string} wsUrl @param {string} path @returns {string}
 */
export function httpUrlOf(wsUrl, path) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = path;
  u.search = "";
  u.hash = "";
  return u.toString();
}

/** A WebSocket URL for the page's own origin: ws(s)://<location.host>/. @returns {string} */
export function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) return "ws://127.0.0.1:8765/";
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/`;
}

// ----------------------------------------------------------------------------------------------------
// The client

const WS_OPEN = 1;

/**
 * @typedef {object} PendingSend  a chat/broadcast/publish waiting for its ack (v1.1)
 * @property {Message} msg
 * @property {(ack: Ack|null) => void} resolve
 * @property {(err: FanwireError) => void} reject
 * @property {any} timer
 * @property {number} retries  re-sends after `unavailable`
 */

/** The browser client. Events: see on(). */
export class FanwireClient {
  /**
   * @param {string} [url]  ws:// or wss:// URL; default: the page's own host
   * @param {ClientOptions} [options]
   */
  constructor(url = defaultUrl(), options = {}) {
    const u = new URL(url);
    if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`not a WebSocket URL: ${url}`);
    this.url = u.toString();
    const o = options;
    this._token = o.token ?? null;
    this._freshToken = typeof this._token === "function";
    /** @type {string|null} */ this.user = o.user ?? null;
    this._broadcasts = o.broadcasts ?? true;
    this._recover = o.recover ?? true;
    this.reconnect = o.reconnect ?? true;
    this.backoff = new Backoff(o.backoff ?? {});
    this.stableAfter = o.stableAfter ?? 10;
    this.openTimeout = o.openTimeout ?? 5;
    this.requestTimeout = o.requestTimeout ?? 5;
    this.ackTimeout = o.ackTimeout === undefined ? 30 : o.ackTimeout;
    this.maxPending = o.maxPending ?? 1000;
    this.checkUrl = o.checkUrl === undefined ? httpUrlOf(this.url, "/connect-check") : o.checkUrl;
    this.healthUrl = o.healthUrl === undefined ? httpUrlOf(this.url, "/healthz") : o.healthUrl;
    this.maxRefusals = o.maxRefusals ?? 3;
    this._rng = o.rng ?? Math.random;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);

    /** @type {State} */ this._state = "idle";
    /** @type {WebSocket|null} */ this._ws = null;
    this._gen = 0;
    this._nextId = 1;
    /** rooms the application wants, in order (last = current); null until known */
    /** @type {string[]|null} */ this._wanted = o.rooms ? [...o.rooms] : null;
    /** @type {string[]} */ this._preJoins = [];
    /** @type {Set<string>} */ this._noRecover = new Set();
    /** @type {string[]} */ this._rooms = [];
    /** @type {Message|null} */ this._welcome = null;
    /** @type {string|null} */ this._session = null;
    this.positions = new Positions();
    /** @type {Map<number|string, {resolve: Function, reject: Function, timer: any, gen: number, expect: Set<string>, t0: number}>} */
    this._requests = new Map();
    /** @type {Map<string, {join: Array<{resolve: Function, reject: Function, timer: any}>, leave: Array<{resolve: Function, reject: Function, timer: any}>}>} */
    this._roomWaiters = new Map();
    /** @type {Map<number|string, PendingSend>} */ this._unacked = new Map();
    /** @type {Array<() => void>} */ this._queue = [];
    /** @type {Map<string, Set<Function>>} */ this._handlers = new Map();
    /** @type {Iterator<number>|null} */ this._delays = null;
    this._timer = null;
    this._openedAt = 0;
    this._refusals = 0;
    /** @type {{resolve: Function, reject: Function}[]} */ this._connectWaiters = [];
    /** @type {FanwireError|null} */ this.closedReason = null;
    this.reconnects = 0;
    this._everConnected = false;
    /** @type {string|null} */ this._lastToken = null;
    /** @type {Map<string, number>|null} */ this._replayCount = null;
    /** @type {Set<string>|null} */ this._replayDone = null;
    /** @type {Map<number|string, string>|null} */ this._roomErrorIds = null;
    this.attempts = 0;
    this.duplicatesDropped = 0;
    this.gaps = 0;
    /** Counts of the last restore: streams recovered, messages replayed, streams whose history was lost. */
    this.lastRestore = null;
  }

  // -------------------------------------------------------------------------------------------------
  // Introspection

  /** @returns {State} */ get state() { return this._state; }
  get connected() { return this._state === "connected"; }
  /** The last welcome (a new one comes with each reconnect). @returns {Message|null} */
  get welcome() { return this._welcome; }
  /** @returns {string|null} */ get clientId() { return this._welcome?.client_id ?? null; }
  /** @returns {number|null} */ get worker() { return this._welcome?.worker ?? null; }
  /** "1.1" when the server speaks protocol v1.1 (offsets, recovery, acks), else "1". */
  get version() { return this._welcome?.version === "1.1" ? "1.1" : "1"; }
  /** The v1.1 session token (identity for exactly-once re-sends), or null. */
  get session() { return this._session; }
  /** The connection's rooms as the server last reported them. @returns {string[]} */
  get rooms() { return [...this._rooms]; }
  /** The rooms the client restores after a reconnect (in order; the last is the current room). */
  get wantedRooms() { return this._wanted ? [...this._wanted] : [...this._preJoins]; }
  /** Messages sent with an id and not acknowledged yet (v1.1). */
  get unacked() { return this._unacked.size; }

  // -------------------------------------------------------------------------------------------------
  // Events

  /**
   * Call `fn` for an event; returns a function that removes it. Events:
   * - "message": every server message (after duplicates are dropped), the welcome included;
   * - any server message type: "chat", "broadcast", "publication", "welcome", "pong", "joined",
   *   "left", "error", "stats", "ack", ...;
   * - "state": {state, previous, error, delay, retryAt, attempt} on every state change
   *   (delay in seconds and retryAt in ms since the epoch when reconnecting);
   * - "recovered": {room, missed, replayed} a re-join replayed everything missed (v1.1);
   * - "historyLost": {room, missed, replayed, epochChanged} part of what was missed is gone (v1.1);
   * - "restored": {missed, lost: string[], rooms, version} after each (re)connection's restore;
   * - "gap": {room, expected, offset} a live message skipped offsets (should not happen).
   * @param {string} event @param {(detail: any) => void} fn @returns {() => void}
   */
  on(event, fn) {
    let set = this._handlers.get(event);
    if (!set) this._handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {Function} [fn]  without fn: every handler of the event */
  off(event, fn) {
    if (!fn) this._handlers.delete(event);
    else this._handlers.get(event)?.delete(fn);
  }

  /** Python-client alias: call fn for every message. @param {(msg: Message) => void} fn */
  onMessage(fn) { return this.on("message", fn); }

  /** @param {string} event @param {any} detail */
  _emit(event, detail) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`fanwire: a ${event} handler threw`, err);
      }
    }
  }

  /** @param {State} state @param {object} [extra] */
  _setState(state, extra = {}) {
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, error: null, ...extra });
  }

  // -------------------------------------------------------------------------------------------------
  // Lifecycle

  /**
   * Connect, retrying retryable failures with the backoff policy (a page usually wants that). Resolves
   * with the welcome once connected (rooms restored); rejects when the client closes for good first.
   * Calling it while connecting or connected returns the same promise.
   * @returns {Promise<Message>}
   */
  connect() {
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === "connected") this._settleConnect(null);
    else if (this._state === "idle" || this._state === "closed") {
      this.closedReason = null;
      this._delays = null;
      this._refusals = 0;
      this._setState("connecting");
      this._attempt();
    }
    return p;
  }

  /**
   * Close (1000) and stop reconnecting. Queued sends and waiting requests reject with "not_connected".
   * @param {number} [code] @param {string} [reason]
   */
  close(code = 1000, reason = "client close") {
    if (this._state === "closed" || this._state === "idle") return;
    this._shutdown(null, code, reason);
  }

  /**
   * Forget the v1.1 session (and the stream positions): the next connection starts a new identity.
   * For a change of user (a new token); unacknowledged messages are no longer re-sent.
   */
  forgetSession() {
    this._session = null;
    this.positions = new Positions();
  }

  /** Alias of close(), like the Python client. */
  disconnect() { this.close(); }

  /** @param {FanwireError|null} error @param {number} [code] @param {string} [reason] */
  _shutdown(error, code = 1000, reason = "client close") {
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
    this.closedReason = error;
    const why = error ?? new FanwireError("not_connected", "the client is closed");
    const nc = new FanwireError("not_connected", `not connected: ${why.message}`, { code: error?.code, status: error?.status });
    for (const [id, r] of this._requests) {
      clearTimeout(r.timer);
      r.reject(nc);
      this._requests.delete(id);
    }
    for (const [id, s] of this._unacked) {
      clearTimeout(s.timer);
      s.reject(nc);
      this._unacked.delete(id);
    }
    for (const [room, w] of this._roomWaiters) {
      for (const x of [...w.join, ...w.leave]) {
        clearTimeout(x.timer);
        x.reject(nc);
      }
      this._roomWaiters.delete(room);
    }
    this._queue = [];
    this._setState("closed", { error });
    this._settleConnect(error ?? nc);
  }

  /** @param {FanwireError|null} error */
  _settleConnect(error) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve(this._welcome);
    }
  }

  async _resolveToken() {
    const t = this._token;
    if (t == null) return null;
    const v = typeof t === "function" ? await t() : t;
    if (v != null && (typeof v !== "string" || /[\s\x00-\x1f\x7f]/.test(v))) {
      throw new FanwireError("fatal", "the token must be a string without spaces or control characters");
    }
    return v || null;
  }

  /** One connection attempt. */
  async _attempt() {
    const gen = ++this._gen;
    this.attempts++;
    let token = null;
    try {
      token = await this._resolveToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._shutdown(err instanceof FanwireError ? err
        : new FanwireError("fatal", `the token function failed: ${err}`));
      return;
    }
    if (gen !== this._gen) return;
    this._lastToken = token;
    const url = attemptUrl(this.url, { token, recover: this._recover, session: this._session });
    let ws;
    try {
      ws = new this._WebSocket(url, [SUBPROTOCOL]);
    } catch (err) {
      this._shutdown(new FanwireError("fatal", `cannot open ${this.url}: ${err}`));
      return;
    }
    this._ws = ws;
    let opened = false;
    let welcomed = false;
    let over = false; // this attempt's failure or loss was handled
    const openTimer = setTimeout(() => {
      if (over || welcomed || gen !== this._gen) return;
      over = true;
      this._ws = null;
      try { ws.close(); } catch { /* */ }
      this._failed(gen, opened
        ? new FanwireError("timeout", `no welcome within ${this.openTimeout} s`, { code: 1006 })
        : null);
    }, this.openTimeout * 1000);
    ws.addEventListener("open", () => { opened = true; });
    ws.addEventListener("message", (ev) => {
      if (over || gen !== this._gen) return;
      let msg;
      try {
        msg = JSON.parse(typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data));
      } catch {
        console.warn("fanwire: dropping a message that is not JSON");
        return;
      }
      if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") return;
      if (!welcomed) {
        if (msg.type !== "welcome") return;
        welcomed = true;
        clearTimeout(openTimer);
        this._welcomed(gen, msg);
        return;
      }
      this._receive(msg);
    });
    ws.addEventListener("close", (ev) => {
      clearTimeout(openTimer);
      if (over || gen !== this._gen) return;
      over = true;
      this._ws = null;
      if (!opened) this._failed(gen, null);
      else this._lost(gen, ev.code, ev.reason, welcomed);
    });
  }

  /**
   * The handshake failed (a browser says no more than "1006"), or no welcome came in time. Find out
   * whether the server refused us (401/403: final) or is just not there (retry).
   * @param {number} gen @param {FanwireError|null} error
   */
  async _failed(gen, error) {
    if (gen !== this._gen) return;
    let verdict = error
      ? { fatal: false, error, retryAfter: null }
      : await this._diagnose();
    if (gen !== this._gen) return;
    if (verdict.fatal) {
      this._shutdown(verdict.error);
      return;
    }
    this._retry(verdict.error, verdict.retryAfter);
  }

  /**
   * Why did the handshake fail? 1) the check endpoint answers with the status the handshake would
   * get; 2) otherwise a no-cors request to the health endpoint tells "server answers HTTP" from
   * "server unreachable": refusals while the server answers are counted, and maxRefusals in a row
   * are final (most likely 401 or 403).
   * @returns {Promise<{fatal: boolean, error: FanwireError, retryAfter: number|null}>}
   */
  async _diagnose() {
    const fetchFn = this._fetch;
    const timeout = this.openTimeout * 1000;
    const signal = () => (typeof AbortSignal?.timeout === "function" ? AbortSignal.timeout(timeout) : undefined);
    let reachable = false;
    if (fetchFn && this.checkUrl) {
      try {
        const headers = this._lastToken ? { Authorization: `Bearer ${this._lastToken}` } : {};
        const r = await fetchFn(this.checkUrl, { cache: "no-store", credentials: "omit", headers, signal: signal() });
        const status = r.status;
        if (status >= 200 && status < 300) {
          // the credentials are fine, yet the handshake failed: transient, or an origin the check
          // cannot see (a same-origin GET carries no Origin header); counted like an unexplained refusal
          this._refusals++;
          const error = new FanwireError("refused",
            `the server accepts these credentials but the WebSocket handshake failed ${this._refusals} time(s) in a row`
            + " (is this page's origin allowed? HTTP 403)", { status: null, code: 1006 });
          return { fatal: this._refusals >= this.maxRefusals, error, retryAfter: null };
        }
        if (status !== 404 && status !== 405 && status !== 426) {
          let detail = "";
          try { detail = (await r.text()).trim().slice(0, 200); } catch { /* */ }
          const retryAfter = parseRetryAfter(r.headers.get("Retry-After"));
          const error = new FanwireError("refused", refusalMessage(status, detail),
            { status, detail, retryAfter, code: 1006 });
          return { fatal: !statusIsRetryable(status), error, retryAfter };
        }
        reachable = true; // a server without the check endpoint
      } catch {
        /* unreachable, or cross-origin without CORS: ask the health endpoint */
      }
    }
    if (!reachable && fetchFn && this.healthUrl) {
      try {
        await fetchFn(this.healthUrl, { mode: "no-cors", cache: "no-store", credentials: "omit", signal: signal() });
        reachable = true;
      } catch {
        reachable = false;
      }
    }
    if (!reachable) {
      this._refusals = 0;
      return { fatal: false, error: new FanwireError("closed", "cannot reach the server", { code: 1006 }), retryAfter: null };
    }
    this._refusals++;
    const error = new FanwireError("refused",
      `the server refused the WebSocket handshake ${this._refusals} time(s) in a row while answering HTTP: `
      + "most likely the token is missing, invalid or expired (401) or this page's origin is not allowed (403)",
      { status: null, code: 1006 });
    return { fatal: this._refusals >= this.maxRefusals, error, retryAfter: null };
  }

  /**
   * Schedule the next attempt after a backoff delay (or give up).
   * @param {FanwireError} error @param {number|null} [retryAfter]
   */
  _retry(error, retryAfter = null) {
    clearTimeout(this._timer);
    this._timer = null;
    if (!this.reconnect && this._state !== "connecting") {
      this._shutdown(error);
      return;
    }
    if (!this._delays) this._delays = this.backoff.delays(this._rng);
    const next = this._delays.next();
    if (next.done) {
      this._shutdown(new FanwireError("gave_up", `gave up after ${this.backoff.maxAttempts} attempts: ${error.message}`,
        { code: error.code, status: error.status }));
      return;
    }
    const delay = floored(next.value, retryAfter, this.backoff.cap);
    const gen = this._gen;
    const state = this._state === "connecting" && !this._welcome ? "connecting" : "reconnecting";
    this._setState(state, { error, delay, retryAt: Date.now() + delay * 1000, attempt: this.attempts });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (gen === this._gen && this._state !== "closed") this._attempt();
    }, delay * 1000);
  }

  /** The open connection closed. @param {number} gen @param {number} code @param {string} reason @param {boolean} wasUp */
  _lost(gen, code, reason, wasUp) {
    if (gen !== this._gen) return;
    if (wasUp && performance.now() - this._openedAt >= this.stableAfter * 1000) this._delays = null;
    const retry = closeIsRetryable(code, reason, { freshToken: this._freshToken });
    const text = `connection closed: ${code}${reason ? ` ${reason}` : ""}`;
    const error = new FanwireError(retry ? "closed" : "fatal", text, { code, reason });
    // requests written to the lost connection fail (the server may or may not have handled them)
    for (const [id, r] of this._requests) {
      if (r.gen === gen) {
        clearTimeout(r.timer);
        r.reject(error);
        this._requests.delete(id);
      }
    }
    if (!this._recover) {
      // no session to dedup a re-send: what was sent is not re-sent (at most once, like the Python client)
      for (const [id, s] of this._unacked) {
        clearTimeout(s.timer);
        s.reject(error);
        this._unacked.delete(id);
      }
    }
    if (!retry || !this.reconnect) {
      this._shutdown(error, 1000, "");
      return;
    }
    this._retry(error);
  }

  /** @param {number} gen @param {Message} welcome */
  async _welcomed(gen, welcome) {
    const ws = this._ws;
    this._welcome = welcome;
    this._refusals = 0;
    this._openedAt = performance.now();
    const v11 = welcome.version === "1.1";
    if (v11 && typeof welcome.session === "string") this._session = welcome.session;
    this._rooms = Array.isArray(welcome.rooms) ? welcome.rooms.filter((r) => typeof r === "string") : [];
    this._emit("message", welcome);
    this._emit("welcome", welcome);
    if (this._wanted === null) {
      const defaults = v11 && Array.isArray(welcome.autojoin)
        ? welcome.autojoin.filter((r) => typeof r === "string" && r !== BROADCAST_STREAM)
        : [...this._rooms];
      this._wanted = defaults;
    }
    for (const r of this._preJoins) {
      this._wanted = this._wanted.filter((x) => x !== r);
      this._wanted.push(r);
    }
    this._preJoins = [];
    let summary;
    try {
      summary = await this._restore(gen, v11, welcome);
    } catch (err) {
      if (gen !== this._gen || this._ws !== ws) return; // closed or lost meanwhile: handled there
      console.warn("fanwire: restoring the rooms failed", err);
      this._ws = null;
      this._gen++; // this connection's close event is ignored from now on
      try { ws?.close(4000, "restore failed"); } catch { /* */ }
      this._lost(this._gen, 1006, "restore failed", true);
      return;
    }
    if (gen !== this._gen || this._ws !== ws) return;
    // what was waiting: unacknowledged messages (same ids), then the queue, in order
    if (v11 && this._recover) for (const [, s] of this._unacked) this._write(s.msg);
    const queue = this._queue;
    this._queue = [];
    const reconnect = this._everConnected;
    if (reconnect) this.reconnects++;
    this._everConnected = true;
    this.lastRestore = summary;
    this._setState("connected", { welcome, restore: summary, reconnect });
    this._emit("restored", { ...summary, reconnect });
    for (const fn of queue) fn();
    this._settleConnect(null);
  }

  /**
   * Bring the new connection's streams to what the application wants: (v1.1) join $broadcast and
   * every room with `since` when a position is known; (v1) leave/join so the rooms are the same, in
   * the same order. Pipelined; resolves with a summary once every answer came.
   * @param {number} gen @param {boolean} v11 @param {Message} welcome
   */
  async _restore(gen, v11, welcome) {
    const have = [...this._rooms];
    const want = [...(this._wanted ?? [])];
    /** @type {Array<{msg: Message, room: string}>} */
    const steps = [];
    if (v11) {
      const autojoin = Array.isArray(welcome.autojoin) ? welcome.autojoin : [BROADCAST_STREAM];
      const haveBroadcast = have.includes(BROADCAST_STREAM) || (!this._recover && autojoin.includes(BROADCAST_STREAM));
      if (this._broadcasts && !haveBroadcast && autojoin.includes(BROADCAST_STREAM)) {
        steps.push({ room: BROADCAST_STREAM, msg: this._joinMsg(BROADCAST_STREAM) });
      } else if (!this._broadcasts && haveBroadcast) {
        steps.push({ room: BROADCAST_STREAM, msg: { type: "leave", room: BROADCAST_STREAM } });
      }
    }
    let common = 0;
    while (common < Math.min(have.length, want.length) && have[common] === want[common]) common++;
    for (const r of have.slice(common)) steps.push({ room: r, msg: { type: "leave", room: r } });
    for (const r of want.slice(common)) steps.push({ room: r, msg: v11 ? this._joinMsg(r) : { type: "join", room: r } });

    const summary = { version: v11 ? "1.1" : "1", missed: 0, lost: /** @type {string[]} */ ([]),
      recovered: /** @type {string[]} */ ([]), rooms: /** @type {string[]} */ ([]) };
    this._replayCount = new Map();
    this._replayDone = new Set();
    // pipelined; each request has its own timeout (requestTimeout), after which the restore fails
    const results = await Promise.all(steps.map(({ msg, room }) => this._rawRequest(msg, ["joined", "left"], gen)
      .then((reply) => ({ room, msg, reply, err: null }), (err) => ({ room, msg, reply: null, err }))));
    if (gen !== this._gen) return summary;
    for (const res of results) {
      if (res.err) {
        const err = res.err;
        if (err.kind !== "server") throw err;
        if (err.code === "bad_since") {
          // our position is ahead of the stream: its history is gone; join afresh
          this.positions.delete(res.room);
          const again = await this._rawRequest({ type: "join", room: res.room }, ["joined"], gen).catch((e) => ({ e }));
          if (again?.e) throw again.e;
          summary.lost.push(res.room);
          this._emit("historyLost", { room: res.room, missed: 0, replayed: 0, epochChanged: true });
          continue;
        }
        // forbidden, too_many_rooms...: the room cannot be restored
        console.warn(`fanwire: could not restore ${res.msg.type} ${res.room}: ${err.message}`);
        if (res.msg.type === "join") {
          if (this._wanted) this._wanted = this._wanted.filter((r) => r !== res.room);
          this._rejectRoomWaiters(res.room, "join", err);
        }
        this._emit("error", { ...err.reply });
        continue;
      }
      const reply = res.reply;
      if ("recovered" in reply) {
        const missed = this._replayCount.get(res.room) ?? 0;
        summary.missed += missed;
        if (reply.recovered === true) {
          summary.recovered.push(res.room);
          this._emit("recovered", { room: res.room, missed, replayed: reply.replayed ?? missed });
        } else {
          summary.lost.push(res.room);
          const since = res.msg.since;
          this._emit("historyLost", { room: res.room, missed, replayed: reply.replayed ?? missed,
            epochChanged: !!since && since.epoch !== reply.epoch });
        }
      }
    }
    this._replayCount = null;
    this._replayDone = null;
    summary.rooms = this.rooms;
    return summary;
  }

  /** A join of `room` with `since` when a position is known and recovery is on for it. @param {string} room */
  _joinMsg(room) {
    /** @type {Message} */
    const msg = { type: "join", room };
    const p = this.positions.get(room);
    if (p && this._recover && !this._noRecover.has(room)) msg.since = { offset: p.offset, epoch: p.epoch };
    return msg;
  }

  // -------------------------------------------------------------------------------------------------
  // Receiving

  /** @param {Message} msg */
  _receive(msg) {
    const t = msg.type;
    if ((t === "chat" || t === "broadcast" || t === "publication")
        && typeof msg.offset === "number" && typeof msg.epoch === "string") {
      const stream = streamOf(msg);
      if (stream !== null) {
        const before = this.positions.get(stream);
        const verdict = this.positions.accept(stream, msg.offset, msg.epoch);
        if (verdict === "duplicate") {
          this.duplicatesDropped++;
          return;
        }
        const replaying = this._replayCount && !this._replayDone?.has(stream);
        if (replaying) this._replayCount.set(stream, (this._replayCount.get(stream) ?? 0) + 1);
        if (verdict === "gap" && before && !replaying) {
          this.gaps++;
          this._emit("gap", { room: stream, expected: before.offset + 1, offset: msg.offset });
        }
      }
    }
    if (t === "joined" || t === "left") {
      if (Array.isArray(msg.rooms)) this._rooms = msg.rooms.filter((r) => typeof r === "string");
      if (t === "joined" && typeof msg.room === "string" && typeof msg.offset === "number"
          && typeof msg.epoch === "string") {
        this.positions.joined(msg.room, msg.offset, msg.epoch);
      }
      if (t === "joined" && typeof msg.room === "string") this._replayDone?.add(msg.room);
    }
    const id = msg.id;
    if (id !== undefined && id !== null) {
      const req = this._requests.get(id);
      if (req && (req.expect.has(t) || t === "error")) {
        this._requests.delete(id);
        clearTimeout(req.timer);
        if (t === "error") req.reject(serverError(msg));
        else req.resolve(msg);
      }
      const send = this._unacked.get(id);
      if (send && (t === "ack" || t === "error")) this._settleSend(id, send, msg);
    }
    if ((t === "joined" || t === "left") && id !== undefined) this._roomErrorIds?.delete(id);
    if ((t === "joined" || t === "left") && typeof msg.room === "string") {
      this._resolveRoomWaiters(msg.room, t === "joined" ? "join" : "leave", msg.rooms ?? this.rooms);
    }
    if (t === "error" && id !== undefined && typeof this._roomErrorIds?.get(id) === "string") {
      const [room, kind] = this._roomErrorIds.get(id).split("\u0000");
      this._roomErrorIds.delete(id);
      const err = serverError(msg);
      if (kind === "join" && this._wanted) this._wanted = this._wanted.filter((r) => r !== room);
      this._rejectRoomWaiters(room, kind, err);
    }
    this._emit("message", msg);
    this._emit(t, msg);
  }

  /** @param {number|string} id @param {PendingSend} send @param {Message} reply */
  _settleSend(id, send, reply) {
    if (reply.type === "error" && reply.code === "unavailable" && send.retries < 5) {
      // the stream's sequencer is gone: re-send with the same id
      send.retries++;
      const delay = this._rng() * ceiling(send.retries, 0.1, this.backoff.cap);
      setTimeout(() => {
        if (this._unacked.get(id) === send && this.connected) this._write(send.msg);
      }, delay * 1000);
      return;
    }
    this._unacked.delete(id);
    clearTimeout(send.timer);
    if (reply.type === "ack") send.resolve(/** @type {Ack} */ (reply));
    else send.reject(serverError(reply));
  }

  // -------------------------------------------------------------------------------------------------
  // Sending

  /** @param {Message} msg @returns {boolean} */
  _write(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  /** Run `fn` now when connected, else once connected (bounded queue). @param {() => void} fn */
  _whenConnected(fn) {
    if (this._state === "connected") {
      fn();
      return;
    }
    if (this._state === "idle" || this._state === "closed") {
      throw new FanwireError("not_connected",
        this.closedReason ? `not connected: ${this.closedReason.message}` : "not connected: call connect() first",
        { code: this.closedReason?.code, status: this.closedReason?.status });
    }
    if (this._queue.length >= this.maxPending) {
      throw new FanwireError("queue_full", `reconnecting, and ${this.maxPending} messages are already queued`);
    }
    this._queue.push(fn);
  }

  _newId() { return this._nextId++; }

  /**
   * Send `msg` with an id on connection `gen` (during restore) and wait for a reply of a type in
   * `expect` (or an error) echoing it.
   * @param {Message} msg @param {string[]} expect @param {number} gen @returns {Promise<Message>}
   */
  _rawRequest(msg, expect, gen) {
    const id = this._newId();
    const out = { ...msg, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new FanwireError("timeout", `no answer to ${msg.type} within ${this.requestTimeout} s`, { id }));
      }, this.requestTimeout * 1000);
      this._requests.set(id, { resolve, reject, timer, gen, expect: new Set(expect), t0: performance.now() });
      if (!this._write(out)) {
        clearTimeout(timer);
        this._requests.delete(id);
        reject(new FanwireError("closed", "the connection closed", { code: 1006 }));
      }
    });
  }

  /**
   * Send any message with a fresh id and resolve with the reply that echoes it (or reject with the
   * `error`). Queued while reconnecting; the timeout runs from the call.
   * @param {Message} msg @param {{expect?: string[], timeout?: number}} [opts] @returns {Promise<Message>}
   */
  request(msg, { expect, timeout = this.requestTimeout } = {}) {
    if (!msg || typeof msg.type !== "string") throw new TypeError("a message is an object with a string 'type'");
    const id = this._newId();
    const out = { ...msg, id };
    const expectSet = new Set(expect ?? []);
    return new Promise((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        this._requests.delete(id);
        reject(new FanwireError("timeout", `no answer to ${msg.type} within ${timeout} s`, { id }));
      }, timeout * 1000);
      const go = () => {
        if (done) return;
        const entry = { resolve, reject, timer, gen: this._gen, expect: expectSet, t0: performance.now() };
        if (!expect) entry.expect = { has: (/** @type {string} */ t) => t !== "error" }; // any reply echoing the id
        this._requests.set(id, /** @type {any} */ (entry));
        this._write(out);
      };
      try {
        this._whenConnected(go);
      } catch (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  }

  /**
   * Send any message as is; no reply is awaited. Queued while reconnecting.
   * @param {Message} msg
   */
  send(msg) {
    if (!msg || typeof msg.type !== "string") throw new TypeError("a message is an object with a string 'type'");
    this._whenConnected(() => this._write(msg));
  }

  /**
   * The application-level round trip in milliseconds.
   * @param {{timeout?: number}} [opts] @returns {Promise<number>}
   */
  async ping({ timeout = this.requestTimeout } = {}) {
    /** @type {number} */
    let t0 = 0;
    const id = this._newId();
    const out = { type: "ping", ts: Date.now(), id };
    return new Promise((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        this._requests.delete(id);
        reject(new FanwireError("timeout", `no pong within ${timeout} s`, { id }));
      }, timeout * 1000);
      const go = () => {
        if (done) return;
        t0 = performance.now();
        this._requests.set(id, {
          resolve: () => resolve(performance.now() - t0), reject, timer, gen: this._gen,
          expect: new Set(["pong"]), t0,
        });
        this._write(out);
      };
      try {
        this._whenConnected(go);
      } catch (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  }

  /** The server's `stats` (custom get_stats). @returns {Promise<Message>} */
  getStats() { return this.request({ type: "custom", action: "get_stats" }, { expect: ["stats"] }); }

  /**
   * A message sequenced by the server: with protocol v1.1 it carries an id, resolves with the ack,
   * and is re-sent with the same id after a reconnect until acknowledged (the server's session dedup
   * makes that exactly-once); with a v1 server it resolves with null once written.
   * @param {Message} msg @returns {Promise<Ack|null>}
   */
  _publish(msg) {
    return new Promise((resolve, reject) => {
      const go = () => {
        if (this.version !== "1.1") {
          this._write({ ...msg, id: this._newId() });
          resolve(null);
          return;
        }
        const id = this._newId();
        const out = { ...msg, id };
        const timer = this.ackTimeout == null ? null : setTimeout(() => {
          if (this._unacked.delete(id)) {
            reject(new FanwireError("timeout", `no ack within ${this.ackTimeout} s`, { id }));
          }
        }, this.ackTimeout * 1000);
        this._unacked.set(id, { msg: out, resolve, reject, timer, retries: 0 });
        this._write(out);
      };
      try {
        this._whenConnected(go);
      } catch (err) {
        reject(err);
      }
    });
  }

  /**
   * A chat to `room` (default: the current room: the last joined).
   * @param {string} text @param {{room?: string, user?: string}} [opts] @returns {Promise<Ack|null>}
   */
  chat(text, { room, user } = {}) {
    if (typeof text !== "string") throw new TypeError("text must be a string");
    /** @type {Message} */
    const msg = { type: "chat", text };
    const u = user ?? this.user;
    if (u) msg.user = u;
    if (room !== undefined) msg.room = checkRoom(room);
    return this._publish(msg);
  }

  /** Python-client alias. @param {string} text @param {string} [user] @param {string} [room] */
  sendChatMessage(text, user, room) { return this.chat(text, { user, room }); }

  /**
   * A broadcast to every connected client: a text, or any JSON `data`.
   * @param {string|null} [text] @param {{data?: any, user?: string}} [opts] @returns {Promise<Ack|null>}
   */
  broadcast(text = null, { data, user } = {}) {
    /** @type {Message} */
    const msg = { type: "broadcast" };
    if (text !== null && text !== undefined) msg.text = String(text);
    else if (data !== undefined) msg.data = data;
    else throw new TypeError("broadcast needs a text or data");
    const u = user ?? this.user;
    if (u) msg.user = u;
    return this._publish(msg);
  }

  /**
   * Publish any JSON `data` to a room (v1.1; the sender need not be a member).
   * @param {string} room @param {any} data @returns {Promise<Ack|null>}
   */
  publish(room, data) {
    return this._publish({ type: "publish", room: checkRoom(room), data });
  }

  /**
   * Join `room` (it becomes the current room) and keep it across reconnects. Resolves with the rooms.
   * With `recover: false` the room is re-joined without `since` (e.g. `$stats`).
   * @param {string} room @param {{recover?: boolean}} [opts] @returns {Promise<string[]>}
   */
  join(room, { recover = true } = {}) {
    checkRoom(room);
    if (!recover) this._noRecover.add(room);
    else this._noRecover.delete(room);
    if (this._wanted === null) {
      this._preJoins = this._preJoins.filter((r) => r !== room);
      this._preJoins.push(room);
    } else {
      this._wanted = this._wanted.filter((r) => r !== room);
      this._wanted.push(room);
    }
    return this._roomRequest(room, "join");
  }

  /**
   * Leave `room` (not re-joined after a reconnect). Resolves with the rooms.
   * @param {string} room @returns {Promise<string[]>}
   */
  leave(room) {
    checkRoom(room);
    if (this._wanted === null) this._preJoins = this._preJoins.filter((r) => r !== room);
    else this._wanted = this._wanted.filter((r) => r !== room);
    this.positions.delete(room);
    return this._roomRequest(room, "leave");
  }

  /** @param {string} room @param {"join"|"leave"} kind @returns {Promise<string[]>} */
  _roomRequest(room, kind) {
    if (this._state === "idle" || this._state === "closed") {
      // remembered for connect()
      return Promise.resolve(this.wantedRooms);
    }
    return new Promise((resolve, reject) => {
      let w = this._roomWaiters.get(room);
      if (!w) this._roomWaiters.set(room, (w = { join: [], leave: [] }));
      const entry = { resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        const list = this._roomWaiters.get(room)?.[kind];
        const i = list ? list.indexOf(entry) : -1;
        if (i >= 0) list.splice(i, 1);
        reject(new FanwireError("timeout", `no answer to ${kind} ${room} within ${this.requestTimeout} s`));
      }, this.requestTimeout * 1000);
      w[kind].push(entry);
      if (this._state === "connected") {
        const id = this._newId();
        /** @type {Message} */
        const msg = kind === "join" ? { ...this._joinMsg(room), id } : { type: "leave", room, id };
        if (!this._roomErrorIds) this._roomErrorIds = new Map();
        this._roomErrorIds.set(id, `${room}\u0000${kind}`);
        this._write(msg);
      }
      // not connected: the restore after the reconnect joins (or does not re-join) the room, and its
      // answer resolves the waiter; a leave of a room that is not re-joined resolves at the restore
      else this._queue.push(() => {
        if (kind === "leave" && !this._rooms.includes(room)) this._resolveRoomWaiters(room, "leave", this.rooms);
        else if (kind === "join" && this._rooms.includes(room)) this._resolveRoomWaiters(room, "join", this.rooms);
      });
    });
  }

  /** @param {string} room @param {"join"|"leave"} kind @param {string[]} rooms */
  _resolveRoomWaiters(room, kind, rooms) {
    const w = this._roomWaiters.get(room);
    if (!w) return;
    for (const x of w[kind].splice(0)) {
      clearTimeout(x.timer);
      x.resolve([...rooms]);
    }
    if (!w.join.length && !w.leave.length) this._roomWaiters.delete(room);
  }

  /** @param {string} room @param {"join"|"leave"} kind @param {FanwireError} err */
  _rejectRoomWaiters(room, kind, err) {
    const w = this._roomWaiters.get(room);
    if (!w) return;
    for (const x of w[kind].splice(0)) {
      clearTimeout(x.timer);
      x.reject(err);
    }
    if (!w.join.length && !w.leave.length) this._roomWaiters.delete(room);
  }
}

/** @param {string} room @returns {string} */
function checkRoom(room) {
  if (typeof room !== "string" || room.length < 1 || room.length > 128) {
    throw new TypeError("a room name is a string of 1 to 128 characters");
  }
  return room;
}

/** @param {number} status @param {string} detail @returns {string} */
function refusalMessage(status, detail) {
  const what = {
    401: "a valid token is required (HTTP 401)",
    403: "this page's origin is not allowed (HTTP 403)",
    503: "the server is busy (HTTP 503)",
  }[status] ?? `the server refused the WebSocket handshake (HTTP ${status})`;
  return detail ? `${what}: ${detail}` : what;
}

/**
 * Create a client and connect it (retrying retryable failures).
 * @param {string} [url] @param {ClientOptions} [options] @returns {FanwireClient}
 */
export function connect(url, options) {
  const c = new FanwireClient(url, options);
  c.connect().catch(() => { /* reported through the "state" event and closedReason */ });
  return c;
}
