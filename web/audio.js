// Media with WebCodecs, both ways, in one AudioContext at 48 kHz (one per page, resumed by
// the join click, so the browser asks for consent once):
//   send     getUserMedia -> airwave-capture worklet (mono 20 ms frames) -> AudioEncoder
//            (Opus, 48 kHz, mono, 20 ms) -> a media frame with the level measured here
//   receive  media frame -> per-speaker AudioDecoder -> airwave-playback worklet (per-speaker
//            jitter buffer, mix) -> airwave-tap -> the speakers

import { audioLevel, clientMediaFrame } from "/static/protocol.js";

const SAMPLE_RATE = 48000;
const FRAME = 960;
const FRAME_US = 20000;
// Opus at 32 kb/s is transparent for speech; Airwave's Python clients use the same.
const OPUS = { codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1, bitrate: 32000, opus: { frameDuration: FRAME_US, format: "opus" } };
// No `description` (OpusHead) for live packets: with one, Chromium drops the first 312 samples.
const OPUS_DECODER = { codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1 };

export class AudioEngine {
  constructor() {
    this.context = null;
    this.playback = null;
    this.tap = null;
    this.capture = null; // { stream, source, node, encoder }
    this.opening = null; // the promise of the capture being opened
    this.speakers = new Map(); // sid -> { decoder, nextSeq }
    this.onFrame = null; // (Uint8Array media frame) => void, set by whoever sends
    this.onPlayed = null; // (marks, contextTime) => void: the delay figure
    this.micMuted = false;
    this.echoCancellation = true; // the browser's echo canceller on the microphone
    this.decodeErrors = 0;
  }

  /** Creates the page's one AudioContext; call from a click so that it may start. */
  async start() {
    if (this.context) {
      await this.resume();
      return this.running;
    }
    this.context = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    const resumed = this.context.resume();
    await this.context.audioWorklet.addModule("/static/worklets.js");
    this.playback = new AudioWorkletNode(this.context, "airwave-playback", { numberOfInputs: 0, outputChannelCount: [1] });
    this.playback.port.onmessage = (event) => {
      if (event.data.played && this.onPlayed) this.onPlayed(event.data.played, event.data.time);
      if (event.data.stats && this._statsWaiter) this._statsWaiter(event.data.stats);
    };
    this.tap = new AudioWorkletNode(this.context, "airwave-tap", { channelCount: 1, channelCountMode: "explicit", outputChannelCount: [1] });
    this.playback.connect(this.tap).connect(this.context.destination);
    await Promise.race([resumed, new Promise((r) => setTimeout(r, 500))]);
    return this.running;
  }

  get running() {
    return this.context?.state === "running";
  }

  async resume() {
    if (this.context && this.context.state !== "running") await this.context.resume();
  }

  setOutputMuted(muted) {
    this.playback?.port.postMessage({ muted });
  }

  // ------------------------------------------------------------------ sending

  /** Opens the microphone and starts encoding; frames go to `onFrame`. Calls while it
   *  opens share the one opening, so two quick calls never open the microphone twice. */
  startCapture() {
    if (!this.opening) {
      const opening = this._openCapture().then((capture) => {
        if (this.opening === opening) this.capture = capture;
        else this._close(capture); // stopped while the microphone was opening
      });
      this.opening = opening;
      opening.catch(() => {
        if (this.opening === opening) this.opening = null;
      });
    }
    return this.opening;
  }

  async _openCapture() {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: this.echoCancellation, noiseSuppression: false, autoGainControl: false },
    });
    const source = this.context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(this.context, "airwave-capture", { numberOfOutputs: 0 });
    const levels = []; // one per frame handed to the encoder, in order: outputs come in the same order
    let seq = 0;
    let timestamp = 0;
    let encoded = 0;
    const encoder = new AudioEncoder({
      output: (chunk) => {
        const opus = new Uint8Array(chunk.byteLength);
        chunk.copyTo(opus);
        const level = levels.length ? levels.shift() : 255;
        seq = (seq + 1) & 0xffff;
        timestamp = (timestamp + FRAME) >>> 0;
        encoded++;
        if (!this.micMuted && this.onFrame) this.onFrame(clientMediaFrame(seq, timestamp, level, opus));
      },
      error: (error) => console.error("airwave: encoder", error),
    });
    encoder.configure(OPUS);
    let frames = 0;
    node.port.onmessage = (event) => {
      if (encoder.state !== "configured") return; // closed by stopCapture, a frame still in flight
      const samples = event.data;
      levels.push(audioLevel(samples));
      const data = new AudioData({
        format: "f32-planar", sampleRate: SAMPLE_RATE, numberOfChannels: 1, numberOfFrames: FRAME,
        timestamp: frames++ * FRAME_US, data: samples,
      });
      encoder.encode(data);
      data.close();
    };
    source.connect(node);
    return { stream, source, node, encoder, encoded: () => encoded };
  }

  stopCapture() {
    const capture = this.capture;
    this.capture = null;
    this.opening = null;
    if (capture) this._close(capture);
  }

  _close(capture) {
    capture.node.port.onmessage = null;
    capture.source.disconnect();
    for (const track of capture.stream.getTracks()) track.stop();
    if (capture.encoder.state !== "closed") capture.encoder.close();
  }

  // ------------------------------------------------------------------ receiving

  /** One server media frame (parsed). `mark` travels with its samples to the output. */
  receive(frame, mark) {
    if (!this.playback) return; // the worklets are still loading: nothing could play it yet
    let speaker = this.speakers.get(frame.sid);
    if (!speaker) {
      speaker = this._speaker(frame.sid);
      this.speakers.set(frame.sid, speaker);
    }
    // TCP keeps order; a gap means the server dropped frames for us, an old seq a repeat.
    if (speaker.nextSeq !== null && ((frame.seq - speaker.nextSeq) & 0xffff) >= 0x8000) return;
    if (speaker.decoder.state !== "configured") return;
    speaker.nextSeq = (frame.seq + 1) & 0xffff;
    speaker.marks.push(mark);
    speaker.decoder.decode(new EncodedAudioChunk({
      type: "key", timestamp: Math.round(frame.timestamp * 1e6 / SAMPLE_RATE), data: frame.opus,
    }));
  }

  _speaker(sid) {
    const speaker = { nextSeq: null, marks: [], decoder: null };
    speaker.decoder = new AudioDecoder({
      output: (data) => {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
        data.close();
        const mark = speaker.marks.shift();
        this.playback.port.postMessage({ sid, samples, mark }, [samples.buffer]);
      },
      error: (error) => {
        this.decodeErrors++;
        console.error("airwave: decoder", error);
        this.speakers.delete(sid); // a fresh decoder for the next packet
      },
    });
    speaker.decoder.configure(OPUS_DECODER);
    return speaker;
  }

  removeSpeaker(sid) {
    const speaker = this.speakers.get(sid);
    if (!speaker) return;
    this.speakers.delete(sid);
    if (speaker.decoder.state !== "closed") speaker.decoder.close();
    this.playback?.port.postMessage({ remove: sid });
  }

  removeAllSpeakers() {
    for (const sid of [...this.speakers.keys()]) this.removeSpeaker(sid);
  }

  // ------------------------------------------------------------------ measuring

  /** The next `seconds` of what the page plays, as the tap before the output heard it. */
  record(seconds) {
    return new Promise((resolve) => {
      this.tap.port.onmessage = (event) => resolve(event.data);
      this.tap.port.postMessage({ seconds });
    });
  }

  playbackStats() {
    return new Promise((resolve) => {
      this._statsWaiter = resolve;
      this.playback.port.postMessage({ stats: true });
    });
  }
}
