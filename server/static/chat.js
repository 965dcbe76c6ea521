// chat.js: the chat page (index.html). Connects as soon as it loads, in `lobby`, with a generated
// nickname; every piece of user text is put in the page with textContent, never as HTML.

import { FanwireClient } from "../fanwire.js";
import { $, el, keepWsParam, pageWsUrl, stateLine, takeTokenFromUrl, timeOf } from "./common.js";

const MAX_MESSAGES = 500;
const PING_EVERY_MS = 5000;

const { url, note } = pageWsUrl();
let token = takeTokenFromUrl();
let nick = loadNick();

const client = new FanwireClient(url, { token: () => token, user: nick });
/** For tests and the browser console. */
globalThis.fanwireChat = { client };

const messages = /** @type {HTMLOListElement} */ ($("messages"));
const nickInput = /** @type {HTMLInputElement} */ ($("nick"));
const textInput = /** @type {HTMLInputElement} */ ($("text"));
const tokenInput = /** @type {HTMLInputElement} */ ($("token"));
const pingButton = /** @type {HTMLButtonElement} */ ($("ping"));
const authBox = /** @type {HTMLDetailsElement} */ ($("auth"));
const authError = $("auth-error");
const recovery = $("recovery");

keepWsParam(/** @type {HTMLAnchorElement} */ (document.getElementById("to-dashboard")));
nickInput.value = nick;
if (note) notice(note, "warn");

// ---------------------------------------------------------------------------------------------------
// Connection state

const showState = stateLine($("state"));
client.on("state", (d) => {
  showState(d);
  pingButton.disabled = d.state !== "connected";
  if (d.state === "reconnecting" && d.previous === "connected") {
    notice(`connection lost (${d.error?.message ?? "closed"}); reconnecting`, "warn");
  }
  if (d.state === "connected") {
    authError.hidden = true;
    const r = d.restore;
    if (d.reconnect) {
      if (r && r.lost.length) {
        setRecovery(`history lost (${r.lost.filter((x) => !x.startsWith("$")).join(", ") || "broadcasts"})`, "lost");
      } else if (r && r.version === "1.1") {
        setRecovery(`recovered ${r.missed} missed`, "ok");
      } else {
        setRecovery("reconnected (the server keeps no history: messages sent meanwhile are not shown)", "lost");
      }
      notice(`reconnected to worker ${client.worker}${r && r.version === "1.1" ? `; ${r.missed} missed message(s) recovered` : ""}`);
    }
    renderRooms();
  }
  if (d.state === "closed" && d.error) {
    const e = d.error;
    notice(`closed: ${e.message}`, "error");
    if (e.kind === "refused" || e.status === 401 || e.status === 403 || e.code === 1008) {
      authError.textContent = e.status === 401 || e.kind === "refused"
        ? `The server refused the connection. ${e.message}. Enter a token below (or open the page with ?token=...).`
        : `The server closed the connection: ${e.message}.`;
      authError.hidden = false;
      authBox.open = true;
      tokenInput.focus();
    }
  }
});

client.on("welcome", (w) => {
  const parts = [`worker ${w.worker}`, `client ${w.client_id}`, `protocol ${w.version ?? w.protocol}`];
  $("conn-info").textContent = parts.join(" · ");
  document.documentElement.dataset.worker = String(w.worker);
  if (typeof w.user === "string") {
    nickInput.value = w.user; // the token decides the name
    nickInput.disabled = true;
  }
});

client.on("historyLost", (d) => {
  if (!d.room.startsWith("$")) notice(`history lost in ${d.room}: ${d.replayed} message(s) recovered, older ones are gone`, "warn");
});
client.on("gap", (d) => notice(`messages ${d.expected}..${d.offset - 1} of ${d.room} were skipped`, "warn"));

/** @param {string} text @param {"ok"|"lost"} kind */
function setRecovery(text, kind) {
  recovery.textContent = text;
  recovery.dataset.kind = kind;
  recovery.hidden = false;
}

// ---------------------------------------------------------------------------------------------------
// Messages

client.on("chat", (m) => add("chat", m.ts, m.room, m.user ?? m.from, m.text));
client.on("broadcast", (m) => add("broadcast", m.ts, "broadcast", m.user ?? m.from,
  typeof m.text === "string" ? m.text : JSON.stringify(m.data)));
client.on("publication", (m) => add("publication", m.ts, m.room, m.user ?? m.from ?? "server", JSON.stringify(m.data)));
client.on("error", (m) => notice(`error ${m.code}: ${m.detail ?? ""}`, "error"));
client.on("joined", renderRooms);
client.on("left", renderRooms);

/**
 * One message line: time, room, sender, text; all as text nodes.
 * @param {string} kind @param {number|undefined} ts @param {string|undefined} room
 * @param {string|undefined} sender @param {string|undefined} text
 */
