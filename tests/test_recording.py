"""Recording (issue 18): enable_record over real sockets, real Opus, real files decoded by PyAV.

The server's recorder (`media/recorder.py`) is a member of the channel's media router; these
tests host audio through a real server, record it, and read the files back: their durations
against the wall-clock time recorded, their sound against what was sent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import av
import numpy as np
import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer
from airwave.client import Client, MediaChannel, MediaChannelCallback, MediaDevice
from airwave.media.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from airwave.media.sources import tone_frames
from airwave.protocol import (
    EnableRecord,
    Join,
    PropertyChange,
    PropertyChanged,
    Reason,
    RecordState,
    channel_info_from_wire,
    encode_client_media,
)
from airwave.wire import Wire, open_wire

from helpers import HOST, next_push, ok, wait_until

TICK = FRAME_SAMPLES / SAMPLE_RATE


def decoded(path: Path) -> np.ndarray:
    """The file's audio as PyAV decodes it, int16 at 48 kHz mono."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    pcm = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    return np.clip(pcm * 32768, -32768, 32767).astype(np.int16)


def recording_dir(data_dir: Path) -> Path:
    (directory,) = [p.parent for p in data_dir.glob("recordings/*/*/recording.json")]
    return directory


class Speaker:
    """Sends 20 ms Opus frames paced in real time, with its own sequence and timestamp."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.encoder = OpusEncoder()
        self.seq = 0

    async def say(self, frames: list[np.ndarray]) -> None:
        start = trio.current_time()
        for index, pcm in enumerate(frames):
            # Pacing, as a microphone would: one frame every 20 ms.
            await trio.sleep_until(start + index * TICK)
            packet = self.encoder.encode(pcm)
            await self.wire.send_bytes(encode_client_media(self.seq, self.seq * FRAME_SAMPLES, packet, level=50))
            self.seq += 1


async def test_enable_record_by_host_records_a_tone_and_everyone_sees_record_state(server: RunningServer, data_dir: Path) -> None:
    with trio.fail_after(15):
        async with open_wire(server.url) as host, open_wire(server.url) as listener:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            info = channel_info_from_wire(ok(await listener.request(Join, channel="222", user_id="lis")).result)
            assert info.record_state is RecordState.IDLE

            ok(await host.request(EnableRecord, enabled=True))
            for wire in (host, listener):
                changed = await next_push(wire, PropertyChanged)
                assert changed.changes == PropertyChange.RECORD_STATE and changed.record_state is RecordState.RECORDING
            started = trio.current_time()
            await Speaker(host).say(list(tone_frames(440.0, 1.0)))
            ok(await host.request(EnableRecord, enabled=False))
            elapsed = trio.current_time() - started
            changed = await next_push(listener, PropertyChanged)
            assert changed.record_state is RecordState.IDLE

    events = [item.event for item in replay_events(data_dir)]
    kinds = [e.TYPE for e in events]
    assert kinds.count("recording_started") == kinds.count("recording_stopped") == 1
    stopped = next(e for e in events if e.TYPE == "recording_stopped")
    assert (stopped.reason, stopped.by) == (Reason.NONE, "host")
    directory = data_dir / stopped.directory
    await wait_finalised(directory)
    manifest = json.loads((directory / "recording.json").read_text())
    assert manifest["tracks"] == {"host": "speaker-host.opus"}
    for name in ("mix.opus", "speaker-host.opus"):
        pcm = decoded(directory / name)
        assert abs(len(pcm) / SAMPLE_RATE - elapsed) < 0.05, name


async def wait_finalised(directory: Path) -> None:
    def finalised() -> bool:
        manifest = directory / "recording.json"
        return manifest.exists() and json.loads(manifest.read_text())["finalised"]

    await wait_until(finalised, "the recording to be finalised")


# --- the SDK and the CLI ----------------------------------------------------------------------


@attrs.define
class Calls(MediaChannelCallback):
    errors: list[tuple[str, Reason, str]] = attrs.field(factory=list)
    changes: list[PropertyChange] = attrs.field(factory=list)

    def on_error(self, operation: str, reason: Reason, message: str) -> None:
        self.errors.append((operation, reason, message))

    def on_media_channel_property_change(self, change: PropertyChange) -> None:
        self.changes.append(change)


async def test_sdk_listener_enable_record_is_refused_no_permission_and_a_host_s_reaches_everyone(server: RunningServer) -> None:
    host_calls, listener_calls = Calls(), Calls()
    with trio.fail_after(10):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(server.url, user_id="lis") as li:
            host = MediaChannel.create(h, MediaDevice.create(), host_calls)
            listener = MediaChannel.create(li, MediaDevice.create(), listener_calls)
            host.set_custom_role(HOST)
            assert (await host.join_async("222")).result
            assert (await listener.join_async("222")).result

            assert await listener.enable_record_async(True) is Reason.NO_PERMISSION
            assert listener_calls.errors[-1][:2] == ("enable_record", Reason.NO_PERMISSION)
            assert listener.get_record_state() is RecordState.IDLE
            assert await listener.enable_record_async(True, '{"video": true}') is Reason.INVALID_PARAM

            assert await host.enable_record_async(True, '{"tracks": false}') is Reason.NONE
            await wait_until(lambda: PropertyChange.RECORD_STATE in listener_calls.changes, "the listener to see record_state")
            assert listener.get_record_state() is RecordState.RECORDING is host.get_record_state()
            assert [error[:2] for error in listener_calls.errors] == [
                ("enable_record", Reason.NO_PERMISSION), ("enable_record", Reason.INVALID_PARAM)
            ]

    kinds = [item.event.TYPE for item in replay_events(server.event_log.directory)]
    assert kinds.count("recording_started") == 1  # the listener's attempt left no trace


async def test_cli_record_on_then_off_records_the_channel(server: RunningServer, data_dir: Path) -> None:
    async def record(state: str) -> str:
        done = await trio.run_process(
            [sys.executable, "-m", "airwave.cli", "record", "222", state, "--url", server.url, "--log-level", "WARNING"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.decode()

    with trio.fail_after(20):
        async with open_wire(server.url) as host:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            assert "'222' is recording" in await record("on")
            assert (await next_push(host, PropertyChanged)).record_state is RecordState.RECORDING
            await Speaker(host).say(list(tone_frames(440.0, 0.4)))
            assert "'222' is not recording" in await record("off")

    events = [item.event for item in replay_events(data_dir)]
    started = next(e for e in events if e.TYPE == "recording_started")
    stopped = next(e for e in events if e.TYPE == "recording_stopped")
    assert started.by.startswith("recorder-") and stopped.reason is Reason.NONE
    await wait_finalised(data_dir / started.directory)
    assert (data_dir / started.directory / "speaker-host.opus").exists()
