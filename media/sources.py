"""Sources of 20 ms frames: int16 arrays of shape (960,) at 48 kHz mono.

Sources are plain synchronous iterators and never sleep: pacing belongs to the caller, which
sends one frame per 20 ms from its own (async) clock. Every frame yielded is a new array the
caller may keep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import attrs
import av
import numpy as np

from .opus import FRAME_SAMPLES, SAMPLE_RATE


def _frame_count(seconds: float) -> int:
    """Frames covering ``seconds`` (the last one may run a little past it)."""
    if not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    samples = round(seconds * SAMPLE_RATE)
    return -(-samples // FRAME_SAMPLES)


def tone_frames(freq_hz: float, seconds: float, amplitude: float = 0.3) -> Iterator[np.ndarray]:
    """A sine tone, phase-continuous across frames; ``amplitude`` is a fraction of full scale."""
    if not 0 < freq_hz < SAMPLE_RATE / 2:
        raise ValueError(f"frequency must be in (0, {SAMPLE_RATE // 2}) Hz, got {freq_hz}")
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be 0-1, got {amplitude}")
    count = _frame_count(seconds)
    step = 2 * math.pi * freq_hz / SAMPLE_RATE
    ramp = step * np.arange(FRAME_SAMPLES)
    advance = step * FRAME_SAMPLES
    phase = 0.0
    scale = amplitude * 32767
    for _ in range(count):
        yield np.rint(scale * np.sin(phase + ramp)).astype(np.int16)
        phase = (phase + advance) % (2 * math.pi)  # kept small so precision does not drift


# --- speech-like test signal -------------------------------------------------------------
#
# Additive synthesis of a voiced source: harmonics of a wandering fundamental (100-220 Hz),
# weighted by a -6 dB/octave tilt (glottal pulse plus lip radiation) and by the magnitude
# response of a cascade of formant resonators whose frequencies glide between vowel targets.
# Syllables (160-260 ms, a 4-6 Hz rate) rise and fall in loudness and pitch; phrases of 2-6
# syllables are separated by silent pauses (160-480 ms) and their pitch declines. Harmonic
# amplitudes and the fundamental are interpolated linearly across each frame from values
# computed at the frame edges, so nothing steps at frame boundaries.

_VOWELS = np.array(  # F1, F2, F3 in Hz (Peterson and Barney averages)
    [
        (730, 1090, 2440),  # a
        (270, 2290, 3010),  # i
        (300, 870, 2240),  # u
        (530, 1840, 2480),  # e
        (570, 840, 2410),  # o
        (660, 1720, 2410),  # ae
        (520, 1190, 2390),  # uh
    ],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 200.0])
_F4 = 3500.0
_TOP_HZ = 5000.0  # harmonics taper to nothing between 4 and 5 kHz
_TAPER_HZ = 4000.0
_MIN_F0, _MAX_F0 = 100.0, 220.0
_GAIN = 1300.0  # voiced frames average about -27 dBov, like speech at a nominal level


def _harmonic_amplitudes(f0: float, formants: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    freqs = harmonics * f0
    centres = np.append(formants, _F4)
    f2 = freqs[:, None] ** 2
    c2 = centres[None, :] ** 2
    # |H(f)| of a two-pole resonance, 1 at DC: F^2 / sqrt((F^2 - f^2)^2 + (B f)^2).
    response = np.prod(c2 / np.sqrt((c2 - f2) ** 2 + (_BANDWIDTHS[None, :] * freqs[:, None]) ** 2), axis=1)
    taper = np.clip((_TOP_HZ - freqs) / (_TOP_HZ - _TAPER_HZ), 0.0, 1.0)
    return response * taper / harmonics


@attrs.frozen
class _Syllable:
    base_f0: float
    start_formants: np.ndarray  # the previous vowel's, glided from
    formants: np.ndarray  # this vowel's targets
    loudness: float
    accent: float  # pitch rise at the syllable's middle, as a fraction
    wobble: float  # pitch drift across the syllable, as a fraction

    def at(self, t: float, phrase_pos: float) -> tuple[float, np.ndarray, float]:
        """f0, formants and gain at position t (0-1) in the syllable and phrase_pos in the phrase."""
        f0 = self.base_f0 * (1.0 - 0.15 * phrase_pos)  # declination over the phrase
        f0 *= 1.0 + self.accent * math.sin(math.pi * t) + self.wobble * t
        glide = min(t / 0.4, 1.0)
        glide = glide * glide * (3.0 - 2.0 * glide)  # smoothstep
        formants = self.start_formants + (self.formants - self.start_formants) * glide
        gain = self.loudness * math.sin(math.pi * t) ** 0.7
        return min(max(f0, _MIN_F0), _MAX_F0), formants, gain


def speech_like_frames(seconds: float, seed: int = 0) -> Iterator[np.ndarray]:
    """A voiced, speech-like signal with syllables and pauses; the same for the same seed.

    About 0.1-0.3 ms of CPU per frame.
    """
    count = _frame_count(seconds)
    rng = np.random.default_rng(seed)
    base_f0 = rng.uniform(115.0, 165.0)
    formants = _VOWELS[rng.integers(len(_VOWELS))].copy()
    ramp = np.arange(FRAME_SAMPLES) / FRAME_SAMPLES
    phase = 0.0  # of the fundamental, in cycles
    produced = 0

    while produced < count:
        syllables = [int(n) for n in rng.integers(8, 14, size=int(rng.integers(2, 7)))]
        phrase_frames = sum(syllables)
        phrase_pos = 0
        for frames in syllables:
            syllable = _Syllable(
                base_f0=base_f0,
                start_formants=formants,
                formants=_VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.92, 1.08, size=3),
                loudness=rng.uniform(0.55, 1.0),
                accent=rng.uniform(0.0, 0.18),
                wobble=rng.uniform(-0.04, 0.04),
            )
            formants = syllable.formants
            for k in range(frames):
                if produced >= count:
                    return
                p0 = (phrase_pos + k) / phrase_frames
                p1 = (phrase_pos + k + 1) / phrase_frames
                f0_a, formants_a, gain_a = syllable.at(k / frames, p0)
                f0_b, formants_b, gain_b = syllable.at((k + 1) / frames, p1)
                harmonics = np.arange(1, int(_TOP_HZ // min(f0_a, f0_b)) + 1, dtype=np.float64)
                amp_a = gain_a * _harmonic_amplitudes(f0_a, formants_a, harmonics)
                amp_b = gain_b * _harmonic_amplitudes(f0_b, formants_b, harmonics)
                # Fundamental phase per sample: the running sum of a linearly moving f0.
                f0_ramp = f0_a + (f0_b - f0_a) * ramp
                cycles = phase + np.cumsum(f0_ramp) / SAMPLE_RATE
                phase = float(cycles[-1] % 1.0)
                angles = (2.0 * math.pi) * np.outer(harmonics, cycles)
                weights = amp_a[:, None] + (amp_b - amp_a)[:, None] * ramp[None, :]
                signal = _GAIN * np.einsum("hn,hn->n", weights, np.sin(angles))
                yield np.clip(np.rint(signal), -32768, 32767).astype(np.int16)
                produced += 1
            phrase_pos += frames

        for _ in range(int(rng.integers(8, 25))):
            if produced >= count:
                return
            yield np.zeros(FRAME_SAMPLES, np.int16)
            produced += 1


def file_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The first audio stream of any file FFmpeg reads, as 48 kHz mono frames.

    Decoded, resampled and down-mixed by FFmpeg (``av.AudioResampler``), then cut into exact
    960-sample frames; the last one is zero-padded. The file is closed when the iterator is
    exhausted or closed.
    """
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{os.fspath(path)!r} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        pending = np.zeros(0, np.int16)

        def chunks(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
            nonlocal pending
            parts = [pending, *(f.to_ndarray().reshape(-1) for f in frames)]
            pending = np.concatenate(parts) if len(parts) > 1 else pending
            whole = pending.size // FRAME_SAMPLES * FRAME_SAMPLES
            for start in range(0, whole, FRAME_SAMPLES):
                yield pending[start : start + FRAME_SAMPLES].copy()
            pending = pending[whole:]

        for frame in container.decode(stream):
            yield from chunks(resampler.resample(frame))
        yield from chunks(resampler.resample(None))
        if pending.size:
            yield np.pad(pending, (0, FRAME_SAMPLES - pending.size))
