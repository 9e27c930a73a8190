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
import threading
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import trio

from audio_checks import align, heard_similarity, spectral_similarity, speech_wav  # noqa: F401  (test_browser's)

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
