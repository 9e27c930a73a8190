"""Sinks: decoded PCM to WAV, received Opus packets to Ogg/Opus without re-encoding.

Both are context managers; ``close()`` may be called more than once, and writing after it
raises ``ValueError``.
"""

from __future__ import annotations

import os
import wave
from fractions import Fraction
from types import TracebackType
from typing import Self, final

import av
import numpy as np

from .opus import DEFAULT_PRE_SKIP, SAMPLE_RATE, concealment_packet, opus_head, packet_samples

_TIME_BASE = Fraction(1, SAMPLE_RATE)
# FFmpeg's Ogg muxer writes granule = pts + duration + the stream's initial padding, which it
# takes from the libopus encoder context PyAV opens for the stream (its lookahead, 312). An
# Ogg/Opus granule counts pre-skip samples too (RFC 7845 section 4), so the first packet's pts
# is -312: then each page's granule is exactly the number of samples muxed so far.
_MUXER_INITIAL_PADDING = 312


class _ClosedOnExit:
    """``with sink:`` closes it; both sinks share this."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@final
class WavSink(_ClosedOnExit):
    """Writes 48 kHz mono 16-bit frames to a WAV file (stdlib ``wave``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Opened here, not by wave.open(path): a path that cannot be opened then raises
        # without leaving a half-made Wave_write that complains when collected.
        self._file = open(os.fspath(path), "wb")
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self.samples_written = 0

    def write(self, pcm: np.ndarray) -> None:
        """Appends int16 samples (any length, one dimension)."""
        if self._wav is None:
            raise ValueError("write to a closed WavSink")
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected 1-D int16 samples, got {pcm.dtype} {pcm.shape}")
        self._wav.writeframes(pcm.astype("<i2", copy=False).tobytes())
        self.samples_written += pcm.size

    def close(self) -> None:
        if self._wav is not None:
            wav, self._wav = self._wav, None
            try:
                wav.close()
            finally:
                self._file.close()


@final
class OggOpusSink(_ClosedOnExit):
    """Muxes received Opus packets into an Ogg/Opus file as they are: no decode, no re-encode.

    ``pre_skip`` goes into the OpusHead: the sender's encoder lookahead (312 for libopus at
    48 kHz, what ``OpusEncoder`` produces). One sink holds one sender's stream; several
    speakers need mixing and re-encoding, or one file per speaker. FFmpeg keeps up to about a
    second of packets per Ogg page, so a crash loses at most the last page.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channels: int = 1,
        pre_skip: int = DEFAULT_PRE_SKIP,
        options: dict[str, str] | None = None,
        container_format: str = "ogg",
    ) -> None:
        """``options`` are FFmpeg's muxer and format options: the recorder's
        ``page_duration`` (microseconds of audio per Ogg page) and ``flush_packets``.
        ``container_format`` "tee" sends the stream to a tee muxer's slave (``path`` is then
        ``[f=ogg:...]URL``): the CDN's Icecast source, whose protocol options go there."""
        head = opus_head(channels=channels, pre_skip=pre_skip)
        container = av.open(os.fspath(path), "w", format=container_format, options=options or {})
        try:
            stream = container.add_stream("libopus", rate=SAMPLE_RATE)
            stream.codec_context.layout = "mono" if channels == 1 else "stereo"
            stream.time_base = _TIME_BASE
            # Opening the context makes libopus write its own OpusHead into extradata, over
            # anything set before; setting ours afterwards is what reaches the file.
            stream.codec_context.open()
            stream.codec_context.extradata = head
        except BaseException:
            container.close()
            raise
        self._container: av.container.OutputContainer | None = container
        self._stream = stream
        self._last: bytes | None = None
        self.samples_written = 0  # including the pre-skip samples, as Ogg granules count

    def write(self, packet: bytes) -> None:
        """Appends one Opus packet; its duration comes from its TOC byte."""
        if self._container is None:
            raise ValueError("write to a closed OggOpusSink")
        duration = packet_samples(packet)
        out = av.Packet(packet)
        out.pts = out.dts = self.samples_written - _MUXER_INITIAL_PADDING
        out.duration = duration
        out.time_base = _TIME_BASE
        out.stream = self._stream
        self._container.mux(out)
        self.samples_written += duration
        self._last = packet

    def write_lost(self) -> None:
        """Stands in for one lost 20 ms packet with a 1-byte packet that players conceal."""
        self.write(concealment_packet(self._last))

    def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()
