// Unit tests of fanwire.js (backoff, retry rules, dedup, the reconnect/recovery/ack state machine with
// a fake WebSocket and a fake fetch) and of the dashboard's stats.js. Run in Chromium by
// tests/browser/test_unit_js.py; open /test/unit.html in any browser to see them.

import * as fw from "../fanwire.js";
import * as st from "../static/stats.js";
import { niceCeil } from "../static/chart.js";

/** @type {Array<{name: string, ok: boolean, error?: string, ms: number}>} */
const results = [];
globalThis.__unit = { done: false, results };

const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

/** @param {string} name @param {() => any} fn */
async function test(name, fn) {
  const t0 = performance.now();
  try {
    await fn();
    results.push({ name, ok: true, ms: performance.now() - t0 });
  } catch (err) {
    results.push({ name, ok: false, error: String(err?.stack ?? err), ms: performance.now() - t0 });
  }
}

function eq(actual, expected, what = "") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what} expected ${e}, got ${a}`);
}
function ok(cond, what = "assertion failed") {
  if (!cond) throw new Error(what);
}
async function until(pred, what = "condition", ms = 2000) {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}
async function rejects(promise, check = (_e) => true, what = "rejection") {
  try {
    await promise;
  } catch (err) {
    if (!check(err)) throw new Error(`${what}: unexpected error ${err?.kind} ${err}`);
    return err;
  }
  throw new Error(`${what}: resolved instead of rejecting`);
}

// ---------------------------------------------------------------------------------------------------
// A fake WebSocket: the test plays the server.

class FakeWS extends EventTarget {
  /** @param {string} url @param {string[]} protocols */
  constructor(url, protocols) {
    super();
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    /** @type {any[]} */ this.sent = [];
    /** @type {any[]} */ this.closedWith = null;
    /** @type {any} */ (new.target).instances.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.closedWith = [code, reason];
    this.readyState = 3;
    const wasOpen = this.opened;
    setTimeout(() => this.dispatchEvent(new CloseEvent("close", { code: wasOpen ? code : 1006, reason })), 0);
  }
  // the server side
  open() {
    this.readyState = 1;
    this.opened = true;
    this.dispatchEvent(new Event("open"));
  }
  msg(obj) {
    this.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(obj) }));
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean: code !== 1006 }));
  }
  fail() {
    this.readyState = 3;
    this.dispatchEvent(new Event("error"));
    this.dispatchEvent(new CloseEvent("close", { code: 1006 }));
  }
  of(type) {
    return this.sent.filter((m) => m.type === type);
  }
  get query() {
    return Object.fromEntries(new URL(this.url).searchParams);
  }
}

function wsClass() {
  class W extends FakeWS {}
  /** @type {FakeWS[]} */
  W.instances = [];
  return W;
}

const SESSION = "S3ss10n-abcdefghijklmn";
const welcome11 = (worker = 0, extra = {}) => ({
  type: "welcome", client_id: `${worker}-1`, worker, rooms: [], protocol: 1, version: "1.1",
  session: SESSION, autojoin: ["$broadcast", "lobby"], ...extra,
});
const welcome1 = (worker = 0) => ({ type: "welcome", client_id: `${worker}-1`, worker, rooms: ["lobby"], protocol: 1 });

/** A fetch that answers the check endpoint with `check` and /healthz with `health` (a status or "down"). */
function fakeFetch({ check = 426, health = 200, retryAfter = null } = {}) {
  const calls = [];
  const fn = async (url, init = {}) => {
    calls.push({ url: String(url), init });
    const what = String(url).includes("/connect-check") ? check : health;
    if (what === "down") throw new TypeError("Failed to fetch");
    const headers = new Headers();
    if (retryAfter !== null) headers.set("Retry-After", String(retryAfter));
    return new Response(what === 204 ? null : "refused by the fake\n", { status: what, headers });
  };
  fn.calls = calls;
  return fn;
}

/** A client on a fake socket class, fast backoff. */
function makeClient(W, options = {}) {
  const states = [];
  const c = new fw.FanwireClient("ws://127.0.0.1:9/", {
    WebSocket: /** @type {any} */ (W), fetch: /** @type {any} */ (fakeFetch()), rng: () => 0.5,
    backoff: { base: 0.01, cap: 0.04 }, requestTimeout: 1, openTimeout: 1, ...options,
  });
  c.on("state", (d) => states.push(d));
  c.states = states;
  return c;
}

/** Answer every join/leave sent on `ws` that has no answer yet. */
function answerRooms(ws, { epoch = "e1", offsets = {}, recovered = {} } = {}) {
  const rooms = [];
  for (const m of ws.sent) {
    if (m._answered || (m.type !== "join" && m.type !== "leave")) continue;
    m._answered = true;
    if (m.type === "join") {
      if (m.room !== "$broadcast" && !rooms.includes(m.room)) rooms.push(m.room);
      const ans = { type: "joined", room: m.room, rooms: [...rooms], offset: offsets[m.room] ?? 0, epoch, id: m.id };
      if (m.since) Object.assign(ans, { recovered: recovered[m.room] ?? true, replayed: 0 });
      ws.msg(ans);
    } else {
      ws.msg({ type: "left", room: m.room, rooms: [...rooms], id: m.id });
    }
  }
}

/** Connect a v1.1 client: welcome, answer the restore joins, wait for "connected". */
async function connected11(W, c, opts = {}) {
  const p = c.connect();
  await until(() => W.instances.length > 0, "a socket");
  const ws = W.instances[W.instances.length - 1];
  ws.open();
  ws.msg(welcome11(0));
  await until(() => ws.of("join").length >= 2, "the joins");
  answerRooms(ws, opts);
  await p;
  return ws;
}

// ---------------------------------------------------------------------------------------------------
// Backoff and retry rules: the same as client/backoff.py and client/errors.py

await test("backoff defaults are the Python client's: base 0.5 s, cap 5 s, unlimited", () => {
  const b = new fw.Backoff();
  eq([b.base, b.cap, b.maxAttempts], [0.5, 5, null]);
  eq(fw.DEFAULT_BACKOFF, { base: 0.5, cap: 5, maxAttempts: null });
});

await test("backoff: full jitter within [0, min(cap, base * 2**n))", () => {
  const top = [...new fw.Backoff({ maxAttempts: 7 }).delays(() => 1)];
  eq(top, [0.5, 1, 2, 4, 5, 5, 5]);
  const zero = [...new fw.Backoff({ maxAttempts: 3 }).delays(() => 0)];
  eq(zero, [0, 0, 0]);
  const half = new fw.Backoff({ base: 1, cap: 100 }).delays(() => 0.5);
  eq([half.next().value, half.next().value, half.next().value], [0.5, 1, 2]);
  eq(fw.ceiling(100, 0.5, 5), 5);
  eq(fw.ceiling(2000, 0.5, 5), 5, "huge attempt numbers stay finite");
  for (const d of new fw.Backoff({ maxAttempts: 200 }).delays()) ok(d >= 0 && d < 5, `delay ${d} out of range`);
});

await test("backoff: maxAttempts ends the sequence; invalid arguments throw", () => {
  eq([...new fw.Backoff({ maxAttempts: 0 }).delays()].length, 0);
  eq([...new fw.Backoff({ maxAttempts: 4 }).delays()].length, 4);
  for (const bad of [{ base: 0 }, { base: -1 }, { base: 1, cap: 0.5 }, { maxAttempts: -1 }]) {
    let threw = false;
    try {
      new fw.Backoff(bad);
    } catch {
      threw = true;
    }
    ok(threw, `no error for ${JSON.stringify(bad)}`);
  }
  let threw = false;
  try {
    fw.ceiling(-1);
  } catch {
    threw = true;
  }
  ok(threw, "ceiling(-1)");
});

await test("Retry-After floors the delay, at most the cap", () => {
  eq(fw.floored(0.2, null, 5), 0.2);
  eq(fw.floored(0.2, 1, 5), 1);
  eq(fw.floored(3, 1, 5), 3);
  eq(fw.floored(0.2, 60, 5), 5);
  eq(fw.parseRetryAfter("3"), 3);
  eq(fw.parseRetryAfter(null), null);
  eq(fw.parseRetryAfter("soon"), null);
  const now = Date.parse("2025-01-01T00:00:00Z");
  eq(fw.parseRetryAfter("Wed, 01 Jan 2025 00:00:10 GMT", now), 10);
});

await test("close codes: retry after 1000/1001/1006/1011/1012/1013, not after 1002/1003/1007/1008/1009/1010", () => {
  for (const code of [1000, 1001, 1005, 1006, 1011, 1012, 1013, 4000, null]) ok(fw.closeIsRetryable(code), `${code}`);
  for (const code of [1002, 1003, 1007, 1008, 1009, 1010]) ok(!fw.closeIsRetryable(code), `${code}`);
  ok(fw.closeIsRetryable(1008, "token expired", { freshToken: true }), "token expired with a token function");
  ok(!fw.closeIsRetryable(1008, "token expired"), "token expired with a fixed token");
  ok(!fw.closeIsRetryable(1008, "rate limit exceeded", { freshToken: true }));
  for (const s of [408, 429, 500, 502, 503, 504]) ok(fw.statusIsRetryable(s), `${s}`);
  for (const s of [400, 401, 403, 404, 426, null]) ok(!fw.statusIsRetryable(s), `${s}`);
});

await test("URLs: token, autojoin=0 and session as query parameters; HTTP endpoints on the same host", () => {
  eq(fw.attemptUrl("ws://h:1/", {}), "ws://h:1/");
  eq(fw.attemptUrl("ws://h:1/?a=b", { token: "t.k-n", recover: true, session: SESSION }),
    `ws://h:1/?a=b&token=t.k-n&autojoin=0&session=${SESSION}`);
  eq(fw.attemptUrl("wss://h/", { recover: true }), "wss://h/?autojoin=0");
  eq(fw.httpUrlOf("ws://127.0.0.1:8765/?token=x", "/healthz"), "http://127.0.0.1:8765/healthz");
  eq(fw.httpUrlOf("wss://example.com/ws", "/connect-check"), "https://example.com/connect-check");
});

