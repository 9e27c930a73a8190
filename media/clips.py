"""A stretch of a recording as a WAV file: what `airwave replay --at SEQ --export` writes.

Every file of a recording starts at its recording_started event's time and runs on the wall
clock (media/recorder.py), so the moment of any event of the log is one offset into all of
them (`airwave.actors.log.replay.audio_places`). A clip is the mix decoded around that
offset, or, for a recording made without a mix, the speakers' tracks decoded and summed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import av
import numpy as np

from .opus import SAMPLE_RATE
from .sinks import WavSink

# Decoding starts this long before the clip: FFmpeg seeks to the Ogg page before the asked
# time, and an Opus decoder needs some audio before its output matches a decode from the
# start (a second is ample: measured bit-exact after a seek a second back).
PREROLL = 1.0


@attrs.frozen
class Clip:
    sources: tuple[Path, ...]  # the files decoded: the mix, or every speaker's track
    start: float  # seconds into the recording
    samples: int  # of the WAV (48 kHz): shorter than asked where the recording ends


def decode_span(path: Path, start: float, seconds: float) -> np.ndarray:
    """``path``'s decoded audio (48 kHz mono int16) from ``start`` for ``seconds``, or to
    its end if that comes first. Samples are placed by their timestamps, so a seek that lands
    early costs time, never accuracy."""
    first = max(0, round(start * SAMPLE_RATE))
    wanted = max(0, round(seconds * SAMPLE_RATE))
    out = np.zeros(wanted, np.int16)
    end = 0  # samples of ``out`` the file reached
    with av.open(os.fspath(path)) as container:
        stream = container.streams.audio[0]
        if start > PREROLL:
            container.seek(int((start - PREROLL) / stream.time_base), stream=stream)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            position = round(frame.pts * frame.time_base * SAMPLE_RATE) - first
            if position >= wanted:
                break
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(frame)] or [np.zeros(0, np.int16)])
            begin, stop = max(0, position), min(wanted, position + len(pcm))
            if stop > begin:
                out[begin:stop] = pcm[begin - position : stop - position]
                end = max(end, stop)
    return out[:end]


def recording_sources(directory: Path) -> tuple[Path, ...]:
    """The files a clip of the recording in ``directory`` is made of: its mix if it has one,
    else every speaker's track (from its recording.json)."""
    manifest = json.loads((directory / "recording.json").read_text())
    if manifest.get("mix"):
        return (directory / manifest["mix"],)
    return tuple(directory / name for name in manifest.get("tracks", {}).values())


def export_clip(directory: Path, start: float, seconds: float, out: Path) -> Clip:
    """Writes ``seconds`` of the recording in ``directory`` from ``start`` to the WAV ``out``
    (replaced whole, never left half-written: written beside it, then renamed)."""
    sources = recording_sources(directory)
    if not sources:
        raise ValueError(f"{directory} holds no audio yet")
    pcm = mix_spans([decode_span(path, start, seconds) for path in sources])
    partial = out.with_name(out.name + ".part")
    try:
        with WavSink(partial) as wav:
            wav.write(pcm)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return Clip(sources, start, len(pcm))


def mix_spans(spans: Sequence[np.ndarray]) -> np.ndarray:
    """Spans starting at the same moment, summed (with clipping) to the longest's length."""
    if len(spans) == 1:
        return spans[0]
    total = np.zeros(max((len(s) for s in spans), default=0), np.int32)
    for span in spans:
        total[: len(span)] += span
    return np.clip(total, -32768, 32767).astype(np.int16)
