// One session with the server over the page's own WebSocket (docs/protocol.md sections 2-4):
// hello, requests matched to replies by id, pushes folded into the participant list, and
// resume after a drop or a reload (the session token kept in sessionStorage).
//
// Events (CustomEvent, details as named): "state" {state}, "connection" {connection},
// "participants", "count" {count}, "message" {message}, "ended" {reason, text}, "notice" {text}.

import {
  CLIENT_NAME, CHANGE, PROTOCOL_VERSION, REASONS, ROLE, STATE, MEDIA_MARKER,
  decodeControl, encodeControl, parseServerMedia, reasonText,
} from "/static/protocol.js";

const STORAGE_KEY = "airwave.session";
const RETRY_FIRST = 200; // ms; doubles, with jitter, up to RETRY_MOST
const RETRY_MOST = 3000;
const RESUME_FOR = 20000; // ms: past the server's resume grace (15 s by default) it is gone anyway
const MEDIA_BACKLOG = 64 * 1024; // bytes the socket may hold before media frames are dropped here

export class Session extends EventTarget {
  /** `urls`: one WebSocket URL, or several addresses of the same service (a cluster's
   *  nodes): a connection that cannot be made moves on to the next one, so a session whose
   *  node died resumes on another (the server holds it for its grace period). */
  constructor(urls) {
    super();
    this.urls = Array.isArray(urls) ? urls : [urls];
    if (this.urls.length === 0) throw new Error("a Session needs a URL");
    this.url = this.urls[0];
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.state = "idle"; // idle, joining, joined, leaving (ChannelState)
    this.connection = "offline"; // offline, connecting, connected, reconnecting, resumed
    this.info = null;
    this.self = null; // our ParticipantInfo
    this.participants = new Map(); // user_id -> ParticipantInfo
    this.memberCount = 0;
    this.onMedia = null; // (parsed server media frame) => void
    this.mediaDropped = 0;
  }

  // ------------------------------------------------------------------ the connection

  _set(field, value) {
    if (this[field] === value) return;
    this[field] = value;
    this.dispatchEvent(new CustomEvent(field, { detail: { [field]: value } }));
  }

  /** Opens a WebSocket and says hello; resolves once the server answered. A failed attempt
   *  makes the next URL the one the next attempt tries. */
  async _open() {
    try {
      await this._openAt(this.url);
    } catch (error) {
      this.url = this.urls[(this.urls.indexOf(this.url) + 1) % this.urls.length];
      throw error;
    }
  }

