// The wire protocol as docs/protocol.md writes it: control messages are msgpack maps (encoded
// by the vendored @msgpack/msgpack, never by hand), media frames are fixed-offset ext 16
// values (section 6) built and read with a DataView, as the server does.

import { decode, encode } from "/static/msgpack.mjs";

export const PROTOCOL_VERSION = 1;
export const CLIENT_NAME = "airwave-web/0.1";

// Section 8: roles and states are the vendor's bit flags.
export const ROLE = { none: 0, host: 4096, audience: 8192, role2: 16384, role3: 32768 };
export const STATE = { none: 0, onMic: 4096 };
export const ROLE_NAMES = { 0: "no role", 4096: "host", 8192: "audience", 16384: "custom role 2", 32768: "custom role 3" };
export const VOLUME_NAMES = { 0: "muted", 1: "silent", 2: "low", 3: "mid", 4: "high" };
export const CHANGE = { audio: 1, customState: 16, customRole: 32 };

// Section 7, with the words a person reads in the page.
export const REASONS = {
  0: ["none", "done"],
  1: ["not_login", "not logged in"],
  2: ["timeout", "the connection timed out"],
  3: ["network", "the network connection was lost"],
  4: ["call_function_error", "not allowed right now"],
  5: ["already_joined", "already in a channel"],
  6: ["kicked", "you were removed by a host"],
  7: ["offline", "went offline"],
  8: ["quit", "left"],
  9: ["over", "the channel was stopped by a host"],
  10: ["full", "the channel is full"],
  11: ["invalid_password", "wrong password"],
  12: ["internal_error", "a server fault"],
  13: ["server_error", "a server error"],
  14: ["invalid_param", "a value was not accepted"],
  100: ["other", "something else went wrong"],
  200: ["not_found", "no such channel or member"],
  201: ["no_permission", "your role does not allow it"],
  202: ["token_invalid", "the token is not valid"],
  203: ["token_expired", "the token has expired"],
  204: ["rate_limited", "too many requests, slow down"],
  205: ["too_large", "too large"],
  206: ["server_shutdown", "the server is shutting down"],
  207: ["server_restart", "the server restarted"],
  208: ["protocol_error", "a protocol error"],
  209: ["slow_consumer", "the connection fell too far behind"],
  210: ["duplicate_session", "you joined from somewhere else"],
};

/** "wrong password (invalid_password [11])": the reason as a person and a developer read it. */
export function reasonText(reason, message = "") {
  const [name, words] = REASONS[reason] ?? ["unknown", "unknown reason"];
  return `${message || words} (${name} [${reason}])`;
}

export function encodeControl(message) {
  return encode(message);
}

/** A server control message, or null for bytes that are not one msgpack map with a type. */
export function decodeControl(bytes) {
  try {
    const value = decode(bytes);
    return value && typeof value === "object" && typeof value.type === "string" ? value : null;
  } catch {
    return null;
  }
}

export const MEDIA_MARKER = 0xc8;
const CLIENT_MEDIA_HEADER = 11;
const SERVER_MEDIA_HEADER = 15;

/** Section 6, ext type 1: C8 | u16 length | 01 | u16 seq | u32 timestamp | u8 level | opus. */
export function clientMediaFrame(seq, timestamp, level, opus) {
  const frame = new Uint8Array(CLIENT_MEDIA_HEADER + opus.byteLength);
  const view = new DataView(frame.buffer);
  view.setUint8(0, MEDIA_MARKER);
  view.setUint16(1, 7 + opus.byteLength);
  view.setUint8(3, 1);
  view.setUint16(4, seq & 0xffff);
  view.setUint32(6, timestamp >>> 0);
  view.setUint8(10, level);
  frame.set(new Uint8Array(opus.buffer ?? opus, opus.byteOffset ?? 0, opus.byteLength), CLIENT_MEDIA_HEADER);
  return frame;
}

/** Section 6, ext type 2: the sender's sid stamped in front of its fields; null if malformed. */
export function parseServerMedia(bytes) {
  if (bytes.byteLength <= SERVER_MEDIA_HEADER || bytes[0] !== MEDIA_MARKER || bytes[3] !== 2) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint16(1) !== bytes.byteLength - 4) return null;
  return {
    sid: view.getUint32(4),
    seq: view.getUint16(8),
    timestamp: view.getUint32(10),
    level: view.getUint8(14),
    opus: bytes.subarray(SERVER_MEDIA_HEADER),
  };
}

/** The 0-100 level of media/level.py: RMS in dBov, -60 dBov and below 0, 0 dBov 100. */
export function audioLevel(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  if (sum === 0) return 0;
  const dbov = 10 * Math.log10(sum / samples.length);
  return Math.min(100, Math.max(0, Math.round((dbov + 60) * 100 / 60)));
}
