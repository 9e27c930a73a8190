// The page's AudioWorklet processors: they run on the audio rendering thread, in the one
// AudioContext at 48 kHz, so the browser resamples whatever the device gives before they see it.
//   airwave-capture   microphone -> mono 20 ms frames (960 samples) for the Opus encoder
//   airwave-playback  decoded speakers -> per-speaker jitter buffer -> one mixed output
//   airwave-tap       passes its input through; on request records it (tests, meters)

const FRAME = 960; // 20 ms at 48 kHz: one Opus frame
const QUANTUM = 128; // what process() gets per call

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      // Downmix: the mean of every channel the device gives.
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.frame[this.filled++] = sum / channels.length;
      if (this.filled === FRAME) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Float32Array(FRAME);
        this.filled = 0;
      }
    }
    return true;
  }
}

/**
 * One queue of decoded samples per speaker (sid). A speaker starts playing once its queue
 * holds its target (the jitter buffer's delay: 60 ms to start with), and stops to refill
 * after an underrun, so late packets become one short pause instead of clicks. Each
 * underrun raises that speaker's target by 20 ms (up to 160 ms), and every `window` with
 * no underrun lowers it by 20 ms (down to the start): the delay follows the network's (and
 * the machine's) jitter, as design decision 14 asks. A queue grown past `ceiling` (a burst
 * after a stall) is cut back to the target, keeping the delay bounded. Queues are lists of
 * chunks, so nothing is copied on arrival.
 */
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.prefill = opts.prefill ?? 2880;
    this.ceiling = opts.ceiling ?? 9600;
    // Every `window` samples, a queue that never fell below its target + `slack` in that time
    // holds delay it does not need (a burst after a stall): it is cut back to the target.
    this.window = opts.window ?? sampleRate;
    this.slack = opts.slack ?? 960;
    this.step = 960; // 20 ms: one frame
    this.most = opts.most ?? 7680; // 160 ms, below the ceiling
    this.speakers = new Map();
    this.muted = false;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.samples) {
      let speaker = this.speakers.get(message.sid);
      if (!speaker) {
        speaker = { chunks: [], offset: 0, buffered: 0, playing: false, underruns: 0, marks: [], low: Infinity, seen: 0, trimmed: 0, target: this.prefill, calm: 0 };
        this.speakers.set(message.sid, speaker);
      }
      speaker.chunks.push(message.samples);
      speaker.buffered += message.samples.length;
      if (message.mark !== undefined) speaker.marks.push({ at: speaker.buffered - message.samples.length, mark: message.mark });
      if (speaker.buffered > this.ceiling) this.trim(speaker, speaker.buffered - speaker.target);
    } else if (message.remove !== undefined) {
      this.speakers.delete(message.remove);
    } else if (message.muted !== undefined) {
      this.muted = message.muted;
    } else if (message.stats) {
      const stats = {};
      for (const [sid, s] of this.speakers) stats[sid] = { buffered: s.buffered, playing: s.playing, underruns: s.underruns, trimmed: s.trimmed, target: s.target };
      this.port.postMessage({ stats });
    }
  }

  trim(speaker, count) {
    speaker.trimmed += count;
    speaker.buffered -= count;
    for (const m of speaker.marks) m.at -= count;
    speaker.marks = speaker.marks.filter((m) => m.at >= 0);
    while (count > 0) {
      const head = speaker.chunks[0];
      const left = head.length - speaker.offset;
      if (count < left) {
        speaker.offset += count;
        return;
      }
      count -= left;
      speaker.chunks.shift();
      speaker.offset = 0;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    const played = [];
    for (const speaker of this.speakers.values()) {
      if (!speaker.playing) {
        if (speaker.buffered < speaker.target) continue;
        speaker.playing = true;
      }
      let i = 0;
      while (i < out.length && speaker.chunks.length) {
        const head = speaker.chunks[0];
        const take = Math.min(out.length - i, head.length - speaker.offset);
        for (let k = 0; k < take; k++) out[i + k] += head[speaker.offset + k];
        i += take;
        speaker.offset += take;
        if (speaker.offset === head.length) {
          speaker.chunks.shift();
          speaker.offset = 0;
        }
      }
      speaker.buffered -= i;
      // Marks (a packet's send time, for the delay figure) whose first sample just played.
      while (speaker.marks.length && speaker.marks[0].at < i) played.push(speaker.marks.shift().mark);
      for (const m of speaker.marks) m.at -= i;
      if (i < out.length) {
        speaker.playing = false;
        speaker.underruns++;
        speaker.target = Math.min(this.most, speaker.target + this.step);
        speaker.low = Infinity;
        speaker.seen = 0;
        speaker.calm = 0;
      } else {
        speaker.low = Math.min(speaker.low, speaker.buffered);
        speaker.seen += i;
        if (speaker.seen >= this.window) {
          if (++speaker.calm >= 10 && speaker.target > this.prefill) {
            speaker.target -= this.step; // ten windows without an underrun
            speaker.calm = 0;
          }
          if (speaker.low > speaker.target + this.slack) this.trim(speaker, speaker.low - speaker.target);
          speaker.low = Infinity;
          speaker.seen = 0;
        }
      }
    }
    for (let k = 0; k < out.length; k++) out[k] = this.muted ? 0 : Math.max(-1, Math.min(1, out[k]));
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (played.length) this.port.postMessage({ played, time: currentTime });
    return true;
  }
}

class TapProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.recording = null;
    this.port.onmessage = (event) => {
      this.recording = { samples: new Float32Array(Math.round(event.data.seconds * sampleRate)), filled: 0 };
    };
  }

  process(inputs, outputs) {
    const input = inputs[0];
    for (let c = 0; c < outputs[0].length; c++) {
      if (input && input[c]) outputs[0][c].set(input[c]);
      else if (input && input[0]) outputs[0][c].set(input[0]);
    }
    const rec = this.recording;
    if (rec) {
      const mono = input && input[0] ? input[0] : new Float32Array(QUANTUM);
      const take = Math.min(mono.length, rec.samples.length - rec.filled);
      rec.samples.set(mono.subarray(0, take), rec.filled);
      rec.filled += take;
      if (rec.filled === rec.samples.length) {
        this.port.postMessage(rec.samples, [rec.samples.buffer]);
        this.recording = null;
      }
    }
    return true;
  }
}

registerProcessor("airwave-capture", CaptureProcessor);
registerProcessor("airwave-playback", PlaybackProcessor);
registerProcessor("airwave-tap", TapProcessor);
