"""Mixing several senders' frames into one, for playback and WAV output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .opus import FRAME_SAMPLES


def mix(frames: Sequence[np.ndarray]) -> np.ndarray:
    """The saturating sum of int16 frames of one shape (accumulated in int32, then clipped).

    No frames mixes to one frame (960 samples) of silence. The result is a new array.
    """
    if not frames:
        return np.zeros(FRAME_SAMPLES, np.int16)
    shape = frames[0].shape
    for frame in frames:
        if frame.dtype != np.int16 or frame.shape != shape:
            raise ValueError(f"cannot mix {frame.dtype} {frame.shape} with int16 {shape}")
    if len(frames) == 1:
        return frames[0].copy()
    total = frames[0].astype(np.int32)
    for frame in frames[1:]:
        total += frame
    np.clip(total, -32768, 32767, out=total)
    return total.astype(np.int16)
