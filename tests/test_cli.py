"""The `airwave` command as a user runs it: host, listen, stop against a real server, and
the demo end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import av
import pytest
import trio

from airwave.actors.log.replay import fold_replayed, replay_events
from airwave.actors.server import RunningServer, serve
from airwave.audio import ToneSource
from airwave.client import (
    ChannelEvent,
    Client,
    JoinParam,
    LeaveEvent,
    MediaChannel,
    MediaDevice,
    ParticipantJoinEvent,
    ParticipantLeftEvent,
)
from airwave.demo import run_demo
from airwave.protocol import HOST_ROLE, CustomRole, Reason
from airwave.protocol.tokens import mint_token

from audio_checks import dominant_frequency, read_wav, sounding_span
from conftest import fast_settings

E = TypeVar("E")


async def airwave(*args: str) -> subprocess.CompletedProcess[str]:
    done = await trio.run_process(
        [sys.executable, "-m", "airwave.cli", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_cli_host_listen_stop_tone_arrives_and_channel_ends(server: RunningServer, tmp_path: Path) -> None:
    output = tmp_path / "heard.wav"
    url = server.url
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, *args: str) -> None:
        results[name] = await airwave(*args)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "host", "host", "radio", "--tone", "440", "--url", url, "--user", "dj", "--duration", "30")
            with trio.fail_after(15):
                while server.registry.find("radio") is None:
                    await trio.sleep(0.05)
            nursery.start_soon(run, "listen", "listen", "radio", "--output", str(output), "--url", url, "--user", "fan")
            await trio.sleep(3.0)  # start-up of the listener's process, then ~2 s of tone
            await run("stop", "stop", "radio", "--url", url)

    assert results["stop"].returncode == 0, results["stop"].stderr
    assert "stopped 'radio' for everyone" in results["stop"].stdout
    for name in ("host", "listen"):
        assert results[name].returncode == 0, results[name].stderr
        assert "the channel ended: over [9]" in results[name].stdout or "over [9]" in results[name].stdout
    assert "joined 'radio' as fan (audience); hosts: dj" in results["listen"].stdout
    pcm = read_wav(output)
    first, last = sounding_span(pcm)
    assert abs(dominant_frequency(pcm[first * 960 : (last + 1) * 960]) - 440.0) < 3.0


async def test_cli_errors_are_one_line_with_reason_and_nonzero_exit(server: RunningServer, tmp_path: Path) -> None:
    with trio.fail_after(30):
        missing = await airwave("stop", "nowhere", "--url", server.url)
        unreachable = await airwave("listen", "x", "--output", str(tmp_path / "o.wav"), "--url", "ws://127.0.0.1:9/")
        bad_output = await airwave("listen", "x", "--output", str(tmp_path / "o.mp3"), "--url", server.url)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "airwave: cannot join 'nowhere': not_found [200]"
    assert unreachable.returncode == 1 and "cannot reach the server at ws://127.0.0.1:9/" in unreachable.stderr
    assert bad_output.returncode == 2 and "use a .wav, .ogg or .opus file" in bad_output.stderr


async def test_demo_runs_the_whole_story_and_leaves_recordings_and_a_log(tmp_path: Path) -> None:
    log = tmp_path / "demo.txt"
    with trio.fail_after(30), open(log, "w") as out:
        assert await run_demo(tmp_path / "demo", out=out, talk_seconds=1.0) == 0
    text = log.read_text()
    for line in ('bob [raise_hand]: "may I say something?"', "* Bob (bob): on the mic", "on_stop(True, none)", "channel_stopped"):
        assert line in text
    channels = fold_replayed(list(replay_events(tmp_path / "demo" / "data")))
    (channel,) = channels.values()
    assert channel.ended and channel.ended_by == "host"
    alice = read_wav(tmp_path / "demo" / "alice.wav")
    first, last = sounding_span(alice)
    # Each talks 1 s: one talker alone sounds for at most ~1 s, both for ~2 s (less on a
    # loaded machine, where the demo's talkers start a little late).
    assert (last - first) * 0.02 > 1.5, "alice heard the host and then bob"
    assert (tmp_path / "demo" / "alice.ogg").stat().st_size > 1000
    reported = dict(re.findall(r"^    (\S+\.(?:wav|ogg))  \((\d+\.\d) s recorded, mixing \d+ packets", text, re.M))
    assert sorted(reported) == sorted(str(tmp_path / "demo" / name) for name in ("alice.wav", "alice.ogg", "bob.wav"))
    for path, seconds in reported.items():
        assert abs(float(seconds) - recorded_seconds(Path(path))) <= 0.05, path
    assert abs(float(reported[str(tmp_path / "demo" / "alice.wav")]) - len(alice) / 48_000) <= 0.05


def readme_sdk_example(url: str) -> str:
    """The README's SDK example as written, pointed at a test server instead of port 8765."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## The SDK", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"ws://127.0.0.1:8765/"') == 1, "the example no longer connects where this test expects"
    return code.replace('"ws://127.0.0.1:8765/"', repr(url))


