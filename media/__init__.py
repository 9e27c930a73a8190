"""airwave.media: Opus encode/decode, sources, sinks, jitter buffer, level metering, mixing,
and the server's media router.

Audio everywhere is 48 kHz mono signed 16-bit PCM in 20 ms frames: numpy int16 arrays of
shape (960,). These are the names other packages may use.

They load on first use (PEP 562): the server imports only the router, which forwards Opus
packets untouched, and must not pay for loading PyAV and numpy (about 200 ms) it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "JitterBuffer": "jitter",
    "JitterStatistics": "jitter",
    "Lost": "jitter",
    "Playout": "jitter",
    "PushOutcome": "jitter",
    "Ready": "jitter",
    "seq_delta": "jitter",
    "audio_level": "level",
    "volume_status": "level",
    "mix": "mixer",
    "FRAME_DURATION": "opus",
    "FRAME_SAMPLES": "opus",
    "SAMPLE_RATE": "opus",
    "DecoderStatistics": "opus",
    "OpusDecoder": "opus",
    "OpusEncoder": "opus",
    "concealment_packet": "opus",
    "opus_head": "opus",
    "packet_samples": "opus",
    "FrameSink": "router",
    "MediaRouter": "router",
    "OggOpusSink": "sinks",
    "WavSink": "sinks",
    "file_frames": "sources",
    "speech_like_frames": "sources",
    "tone_frames": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .jitter import JitterBuffer, JitterStatistics, Lost, Playout, PushOutcome, Ready, seq_delta
    from .level import audio_level, volume_status
    from .mixer import mix
    from .opus import (
        FRAME_DURATION,
        FRAME_SAMPLES,
        SAMPLE_RATE,
        DecoderStatistics,
        OpusDecoder,
        OpusEncoder,
        concealment_packet,
        opus_head,
        packet_samples,
    )
    from .router import FrameSink, MediaRouter
    from .sinks import OggOpusSink, WavSink
    from .sources import file_frames, speech_like_frames, tone_frames
