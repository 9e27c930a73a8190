"""Audio level metering, the vendor's volume buckets, and mixing."""

from __future__ import annotations

import numpy as np
import pytest

from airwave.media import FRAME_SAMPLES, audio_level, mix, tone_frames, volume_status
from airwave.protocol.model import VolumeStatus


def at_dbov(dbov: float) -> np.ndarray:
    """A square wave whose RMS is ``dbov`` below full scale (32768)."""
    amplitude = 32768 * 10 ** (dbov / 20)
    return np.rint(np.where(np.arange(FRAME_SAMPLES) % 96 < 48, amplitude, -amplitude)).astype(np.int16)


def test_audio_level_silence_is_zero() -> None:
    assert audio_level(np.zeros(FRAME_SAMPLES, np.int16)) == 0
    assert audio_level(np.zeros(0, np.int16)) == 0


def test_audio_level_full_scale_is_100() -> None:
    square = np.where(np.arange(FRAME_SAMPLES) % 2, 32767, -32768).astype(np.int16)
    assert audio_level(square) == 100
    assert audio_level(np.full(FRAME_SAMPLES, -32768, np.int16)) == 100


@pytest.mark.parametrize(("dbov", "level"), [(-70, 0), (-60, 0), (-59, 2), (-30, 50), (-12, 80), (-3, 95)])
def test_audio_level_maps_dbov_linearly(dbov: float, level: int) -> None:
    assert audio_level(at_dbov(dbov)) == level


def test_audio_level_full_scale_sine_is_95() -> None:
    assert audio_level(next(tone_frames(1000, 0.02, amplitude=1.0))) == 95


@pytest.mark.parametrize(
    ("level", "status"),
    [(0, 1), (1, 2), (30, 2), (31, 3), (60, 3), (61, 4), (100, 4)],
)
def test_volume_status_uses_vendor_buckets(level: int, status: int) -> None:
    assert volume_status(level) == status
    assert isinstance(volume_status(level), VolumeStatus)


def test_volume_status_never_computes_muted() -> None:
    assert VolumeStatus.NONE not in {volume_status(level) for level in range(101)}


@pytest.mark.parametrize("level", [-1, 101])
def test_volume_status_out_of_range_is_rejected(level: int) -> None:
    with pytest.raises(ValueError):
        volume_status(level)


def test_mix_sums_small_signals_exactly() -> None:
    a = np.arange(FRAME_SAMPLES, dtype=np.int16)
    b = np.full(FRAME_SAMPLES, -7, np.int16)
    assert np.array_equal(mix([a, b, b]), a.astype(np.int32) - 14)


def test_mix_saturates_instead_of_wrapping() -> None:
    loud = np.full(FRAME_SAMPLES, 30_000, np.int16)
    assert (mix([loud, loud]) == 32767).all()
    assert (mix([-loud, -loud, -loud]) == -32768).all()
    assert mix([loud, loud]).dtype == np.int16


def test_mix_of_nothing_is_one_silent_frame() -> None:
    silence = mix([])
    assert silence.shape == (FRAME_SAMPLES,) and silence.dtype == np.int16 and not silence.any()


def test_mix_returns_a_new_array() -> None:
    a = np.ones(FRAME_SAMPLES, np.int16)
    mixed = mix([a])
    mixed[:] = 5
    assert (a == 1).all()


def test_mix_rejects_mismatched_frames() -> None:
    with pytest.raises(ValueError):
        mix([np.zeros(FRAME_SAMPLES, np.int16), np.zeros(FRAME_SAMPLES // 2, np.int16)])
    with pytest.raises(ValueError):
        mix([np.zeros(FRAME_SAMPLES, np.int16), np.zeros(FRAME_SAMPLES, np.int32)])