// ---------------------------------------------------------------------------------------------------
// Positions: duplicates by offset, gaps, epochs

await test("positions: duplicates are at or before the last offset of the same epoch", () => {
  const p = new fw.Positions();
  eq(p.accept("lobby", 5, "a"), "new");
  eq(p.accept("lobby", 6, "a"), "new");
  eq(p.accept("lobby", 6, "a"), "duplicate");
  eq(p.accept("lobby", 3, "a"), "duplicate");
  eq(p.accept("lobby", 9, "a"), "gap");
  eq(p.get("lobby"), { offset: 9, epoch: "a" });
  eq(p.accept("lobby", 1, "b"), "epoch");
  eq(p.accept("lobby", 1, "b"), "duplicate");
  eq(p.accept("games", 1, "b"), "new", "streams are independent");
  p.joined("lobby", 0, "b");
  eq(p.get("lobby"), { offset: 1, epoch: "b" }, "a joined does not move a position back");
  p.joined("lobby", 7, "b");
  eq(p.get("lobby"), { offset: 7, epoch: "b" });
  p.joined("lobby", 2, "c");
  eq(p.get("lobby"), { offset: 2, epoch: "c" }, "a joined in another epoch resets the position");
  eq(fw.streamOf({ type: "broadcast" }), "$broadcast");
  eq(fw.streamOf({ type: "chat", room: "x" }), "x");
  eq(fw.streamOf({ type: "pong" }), null);
});

