"""The CDN outputs: a channel's mix, encoded once by the recorder, muxed for listeners who are
not Airwave clients (docs/operations.md, "CDN").

- **Icecast** (`IcecastOutput`): an Ogg/Opus source on a mount of a real Icecast server,
  through FFmpeg's ``icecast`` protocol (an HTTP PUT) and Ogg muxer. PyAV opens an output URL
  without protocol options, and FFmpeg's icecast protocol then calls the stream audio/mpeg,
  which Icecast treats as MP3 (a late listener gets no Ogg headers and cannot decode); so the
  container is FFmpeg's ``tee`` muxer with one slave, whose options reach the protocol
  (``content_type=audio/ogg``). The network is slow or away at times: the output has its own
  thread and a bounded queue, so the recorder's worker never waits for it; a failure is
  logged and counted and the source reconnects with backoff, the queue dropped (it is live).
- **HLS** (`HlsOutput`): FFmpeg's ``hls`` muxer with fMP4 segments of ``segment_seconds``, a
  rolling playlist whose old segments are deleted, in a folder the server's HTTP serves
  (``/hls/<channel>/index.m3u8``). Local files: written inline by the worker.

The recorder's worker may move to a process of its own, which builds each recorder from a
picklable factory: `make_cdn_recorder` is that factory, with only paths, strings and numbers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import final
from urllib.parse import urlsplit

import attrs
import av

from .opus import DEFAULT_PRE_SKIP, FRAME_SAMPLES, SAMPLE_RATE, opus_head
from .recorder import MIX_BITRATE, MixOutput, Recorder
from .sinks import OggOpusSink

log = logging.getLogger("airwave.cdn")

PLAYLIST = "index.m3u8"  # the names actors/net/http.py serves (HLS_FILE there)
HLS_INIT = "init.mp4"
HLS_SEGMENT = "seg-%05d.m4s"  # what the server's HTTP route accepts: init, playlist, these
HLS_LIST_SIZE = 6  # segments in the rolling playlist (older ones are deleted)
# Icecast's Ogg pages: a listener gets audio a page at a time, so a page's length is latency
# (and each page costs ~28 bytes of header: 100 ms is ~4% of a 48 kb/s stream).
ICECAST_PAGE_SECONDS = 0.1
ICECAST_QUEUE_PACKETS = 250  # 5 s of mix waiting for the network before the oldest is dropped
RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # Icecast reconnect backoff, seconds (doubling)
_TIME_BASE = Fraction(1, SAMPLE_RATE)
_MUXER_INITIAL_PADDING = 312  # as in sinks.py: FFmpeg adds the libopus lookahead to pts


def _shown_url(icecast_url: str) -> str:
    """An ``icecast://user:password@host:port/mount`` for the log: no credentials."""
    parts = urlsplit(icecast_url)
    return f"icecast://{parts.hostname}:{parts.port}{parts.path}"


@attrs.define
class OutputStatistics:
    written: int = 0  # packets muxed
    dropped: int = 0  # packets not sent: the queue was full, or the server was away
    failures: int = 0  # connects or writes that failed
    connects: int = 0  # successful connections (Icecast)
    last_error: str = ""


@final
class HlsOutput:
    """The mix as HLS in ``directory``: ``index.m3u8`` (a rolling playlist of HLS_LIST_SIZE
    segments), ``init.mp4`` and ``seg-NNNNN.m4s``, each segment ``segment_seconds`` long.
    The files of an earlier stream in the folder are removed first. A write that fails (a
    full disk) ends this output, logged and counted; the mix goes on."""

    def __init__(self, directory: Path, *, segment_seconds: float = 1.0, pre_skip: int = DEFAULT_PRE_SKIP) -> None:
        self.directory = directory
        self.stats = OutputStatistics()
        self._segment_seconds = segment_seconds
        self._pre_skip = pre_skip
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._failed = False

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.iterdir():
            if old.name in (PLAYLIST, HLS_INIT) or old.suffix in (".m4s", ".tmp"):
                old.unlink(missing_ok=True)
        container = av.open(str(self.directory / PLAYLIST), "w", format="hls", options={
            "hls_time": f"{self._segment_seconds:g}",
            "hls_segment_type": "fmp4",
            "hls_list_size": str(HLS_LIST_SIZE),
            # temp_file: a player never reads a half-written playlist or segment.
            "hls_flags": "delete_segments+temp_file+independent_segments+program_date_time",
            "hls_fmp4_init_filename": HLS_INIT,
            "hls_segment_filename": str(self.directory / HLS_SEGMENT),
        })
        stream = container.add_stream("libopus", rate=SAMPLE_RATE)
        stream.codec_context.layout = "mono"
        stream.time_base = _TIME_BASE
        stream.codec_context.open()  # then our OpusHead replaces libopus's own (sinks.py)
        stream.codec_context.extradata = opus_head(channels=1, pre_skip=self._pre_skip)
        self._container, self._stream = container, stream

    def write(self, packet: bytes) -> None:
        if self._failed:
            self.stats.dropped += 1
            return
        try:
            if self._container is None:
                self._open()
            out = av.Packet(packet)
            out.pts = out.dts = self.stats.written * FRAME_SAMPLES - _MUXER_INITIAL_PADDING
            out.duration = FRAME_SAMPLES
            out.time_base = _TIME_BASE
            out.stream = self._stream
            out.is_keyframe = True  # every Opus packet is: the segmenter cuts only at key frames
            assert self._container is not None
            self._container.mux(out)
            self.stats.written += 1
        except Exception as exc:
            self._failed = True
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("HLS output in %s failed, stopped: %s", self.directory, self.stats.last_error)
            self._close_container()

    def close(self) -> None:
        """Ends the stream: the playlist gets its last segment and #EXT-X-ENDLIST."""
        self._close_container()

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:
                self.stats.failures += 1
                log.error("closing the HLS output in %s failed: %s", self.directory, exc)


