"""The client's audio pipelines: a paced sender and a jitter-buffered, mixing receiver.

Both are plain objects driven by the SDK's tasks with time passed in, so they are tested
without sockets. The sender turns 20 ms PCM frames into client media frames; the receiver
keeps one jitter buffer and one decoder per sender (decision 13), mixes what is due at each
20 ms tick, and feeds the recorders.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import attrs
import numpy as np

from airwave.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    JitterBuffer,
    Lost,
    OggOpusSink,
    OpusDecoder,
    OpusEncoder,
    WavSink,
    audio_level,
    file_frames,
    mix,
    speech_like_frames,
    tone_frames,
)
from airwave.protocol import MediaPacket, encode_client_media

SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
MAX_QUEUED_FRAMES = 3  # decoded frames waiting per sender; more means playout fell behind


# --- sources --------------------------------------------------------------------------------


class AudioSource(Protocol):
    def frames(self) -> Iterator[np.ndarray]:
        """20 ms frames of 48 kHz mono int16 PCM; the iterator ends when the source does."""


@attrs.frozen
class ToneSource:
    freq_hz: float = 440.0
    seconds: float = 24 * 3600.0
    amplitude: float = 0.3

    def frames(self) -> Iterator[np.ndarray]:
        return tone_frames(self.freq_hz, self.seconds, self.amplitude)


@attrs.frozen
class SpeechSource:
    """Generated speech-like audio (voiced, with syllables and pauses): the demo's voice."""

    seconds: float = 24 * 3600.0
    seed: int = 0

    def frames(self) -> Iterator[np.ndarray]:
        return speech_like_frames(self.seconds, self.seed)


@attrs.frozen
class FileSource:
    """Any file FFmpeg reads, resampled to 48 kHz mono."""

    path: str | os.PathLike[str]

    def frames(self) -> Iterator[np.ndarray]:
        return file_frames(self.path)


def _sounddevice() -> Any:
    """sounddevice, or a clear error: it is an optional extra and needs PortAudio and a device."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise AudioDeviceError(
            "microphone and speaker need the 'devices' extra and PortAudio: "
            "pip install 'airwave[devices]' and apt-get install libportaudio2"
        ) from exc
    return sounddevice


class AudioDeviceError(RuntimeError):
    """No usable sound device (or no PortAudio): say so, never fall back silently."""


class MicSource:
    """The microphone (the default input device, or ``device``), 48 kHz mono.

    PortAudio's callback thread fills a bounded queue; the paced sender takes one frame per
    20 ms tick without blocking the event loop, and a tick with nothing captured yet sends
    silence. When the sender falls behind, the oldest captured frames are dropped.
    """

    def __init__(self, device: int | str | None = None) -> None:
        self.device = device
        self.dropped = 0

    def frames(self) -> Iterator[np.ndarray]:
        sd = _sounddevice()
        captured: deque[np.ndarray] = deque(maxlen=10)  # 200 ms; older frames fall off

        def on_audio(indata: np.ndarray, frames: int, time: object, status: object) -> None:
            if len(captured) == captured.maxlen:
                self.dropped += 1
            captured.append(indata[:, 0].copy())

        try:
            stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
                                    device=self.device, callback=on_audio)
        except Exception as exc:  # PortAudioError and friends: no device
            raise AudioDeviceError(f"cannot open the microphone: {exc}") from exc
        with stream:
            while True:
                yield captured.popleft() if captured else SILENCE


class SpeakerOutput:
    """Plays the mixed audio on the default output device (or ``device``)."""

    def __init__(self, device: int | str | None = None) -> None:
        sd = _sounddevice()
        self._pending: deque[np.ndarray] = deque(maxlen=10)  # 200 ms of playout at most
        try:
            self._stream = sd.OutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                           blocksize=FRAME_SAMPLES, device=device, callback=self._fill)
        except Exception as exc:
            raise AudioDeviceError(f"cannot open the speaker: {exc}") from exc
        self._stream.start()

    def _fill(self, outdata: np.ndarray, frames: int, time: object, status: object) -> None:
        outdata[:, 0] = self._pending.popleft() if self._pending else 0

    def write(self, pcm: np.ndarray, packet: bytes | None) -> None:
        self._pending.append(pcm)

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class AudioSender:
    """Encodes a source into client media frames; sequence and timestamp run on across pauses."""

    def __init__(self, source: AudioSource, *, bitrate: int = 32_000) -> None:
        self._frames = source.frames()
        self._encoder = OpusEncoder(bitrate)
        self.seq = 0
        self.timestamp = 0  # in 48 kHz samples
        self.sent = 0
        self.exhausted = False

    def next_frame(self) -> bytes | None:
        """The next media frame, or None once the source has ended."""
        try:
            pcm = next(self._frames)
        except StopIteration:
            self.exhausted = True
            return None
        frame = encode_client_media(self.seq, self.timestamp, self._encoder.encode(pcm), audio_level(pcm))
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.sent += 1
        return frame


# --- recorders ------------------------------------------------------------------------------


class Recorder(Protocol):
    def write(self, pcm: np.ndarray, packet: bytes | None) -> None:
        """One 20 ms tick: the mixed PCM, and the one speaker's Opus packet when only one spoke."""

    def close(self) -> None: ...


