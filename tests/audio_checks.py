"""Checks on recorded audio, by measurement: FFT peaks and gaps, never by eye."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from airwave.media.sources import file_frames

FRAME = 960
RATE = 48_000


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


def speech_wav(folder: Path, text: str, *, silence: float = 1.0) -> tuple[Path, np.ndarray]:
    """espeak-ng says ``text``; returns a 48 kHz mono WAV of it followed by ``silence``
    seconds (Chromium's fake microphone loops its file), and the speech alone as int16."""
    assert shutil.which("espeak-ng"), "espeak-ng is needed: apt-get install espeak-ng (scripts/test.sh does it)"
    raw = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    speech = np.concatenate(list(file_frames(raw)))
    speech = np.trim_zeros(speech)
    padded = np.concatenate([speech, np.zeros(int(silence * RATE), dtype=np.int16)])
    path = folder / "speech48k.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(padded.tobytes())
    return path, speech


def _spectrogram_db(pcm: np.ndarray, size: int = 960, hop: int = 480) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(pcm.astype(np.float64), size)[::hop]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(size), axis=1))[:, : size * 8000 // RATE]  # 0-8 kHz
    return 20 * np.log10(spectrum + 1e-3)


def align(reference: np.ndarray, recording: np.ndarray, *, candidates: int = 1) -> list[np.ndarray]:
    """The stretches of ``recording`` that best match ``reference`` (cross-correlation
    peaks at least one reference length apart), best first: one per repetition heard."""
    n = len(reference) + len(recording)
    size = 1 << (n - 1).bit_length()
    correlation = np.fft.irfft(np.fft.rfft(recording.astype(np.float64), size) * np.conj(np.fft.rfft(reference.astype(np.float64), size)), size)
    correlation = correlation[: len(recording) - len(reference) + 1]
    found = []
    for _ in range(candidates):
        if not len(correlation) or not np.isfinite(correlation).any():
            break
        lag = int(np.nanargmax(correlation))
        found.append(recording[lag : lag + len(reference)])
        correlation[max(0, lag - len(reference)) : lag + len(reference)] = np.nan
    return found


def spectral_similarity(reference: np.ndarray, heard: np.ndarray) -> float:
    """Pearson correlation of the two log-magnitude spectrograms (0-8 kHz, 20 ms windows),
    over the frames where the reference sounds: 1 for the same sound, near 0 for unrelated."""
    a, b = _spectrogram_db(reference), _spectrogram_db(heard)
    energy = np.sqrt((reference[: len(a) * 480].astype(np.float64) ** 2).reshape(len(a), -1).mean(axis=1)) if len(a) else np.zeros(0)
    loud = energy > 300
    a, b = a[loud] - a[loud].mean(), b[loud] - b[loud].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def heard_similarity(reference: np.ndarray, heard: np.ndarray, *, pieces: int = 6) -> float:
    """How much ``heard`` sounds like ``reference``: each sixth of the reference (~0.6 s) is
    aligned on its own (a late packet the listener concealed shifts what follows by 20 ms,
    which is the jitter buffer's job, not a loss of fidelity; one whole alignment then
    scores the part before the shift as noise) against each repetition heard, the best
    match kept; the mean of the pieces' `spectral_similarity`. Unrelated speech scores ~0.3."""
    size = len(reference) // pieces
    scores = []
    for index in range(pieces):
        piece = reference[index * size : (index + 1) * size]
        scores.append(max(spectral_similarity(piece, once) for once in align(piece, heard, candidates=2)))
    return float(np.mean(scores))
