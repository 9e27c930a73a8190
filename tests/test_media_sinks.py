"""WAV and Ogg/Opus sinks, and reading files back with file_frames."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from airwave.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    OggOpusSink,
    OpusEncoder,
    WavSink,
    file_frames,
    opus_head,
    tone_frames,
)


def peak_hz(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    x = pcm.astype(np.float64) * np.hanning(pcm.size)
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(np.abs(np.fft.rfft(x)))])


def encoded_tone(freq: float, seconds: float) -> list[bytes]:
    encoder = OpusEncoder()
    return [encoder.encode(frame) for frame in tone_frames(freq, seconds)]


def decode_file(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def ogg_granules(path: Path) -> list[int]:
    """Granule positions of every Ogg page (RFC 3533 page header)."""
    data, pos, granules = path.read_bytes(), 0, []
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        granules.append(struct.unpack_from("<q", data, pos + 6)[0])
        segments = data[pos + 27 : pos + 27 + data[pos + 26]]
        pos += 27 + len(segments) + sum(segments)
    return granules


def test_wav_sink_round_trip_keeps_samples(tmp_path: Path) -> None:
    frames = list(tone_frames(440, 0.5))
    with WavSink(tmp_path / "t.wav") as sink:
        for frame in frames:
            sink.write(frame)
    assert sink.samples_written == 25 * FRAME_SAMPLES
    with wave.open(str(tmp_path / "t.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert np.array_equal(samples, np.concatenate(frames))


def test_wav_sink_write_after_close_raises(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "t.wav")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError):
        sink.write(np.zeros(FRAME_SAMPLES, np.int16))


def test_wav_sink_rejects_non_int16(tmp_path: Path) -> None:
    with WavSink(tmp_path / "t.wav") as sink, pytest.raises(ValueError):
        sink.write(np.zeros(FRAME_SAMPLES, np.float32))


def test_ogg_opus_sink_file_decodes_to_tone_with_expected_duration(tmp_path: Path) -> None:
    packets = encoded_tone(440, 1.0)
    with OggOpusSink(tmp_path / "t.opus") as sink:
        for packet in packets:
            sink.write(packet)
    decoded = decode_file(tmp_path / "t.opus")
    # 50 packets of 960 samples, less the 312-sample pre-skip the player drops.
    assert abs(decoded.size - (50 * FRAME_SAMPLES - 312)) <= FRAME_SAMPLES
    assert abs(peak_hz(decoded[5 * FRAME_SAMPLES :]) - 440) <= 5


def test_ogg_opus_sink_muxes_packets_without_reencoding(tmp_path: Path) -> None:
    packets = encoded_tone(440, 1.0)
    with OggOpusSink(tmp_path / "t.opus") as sink:
        for packet in packets:
            sink.write(packet)
    with av.open(str(tmp_path / "t.opus")) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        demuxed = [bytes(p) for p in container.demux(stream) if p.size]
    assert demuxed == packets


def test_ogg_opus_sink_writes_the_given_opus_head(tmp_path: Path) -> None:
    # libopus writes its own OpusHead (pre-skip 312) when the stream's context opens; the
    # sink's must win, or a sender with another lookahead would be trimmed wrongly.
    packets = encoded_tone(440, 0.4)
    with OggOpusSink(tmp_path / "t.opus", pre_skip=100) as sink:
        for packet in packets:
            sink.write(packet)
    with av.open(str(tmp_path / "t.opus")) as container:
        assert container.streams.audio[0].codec_context.extradata == opus_head(pre_skip=100)
    assert decode_file(tmp_path / "t.opus").size == 20 * FRAME_SAMPLES - 100


def test_ogg_opus_sink_granules_count_samples_muxed(tmp_path: Path) -> None:
    packets = encoded_tone(440, 1.0)
    with OggOpusSink(tmp_path / "t.opus") as sink:
        for packet in packets:
            sink.write(packet)
    assert sink.samples_written == 50 * FRAME_SAMPLES
    granules = ogg_granules(tmp_path / "t.opus")
    assert granules[:2] == [0, 0]  # OpusHead and OpusTags pages
    assert granules[-1] == 50 * FRAME_SAMPLES  # RFC 7845: pre-skip included, nothing extra


def test_ogg_opus_sink_lost_packets_keep_the_timeline(tmp_path: Path) -> None:
    packets = encoded_tone(440, 1.0)
    with OggOpusSink(tmp_path / "t.opus") as sink:
        for packet in packets[:20]:
            sink.write(packet)
        for _ in range(5):
            sink.write_lost()
        for packet in packets[25:]:
            sink.write(packet)
    with av.open(str(tmp_path / "t.opus")) as container:
        sizes = [p.size for p in container.demux(audio=0) if p.size]
    assert sizes[20:25] == [1] * 5
    decoded = decode_file(tmp_path / "t.opus")
    assert abs(decoded.size - (50 * FRAME_SAMPLES - 312)) <= FRAME_SAMPLES


def test_ogg_opus_sink_write_after_close_raises(tmp_path: Path) -> None:
    sink = OggOpusSink(tmp_path / "t.opus")
    sink.close()
    with pytest.raises(ValueError):
        sink.write(bytes([0xF8]))


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def test_file_frames_wav_cut_into_exact_frames_last_zero_padded(tmp_path: Path) -> None:
    samples = np.concatenate(list(tone_frames(440, 0.1)))[:2500]
    write_wav(tmp_path / "t.wav", samples, SAMPLE_RATE, 1)
    frames = list(file_frames(tmp_path / "t.wav"))
    assert len(frames) == 3
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    assert np.array_equal(np.concatenate(frames)[:2500], samples)
    assert not frames[-1][2500 - 2 * FRAME_SAMPLES :].any()


def test_file_frames_resamples_16khz_stereo_to_48khz_mono_keeping_tone(tmp_path: Path) -> None:
    rate = 16_000
    t = np.arange(rate) / rate  # one second
    left = 0.3 * 32767 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * 32767 * np.sin(2 * np.pi * 440 * t + 0.3)
    write_wav(tmp_path / "t.wav", np.rint(np.column_stack([left, right]).ravel()), rate, 2)
    frames = list(file_frames(tmp_path / "t.wav"))
    assert abs(len(frames) - 50) <= 1
    mono = np.concatenate(frames)
    assert abs(peak_hz(mono[FRAME_SAMPLES:-FRAME_SAMPLES]) - 440) <= 5
    assert np.abs(mono).max() > 0.2 * 32767  # the down-mix kept the tone's level


def test_file_frames_reads_ogg_opus_written_by_sink(tmp_path: Path) -> None:
    with OggOpusSink(tmp_path / "t.opus") as sink:
        for packet in encoded_tone(1000, 1.0):
            sink.write(packet)
    frames = list(file_frames(tmp_path / "t.opus"))
    assert len(frames) == 50  # 47,688 samples, padded up
    assert abs(peak_hz(np.concatenate(frames[5:45])) - 1000) <= 5


def test_file_frames_closed_early_releases_file(tmp_path: Path) -> None:
    write_wav(tmp_path / "t.wav", np.concatenate(list(tone_frames(440, 1.0))), SAMPLE_RATE, 1)
    frames = file_frames(tmp_path / "t.wav")
    assert next(frames).shape == (FRAME_SAMPLES,)
    frames.close()  # runs the generator's `with`: no error, no leaked container
    with pytest.raises(StopIteration):
        next(frames)