// ---------------------------------------------------------------------------------------------------
// The client, v1.1

await test("v1.1 connect: autojoin=0, then join $broadcast and lobby; session kept", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c);
  eq(ws.query.autojoin, "0");
  ok(!("session" in ws.query), "no session on the first connection");
  eq(ws.protocols, ["fanwire.json"]);
  eq(ws.of("join").map((m) => [m.room, "since" in m]), [["$broadcast", false], ["lobby", false]]);
  eq(c.state, "connected");
  eq(c.version, "1.1");
  eq(c.session, SESSION);
  eq(c.rooms, ["lobby"]);
  eq(c.states.map((s) => s.state), ["connecting", "connected"]);
  c.close();
  eq(c.state, "closed");
});

await test("duplicates by offset are dropped; gaps are reported", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c);
  const seen = [];
  const gaps = [];
  c.on("chat", (m) => seen.push(m.offset));
  c.on("gap", (g) => gaps.push(g));
  for (const o of [1, 2, 2, 1, 3, 6]) ws.msg({ type: "chat", room: "lobby", text: "x", offset: o, epoch: "e1" });
  ws.msg({ type: "broadcast", text: "b", offset: 1, epoch: "e1" });
  ws.msg({ type: "broadcast", text: "b", offset: 1, epoch: "e1" });
  eq(seen, [1, 2, 3, 6]);
  eq(c.duplicatesDropped, 3);
  eq(gaps, [{ room: "lobby", expected: 4, offset: 6 }]);
  eq(c.positions.get("$broadcast"), { offset: 1, epoch: "e1" });
  c.close();
});