  async _openAt(url) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.nextId = 1;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new SessionError(3, "cannot reach the server"));
      ws.onclose = (event) => reject(new SessionError(3, event.code === 1006 ? "cannot reach the server" : `closed (${event.code})`));
    });
    ws.onmessage = (event) => this._receive(new Uint8Array(event.data));
    ws.onclose = () => this._closed(ws);
    ws.onerror = null;
    const hello = await this.request("hello", { version: PROTOCOL_VERSION, client: CLIENT_NAME });
    if (hello.reason !== 0) throw new SessionError(hello.reason, hello.message);
  }

  _closed(ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const waiter of this.pending.values()) waiter({ reason: 3, message: "the connection was lost", result: null });
    this.pending.clear();
    if (this.state === "joined" && !this._leaving) {
      this._reconnect();
    } else {
      this._set("connection", "offline");
    }
  }

  /** A request; resolves with the reply {reason, message, result} (never rejects). */
  request(type, fields = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.resolve({ reason: 3, message: "not connected", result: null });
    const id = this.nextId++;
    ws.send(encodeControl({ type, id, ...fields }));
    return new Promise((resolve) => this.pending.set(id, resolve));
  }

  sendMedia(frame) {
    const ws = this.ws;
    if (this.state !== "joined" || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MEDIA_BACKLOG) {
      this.mediaDropped++; // late audio is worse than lost audio
      return;
    }
    ws.send(frame);
  }

  _receive(bytes) {
    if (bytes[0] === MEDIA_MARKER) {
      const frame = parseServerMedia(bytes);
      if (frame && this.state === "joined" && this.onMedia) this.onMedia(frame);
      return;
    }
    const message = decodeControl(bytes);
    if (!message) return;
    if (message.type === "reply") {
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (waiter) waiter(message);
      return;
    }
    this._push(message);
  }

  // ------------------------------------------------------------------ joining and leaving

  /** Joins; resolves with the reply. `params`: channel, user_id, display_name, role, password,
   *  token, uri_mode, upload. Unset optional fields are left out (the server's defaults). */
  async join(params) {
    if (this.state !== "idle") return { reason: 4, message: "already joining or joined" };
    this._set("state", "joining");
    try {
      if (!this.ws) {
        this._set("connection", "connecting");
        await this._open();
        this._set("connection", "connected");
      }
    } catch (error) {
      this._set("state", "idle");
      this._set("connection", "offline");
      return { reason: error.reason ?? 3, message: error.message };
    }
    const fields = {
      channel: params.channel, user_id: params.user_id, uri_mode: Boolean(params.uri_mode),
      display_name: params.display_name ?? "", role: params.role ?? ROLE.audience, upload: Boolean(params.upload),
    };
    if (params.password) fields.password = params.password;
    if (params.token) fields.token = params.token;
    const reply = await this.request("join", fields);
    if (reply.reason !== 0) {
      this._set("state", "idle");
      return reply;
    }
    this._joined(reply.result);
    return reply;
  }

  _joined(info) {
    this.info = info;
    this.memberCount = info.member_count;
    this.participants = new Map(info.participants.map((p) => [p.user_id, p]));
    this.self = info.participants.find((p) => p.sid === info.self_sid) ?? null;
    this._store();
    this._set("state", "joined");
    this.dispatchEvent(new CustomEvent("participants"));
    this.dispatchEvent(new CustomEvent("count", { detail: { count: this.memberCount } }));
  }

  _store() {
    if (!this.info || !this.info.session_token) return;
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ token: this.info.session_token, channel: this.info.channel_id }));
  }

  static stored() {
    try {
      return JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
    } catch {
      return null;
    }
  }

  _forget() {
    sessionStorage.removeItem(STORAGE_KEY);
  }

  async leave() {
    return this._end("leave");
  }

  async stop() {
    return this._end("stop");
  }

  async _end(type) {
    if (this.state !== "joined") return { reason: 4, message: "not in a channel" };
    this._set("state", "leaving");
    const reply = await this.request(type);
    if (reply.reason !== 0 && reply.reason !== 3) {
      this._set("state", "joined");
      return reply;
    }
    this._ended(type === "stop" ? 0 : 8);
    return reply;
  }

  _ended(reason, message = "") {
    this._forget();
    this.info = null;
    this.self = null;
    this.participants = new Map();
    this._set("state", "idle");
    this.dispatchEvent(new CustomEvent("participants"));
    this.dispatchEvent(new CustomEvent("ended", { detail: { reason, text: reasonText(reason, message) } }));
  }

  /** After a reload: resume the stored session, if there is one and the server still holds it. */
  async resumeStored() {
    const stored = Session.stored();
    if (!stored) return null;
    this._set("state", "joining");
    this._set("connection", "connecting");
    const reply = await this._tryResume(stored.token);
    if (reply.reason === 0) {
      this._set("connection", "resumed");
      return reply;
    }
    this._forget();
    this._set("state", "idle");
    if (!this.ws) this._set("connection", "offline");
    return reply;
  }

  async _tryResume(token) {
    try {
      if (!this.ws) await this._open();
    } catch (error) {
      return { reason: error.reason ?? 3, message: error.message };
    }
    const reply = await this.request("resume", { session_token: token });
    if (reply.reason === 0) this._joined(reply.result);
    return reply;
  }

  /** A dropped connection while joined: reconnect with backoff and jitter, and resume. */
  async _reconnect() {
    this._set("connection", "reconnecting");
    const token = this.info?.session_token;
    const until = Date.now() + RESUME_FOR;
    let wait = RETRY_FIRST;
    while (token && Date.now() < until && this.state === "joined") {
      await new Promise((r) => setTimeout(r, wait * (0.5 + Math.random())));
      wait = Math.min(wait * 2, RETRY_MOST);
      const reply = await this._tryResume(token);
      if (reply.reason === 0) {
        this._set("connection", "resumed");
        return;
      }
      // 3: no connection (the next URL is tried); 13: a cluster moving the channel (its
      // owner died) answers server_error until a node takes over: try again.
      if (reply.reason !== 3 && reply.reason !== 13) break; // the server answered: the session is gone
      if (this.ws) this.ws.close();
      this.ws = null;
    }
    if (this.state === "joined") this._ended(3, "the connection was lost and could not be resumed");
    if (!this.ws) this._set("connection", "offline");
  }

  /** Closes the socket without a leave, as a lost network would (the server holds the session). */
  drop() {
    this.ws?.close();
  }

  // ------------------------------------------------------------------ pushes

  _push(message) {
    switch (message.type) {
      case "participant_joined":
        this.participants.set(message.participant.user_id, message.participant);
        break;
      case "participant_left":
        this.participants.delete(message.user_id);
        break;
      case "participant_updated": {
        const p = message.participant;
        if (message.in_view === false && p.sid !== this.info?.self_sid) this.participants.delete(p.user_id);
        else this.participants.set(p.user_id, p);
        if (p.sid === this.info?.self_sid) {
          this.self = p;
          this.dispatchEvent(new CustomEvent("self", { detail: { changes: message.changes } }));
        }
        break;
      }
      case "volume_changed": {
        const p = this.participants.get(message.user_id);
        if (p) p.volume_status = message.volume_status;
        break;
      }
      case "member_count":
        this.memberCount = message.count;
        this.dispatchEvent(new CustomEvent("count", { detail: { count: message.count } }));
        return;
      case "message":
        this.dispatchEvent(new CustomEvent("message", { detail: { message } }));
        return;
      case "left":
        this._ended(message.reason);
        return;
      case "error":
        this.dispatchEvent(new CustomEvent("notice", { detail: { text: reasonText(message.reason, message.message) } }));
        return;
      default:
        return;
    }
    if (this.state === "joined") this.memberCount = this._hostView() ? this.participants.size : this.memberCount;
    this.dispatchEvent(new CustomEvent("participants"));
    if (this._hostView()) this.dispatchEvent(new CustomEvent("count", { detail: { count: this.memberCount } }));
  }

  /** Hosts see every member (and get no member_count): the list is the count. */
  _hostView() {
    return this.self !== null && this.self.role === ROLE.host;
  }

  isPublisher(p = this.self) {
    return p !== null && (p.role === ROLE.host || p.state === STATE.onMic);
  }

  // ------------------------------------------------------------------ requests while joined

  enableUpload(enabled) {
    return this.request("enable_upload", { enabled });
  }

  setState(state, userId = null) {
    return this.request("set_state", { state, user_id: userId });
  }

  setRole(role, userId = null) {
    return this.request("set_role", { role, user_id: userId });
  }

  kick(userId) {
    return this.request("kick", { user_id: userId });
  }

  sendMessage(msgType, content, to = null) {
    return this.request("send_message", { msg_type: msgType, content, to });
  }
}

export class SessionError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

export { CHANGE, REASONS };
