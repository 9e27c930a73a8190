"""The web page as a listener, measured: the delay from a Python host's packet to the page's
playback, and the browser's CPU while it listens to one speaker (issue 15).

    .venv/bin/python scripts/bench_browser.py [--seconds 30]

One process: trio runs the server (in-process, port 0) and a Python host that sends a 440 Hz
tone as Opus, one packet every 20 ms, noting when each left (wall clock); a worker thread
drives Debian's chromium (Playwright, headless, nothing off this machine) whose page joins
as audience. The page notes when each packet's first sample reaches its output
(AudioContext.getOutputTimestamp, so the output latency counts); delay = played - sent.
CPU is the user+system time of every chromium process under this one, over the listening
window, as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from airwave.actors.server import RunningServer, ServerSettings, serve
from airwave.media import OpusEncoder, audio_level, tone_frames
from airwave.protocol import CustomRole, Join, encode_client_media
from airwave.wire import open_wire

FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def tone_host(url: str, channel: str, seconds: float, sent: dict[int, float], joined: trio.Event) -> None:
    """A host sending a paced 440 Hz tone; ``sent[seq]`` is each packet's wall-clock send time."""
    encoder = OpusEncoder()
    frames = list(tone_frames(440.0, seconds))
    async with open_wire(url) as wire:
        assert (await wire.request(Join, channel=channel, user_id="tone", role=CustomRole.ROLE_0, upload=True)).ok
        joined.set()
        start = trio.current_time()
        for index, pcm in enumerate(frames):
            await trio.sleep_until(start + index * 0.02)
            seq = index & 0xFFFF
            packet = encode_client_media(seq, index * 960, encoder.encode(pcm), level=audio_level(pcm))
            sent[seq] = time.time()
            await wire.send_bytes(packet)


def chromium_times() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every chromium process below this one, by pid, with its type."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, tuple[str, float]] = {}
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            # Chromium starts its helpers as /proc/self/exe: the executable says what they are.
            executable = os.readlink(f"/proc/{pid}/exe")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()  # helpers retitle themselves
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "chromium" not in Path(executable).name:
            continue
        kind = next((a.split(b"=", 1)[1].decode() for a in cmdline if a.startswith(b"--type=")), "browser")
        found[pid] = (kind, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def listen_in_chromium(page_url: str, seconds: float) -> dict:
    """Opens the page, joins as audience, listens for ``seconds``; what the page noted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page()
        page.goto(page_url + "c/bench")
        page.get_by_label("Display name").fill("Listener")
        page.get_by_role("button", name="Join").click()
        page.get_by_role("heading", name="Channel bench").wait_for()
        while page.evaluate("() => window.airwave.played.length") < 25:  # half a second playing
            time.sleep(0.05)
        page.evaluate("() => { window.airwave.played.length = 0; }")
        before, started = chromium_times(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = chromium_times(), time.monotonic() - started
        played = page.evaluate("() => window.airwave.played")
        stats = page.evaluate("() => window.airwave.engine.playbackStats()")
        browser.close()
    cpu: dict[str, float] = {}
    for pid, (kind, total) in after.items():
        cpu[kind] = cpu.get(kind, 0.0) + (total - before.get(pid, (kind, 0.0))[1]) / elapsed * 100
    return {"played": played, "cpu": cpu, "playback": stats}


async def main(seconds: float) -> dict:
    sent: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as data:
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(serve, ServerSettings(port=0, data_dir=Path(data)))
            joined = trio.Event()
            nursery.start_soon(tone_host, server.url, "bench", seconds + 15, sent, joined)
            await joined.wait()
            result = await trio.to_thread.run_sync(listen_in_chromium, server.page_url(), seconds)
            server.shutdown()
            nursery.cancel_scope.cancel()
    delays = [entry["played"] - sent[entry["seq"]] * 1000 for entry in result["played"] if entry["seq"] in sent]
    return {
        "seconds": seconds,
        "packets_played": len(delays),
        "delay_ms": {
            "p50": round(float(np.percentile(delays, 50)), 1),
            "p99": round(float(np.percentile(delays, 99)), 1),
            "max": round(max(delays), 1),
            "mean": round(statistics.fmean(delays), 1),
        },
        "cpu_percent_of_one_core": {kind: round(value, 1) for kind, value in sorted(result["cpu"].items())},
        "cpu_percent_total": round(sum(result["cpu"].values()), 1),
        "playback": result["playback"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the page listens (default 30)")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("bench_browser: needs Debian's chromium (apt-get install chromium)")
    print(json.dumps(trio.run(main, args.seconds), indent=2))
