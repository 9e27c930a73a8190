"""The server's recorder: a member of a channel's media router that writes the channel to disk.

The server runs it in its recording worker process (`recorder_worker`, fed by the stand-in of
`recorder_process` in the channel's router, through `feed`), so none of this shares the
fan-out's GIL; it also runs in any thread as a router member itself (``send_frame_nowait``
appends ``(arrival time, frame)`` to a bounded deque; when the deque is full the frame is
dropped and counted, never waited for). One thread per recording (`run`) does everything
else, every 20 ms:

- **per speaker** (one file per user id, ``speaker-<id>.opus``): the packets as received, muxed
  into Ogg/Opus without decoding (`OggOpusSink`). A jitter buffer with a fixed delay
  (`DELAY`) puts them in sequence order on the wall-clock timeline; a packet lost inside a
  talk spurt becomes a 1-byte concealment packet, and everything else (nobody speaking, a
  pause, a speaker who left) becomes an encoded silent frame, so the file always covers the
  whole recording.
- **the mix** (``mix.opus``): the same packets decoded (one decoder per speaker, concealing
  losses), summed at their place on the timeline, and encoded once per 20 ms.

All files start at the recording's start and, once finalised, end at its stop (within one
20 ms frame): their durations are the wall-clock time recorded, and a moment at offset t in
one file is at offset t in every other. The writer is DELAY behind the wall clock, and FFmpeg
hands each Ogg page (PAGE_SECONDS of audio) to the kernel once the next one has begun, so a
process killed outright leaves files that decode up to DELAY + 2 x PAGE_SECONDS (0.45 s) before
the kill (measured in tests/test_recording.py).

``recording.json`` in the directory names the files and, once finalised, what was dropped.

The encoded mix can also go to ``mix_outputs`` (the CDN's Icecast and HLS outputs,
media/cdn.py): each gets every 20 ms packet of the mix, in order, silence included, the same
bytes the mix file gets, so the mix is encoded once however many places it goes. A recorder
with outputs and no files (``mix=""``, ``tracks=False``) writes nothing to disk itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, final

import attrs
import numpy as np

from airwave.protocol.media import EXT16, SERVER_MEDIA_TYPE
from airwave.protocol.text import file_slug

from .jitter import JitterBuffer, Lost, PushOutcome, Ready
from .opus import DEFAULT_PRE_SKIP, FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusEncoder, packet_samples
from .sinks import OggOpusSink

log = logging.getLogger("airwave.recorder")

TICK = 0.020  # the worker's period: one Opus frame
DELAY = 0.150  # how far behind the wall clock the files are written: the reordering window
# FFmpeg's Ogg page duration. Its muxer holds a stream's newest page back until the next one
# starts, then writes it out at once (flush_packets): a page reaches the kernel at most two
# page durations after its first sample was written.
PAGE_SECONDS = 0.15
QUEUE_FRAMES = 2_000  # frames waiting for the worker (20 s of one speaker, 4 s of five)
MAX_AHEAD = SAMPLE_RATE  # a speaker's packets more than 1 s ahead of the wall clock are dropped
MIX_BITRATE = 48_000
MANIFEST_FILE = "recording.json"
_RING = 4 * SAMPLE_RATE  # samples of mix being summed ahead of what was encoded
_SERVER_FIELDS = struct.Struct(">BHbIHIB")  # ext header, sid, seq, timestamp, level


def track_name(user_id: str) -> str:
    """The file name of ``user_id``'s track in a recording's directory."""
    return f"speaker-{file_slug(user_id)}.opus"


@attrs.define
class RecorderStatistics:
    frames_in: int = 0  # frames the router handed over
    dropped: int = 0  # not taken: the queue was full (the worker fell behind)
    late: int = 0  # arrived after their place on the timeline was written
    ahead: int = 0  # dropped: more than MAX_AHEAD in front of the wall clock
    malformed: int = 0  # not a server media frame
    output_errors: int = 0  # a mix output's write or close raised (the mix goes on)
    failed: str = ""  # why the worker stopped early, if it did


class MixOutput(Protocol):
    """Where the encoded mix goes besides the mix file: ``write`` gets each 20 ms Opus packet
    in order, from the recorder's worker, and should return at once (an output that talks to
    the network queues and sends on a thread of its own); ``close`` ends it."""

    def write(self, packet: bytes) -> None: ...

    def close(self) -> None: ...


def _media_of(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(sid, seq, timestamp, opus) of a server WebSocket frame holding a media frame."""
    if len(frame) < 2:
        return None
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    if len(frame) <= start + _SERVER_FIELDS.size:
        return None
    marker, _, ext_type, sid, seq, timestamp, _ = _SERVER_FIELDS.unpack_from(frame, start)
    if marker != EXT16 or ext_type != SERVER_MEDIA_TYPE:
        return None
    return sid, seq, timestamp, bytes(frame[start + _SERVER_FIELDS.size :])