class WavRecorder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._sink = WavSink(path)

    def write(self, pcm: np.ndarray, packet: bytes | None) -> None:
        self._sink.write(pcm)

    def close(self) -> None:
        self._sink.close()


class OggRecorder:
    """Ogg/Opus: one speaker's packets are muxed as received (no re-encoding); a tick where
    several spoke, or none, is the mix re-encoded, so the file keeps one continuous timeline."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._sink = OggOpusSink(path)
        self._encoder: OpusEncoder | None = None
        self.passed_through = 0
        self.reencoded = 0

    def write(self, pcm: np.ndarray, packet: bytes | None) -> None:
        if packet is not None:
            self._sink.write(packet)
            self.passed_through += 1
            return
        if self._encoder is None:
            self._encoder = OpusEncoder()
        self._sink.write(self._encoder.encode(pcm))
        self.reencoded += 1

    def close(self) -> None:
        self._sink.close()


def recorder_for(path: str | os.PathLike[str]) -> Recorder:
    """By extension: .wav is decoded PCM, .ogg/.opus is Opus muxed without re-encoding."""
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    if suffix == "wav":
        return WavRecorder(path)
    if suffix in ("ogg", "opus", "oga"):
        return OggRecorder(path)
    raise ValueError(f"cannot record to {path!r}: use a .wav, .ogg or .opus file")


# --- the receiver ---------------------------------------------------------------------------


@attrs.define
class _Stream:
    jitter: JitterBuffer
    decoder: OpusDecoder
    ready: deque[tuple[np.ndarray, bytes | None]] = attrs.field(factory=deque)
    last_active: float = 0.0


@attrs.define
class ReceiverStatistics:
    packets: int = 0
    ticks: int = 0
    concealed: int = 0
    overflow_dropped: int = 0


class AudioReceiver:
    """Per-sender jitter buffers and decoders, mixed once per 20 ms tick into the recorders."""

    def __init__(self, *, initial_delay: float = 0.060) -> None:
        self._streams: dict[int, _Stream] = {}
        self._initial_delay = initial_delay
        self.recorders: list[Recorder] = []
        self.output_enabled = True
        self.stats = ReceiverStatistics()

    def push(self, packet: MediaPacket, now: float) -> None:
        stream = self._streams.get(packet.sid)
        if stream is None:
            stream = self._streams[packet.sid] = _Stream(JitterBuffer(initial_delay=self._initial_delay), OpusDecoder())
        stream.jitter.push(packet.seq, packet.timestamp, packet.payload, now)
        stream.last_active = now
        self.stats.packets += 1

    def forget(self, sid: int) -> None:
        self._streams.pop(sid, None)

    def speaking(self, now: float, within: float = 0.25) -> list[int]:
        return [sid for sid, s in self._streams.items() if now - s.last_active <= within]

    def tick(self, now: float) -> np.ndarray:
        """Plays out what is due; returns (and records) one mixed 20 ms frame."""
        self.stats.ticks += 1
        frames: list[tuple[np.ndarray, bytes | None]] = []
        for stream in self._streams.values():
            for item in stream.jitter.pop(now):
                if isinstance(item, Lost):
                    stream.ready.append((stream.decoder.conceal(), None))
                    self.stats.concealed += 1
                else:
                    stream.ready.append((stream.decoder.decode(item.payload), item.payload))
            while len(stream.ready) > MAX_QUEUED_FRAMES:
                stream.ready.popleft()
                self.stats.overflow_dropped += 1
            if stream.ready:
                frames.append(stream.ready.popleft())
        if not frames:
            pcm, packet = SILENCE, None
        elif len(frames) == 1:
            pcm, packet = frames[0]
        else:
            pcm, packet = mix([f for f, _ in frames]), None
        if not self.output_enabled:  # muted locally: the recording's timeline goes on, silent
            pcm, packet = SILENCE, None
        for recorder in self.recorders:
            recorder.write(pcm, packet)
        return pcm

    def close(self) -> None:
        for recorder in self.recorders:
            recorder.close()