@final
class IcecastOutput:
    """The mix as an Ogg/Opus source on ``url`` (``icecast://user:password@host:port/mount``).

    `write` only queues (bounded: the oldest packet goes when full, counted); a thread of its
    own connects, muxes and, when the server refuses or goes away, logs, counts, waits
    (RETRY_FIRST doubling to RETRY_MAX) and connects again with a new Ogg stream, starting
    from the newest audio. `close` ends the source within about a second."""

    def __init__(self, url: str, *, name: str = "", pre_skip: int = DEFAULT_PRE_SKIP) -> None:
        self.url = url
        self.stats = OutputStatistics()
        self._name = name
        self._pre_skip = pre_skip
        self._queue: deque[bytes] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def _target(self) -> str:
        """The tee muxer's one slave: the Ogg muxer's and the icecast protocol's options."""
        options = {
            "f": "ogg",
            "content_type": "audio/ogg",
            "ice_name": self._name or "airwave",
            "page_duration": str(int(ICECAST_PAGE_SECONDS * 1_000_000)),
        }
        # tee's option syntax: ':' separates, '\' escapes; the names are ours, so escape all.
        escaped = ":".join(f"{k}={_tee_escape(v)}" for k, v in options.items())
        return f"[{escaped}]{self.url}"

    def write(self, packet: bytes) -> None:
        with self._wake:
            if self._closing:
                return
            if self._thread is None:  # started on first use: a factory may run anywhere
                self._thread = threading.Thread(target=self._run, name="airwave-icecast", daemon=True)
                self._thread.start()
            if len(self._queue) >= ICECAST_QUEUE_PACKETS:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(packet)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            # A write blocked on a hung server is abandoned (the thread is a daemon).
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        delay = RETRY_FIRST
        while not self._closing:
            try:
                self._stream_until_failure()
                return  # closed
            except Exception as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "Icecast source %s failed (%d so far), retrying in %.1f s: %s",
                    _shown_url(self.url), self.stats.failures, delay, self.stats.last_error,
                )
            with self._wake:
                self._wake.wait_for(lambda: self._closing, timeout=delay)
                self.stats.dropped += len(self._queue)  # live audio: what was missed is gone
                self._queue.clear()
            delay = min(delay * 2, RETRY_MAX)

    def _stream_until_failure(self) -> None:
        """Connects and muxes the queue until closed (returns) or the server fails (raises)."""
        sink: OggOpusSink | None = None
        started = 0.0
        try:
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._closing or bool(self._queue), timeout=1.0)
                    if self._closing:
                        return
                    packets = list(self._queue)
                    self._queue.clear()
                if sink is None:
                    started = time.monotonic()
                    sink = OggOpusSink(self._target(), pre_skip=self._pre_skip, container_format="tee")
                for packet in packets:
                    sink.write(packet)  # the first one writes the headers: the PUT happens here
                    self.stats.written += 1
                if started:
                    self.stats.connects += 1
                    log.info("Icecast source %s connected in %.0f ms", _shown_url(self.url), (time.monotonic() - started) * 1000)
                    started = 0.0
        finally:
            if sink is not None:
                try:
                    sink.close()
                except Exception:  # the connection is gone already
                    pass


def _tee_escape(value: str) -> str:
    return "".join("\\" + c if c in ":\\[]|" else c for c in value)


def make_cdn_recorder(
    hls_dir: Path | None,
    icecast_url: str | None,
    *,
    started_at: float,
    segment_seconds: float = 1.0,
    name: str = "",
) -> Recorder:
    """A recorder that writes no files of its own and sends its mix to HLS in ``hls_dir``
    and/or to Icecast at ``icecast_url`` (None: not that one). Module-level and with only
    picklable arguments, so a recorder worker process can call it (functools.partial)."""
    if hls_dir is None and icecast_url is None:
        raise ValueError("a CDN recorder needs HLS, Icecast or both")
    outputs: list[MixOutput] = []
    pre_skip = _mix_pre_skip()
    if hls_dir is not None:
        outputs.append(HlsOutput(hls_dir, segment_seconds=segment_seconds, pre_skip=pre_skip))
    if icecast_url is not None:
        outputs.append(IcecastOutput(icecast_url, name=name, pre_skip=pre_skip))
    return Recorder(hls_dir or Path("."), mix="", tracks=False, started_at=started_at, mix_outputs=outputs)


def _mix_pre_skip() -> int:
    """The mix encoder's lookahead, which the outputs' OpusHead must announce."""
    from .opus import OpusEncoder

    return OpusEncoder(MIX_BITRATE).pre_skip
