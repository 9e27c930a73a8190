// The page: the join form, the channel view and their controls, wired to one Session (the
// protocol) and one AudioEngine (the media). Plain DOM, no framework.

import { AudioEngine } from "/static/audio.js";
import { ROLE, ROLE_NAMES, STATE, VOLUME_NAMES, reasonText } from "/static/protocol.js";
import { Session } from "/static/session.js";

const $ = (id) => document.getElementById(id);
const CONNECTION_WORDS = {
  offline: "not connected", connecting: "connecting…", connected: "connected",
  reconnecting: "reconnecting…", resumed: "resumed",
};
const RAISE_HAND = "raise_hand"; // the co-host request: a message hosts act on
const PLAYED_KEPT = 3000;

// The page's own server first (behind a load balancer that is all it takes: a reconnect
// lands on a live node); `?servers=ws://b:8702/,ws://c:8703/` adds a cluster's other nodes
// for a page served by one of them directly (each must allow this page's origin).
const ownServer = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
const otherServers = (new URLSearchParams(location.search).get("servers") ?? "")
  .split(",").map((url) => url.trim()).filter((url) => /^wss?:\/\/[^\s]+$/.test(url) && url !== ownServer);
const session = new Session([ownServer, ...otherServers]);
const engine = new AudioEngine();
const hands = new Map(); // user_id -> display name, for hosts
// For tests and figures: each played packet's arrival and play time (epoch ms).
const played = [];
const connections = []; // every connection state the page went through, in order
window.airwave = { session, engine, played, connections };

// ------------------------------------------------------------------ what the page shows

function show(view) {
  for (const id of ["join-view", "channel-view", "ended-view"]) $(id).hidden = id !== view;
}

function alertText(text) {
  const alert = $("alert");
  alert.textContent = text;
  alert.hidden = !text;
}

function notice(text) {
  $("notice").textContent = text;
}

function nameOf(p) {
  return p.display_name || p.user_id;
}

function renderParticipants() {
  const list = $("participants");
  const self = session.self;
  const host = self !== null && self.role === ROLE.host;
  list.replaceChildren();
  const people = [...session.participants.values()].sort((a, b) => a.sid - b.sid);
  for (const p of people) {
    const item = document.createElement("li");
    item.dataset.user = p.user_id;
    item.dataset.volume = String(p.volume_status);
    const speaking = p.audio && p.volume_status >= 2;
    item.classList.toggle("speaking", speaking);
    const indicator = document.createElement("span");
    indicator.className = "indicator";
    indicator.setAttribute("role", "img");
    indicator.setAttribute("aria-label", p.audio ? `sound: ${VOLUME_NAMES[p.volume_status] ?? "unknown"}` : "not sending sound");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = nameOf(p) + (p.sid === session.info?.self_sid ? " (you)" : "");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = ROLE_NAMES[p.role] ?? `role ${p.role}`;
    item.append(indicator, " ", label, " ", role);
    if (p.state === STATE.onMic) {
      const mic = document.createElement("span");
      mic.className = "state";
      mic.textContent = "on the mic";
      item.append(" ", mic);
    }
    if (host && p.sid !== session.info?.self_sid) item.append(" ", hostControls(p));
    list.append(item);
  }
  const to = $("message-to");
  const chosen = to.value;
  to.replaceChildren(new Option("everyone", ""));
  for (const p of people) if (p.sid !== session.info?.self_sid) to.append(new Option(nameOf(p), p.user_id));
  to.value = [...to.options].some((o) => o.value === chosen) ? chosen : "";
  for (const userId of hands.keys()) {
    const p = session.participants.get(userId);
    if (!p || session.isPublisher(p)) hands.delete(userId);
  }
  renderHands();
  renderSelf();
}

