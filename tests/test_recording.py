"""Recording (issue 18): enable_record over real sockets, real Opus, real files decoded by PyAV.

The server's recorder (`media/recorder.py`) is a member of the channel's media router; these
tests host audio through a real server, record it, and read the files back: their durations
against the wall-clock time recorded, their sound against what was sent.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from typing import Any

import attrs
import av
import numpy as np
import pytest
import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer, serve
from airwave.cli import main
from airwave.client import Client, MediaChannel, MediaChannelCallback, MediaDevice
from airwave.media.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from airwave.media.sources import tone_frames
from airwave.protocol import (
    EnableRecord,
    Join,
    Leave,
    PropertyChange,
    PropertyChanged,
    Reason,
    RecordState,
    channel_info_from_wire,
    encode_client_media,
)
from airwave.wire import Wire, open_wire

from audio_checks import dominant_frequency, frame_rms, spectral_similarity, speech_wav
from conftest import fast_settings
from helpers import HOST, airwave_serve, next_push, ok, wait_until

TICK = FRAME_SAMPLES / SAMPLE_RATE


def decoded(path: Path) -> np.ndarray:
    """The file's audio as PyAV decodes it, int16 at 48 kHz mono."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    pcm = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    return np.clip(pcm * 32768, -32768, 32767).astype(np.int16)


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


async def test_enable_record_by_host_records_a_tone_and_everyone_sees_record_state(
    server: RunningServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    started_event = next(e for e in events if e.TYPE == "recording_started")
    assert (stopped.reason, stopped.by) == (Reason.NONE, "host")
    directory = data_dir / stopped.directory
    await wait_finalised(directory)
    manifest = json.loads((directory / "recording.json").read_text())
    assert manifest["tracks"] == {"host": "speaker-host.opus"}
    for name in ("mix.opus", "speaker-host.opus"):
        pcm = decoded(directory / name)
        # The files span the recording events' times (the log's clock, not this test's).
        assert len(pcm) / SAMPLE_RATE == pytest.approx(stopped.time - started_event.time, abs=0.03), name
    assert stopped.time - started_event.time == pytest.approx(elapsed, abs=0.5)

    # replay --audio: each event's offset into the recording's files, "-" outside it.
    capsys.readouterr()
    assert main(["replay", str(data_dir), "--channel", "222", "--audio"]) == 0
    lines = {line.split()[4]: line for line in capsys.readouterr().out.splitlines() if line[:1] == " " and len(line.split()) > 4}
    assert lines["channel_created"].split()[0] == "-"
    assert lines["recording_started"].split()[0] == "+0.000s"
    assert lines["recording_stopped"].split()[0] == f"+{stopped.time - started_event.time:.3f}s"
    assert f"directory={stopped.directory}" in lines["recording_started"]


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


# --- real speech: the files are the speech, on the wall-clock timeline ------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """espeak-ng saying a short sentence, 48 kHz mono int16 (about 1 s)."""
    return speech_wav(tmp_path_factory.mktemp("speech"), "one two three", silence=0)[1]


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    padded = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME_SAMPLES, np.int16)])
    return list(padded.reshape(-1, FRAME_SAMPLES))


def recording_events(data_dir: Path) -> tuple[Any, Any]:
    events = [item.event for item in replay_events(data_dir)]
    (started,) = [e for e in events if e.TYPE == "recording_started"]
    (stopped,) = [e for e in events if e.TYPE == "recording_stopped"]
    return started, stopped


def located(reference: np.ndarray, recording: np.ndarray, *, count: int) -> list[tuple[float, float]]:
    """Where ``reference`` is heard in ``recording``: (offset in seconds, spectral similarity)
    of its ``count`` best cross-correlation matches, at least one reference length apart, in
    time order."""
    n = len(reference) + len(recording)
    size = 1 << (n - 1).bit_length()
    correlation = np.fft.irfft(
        np.fft.rfft(recording.astype(np.float64), size) * np.conj(np.fft.rfft(reference.astype(np.float64), size)), size
    )[: len(recording) - len(reference) + 1]
    found = []
    for _ in range(count):
        lag = int(np.nanargmax(correlation))
        found.append((lag / SAMPLE_RATE, spectral_similarity(reference, recording[lag : lag + len(reference)])))
        correlation[max(0, lag - len(reference)) : lag + len(reference)] = np.nan
    return sorted(found)