def _silent_packet() -> bytes:
    """An encoded 20 ms of silence: what a track holds where nobody speaks. CELT codes digital
    silence in 3 bytes (SILK, libopus's "voip" choice, takes 35 with its comfort noise); a
    1-byte concealment packet would not do (CELT's concealment settles into a noise floor)."""
    encoder = OpusEncoder(application="lowdelay")
    zeros = np.zeros(FRAME_SAMPLES, np.int16)
    for _ in range(3):
        packet = encoder.encode(zeros)
    return packet


@final
class _Speaker:
    """One user's place in the recording: their track, jitter buffer and decoder. Positions
    are in samples as muxed (``position``), which is the decoded timeline plus the pre-skip."""

    def __init__(self, user_id: str, track: OggOpusSink | None, decoder: OpusDecoder | None) -> None:
        self.user_id = user_id
        self.sid = -1
        self.track = track
        self.decoder = decoder
        self.jitter = JitterBuffer(initial_delay=DELAY, min_delay=DELAY, max_delay=DELAY)
        self.position = 0
        self.quiet_ticks = 0  # ticks since the jitter buffer last released something

    def new_stream(self, sid: int) -> None:
        """A new sender id for this user (they left and joined again): a new sequence space."""
        self.sid = sid
        self.jitter = JitterBuffer(initial_delay=DELAY, min_delay=DELAY, max_delay=DELAY)
        if self.decoder is not None:
            self.decoder.reset()