await test("reconnect: same session, re-join with since, replay counted, duplicates dropped", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c, { offsets: { lobby: 4, $broadcast: 0 } });
  ws.msg({ type: "chat", room: "lobby", text: "five", offset: 5, epoch: "e1" });
  const events = [];
  const chats = [];
  c.on("recovered", (d) => events.push(["recovered", d]));
  c.on("restored", (d) => events.push(["restored", d.missed, d.reconnect]));
  c.on("chat", (m) => chats.push(m.offset));
  ws.drop(1012, "server restarting");
  eq(c.state, "reconnecting");
  const st = c.states[c.states.length - 1];
  ok(st.delay >= 0 && st.delay <= 0.01, `first delay ${st.delay} within [0, base)`);
  eq(st.error.code, 1012);
  await until(() => W.instances.length === 2, "a new socket");
  const ws2 = W.instances[1];
  eq(ws2.query.session, SESSION);
  eq(ws2.query.autojoin, "0");
  ws2.open();
  ws2.msg(welcome11(1));
  await until(() => ws2.of("join").length === 2, "the re-joins");
  eq(ws2.of("join").map((m) => [m.room, m.since]),
    [["$broadcast", { offset: 0, epoch: "e1" }], ["lobby", { offset: 5, epoch: "e1" }]]);
  // the server replays 6 and 7 (and 5 again, which is dropped), then answers
  const lobbyJoin = ws2.of("join")[1];
  for (const o of [5, 6, 7]) ws2.msg({ type: "chat", room: "lobby", text: "r", offset: o, epoch: "e1" });
  ws2.msg({ type: "joined", room: "$broadcast", rooms: [], offset: 0, epoch: "e1", recovered: true, replayed: 0, id: ws2.of("join")[0].id });
  ws2.msg({ type: "joined", room: "lobby", rooms: ["lobby"], offset: 7, epoch: "e1", recovered: true, replayed: 3, id: lobbyJoin.id });
  await until(() => c.state === "connected", "connected again");
  eq(chats, [6, 7]);
  eq(events, [["recovered", { room: "$broadcast", missed: 0, replayed: 0 }],
    ["recovered", { room: "lobby", missed: 2, replayed: 3 }], ["restored", 2, true]]);
  eq(c.reconnects, 1);
  eq(c.worker, 1);
  c.close();
});

await test("history lost: recovered false is reported with the rooms", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c, { offsets: { lobby: 9 } });
  const lost = [];
  c.on("historyLost", (d) => lost.push(d));
  ws.drop(1006);
  await until(() => W.instances.length === 2, "a new socket");
  const ws2 = W.instances[1];
  ws2.open();
  ws2.msg(welcome11());
  await until(() => ws2.of("join").length === 2, "re-joins");
  ws2.msg({ type: "chat", room: "lobby", text: "new epoch", offset: 1, epoch: "e2" });
  answerRooms(ws2, { epoch: "e2", offsets: { lobby: 1 }, recovered: { lobby: false, $broadcast: false } });
  await until(() => c.state === "connected", "connected");
  eq(lost.map((d) => [d.room, d.missed, d.epochChanged]), [["$broadcast", 0, true], ["lobby", 1, true]]);
  eq(c.lastRestore.lost, ["$broadcast", "lobby"]);
  eq(c.positions.get("lobby"), { offset: 1, epoch: "e2" });
  c.close();
});

await test("bad_since: the room is joined afresh and reported lost", async () => {
  const W = wsClass();
  const c = makeClient(W, { broadcasts: false });
  const p = c.connect();
  await until(() => W.instances.length === 1);
  let ws = W.instances[0];
  ws.open();
  ws.msg(welcome11());
  await until(() => ws.of("join").length === 1);
  answerRooms(ws, { offsets: { lobby: 50 } });
  await p;
  ws.drop(1001);
  await until(() => W.instances.length === 2);
  ws = W.instances[1];
  ws.open();
  ws.msg(welcome11());
  await until(() => ws.of("join").length === 1);
  const j = ws.of("join")[0];
  eq(j.since, { offset: 50, epoch: "e1" });
  ws.msg({ type: "error", code: "bad_since", detail: "ahead", id: j.id });
  await until(() => ws.of("join").length === 2, "a join without since");
  ok(!("since" in ws.of("join")[1]));
  answerRooms(ws, { offsets: { lobby: 3 } });
  await until(() => c.state === "connected");
  eq(c.lastRestore.lost, ["lobby"]);
  c.close();
});

await test("acks: chat resolves with the ack; unacked messages are re-sent with the same id after a reconnect", async () => {
  const W = wsClass();
  const c = makeClient(W, { user: "ann" });
  const ws = await connected11(W, c);
  const first = c.chat("one");
  const [m1] = ws.of("chat");
  eq([m1.text, m1.user, typeof m1.id], ["one", "ann", "number"]);
  ws.msg({ type: "ack", id: m1.id, room: "lobby", offset: 1, epoch: "e1" });
  eq((await first).offset, 1);
  const second = c.chat("two", { room: "games" });
  const m2 = ws.of("chat")[1];
  eq(m2.room, "games");
  eq(c.unacked, 1);
  ws.drop(1006);
  const third = c.broadcast("three"); // queued while reconnecting
  await until(() => W.instances.length === 2);
  const ws2 = W.instances[1];
  ws2.open();
  ws2.msg(welcome11());
  await until(() => ws2.of("join").length === 2);
  eq(ws2.of("chat").length, 0, "nothing is re-sent before the rooms are restored");
  answerRooms(ws2);
  await until(() => ws2.sent.filter((m) => m.type === "chat" || m.type === "broadcast").length === 2, "the re-sends");
  const out = ws2.sent.filter((m) => m.type === "chat" || m.type === "broadcast");
  eq(out.map((m) => [m.type, m.id === m2.id]), [["chat", true], ["broadcast", false]], "unacked first, with its id; then the queue");
  ws2.msg({ type: "ack", id: m2.id, room: "games", offset: 4, epoch: "e1", duplicate: true });
  ws2.msg({ type: "ack", id: out[1].id, room: "$broadcast", offset: 1, epoch: "e1" });
  eq((await second).duplicate, true);
  eq((await third).room, "$broadcast");
  eq(c.unacked, 0);
  c.close();
});