async def test_recorded_speech_with_a_pause_and_a_host_who_leaves_and_rejoins_is_the_speech_on_the_wall_clock(
    server: RunningServer, data_dir: Path, speech: np.ndarray
) -> None:
    """One host says the sentence, pauses 2 s, says it again, leaves and rejoins (a new
    sender id, a new sequence space), says it a third time. The mix and the host's track each
    hold the three sayings where the wall clock put them, silence in the pause and while the
    host was away, and last exactly as long as the recording."""
    said: list[float] = []
    with trio.fail_after(30):
        async with open_wire(server.url) as host, open_wire(server.url) as listener:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            ok(await listener.request(Join, channel="222", user_id="lis"))  # keeps the channel open
            ok(await host.request(EnableRecord, enabled=True))
            voice = Speaker(host)
            for pause in (2.0, 0.0):
                said.append(trio.current_time())
                await voice.say(frames_of(speech))
                await trio.sleep(pause)  # nobody speaks: the recording must hold the silence
            ok(await host.request(Leave))
            await trio.sleep(0.3)  # away: nobody speaks
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            said.append(trio.current_time())
            await Speaker(host).say(frames_of(speech))  # a new sender id: its sequence starts again
            await trio.sleep(0.3)
            ok(await host.request(EnableRecord, enabled=False))

    started, stopped = recording_events(data_dir)
    directory = data_dir / started.directory
    await wait_finalised(directory)
    recorded = stopped.time - started.time
    for name in ("mix.opus", "speaker-host.opus"):
        pcm = decoded(directory / name)
        assert abs(len(pcm) / SAMPLE_RATE - recorded) <= 0.01 * recorded, (name, len(pcm) / SAMPLE_RATE, recorded)
        heard = located(speech, pcm, count=3)
        assert all(similarity >= 0.8 for _, similarity in heard), (name, heard)
        offsets = [offset for offset, _ in heard]
        # The gaps between the sayings in the file are the gaps between them on the wall clock.
        for (a, b), (x, y) in zip(zip(offsets, offsets[1:]), zip(said, said[1:])):
            assert abs((b - a) - (y - x)) < 0.06, (name, offsets, said)
        quiet = frame_rms(pcm[int((offsets[0] + len(speech) / SAMPLE_RATE + 0.1) * SAMPLE_RATE) : int((offsets[1] - 0.1) * SAMPLE_RATE)])
        assert len(quiet) >= 80 and quiet.max() < 100, (name, quiet.max())  # 1.8 s of silence, not noise


