"""The web page in a real Chromium (issue 15): a person's clicks and typing, a fake
microphone playing espeak-ng speech, and Python peers on the other end. One server, one
browser and one trio loop for the module (each test its own channel and browser contexts),
so the module costs one Chromium start."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from airwave import commands
from airwave.actors.participant import SessionSettings
from airwave.actors.server import RunningServer, ServerSettings, serve
from audio_checks import dominant_frequency, longest_gap_frames
from browser import (
    RECORD_JS, TrioLoop, align, chromium_args, chromium_path, decode_recording, read_wav, spectral_similarity, speech_wav,
)

SPEECH = "Airwave carries voices from a web page to every listener in the channel."
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def loop() -> Iterator[TrioLoop]:
    running = TrioLoop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(loop: TrioLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = ServerSettings(port=0, data_dir=tmp_path_factory.mktemp("data"), session=SessionSettings(resume_grace=15.0))
    running: RunningServer = loop.run(loop.start_in_nursery, serve, settings)
    yield running
    loop.run_sync(running.shutdown)
    loop.run(running.stopped.wait)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return speech_wav(tmp_path_factory.mktemp("speech"), SPEECH)


@pytest.fixture(scope="module")
def browser(speech: tuple[Path, np.ndarray]) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=chromium_args(speech[0]))
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Browser, server: RunningServer) -> Iterator:
    """Opens pages, each in its own context (its own sessionStorage), as separate people."""
    contexts = []
    errors: list[str] = []

    def open_page(path: str = "/") -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.page_url()}{path.lstrip('/')}")
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], errors  # no uncaught exception in any page


def join(page: Page, name: str, *, host: bool, channel: str | None = None, password: str = "", uri_mode: bool = False) -> None:
    """Fills the join form and clicks Join, as a person does."""
    if channel is not None:
        page.get_by_label("Channel id").fill(channel)
    page.get_by_label("Display name").fill(name)
    page.get_by_label("User id").fill(name.lower())
    page.get_by_label("Host (speak" if host else "Audience (listen").check()
    if password:
        page.get_by_label("Password").fill(password)
    if uri_mode:
        page.get_by_label("Only join a channel that already exists").check()
    page.get_by_role("button", name="Join").click()


def wait_for(page: Page, condition: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Polls a JavaScript expression (the page's CSP forbids eval, so no wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        page.wait_for_timeout(50)


def wait_for_channel(loop: TrioLoop, server: RunningServer, channel: str) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while channel not in loop.run_sync(server.registry.channel_ids):
        assert time.monotonic() < deadline, f"channel {channel} never started"
        time.sleep(0.02)


def joined(page: Page, channel: str) -> None:
    expect(page.get_by_role("heading", name=f"Channel {channel}")).to_be_visible()
    expect(page.locator("#connection")).to_have_text("connected")


def test_browser_page_host_speech_reaches_a_python_listener(new_page, loop: TrioLoop, server: RunningServer, speech, tmp_path: Path) -> None:
    """Case 1: the page's microphone (espeak-ng through the fake device) -> AudioWorklet ->
    WebCodecs Opus -> the server -> a Python listener's WAV, which sounds like the source."""
    path, reference = speech
    recording = tmp_path / "heard.wav"
    # The listener first, so the recording begins before the fake microphone's first word
    # (it loops 3.4 s of speech and 1.5 s of silence from when the page opens it).
    listener = loop.start(commands.listen, server.url, "speech", str(recording), duration=6.0, out=io.StringIO())
    wait_for_channel(loop, server, "speech")
    page = new_page("/c/speech")
    join(page, "Alice", host=True)
    joined(page, "speech")
    assert listener.result(timeout=20) == 0
    heard = read_wav(recording)
    similarity = spectral_similarity(reference, align(reference, heard))
    assert similarity >= 0.8, similarity
    # The measure tells sounds apart: the same speech heard at the wrong moment is not similar.
    assert spectral_similarity(reference, np.roll(reference, len(reference) // 3)) < 0.5


def test_browser_python_tone_plays_in_the_page_without_gaps(new_page, loop: TrioLoop, server: RunningServer) -> None:
    """Case 2: a Python host's 440 Hz tone -> the page's decoders, jitter buffer and mixer,
    measured by the tap before the output: 440 Hz within 3 Hz, no gap over 60 ms."""
    host = loop.start(commands.host, server.url, "tone", commands.source_from(None, 440.0), duration=9.0, out=io.StringIO())
    page = new_page("/c/tone")
    join(page, "Bob", host=False)
    joined(page, "tone")
    wait_for(page, "window.airwave.played.length > 10")
    heard = decode_recording(page.evaluate(RECORD_JS, 3.0)).astype(np.int16)
    assert abs(dominant_frequency(heard) - 440.0) <= 3.0, dominant_frequency(heard)
    assert np.sqrt(np.mean(heard.astype(np.float64) ** 2)) > 3000  # the tone, not a whisper
    assert longest_gap_frames(heard) <= 3  # 3 frames of 20 ms
    page.get_by_role("button", name="Leave").click()
    expect(page.get_by_role("heading", name="You left the channel")).to_be_visible()
    assert host.result(timeout=15) == 0