await test("acks: an error rejects; unavailable is re-sent with the same id", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c);
  const p = c.publish("auction", { bid: 1 });
  const [m] = ws.of("publish");
  eq(m.data, { bid: 1 });
  ws.msg({ type: "error", code: "unavailable", detail: "sequencer gone", id: m.id });
  await until(() => ws.of("publish").length === 2, "the re-send", 3000);
  eq(ws.of("publish")[1].id, m.id);
  ws.msg({ type: "error", code: "forbidden", detail: "no", id: m.id });
  const err = await rejects(p, (e) => e.kind === "server" && e.code === "forbidden");
  eq(err.detail, "no");
  c.close();
});

await test("ping resolves with the round trip; a ping without answer times out", async () => {
  const W = wsClass();
  const c = makeClient(W, { requestTimeout: 0.1 });
  const ws = await connected11(W, c);
  const p = c.ping();
  const [pm] = ws.of("ping");
  ok(typeof pm.ts === "number");
  await sleep(5);
  ws.msg({ type: "pong", ts: pm.ts, server_ts: Date.now(), id: pm.id });
  const rtt = await p;
  ok(rtt >= 4 && rtt < 1000, `rtt ${rtt}`);
  await rejects(c.ping(), (e) => e.kind === "timeout");
  c.close();
});

await test("join and leave: resolved by joined/left; errors reject; rooms kept across reconnects", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const ws = await connected11(W, c);
  const j = c.join("games");
  const jm = ws.of("join")[2];
  eq(jm.room, "games");
  ws.msg({ type: "joined", room: "games", rooms: ["lobby", "games"], offset: 0, epoch: "e1", id: jm.id });
  eq(await j, ["lobby", "games"]);
  const l = c.leave("lobby");
  const lm = ws.of("leave")[0];
  ws.msg({ type: "left", room: "lobby", rooms: ["games"], id: lm.id });
  eq(await l, ["games"]);
  const bad = c.leave("nowhere");
  ws.msg({ type: "error", code: "not_in_room", detail: "x", id: ws.of("leave")[1].id });
  await rejects(bad, (e) => e.code === "not_in_room");
  eq(c.wantedRooms, ["games"]);
  ws.drop(1011);
  await until(() => W.instances.length === 2);
  const ws2 = W.instances[1];
  ws2.open();
  ws2.msg(welcome11());
  await until(() => ws2.of("join").length === 2);
  eq(ws2.of("join").map((m) => m.room), ["$broadcast", "games"]);
  c.close();
});

await test("while reconnecting sends are queued (bounded); after close they reject", async () => {
  const W = wsClass();
  const c = makeClient(W, { maxPending: 2 });
  const ws = await connected11(W, c);
  ws.drop(1006);
  c.chat("a").catch(() => {});
  c.chat("b").catch(() => {});
  await rejects(c.chat("c"), (e) => e.kind === "queue_full");
  c.close();
  await rejects(c.chat("d"), (e) => e.kind === "not_connected");
  let threw = false;
  try {
    c.send({ type: "ping" });
  } catch (e) {
    threw = e.kind === "not_connected";
  }
  ok(threw, "send() after close throws not_connected");
});

await test("fatal close (1008): closed, no reconnect, connect() rejects", async () => {
  const W = wsClass();
  const c = makeClient(W);
  await connected11(W, c);
  W.instances[0].drop(1008, "rate limit exceeded");
  eq(c.state, "closed");
  eq(c.closedReason.kind, "fatal");
  eq(c.closedReason.code, 1008);
  await sleep(60);
  eq(W.instances.length, 1, "no new attempt");
});

await test("1008 token expired is retried when the token is a function (fresh token each attempt)", async () => {
  const W = wsClass();
  let n = 0;
  const c = makeClient(W, { token: () => `tok${++n}` });
  const ws = await connected11(W, c);
  eq(ws.query.token, "tok1");
  ws.drop(1008, "token expired");
  eq(c.state, "reconnecting");
  await until(() => W.instances.length === 2);
  eq(W.instances[1].query.token, "tok2");
  c.close();
});