@final
class Recorder:
    """Records one channel into ``directory`` from the moment it is made until `stop`: the mix
    into the file named ``mix`` ("" for none) and, with ``tracks``, one file per speaker.

    Frames come through `feed` (stamped elsewhere, as the worker process gets them) or
    `send_frame_nowait` (stamped here; any thread-safe-enough caller: it only appends to a
    deque); `name` names the senders, `stop` ends it; `run` is the worker loop, for a thread
    of its own, returning once the files are finalised. This is the worker interface
    (`recorder_worker.RecordingJob`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        mix: str = "mix.opus",
        tracks: bool = True,
        queue_frames: int = QUEUE_FRAMES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        description: dict[str, object] | None = None,
        started_at: float | None = None,
        mix_outputs: Sequence[MixOutput] = (),
    ) -> None:
        """``started_at`` (wall clock, epoch seconds; default now) is where the files begin: the
        recording_started event's time, which is a moment before the recorder exists (the event
        was made durable first), so the files line up with the event log. ``mix_outputs`` get
        the encoded mix too (the recorder closes them when it ends); with no mix file and no
        tracks, ``directory`` is never created and no ``recording.json`` is written."""
        self.directory = directory
        self.stats = RecorderStatistics()
        self._mix_file = mix
        self._tracks_wanted = tracks
        self._mix_outputs = tuple(mix_outputs)
        self._writes_files = bool(mix or tracks)
        self._mixing = bool(mix or self._mix_outputs)  # decode and encode the mix at all
        self._capacity = queue_frames
        self._clock = clock
        self._queue: deque[tuple[float, bytes]] = deque()
        # Fed from elsewhere (`feed`): the server's time up to which it has handed every frame
        # over. The timeline is written no further than that, however late the batches come.
        self._handed_over_until: float | None = None
        self._names: dict[int, str] = {}
        wall_now, now = wall_clock(), clock()
        self._started_at = wall_now if started_at is None else min(started_at, wall_now)
        self._started = now - (wall_now - self._started_at)
        self._wall_clock = wall_clock
        self._stopped_at: float | None = None
        self._stop = threading.Event()
        self._closed = False  # every file closed: the recording is final
        self._description = description or {}
        self.finished = threading.Event()

    # --- the router's side: the hot path ---

    def send_frame_nowait(self, frame: bytes, *, droppable: bool = True) -> None:
        """Takes the frame for the worker, or drops and counts it if the worker is behind."""
        self.stats.frames_in += 1
        if len(self._queue) >= self._capacity:
            self.stats.dropped += 1
            return
        self._queue.append((self._clock(), frame))

    def feed(self, frames: list[tuple[float, bytes]], dropped: int = 0, *, until: float | None = None) -> None:
        """Takes frames stamped elsewhere (the server's stand-in, `recorder_process`, in front
        of a worker process): ``(arrival on this machine's monotonic clock, frame)``, in order.
        ``dropped`` frames never reached this process (the stand-in's buffer was full); they
        count as handed over and dropped, so the manifest's statistics cover the whole path.
        ``until``: every frame that arrived before it has now been fed. From the first such
        feed on, the recorder writes no part of the timeline past it: a worker that started
        late, or reads a backlog in its pipe, catches up on the server's time instead of
        writing silence where frames it has not read yet belong."""
        self.stats.frames_in += dropped
        self.stats.dropped += dropped
        for arrival, frame in frames:
            self.stats.frames_in += 1
            if len(self._queue) >= self._capacity:
                self.stats.dropped += 1
                continue
            self._queue.append((arrival, frame))
        if until is not None:
            self._handed_over_until = until

    def _now(self) -> float:
        """The moment the timeline is known up to: now, or what was handed over by then."""
        now = self._clock()
        until = self._handed_over_until
        return now if until is None else min(now, until)

    # --- the channel actor's side ---

    def name(self, sid: int, user_id: str) -> None:
        """Media from ``sid`` is ``user_id``'s (sids are never reused in a channel instance)."""
        self._names[sid] = user_id

    def stop(self, at: float | None = None) -> None:
        """Ends the recording at ``at`` (wall clock; default now: the recording_stopped
        event's time): the worker writes what arrived before it, pads every file to it and
        closes them. Safe to call more than once, from any thread."""
        if self._stopped_at is None:
            now = self._clock()
            self._stopped_at = now if at is None else now - max(0.0, self._wall_clock() - at)
        self._stop.set()

    # --- the worker ---

    def run(self) -> None:
        """The worker loop; returns when the files are finalised (after `stop`). Never raises:
        a failure (disk full, say) ends the recording, is logged and kept in ``stats.failed``."""
        try:
            self._run()
        except Exception as exc:  # the recording ends; the channel goes on
            self.stats.failed = f"{type(exc).__name__}: {exc}"
            log.exception("recording in %s failed", self.directory)
        finally:
            self.finished.set()

    def _run(self) -> None:
        if self._writes_files:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._silence = _silent_packet()
        self._speakers: dict[str, _Speaker] = {}
        self._by_sid: dict[int, _Speaker] = {}
        self._mix_sink = self._mix_encoder = None
        if self._mixing:
            self._mix_encoder = OpusEncoder(MIX_BITRATE)
        if self._mix_file:
            assert self._mix_encoder is not None
            self._mix_sink = self._open(self._mix_file, self._mix_encoder.pre_skip)
        self._mix_pre_skip = self._mix_encoder.pre_skip if self._mix_encoder else DEFAULT_PRE_SKIP
        self._ring = np.zeros(_RING, np.int32)
        self._mixed = 0  # samples of the decoded timeline encoded into the mix so far
        self._mix_muxed = 0  # samples of mix packets made so far (the muxed timeline)
        self._mix_silent = False
        self._write_manifest()
        try:
            tick = 0
            while not self._stop.is_set():
                # The next tick, or the current one if this worker fell behind (it started
                # after the recording did, or it stalled): missed ticks are not run back to
                # back, where no time passes between them and a speaker mid-spurt would look
                # quiet (nothing released for two ticks) and get silence in front of packets
                # still in the jitter buffer.
                tick = max(tick + 1, int((self._clock() - self._started) / TICK))
                self._stop.wait(max(0.0, self._started + tick * TICK - self._clock()))
                if self._stop.is_set():
                    break
                self._step(self._now())
            self._finish()
        finally:
            for speaker in self._speakers.values():
                if speaker.track is not None:
                    speaker.track.close()
            if self._mix_sink is not None:
                self._mix_sink.close()
            for output in self._mix_outputs:
                try:
                    output.close()
                except Exception:
                    self.stats.output_errors += 1
                    log.exception("closing the mix output %r failed", output)
            self._closed = True
            self._write_manifest()

    def _open(self, name: str, pre_skip: int) -> OggOpusSink:
        return OggOpusSink(
            self.directory / name, pre_skip=pre_skip,
            options={"page_duration": str(int(PAGE_SECONDS * 1_000_000)), "flush_packets": "1"},
        )

    def _samples_at(self, moment: float) -> int:
        """The decoded timeline's position (samples since the start) at ``moment``."""
        return max(0, round((moment - self._started) * SAMPLE_RATE))

    def _step(self, now: float) -> None:
        """One tick: take the queue, release what is due, fill the silence, mix what is final."""
        self._take_queue()
        target = self._samples_at(now - DELAY)
        for speaker in self._speakers.values():
            self._release(speaker, now, target)
        self._encode_mix(target)

    def _finish(self) -> None:
        """After stop: everything that arrived before the stop is written; every file is padded
        to the stop."""
        end = self._stopped_at if self._stopped_at is not None else self._clock()
        self._take_queue(until=end)
        target = self._samples_at(end)
        for speaker in self._speakers.values():
            self._release(speaker, end + DELAY, target, final=True)
        self._encode_mix(target, final=True)

    def _take_queue(self, until: float = math.inf) -> None:
        queue = self._queue
        while queue:
            arrival, frame = queue.popleft()
            if arrival > until:  # after the stop (the router still fed us while it was logged)
                continue
            media = _media_of(frame)
            if media is None:
                self.stats.malformed += 1
                continue
            sid, seq, timestamp, opus = media
            speaker = self._by_sid.get(sid)
            if speaker is None:
                speaker = self._speaker_for(sid, arrival)
            if speaker.jitter.push(seq, timestamp, opus, arrival) is PushOutcome.LATE:
                self.stats.late += 1

    def _speaker_for(self, sid: int, arrival: float) -> _Speaker:
        user_id = self._names.get(sid, f"sid-{sid}")
        speaker = self._speakers.get(user_id)
        if speaker is None:
            track = self._open(track_name(user_id), DEFAULT_PRE_SKIP) if self._tracks_wanted else None
            speaker = _Speaker(user_id, track, OpusDecoder() if self._mixing else None)
            self._speakers[user_id] = speaker
            self._write_manifest()
            # A new speaker's track is silent until their first packet's arrival. The quiet
            # ticks fill it to there anyway while the packet waits in the jitter buffer, but
            # not when it is already due (the worker process started after it arrived).
            first = self._samples_at(arrival) + DEFAULT_PRE_SKIP
            while speaker.position + FRAME_SAMPLES <= first:
                if speaker.track is not None:
                    speaker.track.write(self._silence)
                speaker.position += FRAME_SAMPLES
        if speaker.sid != -1:
            self._by_sid.pop(speaker.sid, None)
            # The old stream's last packets wait in its jitter buffer: they go first (without
            # the concealment the buffer would add past its newest packet).
            rest = speaker.jitter.pop(math.inf)
            while rest and isinstance(rest[-1], Lost):
                rest.pop()
            self._write_items(speaker, rest, self._samples_at(self._now() - DELAY) + DEFAULT_PRE_SKIP)
        speaker.new_stream(sid)
        self._by_sid[sid] = speaker
        return speaker

    def _release(self, speaker: _Speaker, now: float, target: int, *, final: bool = False) -> None:
        """Writes ``speaker``'s due packets at their place, then silence up to ``target`` (the
        decoded timeline): all of it while the speaker is quiet (nothing released for two
        ticks), and while a talk spurt runs only once the spurt falls two frames behind (the
        sender's clock is slower than ours), so a frame due a moment after this tick does not
        get a silence in front of it. Inside a spurt the jitter buffer releases a frame per
        frame of wall time, lost ones included, so a spurt keeps its place."""
        muxed_target = target + DEFAULT_PRE_SKIP
        items = speaker.jitter.pop(now)
        speaker.quiet_ticks = 0 if items else speaker.quiet_ticks + 1
        self._write_items(speaker, items, muxed_target)
        quiet = final or speaker.quiet_ticks >= 2
        fill_to = muxed_target if quiet else muxed_target - 2 * FRAME_SAMPLES
        while speaker.position < fill_to:
            if speaker.track is not None:
                speaker.track.write(self._silence)
            speaker.position += FRAME_SAMPLES

    def _write_items(self, speaker: _Speaker, items: list[Ready | Lost], muxed_target: int) -> None:
        for item in items:
            if speaker.position - muxed_target > MAX_AHEAD:
                self.stats.ahead += 1
                continue
            if isinstance(item, Ready):
                self._write(speaker, item.payload)
            elif speaker.jitter.statistics().buffered:
                assert isinstance(item, Lost)
                self._write(speaker, None)  # a packet missing inside a spurt: concealed
            else:
                # Nothing after it arrived within DELAY: the spurt ended (a live listener
                # cannot tell, and conceals; the recorder can, and writes silence).
                if speaker.track is not None:
                    speaker.track.write(self._silence)
                speaker.position += FRAME_SAMPLES

    def _write(self, speaker: _Speaker, packet: bytes | None) -> None:
        """One packet (None: a lost one, concealed) at the speaker's position, in the track and
        in the mix."""
        if packet is None:
            if speaker.track is not None:
                speaker.track.write_lost()
            samples = FRAME_SAMPLES
            pcm = speaker.decoder.conceal() if speaker.decoder is not None else None
        else:
            try:
                samples = packet_samples(packet)
            except ValueError:
                self.stats.malformed += 1
                return
            if speaker.track is not None:
                speaker.track.write(packet)
            pcm = speaker.decoder.decode(packet) if speaker.decoder is not None else None
        if pcm is not None:
            # The decoder has no pre-skip, so this PCM sits pre-skip earlier on the decoded
            # timeline than the packet's muxed position.
            self._add_to_mix(speaker.position - DEFAULT_PRE_SKIP, pcm)
        speaker.position += samples

    def _add_to_mix(self, start: int, pcm: np.ndarray) -> None:
        if start < self._mixed:  # its place was already encoded (cannot happen past the start)
            pcm = pcm[self._mixed - start :]
            start = self._mixed
        if not len(pcm) or start + len(pcm) - self._mixed > _RING:
            return
        index = np.arange(start, start + len(pcm)) % _RING
        self._ring[index] += pcm

    def _encode_mix(self, target: int, *, final: bool = False) -> None:
        """Encodes every whole frame of the mix that is final: before ``target`` and before
        every speaker's position (their next packet lands there or later). At the end, frames
        until the file's decoded length reaches ``target``."""
        if self._mix_encoder is None:
            return
        if not final:
            target = min([target, *(s.position - DEFAULT_PRE_SKIP for s in self._speakers.values())])
        while True:
            decoded_length = self._mix_muxed - self._mix_pre_skip
            if final:
                if decoded_length >= target:
                    break
            elif self._mixed + FRAME_SAMPLES > target:
                break
            begin = self._mixed % _RING
            frame = self._ring[begin : begin + FRAME_SAMPLES]
            silent = not frame.any()
            if silent and self._mix_silent:
                packet = self._silence  # a run of silence costs no encode
            else:
                pcm = np.clip(frame, -32768, 32767).astype(np.int16)
                packet = self._mix_encoder.encode(pcm)
            self._emit_mix(packet)
            self._mix_silent = silent
            frame[:] = 0
            self._mixed += FRAME_SAMPLES

    def _emit_mix(self, packet: bytes) -> None:
        """One encoded frame of the mix to the mix file and to every output. An output that
        raises is counted and logged, never allowed to end the recording."""
        if self._mix_sink is not None:
            self._mix_sink.write(packet)
        for output in self._mix_outputs:
            try:
                output.write(packet)
            except Exception:
                self.stats.output_errors += 1
                if self.stats.output_errors == 1:
                    log.exception("a mix output failed (counted in output_errors; logged once)")
        self._mix_muxed += FRAME_SAMPLES

    def _write_manifest(self) -> None:
        """``recording.json``: what the directory holds, rewritten when a speaker's track is
        added and when the recording ends (written to a temporary name, then renamed). A
        recorder that writes no files (only mix outputs) has no manifest either."""
        if not self._writes_files:
            return
        speakers = getattr(self, "_speakers", {})
        stopped = self._stopped_at
        manifest = {
            **self._description,
            "started_at": self._started_at,
            "stopped_at": None if stopped is None else self._started_at + (stopped - self._started),
            "finalised": self._closed,
            "mix": self._mix_file or None,
            "tracks": {s.user_id: track_name(s.user_id) for s in speakers.values()} if self._tracks_wanted else {},
            "statistics": attrs.asdict(self.stats),
        }
        temporary = self.directory / (MANIFEST_FILE + ".tmp")
        temporary.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        os.replace(temporary, self.directory / MANIFEST_FILE)