async def test_readme_sdk_example_stop_reaches_the_listener_as_over(server: RunningServer) -> None:
    """The example calls channel.stop() as the last line in its Client block: leaving the
    block must send it, not drop the connection (a drop is held for a resume, no `over`)."""
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def run_example() -> None:
        done.append(await trio.run_process([sys.executable, "-c", readme_sdk_example(server.url)],
                                           capture_stdout=True, capture_stderr=True, check=False))

    left: list[LeaveEvent] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_example)
            while server.registry.find("222") is None:
                await trio.sleep(0.05)
            async with Client.connect(server.url, user_id="bob") as client:
                channel = MediaChannel.create(client, MediaDevice.create())
                async with channel.events() as events:
                    assert (await channel.join_async("222")).result
                    with trio.move_on_after(12):  # the example talks for a few seconds, then stops
                        async for event in events:
                            if isinstance(event, LeaveEvent):
                                left.append(event)
                                break
    (example,) = done
    assert example.returncode == 0, example.stderr.decode()
    assert example.stdout.decode().splitlines() == ["joined"]
    assert left == [LeaveEvent(Reason.OVER, "222")]


@pytest.mark.parametrize(
    ("command", "signal_number", "suffix"),
    [("host", signal.SIGINT, ""), ("host", signal.SIGTERM, ""), ("listen", signal.SIGINT, ".ogg"), ("listen", signal.SIGTERM, ".wav")],
)
async def test_cli_signal_leaves_at_once_finishes_the_file_and_exits_quietly(
    server: RunningServer, tmp_path: Path, command: str, signal_number: int, suffix: str
) -> None:
    """Ctrl-C or SIGTERM: the others see a quit at once (not a drop held for a resume), the
    recording is complete, the exit is 128 + the signal, and stderr says so in one line."""
    output = tmp_path / f"heard{suffix}"
    args = ["--tone", "440"] if command == "host" else ["--output", str(output)]
    peer_source = None if command == "host" else ToneSource(440)
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with trio.fail_after(30):
        async with Client.connect(server.url, user_id="peer") as client:
            peer = MediaChannel.create(client, MediaDevice.create(source=peer_source))
            peer.set_custom_role(HOST_ROLE if command == "listen" else CustomRole.ROLE_1)
            peer.enable_upload_audio_stream(command == "listen")
            async with peer.events() as events:
                assert (await peer.join_async("radio")).result
                with open(stdout, "wb") as out, open(stderr, "wb") as err:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "airwave.cli", command, "radio", *args, "--url", server.url], stdout=out, stderr=err
                    )
                joined = await next_event(events, ParticipantJoinEvent)
                await trio.sleep(1.5)  # some audio on the way
                process.send_signal(signal_number)
                signalled = trio.current_time()
                left = await next_event(events, ParticipantLeftEvent)
                took = trio.current_time() - signalled
                await process.wait()
    assert left.participant.user_id == joined.participant.user_id and left.reason is Reason.QUIT
    assert took < 1.0, took
    assert process.returncode == 128 + signal_number
    assert stderr.read_text().splitlines() == [f"airwave: interrupted by {signal.Signals(signal_number).name}"]
    if command == "listen":
        assert recorded_seconds(output) > 1.0


async def next_event(events: trio.MemoryReceiveChannel[ChannelEvent], kind: type[E]) -> E:
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"no {kind.__name__}")


def recorded_seconds(path: Path) -> float:
    """The recording's length as a decoder reads it to the end: a file cut short (no final
    Ogg page, a WAV header that was never patched) comes up short or does not decode."""
    with av.open(str(path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    return samples / 48_000


async def test_cli_listen_that_fails_never_touches_the_output(server: RunningServer, tmp_path: Path) -> None:
    """The output is opened only once the join succeeded, and an existing one only with --force."""
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"an earlier recording")
    fresh = tmp_path / "fresh.wav"
    forced = tmp_path / "forced.wav"
    forced.write_bytes(b"to be replaced")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, *args: str) -> None:
        runs[name] = await airwave("listen", *args)

    with trio.fail_after(30):
        async with Client.connect(server.url, user_id="dj") as client:
            host = MediaChannel.create(client, MediaDevice.create())
            host.set_custom_role(HOST_ROLE)
            assert (await host.join_async("locked", JoinParam(password="right"))).result
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "refused", "locked", "--output", str(kept), "--url", "ws://127.0.0.1:9/", "--force")
                nursery.start_soon(run, "refused_fresh", "locked", "--output", str(fresh), "--url", "ws://127.0.0.1:9/")
                nursery.start_soon(run, "password", "locked", "--output", str(kept), "--url", server.url, "--password", "wrong", "--force")
                nursery.start_soon(run, "exists", "locked", "--output", str(kept), "--url", server.url, "--password", "right")
                nursery.start_soon(run, "forced", "locked", "--output", str(forced), "--url", server.url, "--password", "right",
                                   "--force", "--duration", "1")
    assert runs["refused"].returncode == runs["refused_fresh"].returncode == 1
    assert runs["password"].returncode == 1 and "invalid_password" in runs["password"].stderr
    assert runs["exists"].returncode == 2
    assert runs["exists"].stderr == f"airwave: {kept} already exists: pass --force to overwrite it, or choose another --output\n"
    assert kept.read_bytes() == b"an earlier recording"
    assert not fresh.exists()
    assert runs["forced"].returncode == 0, runs["forced"].stderr
    assert 0.5 < len(read_wav(forced)) / 48_000 < 1.5