async def test_two_speakers_at_once_are_both_in_the_mix_and_each_in_their_own_track(
    server: RunningServer, data_dir: Path, speech: np.ndarray
) -> None:
    tone = [frame // 3 for frame in tone_frames(440.0, len(speech) / SAMPLE_RATE)]
    with trio.fail_after(15):
        async with open_wire(server.url) as ann, open_wire(server.url) as bob:
            ok(await ann.request(Join, channel="222", user_id="ann", role=HOST, upload=True))
            ok(await bob.request(Join, channel="222", user_id="bob", role=HOST, upload=True))
            ok(await ann.request(EnableRecord, enabled=True))
            async with trio.open_nursery() as both:
                both.start_soon(Speaker(ann).say, frames_of(speech))
                both.start_soon(Speaker(bob).say, tone)
            await trio.sleep(0.3)
            ok(await bob.request(EnableRecord, enabled=False))

    started, _ = recording_events(data_dir)
    directory = data_dir / started.directory
    await wait_finalised(directory)
    mix, ann_track, bob_track = (decoded(directory / name) for name in ("mix.opus", "speaker-ann.opus", "speaker-bob.opus"))
    ((at, in_mix),) = located(speech, mix, count=1)
    window = slice(int(at * SAMPLE_RATE), int(at * SAMPLE_RATE) + len(speech))
    assert in_mix >= 0.8, "ann's speech is in the mix"
    assert tone_power(mix[window]) == pytest.approx(tone_power(bob_track[window]), rel=0.3), "bob's tone is in the mix"
    # Each track holds its own speaker only.
    assert located(speech, ann_track, count=1)[0][1] >= 0.8 and tone_power(ann_track[window]) < 0.2 * tone_power(mix[window])
    assert dominant_frequency(bob_track[window]) == pytest.approx(440, abs=5)
    assert located(speech, bob_track, count=1)[0][1] < 0.5
    assert len(mix) == len(ann_track) == len(bob_track)


def tone_power(pcm: np.ndarray, hz: float = 440.0) -> float:
    """Spectral magnitude within 10 Hz of ``hz``, per sample."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)
    return float(spectrum[np.abs(freqs - hz) < 10].sum() / len(pcm))


# --- the end of a recording: shutdown finalises it, a SIGKILL loses at most the last second ----


async def test_server_shutdown_stops_the_recording_server_shutdown_and_finalises_every_file(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir))
    with trio.fail_after(15):
        async with open_wire(running.url) as host:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            ok(await host.request(EnableRecord, enabled=True))
            await Speaker(host).say(list(tone_frames(440.0, 0.5)))
            running.shutdown()
            await running.stopped.wait()
    started, stopped = recording_events(data_dir)
    assert (stopped.reason, stopped.by) == (Reason.SERVER_SHUTDOWN, None)
    directory = data_dir / started.directory
    # Finalised before the server said it had stopped: the actor waited for the worker.
    assert json.loads((directory / "recording.json").read_text())["finalised"]
    recorded = stopped.time - started.time
    for name in ("mix.opus", "speaker-host.opus"):
        assert len(decoded(directory / name)) / SAMPLE_RATE == pytest.approx(recorded, rel=0.01, abs=0.03)


def worker_pids(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux /proc: every thread's children)."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        found.update(int(child) for child in children.read_text().split())
    return found


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's exit is reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_sigkill_of_airwave_serve_mid_recording_leaves_no_worker_and_files_that_decode_to_within_a_second_of_the_kill(
    tmp_path: Path,
) -> None:
    """The worker process reads end of file when the server dies: it ends the recording at
    the server's last batch (before the kill), finalises the files and exits; no orphan."""
    data = tmp_path / "data"
    with trio.fail_after(30):
        async with airwave_serve(data) as served:
            async with open_wire(served.url) as host:
                ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
                ok(await host.request(EnableRecord, enabled=True))
                async with trio.open_nursery() as talking:
                    talking.start_soon(Speaker(host).say, list(tone_frames(440.0, 10.0)))
                    await wait_until(lambda: worker_pids(served.process.pid), "the recording worker to start")
                    (worker,) = worker_pids(served.process.pid)
                    await trio.sleep(2.5)  # the tone is being recorded
                    killed_at = time.time()
                    served.process.kill()  # SIGKILL: the server finalises nothing, flushes nothing
                    assert await served.exit_code() == -signal.SIGKILL
                    talking.cancel_scope.cancel()
            await wait_until(lambda: not running(worker), "the worker to exit after the server's death")
        events = [item.event for item in replay_events(data)]
        (started,) = [e for e in events if e.TYPE == "recording_started"]
        assert not [e for e in events if e.TYPE == "recording_stopped"]
        directory = data / started.directory
        manifest = json.loads((directory / "recording.json").read_text())
        # The last batch came at most 20 ms before the kill (or a moment after killed_at was
        # read); the files end at it within one frame.
        assert manifest["finalised"] and killed_at - 0.5 <= manifest["stopped_at"] <= killed_at + 0.03
        for name in ("mix.opus", "speaker-host.opus"):
            pcm = decoded(directory / name)
            covered = len(pcm) / SAMPLE_RATE
            assert killed_at - started.time - 1.0 <= covered <= killed_at - started.time + 0.05, name
            assert dominant_frequency(pcm[-SAMPLE_RATE // 2 :]) == pytest.approx(440, abs=5), name

        async with airwave_serve(data):  # recovery ends what the crash left open, before it listens
            pass
    stops = [item.event for item in replay_events(data) if item.event.TYPE == "recording_stopped"]
    assert [(s.directory, s.reason) for s in stops] == [(started.directory, Reason.SERVER_RESTART)]
