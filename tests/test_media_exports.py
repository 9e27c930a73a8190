"""The names airwave.media offers other packages: pinned, so a change is deliberate."""

from __future__ import annotations

import airwave.media

MEDIA_API = {
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
}


def test_media_exports_pin_the_public_surface() -> None:
    assert set(airwave.media.__all__) == MEDIA_API
    for name in MEDIA_API:
        assert getattr(airwave.media, name) is not None


def test_media_audio_format_is_48khz_20ms() -> None:
    assert (airwave.media.SAMPLE_RATE, airwave.media.FRAME_SAMPLES) == (48_000, 960)
    assert airwave.media.FRAME_DURATION == 0.020