await test("refused handshake: the check endpoint says 401 -> closed after one attempt, with the reason", async () => {
  const W = wsClass();
  const fetch = fakeFetch({ check: 401 });
  const c = makeClient(W, { fetch, token: "bad-token" });
  const p = c.connect();
  await until(() => W.instances.length === 1);
  W.instances[0].fail();
  const err = await rejects(p, (e) => e.kind === "refused");
  eq(err.status, 401);
  ok(err.message.includes("401") && err.message.includes("refused by the fake"), err.message);
  eq(c.state, "closed");
  eq(fetch.calls[0].url, "http://127.0.0.1:9/connect-check");
  eq(fetch.calls[0].init.headers, { Authorization: "Bearer bad-token" });
  await sleep(60);
  eq(W.instances.length, 1, "no retry after a 401");
});

await test("refused handshake: no check endpoint, server answers HTTP -> gives up after maxRefusals", async () => {
  const W = wsClass();
  const fetch = fakeFetch({ check: 426, health: 200 });
  const c = makeClient(W, { fetch, maxRefusals: 3 });
  const p = c.connect();
  for (let i = 1; i <= 3; i++) {
    await until(() => W.instances.length === i, `attempt ${i}`);
    W.instances[i - 1].fail();
  }
  const err = await rejects(p, (e) => e.kind === "refused");
  ok(err.message.includes("3 time(s) in a row"), err.message);
  await sleep(60);
  eq(W.instances.length, 3);
});

await test("server down (fetch fails): keeps retrying with backoff, never gives up", async () => {
  const W = wsClass();
  const fetch = fakeFetch({ check: "down", health: "down" });
  const c = makeClient(W, { fetch, maxRefusals: 2 });
  const p = c.connect();
  for (let i = 1; i <= 6; i++) {
    await until(() => W.instances.length === i, `attempt ${i}`);
    W.instances[i - 1].fail();
  }
  await until(() => W.instances.length === 7, "attempt 7");
  eq(c.state, "connecting");
  ok(c.states.filter((s) => s.delay !== undefined).every((s) => s.delay <= 0.04), "delays within the cap");
  c.close();
  await rejects(p);
});

await test("503 with Retry-After from the check endpoint: retried, waiting at least Retry-After (capped)", async () => {
  const W = wsClass();
  const fetch = fakeFetch({ check: 503, retryAfter: 1 });
  const c = makeClient(W, { fetch, backoff: { base: 0.01, cap: 0.05 } });
  c.connect().catch(() => {});
  await until(() => W.instances.length === 1);
  W.instances[0].fail();
  await until(() => c.states.some((s) => s.delay !== undefined), "a retry");
  const s = c.states.find((x) => x.delay !== undefined);
  eq(s.delay, 0.05, "Retry-After 1 s, capped at 0.05");
  eq(s.error.status, 503);
  await until(() => W.instances.length === 2, "the retry");
  c.close();
});

await test("a connection that lived stableAfter starts a fresh backoff sequence", async () => {
  const W = wsClass();
  const fetch = fakeFetch({ check: "down", health: "down" });
  const c = makeClient(W, { fetch, rng: () => 0.999, backoff: { base: 0.01, cap: 1 }, stableAfter: 0.05 });
  await connected11(W, c);
  const delays = () => c.states.filter((s) => s.delay !== undefined).map((s) => Math.round(s.delay * 1000));
  W.instances[0].drop(1006);
  for (let i = 1; i <= 2; i++) {
    await until(() => W.instances.length === i + 1);
    W.instances[i].fail();
  }
  await until(() => W.instances.length === 4);
  eq(delays(), [10, 20, 40], "growing while the outage lasts");
  const ws = W.instances[3];
  ws.open();
  ws.msg(welcome11());
  await until(() => ws.of("join").length === 2);
  answerRooms(ws);
  await until(() => c.state === "connected");
  await sleep(80);
  ws.drop(1006);
  eq(delays().slice(-1), [10], "fresh sequence after a stable connection");
  c.close();
});

await test("no welcome within openTimeout: retried", async () => {
  const W = wsClass();
  const c = makeClient(W, { openTimeout: 0.05 });
  c.connect().catch(() => {});
  await until(() => W.instances.length === 1);
  W.instances[0].open();
  await until(() => W.instances.length === 2, "a second attempt", 1000);
  eq(c.states.find((s) => s.error)?.error.kind, "timeout");
  c.close();
});

