"""`airwave replay DATA --at SEQ --export clip.wav` (issue 18): what was said around an event.

A real server records a host's 440 Hz tone, then bob joins and plays 660 Hz; the clip around
bob's join holds bob's tone from the join on, and lists the join at its offset in the clip.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer
from airwave.cli import main
from airwave.media.sources import tone_frames
from airwave.protocol import EnableRecord, Join, Leave, PropertyChanged
from airwave.wire import open_wire

from audio_checks import dominant_frequency, read_wav
from helpers import HOST, next_push, ok
from test_recording import Speaker, recording_events, wait_finalised


async def test_replay_export_writes_what_was_said_around_an_event_and_lists_the_events_in_it(
    server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(15):
        async with open_wire(server.url) as host:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            ok(await host.request(EnableRecord, enabled=True))
            await next_push(host, PropertyChanged)
            await Speaker(host).say(list(tone_frames(440.0, 1.0)))
            async with open_wire(server.url) as bob:
                ok(await bob.request(Join, channel="222", user_id="bob", role=HOST, upload=True))
                await Speaker(bob).say(list(tone_frames(660.0, 1.0)))
                ok(await bob.request(Leave))
            ok(await host.request(EnableRecord, enabled=False))
        # The worker writes the directory on its own time: it is named in the log, not yet on disk.
        await wait_finalised(data_dir / recording_events(data_dir)[0].directory)
    events = list(replay_events(data_dir))
    (joined,) = [i.seq for i in events if i.event.TYPE == "participant_joined" and i.event.user_id == "bob"]  # type: ignore[attr-defined]
    (left,) = [i.seq for i in events if i.event.TYPE == "participant_left" and i.event.user_id == "bob"]  # type: ignore[attr-defined]

    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"an older file, replaced whole")
    capsys.readouterr()
    assert main(["replay", str(data_dir), "--at", str(joined), "--before", "0", "--seconds", "0.8", "--export", str(clip)]) == 0
    said, *listed = capsys.readouterr().out.splitlines()
    assert said.startswith(f"wrote {clip}: 0.80 s of recordings/222/") and said.endswith(f"mix.opus from +{said.split('+')[1].split('s')[0]}s (event {joined} at +0.000s)")
    assert listed[0].split()[:2] == ["+0.000s", str(joined)] and "participant_joined" in listed[0]
    pcm = read_wav(clip)
    assert len(pcm) == round(0.8 * 48_000)
    # From the join on: bob's tone (his first packet comes a moment after his join).
    assert abs(dominant_frequency(pcm[9_600:]) - 660.0) < 5.0

    # Half a second before the join: the host's tone, then bob's; his leave is in the clip too,
    # which ends with the recording (it stopped a moment after bob left).
    assert main(["replay", str(data_dir), "--at", str(joined), "--before", "0.5", "--seconds", "5", "--export", str(clip), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    times = {i.event.TYPE: i.event.time for i in events}
    rest = times["recording_stopped"] - times["participant_joined"]
    assert report["seconds"] == pytest.approx(0.5 + rest, abs=0.03) and report["at"] == joined
    assert [e["seq"] for e in report["events"] if e["participant"] == "bob"] == [joined, left]
    assert [e["clip_offset"] for e in report["events"] if e["seq"] == joined] == [0.5]
    pcm = read_wav(clip)
    assert abs(dominant_frequency(pcm[: 48_000 * 4 // 10]) - 440.0) < 5.0
    assert abs(dominant_frequency(pcm[48_000 * 7 // 10 : 48_000 * 13 // 10]) - 660.0) < 5.0
    with wave.open(str(clip)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, 48_000, 2)

    # Refusals: one line each, and no file written or clobbered.
    before = clip.read_bytes()
    first = events[0].seq  # channel_created, before the recording began
    for argv, code, says in [
        (["--at", str(joined)], 2, "--at SEQ and --export FILE go together"),
        (["--export", str(clip)], 2, "--at SEQ and --export FILE go together"),
        (["--at", str(first), "--export", str(clip)], 2, f"event {first} (channel_created in 222) is not in a recording"),
        (["--at", "99999", "--export", str(clip)], 2, "no event 99999"),
        (["--at", str(joined), "--export", str(tmp_path / "missing" / "clip.wav")], 2, "there is no directory"),
        (["--at", str(joined), "--export", str(tmp_path)], 2, "it is a directory"),
    ]:
        assert main(["replay", str(data_dir), *argv]) == code
        err = capsys.readouterr().err
        assert says in err and err.count("\n") <= 3, err
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(data_dir), "--at", str(joined), "--seconds", "-1", "--export", str(clip)])
    assert exited.value.code == 2 and "--seconds: must be a number of seconds" in capsys.readouterr().err
    assert clip.read_bytes() == before
    assert not (tmp_path / "missing").exists()
    assert main(["replay", "nats://127.0.0.1:1", "--at", "1", "--export", str(clip)]) == 2
    assert "not NATS" in capsys.readouterr().err
    assert np.array_equal(read_wav(clip), pcm)