async def test_cli_token_says_who_you_are_and_name_is_the_display_name(nursery: trio.Nursery, tmp_path: Path) -> None:
    """`host --token T` joins as the user T was minted for, without repeating it; --name is
    what the others see; a --user that contradicts the token is one line before connecting."""
    secret = b"a secret for this test only"
    server: RunningServer = await nursery.start(serve, fast_settings(tmp_path / "data", secret=secret))
    host_token = mint_token(secret, channel="radio", user_id="dj", roles=[HOST_ROLE], now=time.time(), ttl=60)
    fan_token = mint_token(secret, channel="radio", user_id="fan", roles=[CustomRole.ROLE_1], now=time.time(), ttl=60)
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    names: dict[str, str] = {}

    async def run(name: str, *args: str) -> None:
        runs[name] = await airwave(*args, "--url", server.url)

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            clients.start_soon(run, "host", "host", "radio", "--tone", "440", "--token", host_token, "--name", "DJ Night", "--duration", "4")
            while (channel := server.registry.find("radio")) is None or "dj" not in channel.channel.members:
                await trio.sleep(0.05)
            await run("listen", "listen", "radio", "--token", fan_token, "--output", str(tmp_path / "fan.wav"), "--duration", "0.5")
            names.update({user_id: member.display_name for user_id, member in channel.channel.members.items()})
            await run("contradiction", "stop", "radio", "--token", host_token, "--user", "mallory")
    assert names == {"dj": "DJ Night"}
    assert runs["host"].returncode == 0, runs["host"].stderr
    assert "joined 'radio' as \"DJ Night\" (dj) (host)" in runs["host"].stdout
    assert runs["listen"].returncode == 0, runs["listen"].stderr
    assert "joined 'radio' as fan (audience); hosts: \"DJ Night\" (dj)" in runs["listen"].stdout
    assert runs["contradiction"].returncode == 2
    assert runs["contradiction"].stderr == (
        "airwave: user id mallory contradicts the token, which was minted for dj: "
        "leave the user id out (the token says who you are)\n"
    )


async def test_cli_narrator_shows_hostile_names_and_messages_without_forging_lines(server: RunningServer, tmp_path: Path) -> None:
    """User ids, display names and messages are the sender's choice: each is one visible
    token or quoted and escaped, so none can start a line of `listen`'s output."""
    hostile_id = "eve\u2028+ mallory joined (role 0)"
    hostile_name = "Eve\u2028- dj left (quit)"
    forged = ("+ mallory", "- dj left", "* fan: on the mic", "\u202e")
    done: list[subprocess.CompletedProcess[str]] = []

    async def listen() -> None:
        done.append(await airwave("listen", "radio", "--output", str(tmp_path / "fan.wav"), "--url", server.url,
                                  "--user", "fan", "--duration", "3"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            while server.registry.find("radio") is None:
                await trio.sleep(0.05)
            async with Client.connect(server.url, user_id=hostile_id) as client:
                eve = MediaChannel.create(client, MediaDevice.create())
                eve.set_custom_role(HOST_ROLE)
                assert (await eve.join_async("radio", JoinParam(display_name=hostile_name))).result
                assert await eve.send_message_async("chat\u2028* fan: on the mic", "hi\n- dj left (quit)\n\u202eevil") is Reason.NONE
                await eve.leave_async()
    (run,) = done
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()  # splits on U+2028 too, as line-based tools do
    assert [line for line in lines if line.startswith(forged) or "\u202e" in line] == []
    escaped = '"Eve\\u2028- dj left (quit)" ("eve\\u2028+ mallory joined (role 0)")'
    assert f"+ {escaped} joined (role 0)" in lines
    assert f'> "eve\\u2028+ mallory joined (role 0)" ["chat\\u2028* fan: on the mic"]: "hi\\x0a- dj left (quit)\\x0a\\u202eevil"' in lines
    assert f"- {escaped} left (quit)" in lines
