"""Frame sources: tone and speech-like test signals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from airwave.media import FRAME_SAMPLES, SAMPLE_RATE, audio_level, speech_like_frames, tone_frames


@pytest.mark.parametrize(("seconds", "count"), [(1.0, 50), (0.1, 5), (0.01, 1), (0.0, 0), (0.021, 2)])
def test_tone_frames_cover_the_duration_in_whole_frames(seconds: float, count: int) -> None:
    assert len(list(tone_frames(440, seconds))) == count


def test_tone_frames_are_phase_continuous_across_frames() -> None:
    frames = list(tone_frames(441.7, 2.0, amplitude=0.5))
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    n = np.arange(len(frames) * FRAME_SAMPLES)
    reference = 0.5 * 32767 * np.sin(2 * np.pi * 441.7 * n / SAMPLE_RATE)
    assert np.abs(np.concatenate(frames) - reference).max() <= 1.0


def test_tone_frames_yield_new_arrays() -> None:
    first, second = itertools.islice(tone_frames(1000, 1.0), 2)
    first[:] = 0
    assert second.any()


@pytest.mark.parametrize(("freq", "amplitude"), [(0, 0.3), (24_000, 0.3), (440, 1.5), (440, -0.1)])
def test_tone_frames_out_of_range_is_rejected(freq: float, amplitude: float) -> None:
    with pytest.raises(ValueError):
        next(tone_frames(freq, 1.0, amplitude))


def test_speech_like_frames_same_seed_same_signal() -> None:
    a = np.concatenate(list(speech_like_frames(3.0, seed=42)))
    b = np.concatenate(list(speech_like_frames(3.0, seed=42)))
    c = np.concatenate(list(speech_like_frames(3.0, seed=43)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_speech_like_frames_are_voiced_with_pauses() -> None:
    frames = list(speech_like_frames(10.0, seed=0))
    assert len(frames) == 500
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    levels = [audio_level(f) for f in frames]
    assert sum(level > 0 for level in levels) > 0.6 * len(frames)  # mostly talking
    assert 40 <= max(levels) <= 90  # speech-like loudness, never clipping hot
    silent_runs = [len(list(run)) for silent, run in itertools.groupby(levels, key=lambda v: v == 0) if silent]
    assert len(silent_runs) >= 3 and min(silent_runs) >= 8  # pauses of 160 ms or more


def test_speech_like_frames_pitch_stays_in_voice_range() -> None:
    signal = np.concatenate(list(speech_like_frames(4.0, seed=1))).astype(np.float64)
    pitches = []
    for start in range(0, signal.size - 1920, 1920):
        chunk = signal[start : start + 1920]
        if np.abs(chunk).max() < 1000:
            continue  # pause or syllable edge
        chunk = chunk - chunk.mean()
        corr = np.correlate(chunk, chunk, "full")[chunk.size - 1 :]
        low, high = SAMPLE_RATE // 240, SAMPLE_RATE // 90
        pitches.append(SAMPLE_RATE / (low + int(np.argmax(corr[low:high]))))
    assert len(pitches) > 20
    assert 95 <= min(pitches) and max(pitches) <= 225
    assert max(pitches) - min(pitches) > 15  # the pitch wanders