await test("a restore without answers: the connection is dropped and retried, once", async () => {
  const W = wsClass();
  const c = makeClient(W, { requestTimeout: 0.05 });
  c.connect().catch(() => {});
  await until(() => W.instances.length === 1);
  const ws = W.instances[0];
  ws.open();
  ws.msg(welcome11());
  await until(() => W.instances.length === 2, "a new attempt");
  eq(ws.closedWith?.[0], 4000);
  await sleep(80);
  eq(W.instances.length, 2, "exactly one new attempt");
  c.close();
});

await test("a connection lost during the restore: exactly one new attempt", async () => {
  const W = wsClass();
  const c = makeClient(W);
  c.connect().catch(() => {});
  await until(() => W.instances.length === 1);
  const ws = W.instances[0];
  ws.open();
  ws.msg(welcome11());
  await until(() => ws.of("join").length === 2);
  ws.drop(1006);
  await until(() => W.instances.length === 2, "a new attempt");
  await sleep(80);
  eq(W.instances.length, 2, "exactly one new attempt");
  c.close();
});

await test("the check endpoint accepts but handshakes keep failing (an origin it cannot see): gives up", async () => {
  const W = wsClass();
  const c = makeClient(W, { fetch: fakeFetch({ check: 204 }), maxRefusals: 2 });
  const p = c.connect();
  for (let i = 1; i <= 2; i++) {
    await until(() => W.instances.length === i, `attempt ${i}`);
    W.instances[i - 1].fail();
  }
  const err = await rejects(p, (e) => e.kind === "refused");
  ok(err.message.includes("origin"), err.message);
});

// ---------------------------------------------------------------------------------------------------
// The client, v1 server (no version in the welcome)

await test("v1 server: rooms from the welcome, no since, chat resolves null, rooms restored by diff", async () => {
  const W = wsClass();
  const c = makeClient(W);
  const p = c.connect();
  await until(() => W.instances.length === 1);
  const ws = W.instances[0];
  ws.open();
  ws.msg(welcome1());
  await p;
  eq(ws.of("join").length, 0, "already in lobby: nothing to join");
  eq(c.version, "1");
  eq(c.session, null);
  eq(await c.chat("hi"), null);
  eq(typeof ws.of("chat")[0].id, "number");
  const j = c.join("games");
  ws.msg({ type: "joined", room: "games", rooms: ["lobby", "games"], id: ws.of("join")[0].id });
  await j;
  const l = c.leave("lobby");
  ws.msg({ type: "left", room: "lobby", rooms: ["games"], id: ws.of("leave")[0].id });
  await l;
  ws.drop(1012);
  await until(() => W.instances.length === 2);
  const ws2 = W.instances[1];
  ok(!("session" in ws2.query));
  ws2.open();
  ws2.msg(welcome1(1));
  await until(() => ws2.sent.length === 2, "restore");
  eq(ws2.sent.map((m) => [m.type, m.room, "since" in m]), [["leave", "lobby", false], ["join", "games", false]]);
  ws2.msg({ type: "left", room: "lobby", rooms: [], id: ws2.sent[0].id });
  ws2.msg({ type: "joined", room: "games", rooms: ["games"], id: ws2.sent[1].id });
  await until(() => c.state === "connected");
  eq(c.rooms, ["games"]);
  eq(c.lastRestore.version, "1");
  c.close();
});

await test("rooms option and recover:false: the dashboard's $stats subscription", async () => {
  const W = wsClass();
  const c = makeClient(W, { rooms: [], broadcasts: false });
  c.join("$stats", { recover: false });
  const p = c.connect();
  await until(() => W.instances.length === 1);
  const ws = W.instances[0];
  ws.open();
  ws.msg(welcome11());
  await until(() => ws.of("join").length === 1);
  eq(ws.of("join").map((m) => m.room), ["$stats"]);
  answerRooms(ws, { offsets: { $stats: 10 } });
  await p;
  ws.msg({ type: "publication", room: "$stats", data: {}, offset: 11, epoch: "e1" });
  ws.drop(1006);
  await until(() => W.instances.length === 2);
  const ws2 = W.instances[1];
  ws2.open();
  ws2.msg(welcome11());
  await until(() => ws2.of("join").length === 1);
  ok(!("since" in ws2.of("join")[0]), "no replay of old snapshots");
  c.close();
});

// ---------------------------------------------------------------------------------------------------
// stats.js (dashboard)

await test("stats: label parsing", () => {
  eq(st.parseLabels(""), {});
  eq(st.parseLabels('type="chat"'), { type: "chat" });
  eq(st.parseLabels('node="a",worker="1"'), { node: "a", worker: "1" });
  eq(st.parseLabels('reason="say \\"hi\\"",x="a\\\\b"'), { reason: 'say "hi"', x: "a\\b" });
  eq(st.parseLabels("garbage"), {});
});

