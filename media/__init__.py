"""airwave.media: Opus encode/decode, sources, sinks, jitter buffer, level metering, mixing.

Audio everywhere is 48 kHz mono signed 16-bit PCM in 20 ms frames: numpy int16 arrays of
shape (960,). These are the names other packages may use.
"""

from .jitter import (
    JitterBuffer as JitterBuffer,
    JitterStatistics as JitterStatistics,
    Lost as Lost,
    Playout as Playout,
    PushOutcome as PushOutcome,
    Ready as Ready,
    seq_delta as seq_delta,
)
from .level import audio_level as audio_level, volume_status as volume_status
from .mixer import mix as mix
from .opus import (
    FRAME_DURATION as FRAME_DURATION,
    FRAME_SAMPLES as FRAME_SAMPLES,
    SAMPLE_RATE as SAMPLE_RATE,
    DecoderStatistics as DecoderStatistics,
    OpusDecoder as OpusDecoder,
    OpusEncoder as OpusEncoder,
    concealment_packet as concealment_packet,
    opus_head as opus_head,
    packet_samples as packet_samples,
)
from .router import FrameSink as FrameSink, MediaRouter as MediaRouter
from .sinks import OggOpusSink as OggOpusSink, WavSink as WavSink
from .sources import file_frames as file_frames, speech_like_frames as speech_like_frames, tone_frames as tone_frames

__all__ = [
    "FRAME_DURATION",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "DecoderStatistics",
    "FrameSink",
    "JitterBuffer",
    "JitterStatistics",
    "Lost",
    "MediaRouter",
    "OggOpusSink",
    "OpusDecoder",
    "OpusEncoder",
    "Playout",
    "PushOutcome",
    "Ready",
    "WavSink",
    "audio_level",
    "concealment_packet",
    "file_frames",
    "mix",
    "opus_head",
    "packet_samples",
    "seq_delta",
    "speech_like_frames",
    "tone_frames",
    "volume_status",
]
