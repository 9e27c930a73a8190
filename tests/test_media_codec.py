"""Opus encode/decode, loss concealment, the OpusHead and TOC helpers."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from airwave.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    DecoderStatistics,
    OpusDecoder,
    OpusEncoder,
    audio_level,
    concealment_packet,
    opus_head,
    packet_samples,
    tone_frames,
)

SETTLE_FRAMES = 5  # the codec's pre-skip and start-up transient live in the first frames


def peak_hz(pcm: np.ndarray, pad_to: int | None = None) -> float:
    """The strongest frequency, Hann-windowed; zero-padding refines the bins of short input."""
    x = pcm.astype(np.float64) * np.hanning(pcm.size)
    n = max(pad_to or 0, pcm.size)
    return float(np.fft.rfftfreq(n, 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(x, n)))])


def encoded_tone(freq: float, seconds: float) -> list[bytes]:
    encoder = OpusEncoder()
    return [encoder.encode(frame) for frame in tone_frames(freq, seconds)]


@pytest.mark.parametrize("freq", [440, 1000])
def test_opus_tone_round_trip_keeps_frequency(freq: int) -> None:
    decoder = OpusDecoder()
    decoded = [decoder.decode(packet) for packet in encoded_tone(freq, 1.0)]
    assert all(frame.shape == (FRAME_SAMPLES,) and frame.dtype == np.int16 for frame in decoded)
    settled = np.concatenate(decoded[SETTLE_FRAMES:])
    assert abs(peak_hz(settled) - freq) <= 5
    # A 0.3 full-scale sine is -13.5 dBov, level 77: the codec keeps the loudness too.
    assert abs(audio_level(settled) - 77) <= 3


def test_opus_encoder_one_packet_per_frame_within_opus_limits() -> None:
    packets = encoded_tone(440, 0.5)
    assert len(packets) == 25
    assert all(1 <= len(p) <= 1275 and packet_samples(p) == FRAME_SAMPLES for p in packets)


def test_opus_encoder_bitrate_sets_packet_size() -> None:
    frames = list(tone_frames(440, 1.0))
    low, high = OpusEncoder(16_000), OpusEncoder(96_000)
    low_bytes = sum(len(low.encode(f)) for f in frames)
    high_bytes = sum(len(high.encode(f)) for f in frames)
    assert low_bytes < high_bytes / 3


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(FRAME_SAMPLES, np.float32),
        np.zeros(FRAME_SAMPLES // 2, np.int16),
        np.zeros((1, FRAME_SAMPLES), np.int16),
    ],
    ids=["float", "short", "2d"],
)
def test_opus_encoder_wrong_frame_is_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        OpusEncoder().encode(bad)


def test_opus_encoder_pre_skip_is_libopus_lookahead() -> None:
    assert OpusEncoder().pre_skip == 312
    assert OpusEncoder(application="lowdelay").pre_skip == 120


def test_opus_conceal_after_voiced_frame_continues_signal() -> None:
    decoder = OpusDecoder()
    voiced = [decoder.decode(packet) for packet in encoded_tone(440, 0.4)][-1]
    concealed = decoder.conceal()
    assert concealed.shape == (FRAME_SAMPLES,) and concealed.any()
    # Opus PLC continues the tone, at close to its level: not noise, not a fade from zero.
    assert abs(peak_hz(concealed, pad_to=SAMPLE_RATE) - 440) <= 10
    assert audio_level(concealed) >= audio_level(voiced) - 6


def test_opus_conceal_repeated_losses_fade_to_silence() -> None:
    decoder = OpusDecoder()
    for packet in encoded_tone(440, 0.4):
        decoder.decode(packet)
    levels = [audio_level(decoder.conceal()) for _ in range(14)]
    assert levels[0] > levels[4] > levels[8] > 0
    assert levels[10:] == [0, 0, 0, 0]  # ten lost frames (200 ms) concealed, then silence
    assert decoder.statistics().concealed == 14


def test_opus_decode_after_losses_recovers_full_level() -> None:
    decoder = OpusDecoder()
    packets = encoded_tone(440, 1.0)
    for packet in packets[:20]:
        decoder.decode(packet)
    for _ in range(12):
        decoder.conceal()
    resumed = np.concatenate([decoder.decode(p) for p in packets[32:]][2:])
    assert abs(peak_hz(resumed) - 440) <= 5
    assert audio_level(resumed) >= 74
    assert audio_level(decoder.conceal()) >= 70  # the loss count restarted: no leftover fade


def test_opus_conceal_before_any_packet_is_silence() -> None:
    concealed = OpusDecoder().conceal()
    assert concealed.shape == (FRAME_SAMPLES,) and not concealed.any()


def test_opus_decode_empty_packet_conceals_without_wedging_decoder() -> None:
    decoder = OpusDecoder()
    packets = encoded_tone(440, 0.2)
    decoder.decode(packets[0])
    assert decoder.decode(b"").shape == (FRAME_SAMPLES,)
    # An empty AVPacket would have put FFmpeg's decoder in draining mode for good.
    assert decoder.decode(packets[1]).any()
    assert decoder.statistics().concealed == 1


def test_opus_decode_invalid_packet_is_concealed_and_counted() -> None:
    decoder = OpusDecoder()
    packets = encoded_tone(440, 0.2)
    decoder.decode(packets[0])
    concealed = decoder.decode(b"\xff\xff\xff")  # code 3 with an impossible frame count
    assert concealed.shape == (FRAME_SAMPLES,) and concealed.any()
    assert decoder.statistics() == DecoderStatistics(decoded=1, concealed=1, invalid=1)
    assert decoder.decode(packets[1]).shape == (FRAME_SAMPLES,)


def test_opus_decoder_reset_forgets_stream() -> None:
    decoder = OpusDecoder()
    for packet in encoded_tone(440, 0.2):
        decoder.decode(packet)
    decoder.reset()
    assert not decoder.conceal().any()


def test_opus_head_default_is_golden_bytes() -> None:
    assert opus_head() == b"OpusHead" + bytes.fromhex("01 01 3801 80bb0000 0000 00")
    assert opus_head(channels=2, pre_skip=0, rate=16000) == b"OpusHead" + bytes.fromhex("01 02 0000 803e0000 0000 00")


def test_opus_head_default_equals_libopus_own_header() -> None:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = SAMPLE_RATE, "mono", "s16"
    ctx.time_base = Fraction(1, SAMPLE_RATE)
    ctx.open()
    assert opus_head() == ctx.extradata


@pytest.mark.parametrize("kwargs", [{"channels": 3}, {"channels": 0}, {"pre_skip": 70000}, {"rate": 0}])
def test_opus_head_out_of_range_is_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        opus_head(**kwargs)


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xF8]), 960),  # CELT FB 20 ms, one frame
        (bytes([0xF0]), 480),  # CELT FB 10 ms
        (bytes([0xE0]), 120),  # CELT FB 2.5 ms
        (bytes([0x78]), 960),  # Hybrid FB 20 ms
        (bytes([0x18]), 2880),  # SILK NB 60 ms
        (bytes([0xF9]), 1920),  # code 1: two frames
        (bytes([0xFA, 0x01]), 1920),  # code 2: two frames
        (bytes([0xFB, 0x03]), 2880),  # code 3: three frames
    ],
)
def test_packet_samples_reads_toc(packet: bytes, samples: int) -> None:
    assert packet_samples(packet) == samples


@pytest.mark.parametrize("packet", [b"", bytes([0xFB])])
def test_packet_samples_truncated_packet_is_rejected(packet: bytes) -> None:
    with pytest.raises(ValueError):
        packet_samples(packet)


def test_concealment_packet_keeps_20ms_config_else_celt_fb() -> None:
    assert concealment_packet(bytes([0x79, 1, 2])) == bytes([0x78])  # hybrid FB 20 ms, code 0
    assert concealment_packet(bytes([0xF0, 1])) == bytes([0xF8])  # 10 ms frames: use 20 ms CELT
    assert concealment_packet(None) == bytes([0xF8])
