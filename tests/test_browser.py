"""The web page in a real Chromium (issue 15): a person's clicks and typing, a fake
microphone playing espeak-ng speech, and Python peers on the other end. One server, one
browser and one trio loop for the module (each test its own channel and browser contexts),
so the module costs one Chromium start."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from airwave.actors.log.replay import replay_events
from airwave.actors.participant import SessionSettings
from airwave.actors.server import RunningServer, ServerSettings, serve
from airwave.protocol import Join
from airwave.wire import open_wire
from audio_checks import dominant_frequency, longest_gap_frames
from natsserver import NatsServer, free_port, nats_server  # noqa: F401  (nats_server: a fixture)
from browser import (
    RECORD_JS, TrioLoop, chromium_args, chromium_path, decode_recording, heard_similarity, read_wav, speech_wav,
)

NOW_JS = "performance.timeOrigin + performance.now()"  # the clock of the page's arrival times
SPEECH = "Airwave carries voices from a web page to every listener in the channel."
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def loop() -> Iterator[TrioLoop]:
    running = TrioLoop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def heap_frozen() -> Iterator[None]:
    """The server shares this process with pytest: what the process holds before the module
    (every module, every earlier test) is kept out of the collector's sight, so a full
    collection cannot stall the server for longer than the page's jitter buffer (as in
    test_faults.py's heap_frozen)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def server(loop: TrioLoop, data_dir: Path, heap_frozen: None) -> Iterator[RunningServer]:
    settings = ServerSettings(port=0, data_dir=data_dir, session=SessionSettings(resume_grace=15.0))
    running: RunningServer = loop.run(loop.start_in_nursery, serve, settings)
    yield running
    loop.run_sync(running.shutdown)
    loop.run(running.stopped.wait)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return speech_wav(tmp_path_factory.mktemp("speech"), SPEECH)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:  # one per thread: both browsers come from it
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright, speech: tuple[Path, np.ndarray]) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=chromium_path(), args=chromium_args(speech[0]))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def quiet_browser(playwright: Playwright, speech: tuple[Path, np.ndarray]) -> Iterator[Browser]:
    """A second Chromium, without the autoplay flag: sound needs a click, as for a person."""
    args = [arg for arg in chromium_args(speech[0]) if not arg.startswith("--autoplay-policy")]
    chromium = playwright.chromium.launch(executable_path=chromium_path(), args=args)
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


def join(page: Page, name: str, *, host: bool, channel: str | None = None, password: str = "", uri_mode: bool = False, echo_cancel: bool = True) -> None:
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
    if not echo_cancel:
        page.get_by_label("Cancel echo").uncheck()
    page.get_by_role("button", name="Join").click()