function hostControls(p) {
  const group = document.createElement("span");
  group.className = "host-controls";
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Manage ${nameOf(p)}`);
  const onMic = p.state === STATE.onMic;
  group.append(
    button(onMic ? "Take off the mic" : "Put on the mic", `${onMic ? "Take" : "Put"} ${nameOf(p)} ${onMic ? "off" : "on"} the mic`,
      () => session.setState(onMic ? STATE.none : STATE.onMic, p.user_id)),
    button(p.role === ROLE.host ? "Make audience" : "Make host", `Make ${nameOf(p)} ${p.role === ROLE.host ? "audience" : "a host"}`,
      () => session.setRole(p.role === ROLE.host ? ROLE.audience : ROLE.host, p.user_id)),
    button("Kick", `Kick ${nameOf(p)}`, () => session.kick(p.user_id)),
  );
  return group;
}

function button(text, label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", async () => {
    const reply = await action();
    if (reply && reply.reason !== 0) notice(`${label}: ${reasonText(reply.reason, reply.message)}`);
  });
  return b;
}

function renderHands() {
  const list = $("hands");
  list.replaceChildren();
  for (const [userId, name] of hands) {
    const item = document.createElement("li");
    item.append(`${name} raised a hand `, button("Put on the mic", `Put ${name} on the mic`, () => session.setState(STATE.onMic, userId)));
    list.append(item);
  }
  $("hands").hidden = $("hands-title").hidden = hands.size === 0;
}

function renderSelf() {
  const self = session.self;
  if (!self) return;
  const publisher = session.isPublisher();
  $("stop").hidden = self.role !== ROLE.host;
  $("raise-hand").hidden = publisher;
  $("mute-mic").hidden = !publisher;
  $("mute-mic").setAttribute("aria-pressed", String(publisher && !self.audio));
  $("mute-mic").textContent = self.audio ? "Mute microphone" : "Unmute microphone";
}

function renderCount() {
  $("member-count").textContent = String(session.memberCount);
}

function addMessage(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("messages").append(item);
}

async function showPlayback() {
  $("playback-blocked").hidden = engine.running;
}

// ------------------------------------------------------------------ media

engine.onFrame = (frame) => session.sendMedia(frame);
session.onMedia = (frame) => engine.receive(frame, { sid: frame.sid, seq: frame.seq, arrival: performance.timeOrigin + performance.now() });
engine.onPlayed = (marks, contextTime) => {
  // When the quantum that held each packet's first sample reaches the output: the context's
  // clock mapped to the page's by the context itself (getOutputTimestamp counts the output latency).
  const stamp = engine.context.getOutputTimestamp();
  const now = performance.timeOrigin + stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
  for (const mark of marks) if (mark) played.push({ ...mark, played: now });
  if (played.length > PLAYED_KEPT) played.splice(0, played.length - PLAYED_KEPT);
};

/** Sends sound exactly while the server lets us and we are uploading. */
async function followUpload() {
  const self = session.self;
  if (session.state === "joined" && self && self.audio && session.isPublisher()) {
    try {
      await engine.startCapture();
    } catch (error) {
      notice(`The microphone could not be opened: ${error.message}`);
      await session.enableUpload(false);
    }
  } else {
    engine.stopCapture();
  }
}

// ------------------------------------------------------------------ session events

session.addEventListener("connection", () => {
  connections.push(session.connection);
  $("connection").textContent = CONNECTION_WORDS[session.connection];
});
session.addEventListener("participants", () => {
  renderParticipants();
  const alive = new Set([...session.participants.values()].map((p) => p.sid));
  for (const sid of engine.speakers.keys()) if (!alive.has(sid)) engine.removeSpeaker(sid);
});
session.addEventListener("count", renderCount);
session.addEventListener("notice", (event) => notice(event.detail.text));
session.addEventListener("self", async (event) => {
  // Put on the mic (or made a host): start sending; taken off: stop.
  if (session.isPublisher() && !session.self.audio && !$("mute-mic").dataset.muted) {
    const reply = await session.enableUpload(true);
    if (reply.reason !== 0) notice(`Could not start sending sound: ${reasonText(reply.reason, reply.message)}`);
    $("raise-hand").setAttribute("aria-pressed", "false");
  }
  await followUpload();
});
session.addEventListener("message", (event) => {
  const m = event.detail.message;
  const from = session.participants.get(m.from_user_id);
  const name = from ? nameOf(from) : m.from_user_id;
  if (m.msg_type === RAISE_HAND) {
    if (session.self?.role === ROLE.host) {
      hands.set(m.from_user_id, name);
      renderHands();
      addMessage(`${name} raised a hand`);
    }
    return;
  }
  addMessage(`${name}${m.to ? " (to you)" : ""}: ${m.content}`);
});
session.addEventListener("state", () => {
  if (session.state === "joined") {
    $("channel-title").textContent = `Channel ${session.info.channel_id}`;
    show("channel-view");
  }
});
session.addEventListener("ended", (event) => {
  engine.stopCapture();
  engine.removeAllSpeakers();
  hands.clear();
  const reason = event.detail.reason;
  $("ended-title").textContent = reason === 8 ? "You left the channel" : reason === 0 ? "You stopped the channel" : "The channel ended for you";
  $("ended-reason").textContent = reason === 8 || reason === 0 ? "" : `Reason: ${event.detail.text}`;
  show("ended-view");
  $("ended-title").focus();
});

// ------------------------------------------------------------------ controls

$("join-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const channel = $("channel").value.trim();
  if (!channel) {
    alertText("Give a channel id to join.");
    $("channel").focus();
    return;
  }
  alertText("");
  const host = form.elements.role.value === "host";
  const started = engine.start(); // in the click, so the browser lets it play
  engine.echoCancellation = $("echo-cancel").checked;
  $("join").disabled = true;
  const reply = await session.join({
    channel, user_id: $("user-id").value.trim() || `web-${crypto.randomUUID().slice(0, 8)}`,
    display_name: $("display-name").value.trim(), role: host ? ROLE.host : ROLE.audience, upload: host,
    password: $("password").value, token: $("token").value.trim(), uri_mode: $("uri-mode").checked,
  });
  $("join").disabled = false;
  if (reply.reason !== 0) {
    alertText(`Could not join ${channel}: ${reasonText(reply.reason, reply.message)}`);
    $("channel").focus();
    return;
  }
  $("channel-title").focus();
  await started;
  await showPlayback();
  await followUpload();
});

$("listen").addEventListener("click", async () => {
  await engine.resume();
  await showPlayback();
});

$("leave").addEventListener("click", async () => {
  const reply = await session.leave();
  if (reply.reason !== 0 && reply.reason !== 3) notice(`Leave: ${reasonText(reply.reason, reply.message)}`);
});

$("stop").addEventListener("click", async () => {
  const reply = await session.stop();
  if (reply.reason !== 0 && reply.reason !== 3) notice(`Stop: ${reasonText(reply.reason, reply.message)}`);
});

$("mute-mic").addEventListener("click", async () => {
  const muting = Boolean(session.self?.audio);
  $("mute-mic").dataset.muted = muting ? "1" : "";
  const reply = await session.enableUpload(!muting);
  if (reply.reason !== 0) notice(`Microphone: ${reasonText(reply.reason, reply.message)}`);
});

$("mute-output").addEventListener("click", () => {
  const muted = $("mute-output").getAttribute("aria-pressed") !== "true";
  $("mute-output").setAttribute("aria-pressed", String(muted));
  $("mute-output").textContent = muted ? "Unmute sound" : "Mute sound";
  engine.setOutputMuted(muted);
});

$("raise-hand").addEventListener("click", async () => {
  const reply = await session.sendMessage(RAISE_HAND, "1");
  if (reply.reason !== 0) notice(`Raise hand: ${reasonText(reply.reason, reply.message)}`);
  else $("raise-hand").setAttribute("aria-pressed", "true");
});

$("message-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message-text").value;
  if (!text) return;
  const to = $("message-to").value || null;
  const reply = await session.sendMessage("chat", text, to);
  if (reply.reason !== 0) {
    notice(`Message not sent: ${reasonText(reply.reason, reply.message)}`);
    return;
  }
  addMessage(`you${to ? ` (to ${nameOf(session.participants.get(to) ?? { user_id: to })})` : ""}: ${text}`);
  $("message-text").value = "";
});

$("rejoin").addEventListener("click", () => {
  show("join-view");
  $("channel").focus();
});

// ------------------------------------------------------------------ start

const fromPath = location.pathname.startsWith("/c/") ? decodeURIComponent(location.pathname.slice(3)) : "";
if (fromPath) $("channel").value = fromPath;
$("ended-title").tabIndex = -1;
$("channel-title").tabIndex = -1;
if (Session.stored()) {
  // A reload within the grace period: take the session back, nobody else sees a thing.
  notice("Resuming your session…");
  const startedAudio = engine.start();
  session.resumeStored().then(async (reply) => {
    notice(reply && reply.reason === 0 ? "" : "Your earlier session could not be resumed; join again.");
    if (reply && reply.reason === 0) {
      await startedAudio;
      await showPlayback();
      await followUpload();
    }
  });
}
