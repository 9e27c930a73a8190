"""The recording worker process (issue 18, off the hot path): a real server on loopback, its
real worker process, real Opus, real files. What happens when the worker dies, and when it
falls behind; the server's SIGKILL is in tests/test_recording.py."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer
from airwave.media.opus import SAMPLE_RATE, OpusEncoder
from airwave.media.sources import tone_frames
from airwave.protocol import EnableRecord, Join, PropertyChange, PropertyChanged, Reason, RecordState, encode_client_media
from airwave.wire import Wire, open_wire

from helpers import HOST, next_push, ok, wait_until
from test_recording import Speaker, decoded, wait_finalised


def media_received(wire: Wire) -> list[int]:
    """The sequence numbers of the media frames the wire holds, taken from it."""
    seqs = []
    while True:
        try:
            seqs.append(wire.media.receive_nowait().seq)
        except trio.WouldBlock:
            return seqs


async def worker_pid(server: RunningServer, other_than: int | None = None) -> int:
    assert server.recordings is not None
    recordings = server.recordings
    await wait_until(lambda: recordings.pid not in (None, other_than), "a recording worker to start")
    assert recordings.pid is not None
    return recordings.pid


async def test_recorder_worker_killed_mid_recording_ends_it_logged_and_the_channel_and_a_new_recording_go_on(
    server: RunningServer, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "airwave.channel")
    with trio.fail_after(20):
        async with open_wire(server.url) as host, open_wire(server.url) as listener:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            ok(await listener.request(Join, channel="222", user_id="lis"))
            ok(await host.request(EnableRecord, enabled=True))
            voice = Speaker(host)
            await voice.say(list(tone_frames(440.0, 0.3)))
            first = await worker_pid(server)
            await wait_until(lambda: bool(list(data_dir.glob("recordings/*/*/mix.opus"))), "the worker to be recording")

            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: "stopped writing" in caplog.text, "the failed recording to be logged")
            assert f"the recording worker (pid {first}) exited with code -9" in caplog.text
            for wire in (host, listener):  # everyone learns it stopped: no recording shown that is not
                assert (await next_push(wire, PropertyChanged)).record_state is RecordState.RECORDING  # the start
                changed = await next_push(wire, PropertyChanged)
                assert changed.changes == PropertyChange.RECORD_STATE and changed.record_state is RecordState.IDLE
            await voice.say(list(tone_frames(440.0, 0.3)))  # the channel goes on
            await wait_until(lambda: listener.media.statistics().current_buffer_used >= 30, "the listener's frames")
            assert media_received(listener) == list(range(30)) and listener.media_dropped == 0

            # Turned on again: a new worker, a whole recording.
            ok(await host.request(EnableRecord, enabled=True))
            second = await worker_pid(server, other_than=first)
            await voice.say(list(tone_frames(440.0, 0.5)))
            ok(await host.request(EnableRecord, enabled=False))

    events = [item.event for item in replay_events(data_dir)]
    starts = [e for e in events if e.TYPE == "recording_started"]
    stops = [e for e in events if e.TYPE == "recording_stopped"]
    assert len(starts) == len(stops) == 2 and second != first
    assert (stops[0].reason, stops[0].by) == (Reason.SERVER_ERROR, None)  # logged by the server itself
    killed, whole = (data_dir / e.directory for e in starts)
    assert not json.loads((killed / "recording.json").read_text())["finalised"]
    await wait_finalised(whole)
    for name in ("mix.opus", "speaker-host.opus"):
        assert len(decoded(whole / name)) / SAMPLE_RATE == pytest.approx(stops[1].time - starts[1].time, abs=0.03)


async def test_recorder_worker_behind_fills_the_bounded_buffer_which_drops_and_counts_and_listeners_get_every_frame(
    server: RunningServer, data_dir: Path
) -> None:
    """The worker is stopped (SIGSTOP): the pipe to it fills, then the stand-in's buffer
    (20 frames here); every later frame is dropped and counted, and the listener hears all."""
    assert server.recordings is not None
    server.recordings.queue_frames = 20
    encoder = OpusEncoder(256_000, application="audio")  # big packets (~600 B) fill the pipe soon
    noise = np.random.default_rng(1).integers(-20_000, 20_000, (240, 960)).astype(np.int16)
    packets = [encoder.encode(frame) for frame in noise]
    assert sum(map(len, packets)) > 2 * 65536  # two pipe buffers' worth
    with trio.fail_after(20):
        async with open_wire(server.url) as host, open_wire(server.url) as listener:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            ok(await listener.request(Join, channel="222", user_id="lis"))
            ok(await host.request(EnableRecord, enabled=True))
            pid = await worker_pid(server)
            os.kill(pid, signal.SIGSTOP)
            try:
                for seq, packet in enumerate(packets):  # a burst, within the media rate's burst
                    await host.send_bytes(encode_client_media(seq, seq * 960, packet, level=50))
                await wait_until(lambda: listener.media.statistics().current_buffer_used >= 240, "the listener's frames")
                assert media_received(listener) == list(range(240)) and listener.media_dropped == 0
                actor = server.registry.find("222")
                assert actor is not None and actor.recorder is not None
                feed = actor.recorder
                assert feed.stats.frames_in == 240 and feed.stats.dropped >= 50
            finally:
                os.kill(pid, signal.SIGCONT)
            ok(await host.request(EnableRecord, enabled=False))

    (started,) = [item.event for item in replay_events(data_dir) if item.event.TYPE == "recording_started"]
    directory = data_dir / started.directory
    await wait_finalised(directory)
    statistics = json.loads((directory / "recording.json").read_text())["statistics"]
    assert (statistics["frames_in"], statistics["dropped"], statistics["failed"]) == (240, feed.stats.dropped, "")