def wait_for(page: Page, condition: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Polls a JavaScript expression (the page's CSP forbids eval, so no wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        page.wait_for_timeout(50)


def airwave_cli(*args: str) -> subprocess.Popen[str]:
    """A Python peer as a person runs it, in its own process: the server's loop and this
    test's browser driver then share no interpreter with it."""
    return subprocess.Popen([sys.executable, "-m", "airwave.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


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
    # (it loops 3.4 s of speech and 1 s of silence from when the page opens it), and long
    # enough for two: Chromium's echo canceller may still be settling during the first.
    listener = airwave_cli("listen", "speech", "--output", str(recording), "--duration", "10", "--url", server.url)
    wait_for_channel(loop, server, "speech")
    page = new_page("/c/speech")
    join(page, "Alice", host=True)
    joined(page, "speech")
    finish(listener, timeout=25)
    heard = read_wav(recording)
    similarity = heard_similarity(reference, heard)
    assert similarity >= 0.8, similarity
    # The measure tells sounds apart: the same words reversed are not similar.
    assert heard_similarity(reference, reference[::-1].copy()) < 0.5


def test_browser_python_tone_plays_in_the_page_without_gaps(new_page, loop: TrioLoop, server: RunningServer) -> None:
    """Case 2: a Python host's 440 Hz tone -> the page's decoders, jitter buffer and mixer,
    measured by the tap before the output: 440 Hz within 3 Hz, no gap over 60 ms."""
    host = airwave_cli("host", "tone", "--tone", "440", "--duration", "9", "--url", server.url)
    page = new_page("/c/tone")
    join(page, "Bob", host=False)
    joined(page, "tone")
    wait_for(page, "window.airwave.played.length > 10")
    started = page.evaluate(NOW_JS)
    heard = decode_recording(page.evaluate(RECORD_JS, 3.0)).astype(np.int16)
    assert abs(dominant_frequency(heard) - 440.0) <= 3.0, dominant_frequency(heard)
    assert np.sqrt(np.mean(heard.astype(np.float64) ** 2)) > 3000  # the tone, not a whisper
    # No gap over 3 frames of 20 ms, unless no packet reached the page for as long (the host,
    # the server or the page's main thread stalled: two test workers on two cores): the
    # jitter buffer cannot cover what never came. Packets that came after the recording's
    # 3 s waited on the main thread's conversion of it, so they say nothing.
    gap = longest_gap_frames(heard)
    arrivals = sorted(p["arrival"] for p in page.evaluate("window.airwave.played") if started <= p["arrival"] <= started + 3000)
    longest_wait_ms = float(np.max(np.diff(arrivals)))
    assert gap <= 3 or longest_wait_ms >= gap * 20, (gap, longest_wait_ms)
    page.get_by_role("button", name="Leave").click()
    expect(page.get_by_role("heading", name="You left the channel")).to_be_visible()
    finish(host, timeout=20)


def test_browser_audience_raises_a_hand_the_host_puts_it_on_the_mic_and_its_voice_is_heard(
    new_page, loop: TrioLoop, server: RunningServer, speech, tmp_path: Path
) -> None:
    """Case 3, the co-host flow in two pages, and text messages to all and to one."""
    _, reference = speech
    host = new_page("/c/cohost")
    join(host, "Alice", host=True)
    joined(host, "cohost")
    host.get_by_role("button", name="Mute microphone").click()  # her fake mic says the same words
    expect(host.get_by_role("button", name="Unmute microphone")).to_have_attribute("aria-pressed", "true")
    # And she does not play Bob back: both pages live in one browser, and its echo canceller
    # takes one page's playback as the echo of the other's microphone.
    host.get_by_role("button", name="Mute sound").click()
    expect(host.get_by_role("button", name="Unmute sound")).to_have_attribute("aria-pressed", "true")
    bob = new_page("/c/cohost")
    # Even so, in one browser the echo canceller still degrades Bob's start (measured: a
    # similarity of 0.3-0.8 in one run in five); a real Bob has no second page in his
    # browser. He joins as with headphones.
    join(bob, "Bob", host=False, echo_cancel=False)
    joined(bob, "cohost")
    expect(bob.get_by_role("button", name="Mute microphone")).to_be_hidden()

    host.get_by_label("Message", exact=True).fill("welcome, everyone")
    host.get_by_role("button", name="Send").click()
    expect(bob.get_by_role("log")).to_contain_text("Alice: welcome, everyone")
    bob.get_by_label("Message", exact=True).fill("thanks")
    bob.get_by_label("to", exact=True).select_option(label="Alice")
    bob.get_by_role("button", name="Send").click()
    expect(host.get_by_role("log")).to_contain_text("Bob (to you): thanks")

    bob.get_by_role("button", name="Raise hand").click()
    expect(bob.get_by_role("button", name="Raise hand")).to_have_attribute("aria-pressed", "true")
    expect(host.locator("#hands")).to_contain_text("Bob raised a hand")
    recording = tmp_path / "cohost.wav"
    listener = airwave_cli("listen", "cohost", "--output", str(recording), "--duration", "9.5", "--user", "ears", "--url", server.url)
    expect(host.locator('#participants li[data-user="ears"]')).to_be_visible()  # hosts see audience joins
    host.get_by_role("button", name="Put Bob on the mic").first.click()
    expect(bob.locator('#participants li[data-user="bob"]')).to_contain_text("on the mic")
    expect(bob.get_by_role("button", name="Mute microphone")).to_be_visible()
    expect(host.locator("#hands")).to_be_hidden()
    expect(host.locator('#participants li[data-user="bob"].speaking')).to_be_visible()  # his level, through the server
    said = finish(listener, timeout=25)
    heard = read_wav(recording)
    assert heard_similarity(reference, heard) >= 0.8, said
    host.get_by_role("button", name="Take Bob off the mic").click()
    expect(bob.get_by_role("button", name="Raise hand")).to_be_visible()
    expect(bob.get_by_role("button", name="Mute microphone")).to_be_hidden()


def test_browser_kicked_and_stopped_pages_say_so_with_the_reason(new_page) -> None:
    """Case 4: a host kicks one page and stops the channel; every page shows that it ended."""
    host, bob, carol = new_page("/c/ending"), new_page("/c/ending"), new_page("/c/ending")
    join(host, "Alice", host=True)
    joined(host, "ending")
    for page, name in ((bob, "Bob"), (carol, "Carol")):
        join(page, name, host=False)
        joined(page, "ending")
    expect(host.locator("#participants li")).to_have_count(3)
    expect(bob.locator("#member-count")).to_have_text("3")  # the audience gets the count
    host.get_by_role("button", name="Kick Carol").click()
    expect(carol.get_by_role("heading", name="The channel ended for you")).to_be_focused()
    expect(carol.locator("#ended-reason")).to_have_text("Reason: you were removed by a host (kicked [6])")
    expect(host.locator("#participants li")).to_have_count(2)
    host.get_by_role("button", name="Stop the channel").click()
    expect(host.get_by_role("heading", name="You stopped the channel")).to_be_visible()
    expect(bob.get_by_role("heading", name="The channel ended for you")).to_be_visible()
    expect(bob.locator("#ended-reason")).to_have_text("Reason: the channel was stopped by a host (over [9])")
    bob.get_by_role("button", name="Join again").click()
    expect(bob.get_by_label("Channel id")).to_be_focused()


def test_browser_refusals_are_shown_with_their_reason(new_page, loop: TrioLoop, server: RunningServer) -> None:
    """Case 6: a wrong password, a full channel, a missing channel in uri mode."""
    holder = loop.start(hold_full_channel, server.url, "small")
    owner = new_page("/c/locked")
    join(owner, "Alice", host=True, password="right one")
    joined(owner, "locked")
    page = new_page("/")
    join(page, "Mallory", host=False, channel="locked", password="wrong")
    expect(page.get_by_role("alert")).to_have_text(re.compile(r"^Could not join locked: .*\(invalid_password \[11\]\)$"))
    expect(page.get_by_label("Channel id")).to_be_focused()
    wait_for_channel(loop, server, "small")
    page.get_by_label("Channel id").fill("small")
    page.get_by_label("Password").fill("")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile(r"^Could not join small: .*\(full \[10\]\)$"))
    page.get_by_label("Channel id").fill("nowhere")
    page.get_by_label("Only join a channel that already exists").check()
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile(r"^Could not join nowhere: .*\(not_found \[200\]\)$"))
    page.get_by_label("Channel id").fill("")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("alert")).to_have_text("Give a channel id to join.")
    holder.cancel()


async def hold_full_channel(url: str, channel: str) -> None:
    """A Python member alone in a channel of capacity 1, for as long as the loop runs."""
    async with open_wire(url) as wire:
        assert (await wire.request(Join, channel=channel, user_id="only", capacity=1)).ok
        await trio.sleep_forever()


def test_browser_a_cut_socket_and_a_reload_resume_the_session_and_the_sound_goes_on(
    new_page, loop: TrioLoop, server: RunningServer, data_dir: Path
) -> None:
    """Case 5: the server side of the page's TCP connection is destroyed (ss -K: a reset, as
    a network failure gives), then the page reloads; both times it resumes within the grace
    period, with the same sid, nothing logged, and the tone plays on."""
    host = airwave_cli("host", "resume", "--tone", "440", "--duration", "60", "--url", server.url)
    page = new_page("/c/resume")
    join(page, "Carol", host=False)
    joined(page, "resume")
    sid = page.evaluate("() => window.airwave.session.info.self_sid")
    wait_for(page, "window.airwave.played.length > 10")

    (client_port,) = loop.run_sync(lambda: [p.output.remote_address[1] for p in server.gateway._open if p.user_id == "carol"])
    cut = subprocess.run(["ss", "-K", "src", "127.0.0.1", "sport", "=", f":{server.port}", "dst", "127.0.0.1", "dport", "=", f":{client_port}"],
                         capture_output=True, text=True)
    assert f":{client_port}" in cut.stdout, cut  # the one socket it destroyed
    expect(page.locator("#connection")).to_have_text("resumed")
    assert page.evaluate("() => window.airwave.connections.slice(-2)") == ["reconnecting", "resumed"]
    assert page.evaluate("() => window.airwave.session.info.self_sid") == sid
    played = page.evaluate("() => window.airwave.played.length")
    wait_for(page, f"window.airwave.played.length > {played + 10}")
    assert abs(dominant_frequency(decode_recording(page.evaluate(RECORD_JS, 1.0))) - 440.0) <= 3.0

    page.reload()
    expect(page.locator("#connection")).to_have_text("resumed")
    expect(page.get_by_role("heading", name="Channel resume")).to_be_visible()
    assert page.evaluate("() => window.airwave.session.info.self_sid") == sid
    wait_for(page, "window.airwave.played.length > 10")
    assert abs(dominant_frequency(decode_recording(page.evaluate(RECORD_JS, 1.0))) - 440.0) <= 3.0

    carol = [e.event for e in replay_events(data_dir, channel="resume") if getattr(e.event, "user_id", None) == "carol"]
    assert [type(e).__name__ for e in carol] == ["MemberJoined"]  # no leave, no second join
    page.get_by_role("button", name="Leave").click()
    expect(page.get_by_role("heading", name="You left the channel")).to_be_visible()
    host.terminate()  # SIGTERM: a clean leave
    host.wait(15)


def test_browser_page_of_a_cluster_node_resumes_on_the_next_node_when_its_own_dies(
    browser: Browser, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Issue 16: a page served by node-b, opened with ``?servers=`` naming node-c, listens to a
    host on node-c (which owns the channel: the host joins first); node-b is SIGKILLed; the page
    resumes on node-c with the same sid, the stream has no leave and no second join for it, and
    the tone plays on. (A page on the owner's node waits out the lease TTL as well: the SDK's
    test_cluster_failures covers that case.)"""
    b_port, c_port = free_port(), free_port()

    def node(name: str, port: int, *options: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "airwave.cli", "serve", "--port", str(port), "--data", str(tmp_path / name),
             "--cluster", nats_server.url, "--node", name, *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    page_origin = f"http://127.0.0.1:{b_port}"
    nodes = [node("node-b", b_port), node("node-c", c_port, "--allow-origin", page_origin)]
    host = None
    context = browser.new_context()
    try:
        for port in (b_port, c_port):
            deadline = time.monotonic() + 15
            while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode:
                assert time.monotonic() < deadline, f"no node listening on {port}"
                time.sleep(0.05)
        host = airwave_cli("host", "across", "--tone", "440", "--duration", "60", "--url", f"ws://127.0.0.1:{c_port}/")
        assert "joined 'across'" in host.stdout.readline()  # node-c owns the channel from here
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{page_origin}/c/across?servers=ws://127.0.0.1:{c_port}/")
        join(page, "Carol", host=False)
        joined(page, "across")
        sid = page.evaluate("() => window.airwave.session.info.self_sid")
        wait_for(page, "window.airwave.played.length > 10")

        nodes[0].kill()
        nodes[0].wait(5)
        expect(page.locator("#connection")).to_have_text("resumed")
        assert page.evaluate("() => window.airwave.session.info.self_sid") == sid
        played = page.evaluate("() => window.airwave.played.length")
        wait_for(page, f"window.airwave.played.length > {played + 10}")
        assert abs(dominant_frequency(decode_recording(page.evaluate(RECORD_JS, 1.0))) - 440.0) <= 3.0
        assert errors == [], errors

        replayed = subprocess.run([sys.executable, "-m", "airwave.cli", "replay", nats_server.url, "--channel", "across", "--json"],
                                  capture_output=True, text=True, timeout=30)
        carol = [event for event in map(json.loads, replayed.stdout.splitlines()) if event.get("participant") == "carol"]
        assert [event["type"] for event in carol] == ["participant_joined"], replayed.stdout  # no leave, no second join
    finally:
        context.close()
        if host is not None:
            host.kill()
            host.wait(5)
        for process in nodes:
            process.kill()
            process.wait(5)


def test_browser_screenshot_of_a_live_channel_is_not_blank(new_page, tmp_path: Path) -> None:
    """Case 7: two members, one speaking (the host's fake microphone): the listener's page,
    saved as a picture a person can look at, shows it."""
    alice = new_page("/c/live")
    join(alice, "Alice", host=True)
    joined(alice, "live")
    bob = new_page("/c/live")
    join(bob, "Bob", host=False)
    joined(bob, "live")
    alice.get_by_label("Message", exact=True).fill("Hello from the studio")
    alice.get_by_role("button", name="Send").click()
    expect(bob.get_by_role("log")).to_contain_text("Alice: Hello from the studio")
    expect(bob.locator('#participants li[data-user="alice"].speaking')).to_be_visible()
    expect(bob.locator('#participants li[data-user="alice"] .indicator')).to_have_attribute("aria-label", re.compile(r"^sound: (low|mid|high)$"))
    shot = tmp_path / "live-channel.png"
    bob.screenshot(path=str(shot), full_page=True)
    assert not png_is_blank(shot.read_bytes())
    blank = new_page("/")
    blank.set_content("<html><body></body></html>")
    assert png_is_blank(blank.screenshot())  # the check can fail


def png_is_blank(png: bytes) -> bool:
    """Whether a PNG is (almost) one colour: under 0.2% of its decoded bytes differ from the
    most common one (a blank page: ~0.03%, the rows' filter bytes; the live channel: ~1%).
    PNG's filters keep a flat image flat, so no image library is needed."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, data = 8, b""
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        if png[at + 4 : at + 8] == b"IDAT":
            data += png[at + 8 : at + 8 + length]
        at += 12 + length
    pixels = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    return float((pixels != np.bincount(pixels).argmax()).mean()) < 0.002


def test_browser_blocked_playback_is_said_and_one_click_starts_it(quiet_browser: Browser, server: RunningServer) -> None:
    """Autoplay and consent: the join click starts the page's one AudioContext; after a
    reload, which no click started, the page says sound is blocked and one click starts it."""
    context = quiet_browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{server.page_url()}c/quiet")
        join(page, "Dora", host=False)
        joined(page, "quiet")
        expect(page.get_by_role("button", name="Click to listen")).to_be_hidden()  # the join click counted
        assert page.evaluate("() => window.airwave.engine.context.state") == "running"
        page.reload()
        expect(page.locator("#connection")).to_have_text("resumed")
        expect(page.get_by_text("The browser has not let this page play sound yet.")).to_be_visible()
        assert page.evaluate("() => window.airwave.engine.context.state") == "suspended"
        page.get_by_role("button", name="Click to listen").click()
        expect(page.get_by_role("button", name="Click to listen")).to_be_hidden()
        assert page.evaluate("() => window.airwave.engine.context.state") == "running"
    finally:
        context.close()
