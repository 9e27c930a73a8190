"""Checks on recorded audio, by measurement: FFT peaks and gaps, never by eye."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

FRAME = 960


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def dominant_frequency(pcm: np.ndarray, rate: int = 48_000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


def frame_rms(pcm: np.ndarray) -> np.ndarray:
    usable = len(pcm) // FRAME * FRAME
    frames = pcm[:usable].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt((frames**2).mean(axis=1))


def sounding_span(pcm: np.ndarray, threshold: float = 500.0) -> tuple[int, int]:
    """First and last 20 ms frame above ``threshold`` RMS."""
    loud = np.flatnonzero(frame_rms(pcm) > threshold)
    assert len(loud), "no sound at all"
    return int(loud[0]), int(loud[-1])


def longest_gap_frames(pcm: np.ndarray, threshold: float = 500.0) -> int:
    """The longest run of quiet 20 ms frames between the first and last loud one."""
    rms = frame_rms(pcm)
    first, last = sounding_span(pcm, threshold)
    longest = run = 0
    for value in rms[first : last + 1]:
        run = run + 1 if value <= threshold else 0
        longest = max(longest, run)
    return longest
