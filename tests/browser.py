"""Helpers for the browser tests: Debian's chromium driven by Playwright, a trio loop in a
worker thread for the server and the Python peers, and measurements on what was heard.

Playwright's sync API blocks its thread, so the test thread drives the browser and a second
thread runs trio (the server, Python hosts and listeners); `TrioLoop.run` and
`TrioLoop.start` hand coroutines across. Nothing leaves the machine: every Chromium launch
maps every host name to nowhere except 127.0.0.1 and turns off its background traffic.
"""

from __future__ import annotations

import base64
import concurrent.futures
import shutil
import subprocess
import threading
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import trio

from airwave.media.sources import file_frames

T = TypeVar("T")

# Without these Chromium looks up Google's hosts over the network (126 look-ups measured in
# one run); with them it sends nothing off this machine.
PRIVATE_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MEDIA_FLAGS = [
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
RATE = 48_000


def chromium_args(fake_mic: Path) -> list[str]:
    return [*PRIVATE_FLAGS, *MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={fake_mic}"]


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed: apt-get install chromium (scripts/test.sh does it)"
    return path


class TrioLoop:
    """A trio run in a worker thread, with a nursery that lives as long as the loop."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="trio-loop", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the trio loop did not start"

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)`` in the loop; blocks this thread until it returns."""
        return trio.from_thread.run(function, *args, trio_token=self._token)

    def run_sync(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the loop's thread (trio objects are not thread-safe)."""
        return trio.from_thread.run_sync(function, *args, trio_token=self._token)

    def start(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> Background[T]:
        """Runs ``function(*args, **kwargs)`` in the loop's nursery, in the background."""
        background: Background[T] = Background(self)

        async def task() -> None:
            with background.scope:
                try:
                    background.future.set_result(await function(*args, **kwargs))
                except Exception as exc:  # handed to the waiting thread
                    background.future.set_exception(exc)
            if background.scope.cancelled_caught:
                background.future.cancel()

        assert self._nursery is not None
        trio.from_thread.run_sync(self._nursery.start_soon, task, trio_token=self._token)
        return background

    async def start_in_nursery(self, starter: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``nursery.start(starter, *args)`` in the loop's nursery (a server, say)."""
        assert self._nursery is not None
        return await self._nursery.start(starter, *args)

    def close(self) -> None:
        if self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(15)


class Background(Generic[T]):
    """A task started by `TrioLoop.start`: wait for its `result`, or `cancel` it."""

    def __init__(self, loop: TrioLoop) -> None:
        self._loop = loop
        self.scope = trio.CancelScope()
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def result(self, timeout: float) -> T:
        return self.future.result(timeout)

    def cancel(self) -> None:
        self._loop.run_sync(self.scope.cancel)


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


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


# Run in the page: what the tap before the output records for SECONDS, as base64 int16.
RECORD_JS = """async (seconds) => {
  const samples = await window.airwave.engine.record(seconds);
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
  const bytes = new Uint8Array(pcm.buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}"""


def decode_recording(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.int16)