await test("stats: families tolerate missing and malformed data", () => {
  eq(st.family(undefined, "x"), {});
  eq(st.family({ x: null }, "x"), {});
  eq(st.family({ x: { a: 1, b: "2", c: "nope", d: null } }, "x"), { a: 1, b: 2 });
  eq(st.total({ a: 1, b: 2.5 }), 3.5);
  eq(Object.fromEntries(st.byLabel({ 'type="chat",w="0"': 1, 'type="chat",w="1"': 2, 'type="ping"': 4, "": 8 }, "type")),
    { chat: 3, ping: 4, "": 8 });
});

await test("stats: counter rates, resets never negative, new series count from 0", () => {
  eq(st.counterIncrease(10, 15), 5);
  eq(st.counterIncrease(10, 3), 0);
  eq(st.counterIncrease(undefined, 4), 4);
  const a = { ts_ms: 1000, families: { fanwire_messages_in_total: { 'type="chat"': 10 }, fanwire_connections: { "": 5 } } };
  const b = { ts_ms: 3000, families: { fanwire_messages_in_total: { 'type="chat"': 30, 'type="ping"': 4 }, fanwire_connections: { "": 9 } } };
  const r = st.ratesBetween(a, b);
  eq(r.dt, 2);
  eq(r.rates, { fanwire_messages_in_total: { 'type="chat"': 10, 'type="ping"': 2 } }, "gauges are not rated");
  const reset = { ts_ms: 4000, families: { fanwire_messages_in_total: { 'type="chat"': 2 } } };
  eq(st.ratesBetween(b, reset).rates.fanwire_messages_in_total['type="chat"'], 0);
  eq(st.ratesBetween(b, a), null, "time going backwards");
  eq(st.ratesBetween(null, a), null);
});

await test("stats: view of one and of several publishers; deliveries/s", () => {
  const v = new st.StatsView();
  const snap = (node, ts, chatOut, workers) => ({
    ts_ms: ts, node, bus: { name: "redis", up: true, nodes: ["a", "b"] }, workers,
    families: { fanwire_messages_out_total: { 'type="chat"': chatOut, 'type="pong"': chatOut }, fanwire_odd: "x" },
  });
  const wa = [{ id: 0, node: "a", pid: 1, connections: 3, loop_lag_ms: 0.5 }];
  const wb = [{ id: 0, node: "b", pid: 2, connections: 4, loop_lag_ms: 1.5 }];
  ok(v.add(snap("a", 1000, 0, wa), 1000));
  eq(v.view(1000).rates, null, "no rate from one snapshot");
  ok(v.add(snap("a", 2000, 100, wa), 2000));
  ok(!v.add(snap("a", 2000, 100, wa), 2000), "same timestamp ignored");
  eq(st.deliveriesPerSecond(v.view(2000).rates), 100);
  ok(v.add(snap("b", 1500, 0, wb), 2000));
  ok(v.add(snap("b", 2500, 50, wb), 2500));
  const view = v.view(2500);
  eq(view.publishers, 2);
  eq(st.deliveriesPerSecond(view.rates), 150);
  eq(view.workers.map((w) => `${w.node}/${w.id}:${w.connections}`), ["a/0:3", "b/0:4"]);
  eq(view.nodes, ["a", "b"]);
  eq(view.bus, { name: "redis", up: true, nodes: ["a", "b"] });
  eq(v.view(9000), null, "publishers silent for too long are dropped");
  eq(st.deliveriesPerSecond(null), null);
});

await test("stats: number formatting; chart axis", () => {
  eq(st.compact(0), "0");
  eq(st.compact(12.345), "12.3");
  eq(st.compact(950), "950");
  eq(st.compact(12345), "12.3k");
  eq(st.compact(2.5e6), "2.5M");
  eq(st.compact(null), "–");
  eq(st.bytes(512), "512 B");
  eq(st.bytes(1536), "1.5 KiB");
  eq(niceCeil(0), 1);
  eq(niceCeil(7), 10);
  eq(niceCeil(120), 200);
  eq(niceCeil(0.3), 0.5);
});

// ---------------------------------------------------------------------------------------------------

globalThis.__unit.done = true;
const failed = results.filter((r) => !r.ok);
document.getElementById("summary").textContent = `${results.length - failed.length} passed, ${failed.length} failed`;
document.getElementById("results").replaceChildren(...results.map((r) => {
  const li = document.createElement("li");
  li.textContent = `${r.ok ? "ok" : "FAIL"} ${r.name} (${r.ms.toFixed(0)} ms)${r.ok ? "" : `\n${r.error}`}`;
  return li;
}));
