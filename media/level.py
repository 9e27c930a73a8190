"""Audio level metering: a frame's loudness as the 0-100 level the media frames carry.

The level maps RMS loudness in dBov linearly: -60 dBov and below -> 0, 0 dBov -> 100
(0 dBov is the RMS of a full-scale square wave, 32768; a full-scale sine is -3 dBov, level 95).
So one level step is 0.6 dB. Digital silence is 0. Typical speech (about -26 dBov) reads
in the 50s.
"""

from __future__ import annotations

import math

import numpy as np

from airwave.protocol.model import VolumeStatus, volume_status_for_level

FLOOR_DBOV = -60.0  # level 0 at and below this
_FULL_SCALE = 32768.0


def audio_level(pcm: np.ndarray) -> int:
    """0-100 from the RMS of int16 samples (any length; an empty array is silence)."""
    if pcm.size == 0:
        return 0
    samples = pcm.astype(np.float64).ravel()
    mean_square = float(np.dot(samples, samples)) / samples.size
    if mean_square == 0.0:
        return 0
    dbov = 10.0 * math.log10(mean_square / (_FULL_SCALE * _FULL_SCALE))
    level = round((dbov - FLOOR_DBOV) * 100.0 / -FLOOR_DBOV)
    return min(100, max(0, level))


def volume_status(level: int) -> VolumeStatus:
    """The vendor's bucket for a 0-100 level: zero [1] for 0, low [2] 1-30, mid [3] 31-60,
    high [4] 61-100. none [0] means muted and is set by whoever knows a participant is
    muted, never computed from a level. ``VolumeStatus`` is an ``IntEnum``."""
    if not 0 <= level <= 100:
        raise ValueError(f"audio level must be 0-100, got {level}")
    return volume_status_for_level(level)