function add(kind, ts, room, sender, text) {
  const li = el("li", `msg ${kind}`,
    el("time", "time", timeOf(ts)),
    el("span", "where", room ?? ""),
    el("span", "sender", String(sender ?? "?")),
    el("span", "text", String(text ?? "")));
  append(li);
}

/** A line from the page itself (state changes, errors). @param {string} text @param {string} [level] */
function notice(text, level = "info") {
  append(el("li", `notice ${level}`, el("time", "time", timeOf()), el("span", "text", text)));
}

/** @param {HTMLElement} li */
function append(li) {
  const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
  messages.append(li);
  while (messages.childElementCount > MAX_MESSAGES) messages.firstElementChild?.remove();
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

// ---------------------------------------------------------------------------------------------------
// Rooms

function currentRoom() {
  const rooms = client.connected ? client.rooms : client.wantedRooms;
  const visible = rooms.filter((r) => !r.startsWith("$"));
  return visible.length ? visible[visible.length - 1] : null;
}

function renderRooms() {
  const rooms = (client.connected ? client.rooms : client.wantedRooms).filter((r) => !r.startsWith("$"));
  const current = currentRoom();
  const items = rooms.map((room) => {
    const name = el("button", "room-name", room);
    name.type = "button";
    name.title = "make it the current room";
    name.addEventListener("click", () => client.join(room).catch(report));
    const leave = el("button", "leave", "leave");
    leave.type = "button";
    leave.title = `leave ${room}`;
    leave.addEventListener("click", () => client.leave(room).then(renderRooms, report));
    const li = el("li", room === current ? "room current" : "room", name, leave);
    li.dataset.room = room;
    return li;
  });
  $("rooms").replaceChildren(...items);
  $("current-room").textContent = current ? `#${current}` : "(no room: join one)";
}

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("join-room"));
  const room = input.value.trim();
  if (!room) return;
  input.value = "";
  client.join(room).then(renderRooms, report);
  renderRooms();
});

// ---------------------------------------------------------------------------------------------------
// Sending

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = textInput.value;
  if (!text.trim()) return;
  const room = currentRoom();
  if (!room) {
    notice("join a room first", "warn");
    return;
  }
  textInput.value = "";
  send(() => client.chat(text, { room, user: nick }));
});

$("broadcast").addEventListener("click", () => {
  const text = textInput.value;
  if (!text.trim()) return;
  textInput.value = "";
  send(() => client.broadcast(text, { user: nick }));
});

/** @param {() => Promise<unknown>} fn */
function send(fn) {
  try {
    fn().catch(report);
  } catch (err) {
    report(err);
  }
}

/** Errors of the page's own calls; server `error` replies are shown by the "error" handler. @param {any} err */
function report(err) {
  if (err && err.kind === "server") return;
  notice(String(err?.message ?? err), "error");
}

// ---------------------------------------------------------------------------------------------------
// Nickname, ping, token

$("nick-form").addEventListener("submit", (ev) => ev.preventDefault());
nickInput.addEventListener("change", () => {
  const v = nickInput.value.trim().slice(0, 64);
  if (!v || v === nick) {
    nickInput.value = nick;
    return;
  }
  nick = v;
  client.user = v;
  try {
    localStorage.setItem("fanwire.nick", v);
  } catch {
    /* storage disabled */
  }
  notice(`you are now ${v}`);
});

async function ping() {
  if (!client.connected) return;
  try {
    const ms = await client.ping();
    $("rtt").textContent = `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
  } catch (err) {
    $("rtt").textContent = "timeout";
    report(err);
  }
}
pingButton.addEventListener("click", ping);
setInterval(ping, PING_EVERY_MS);
client.on("state", (d) => {
  if (d.state === "connected") ping();
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = tokenInput.value.trim() || null;
  tokenInput.value = "";
  authError.hidden = true;
  authBox.open = false;
  client.close();
  client.forgetSession(); // perhaps another user: a new identity
  client.connect().catch(() => { /* shown by the state handler */ });
});

function loadNick() {
  try {
    const saved = localStorage.getItem("fanwire.nick");
    if (saved) return saved.slice(0, 64);
  } catch {
    /* storage disabled */
  }
  const adjectives = ["brisk", "calm", "eager", "fuzzy", "lucky", "mellow", "quick", "sunny", "witty", "zesty"];
  const animals = ["otter", "lynx", "heron", "panda", "koala", "gecko", "bison", "finch", "moose", "tapir"];
  const pick = (/** @type {string[]} */ a) => a[Math.floor(Math.random() * a.length)];
  return `${pick(adjectives)}-${pick(animals)}-${Math.floor(Math.random() * 90 + 10)}`;
}

// ---------------------------------------------------------------------------------------------------

renderRooms();
client.connect().catch(() => { /* shown by the state handler */ });
