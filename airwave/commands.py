"""The client commands behind `airwave host`, `listen` and `stop`, as plain async functions.

Each prints progress lines and returns an exit status; failures are one clear line with the
reason code (`CommandFailed`), raised for the CLI to print.
"""

from __future__ import annotations

import math
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

import attrs
import av
import trio

from airwave.audio import AudioDeviceError, AudioSource, FileSource, MicSource, SpeakerOutput, ToneSource, recorder_for
from airwave.client import (
    Client,
    JoinParam,
    LeaveEvent,
    MediaChannel,
    MediaChannelCallback,
    MediaDevice,
    Participant,
)
from airwave.media import file_frames
from airwave.protocol import HOST_ROLE, ChannelState, CustomRole, ParticipantChange, Reason, VolumeStatus
from airwave.protocol.text import shown

DEFAULT_URL = "ws://127.0.0.1:8765"


class CommandFailed(Exception):
    """One line for the user, with the reason code when the server gave one."""

    def __init__(self, message: str, reason: Reason | None = None, *, exit_code: int = 1) -> None:
        if reason is not None:
            message = f"{message}: {reason.reason_name} [{int(reason)}]"
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code  # 2: the command line asks for something that cannot be done


def random_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _named(user_id: str, display_name: str) -> str:
    """How the narrator names someone: the display name they chose, and the user id that
    identifies them (what --user, kick and set_role take) when it says something else.
    Both are the client's own choice, so both go through ``shown``: a name with a line
    break or a bidi override in it cannot forge or disguise a line of this output."""
    if not display_name or display_name == user_id:
        return shown(user_id)
    return f"{shown(display_name)} ({shown(user_id)})"


@attrs.define
class Quit:
    """Ctrl-C or SIGTERM, asked of a command from outside (the CLI's signal handler).

    A command that is connected ends the normal way: it leaves, so the others see a quit at
    once rather than a drop held for a resume, and it finishes its recording. Before it is
    connected there is nothing to leave, and the CLI cancels it outright.
    """

    requested: trio.Event = attrs.field(factory=trio.Event)
    signal_number: int | None = None
    connected: bool = False

    def request(self, signal_number: int) -> None:
        if self.signal_number is None:
            self.signal_number = signal_number
        self.requested.set()


@attrs.define
class Narrator(MediaChannelCallback):
    """Prints what happens in the channel, one line each: presence, roles, who is speaking."""

    out: TextIO = sys.stdout
    label: str = ""
    show_speaking: bool = True
    speaking: dict[str, VolumeStatus] = attrs.field(factory=dict)

    def say(self, text: str) -> None:
        print(f"{self.label}{text}", file=self.out, flush=True)

    def on_leave(self, reason: Reason, channel_id: str) -> None:
        self.say(f"left {channel_id!r}: {reason.reason_name} [{int(reason)}]")

    def on_participant_join(self, participant: Participant) -> None:
        self.say(f"+ {_named(participant.user_id, participant.display_name)} joined (role {participant.custom_role.index})")

    def on_participant_left(self, participant: Participant, reason: Reason) -> None:
        self.say(f"- {_named(participant.user_id, participant.display_name)} left ({reason.reason_name})")

    def on_participant_update(self, participant: Participant, change: ParticipantChange) -> None:
        what = []
        if change & ParticipantChange.CUSTOM_ROLE:
            what.append(f"role {participant.custom_role.index}")
        if change & ParticipantChange.CUSTOM_STATE:
            index = participant.custom_state.index
            what.append({0: "on the mic", None: "off the mic"}.get(index, f"state {index}"))
        if change & ParticipantChange.AUDIO:
            what.append("uploading audio" if participant.audio else "stopped uploading")
        self.say(f"* {_named(participant.user_id, participant.display_name)}: {', '.join(what) or 'updated'}")

    def on_participant_volume_change(self, participant: Participant) -> None:
        if not self.show_speaking:
            return
        was = self.speaking.get(participant.user_id, VolumeStatus.ZERO)
        now = participant.volume_status
        self.speaking[participant.user_id] = now
        talking = now >= VolumeStatus.LOW
        if talking != (was >= VolumeStatus.LOW):
            self.say(f"~ {_named(participant.user_id, participant.display_name)} {'is speaking' if talking else 'is quiet'}")

    def on_message_receive(self, type: str, content: str, from_user_id: str) -> None:
        self.say(f"> {shown(from_user_id)} [{shown(type)}]: {shown(content)}")

    def on_member_count_change(self, count: int) -> None:
        self.say(f"  {count} member(s) in the channel")


async def _join(channel: MediaChannel, channel_id: str, param: JoinParam) -> None:
    result = await channel.join_async(channel_id, param)
    if not result.result:
        raise CommandFailed(f"cannot join {channel_id!r}", result.reason)


async def _until_done(
    channel: MediaChannel, duration: float | None, quit: Quit, also: Callable[[], bool] = lambda: False
) -> Reason | None:
    """Waits for ``duration``, the end of the channel, a quit, or ``also()``; the leave
    reason if the channel ended for us."""
    deadline = trio.current_time() + (duration if duration is not None else math.inf)
    async with channel.events() as events:
        with trio.move_on_at(deadline):
            while not also() and not quit.requested.is_set():
                with trio.move_on_after(0.05):
                    event = await events.receive()
                    if isinstance(event, LeaveEvent):
                        return event.reason
    return None if channel.state is ChannelState.JOINED else Reason.NETWORK


def source_from(input_path: str | None, tone_hz: float | None, mic: bool = False) -> AudioSource:
    """The host's audio, checked before anything is connected: a file that is not audio is
    one line now, not a decoder's traceback after the join with a host left in the channel."""
    if mic:
        return MicSource()
    if input_path is not None:
        check_input(input_path)
        return FileSource(input_path)
    return ToneSource(tone_hz if tone_hz is not None else 440.0)


def check_input(input_path: str) -> None:
    """Decodes the first frame of ``input_path``; CommandFailed (exit 2) if there is none."""
    path = Path(input_path)
    if path.is_dir():
        raise CommandFailed(f"--input {input_path} is a directory: give an audio file", exit_code=2)
    if not path.exists():
        raise CommandFailed(f"no such input file: {input_path}", exit_code=2)
    frames = file_frames(path)
    try:
        next(frames)
    except StopIteration:
        raise CommandFailed(f"--input {input_path} holds no audio", exit_code=2) from None
    except av.FFmpegError as exc:
        raise CommandFailed(f"cannot read --input {input_path} as audio: {exc.strerror}", exit_code=2) from None
    except (ValueError, OSError) as exc:  # no audio stream; unreadable
        raise CommandFailed(f"cannot read --input {input_path} as audio: {exc}", exit_code=2) from None
    finally:
        frames.close()


async def host(
    url: str | Sequence[str],
    channel_id: str,
    source: AudioSource,
    *,
    duration: float | None = None,
    user_id: str | None = None,
    display_name: str = "",
    password: str | None = None,
    stop_at_end: bool = False,
    token: str | None = None,
    out: TextIO = sys.stdout,
    quit: Quit | None = None,
) -> int:
    """With a token the user id is the token's (its sub); ``user_id`` may only repeat it."""
    quit = quit or Quit()
    narrator = Narrator(out)
    async with Client.connect(url, user_id=user_id, token=token) as client:
        quit.connected = True
        channel = MediaChannel.create(client, MediaDevice.create(source=source), narrator)
        channel.set_custom_role(HOST_ROLE)
        channel.enable_upload_audio_stream(True)
        await _join(channel, channel_id, JoinParam(password=password, display_name=display_name))
        narrator.say(f"joined {channel_id!r} as {_named(client.user_id, display_name)} (host); streaming")
        ended = await _until_done(channel, duration, quit, also=channel.source_finished.is_set)
        if ended is not None:
            narrator.say(f"the channel ended for us: {ended.reason_name} [{int(ended)}]")
            return 0 if ended is Reason.OVER else 1
        narrator.say(f"sent {channel.media_sent} packets ({channel.media_sent * 0.02:.1f} s)")
        if stop_at_end and not quit.requested.is_set():
            result = await channel.stop_async()
            if not result.result:
                raise CommandFailed(f"cannot stop {channel_id!r}", result.reason)
            narrator.say(f"stopped {channel_id!r} for everyone")
        else:
            await channel.leave_async()  # the narrator prints on_leave
    return 0


RECORDABLE = (".wav", ".ogg", ".opus", ".oga")  # what audio.recorder_for writes


def check_output(output: str, *, force: bool = False) -> None:
    """Refuses, before anything is connected or written, an output that cannot be written or
    would overwrite a file without ``force``: a listen that fails leaves no trace."""
    path = Path(output)
    if path.suffix.lower() not in RECORDABLE:
        raise CommandFailed(f"cannot record to {output!r}: use a .wav, .ogg or .opus file", exit_code=2)
    if path.is_dir():
        raise CommandFailed(f"--output {output} is a directory: give a file name, e.g. {path / 'heard.wav'}", exit_code=2)
    if not path.parent.is_dir():
        raise CommandFailed(f"cannot write {output}: there is no directory {path.parent} (create it first)", exit_code=2)
    if path.exists() and not force:
        raise CommandFailed(f"{output} already exists: pass --force to overwrite it, or choose another --output", exit_code=2)


async def listen(
    url: str | Sequence[str],
    channel_id: str,
    output: str | None,
    *,
    speaker: bool = False,
    force: bool = False,
    duration: float | None = None,
    user_id: str | None = None,
    display_name: str = "",
    password: str | None = None,
    token: str | None = None,
    out: TextIO = sys.stdout,
    quit: Quit | None = None,
) -> int:
    """Records only once it has joined: a wrong URL or password must not touch ``output``."""
    quit = quit or Quit()
    narrator = Narrator(out)
    if output is not None:
        check_output(output, force=force)
    try:
        device = MediaDevice.create(outputs=[SpeakerOutput()] if speaker else [])
    except AudioDeviceError as exc:
        raise CommandFailed(str(exc)) from None
    try:
        async with Client.connect(url, user_id=user_id, token=token) as client:
            quit.connected = True
            channel = MediaChannel.create(client, device, narrator)
            await _join(channel, channel_id, JoinParam(password=password, display_name=display_name))
            if output is not None:
                try:
                    device.outputs.append(recorder_for(output))  # the channel's receiver records into device.outputs
                except OSError as exc:
                    await channel.leave_async()
                    raise CommandFailed(f"cannot write {output}: {exc.strerror}") from None
            hosts = [_named(p.user_id, p.display_name) for p in channel.participants if p.custom_role is CustomRole.ROLE_0]
            narrator.say(f"joined {channel_id!r} as {_named(client.user_id, display_name)} (audience); hosts: {', '.join(hosts) or 'none'}; playing to {output or 'the speaker'}")
            ended = await _until_done(channel, duration, quit)
            if ended is None:
                await channel.leave_async()
            stats = channel.receiver.stats
            narrator.say(f"received {stats.packets} packets, concealed {stats.concealed}" + (f"; wrote {output}" if output else ""))
            if ended is not None:
                narrator.say(f"the channel ended: {ended.reason_name} [{int(ended)}]")
                return 0 if ended is Reason.OVER else 1
    finally:
        device.close()
    return 0


@asynccontextmanager
async def _as_host_of_existing(
    url: str | Sequence[str], channel_id: str, *, user_id: str | None, display_name: str, password: str | None, token: str | None,
    quit: Quit,
) -> AsyncIterator[MediaChannel]:
    """Joined as a host of the existing channel (uri mode: it must exist), for one host
    command. Once connected it carries on through a quit: it is over in a moment, and cut
    short it could leave a host behind in the channel."""
    async with Client.connect(url, user_id=user_id, token=token) as client:
        quit.connected = True
        channel = MediaChannel.create(client, MediaDevice.create())
        channel.set_custom_role(HOST_ROLE)
        await _join(channel, channel_id, JoinParam(uri_mode=True, password=password, display_name=display_name))
        yield channel


async def stop(
    url: str | Sequence[str], channel_id: str, *, user_id: str | None = None, display_name: str = "", password: str | None = None,
    token: str | None = None, out: TextIO = sys.stdout, quit: Quit | None = None,
) -> int:
    """Joins the existing channel as a host and stops it."""
    async with _as_host_of_existing(
        url, channel_id, user_id=user_id, display_name=display_name, password=password, token=token, quit=quit or Quit()
    ) as channel:
        result = await channel.stop_async()
        if not result.result:
            raise CommandFailed(f"cannot stop {channel_id!r}", result.reason)
    print(f"stopped {channel_id!r} for everyone", file=out, flush=True)
    return 0


async def record(
    url: str | Sequence[str], channel_id: str, enable: bool, *, params: str = "", user_id: str | None = None, display_name: str = "",
    password: str | None = None, token: str | None = None, out: TextIO = sys.stdout, quit: Quit | None = None,
) -> int:
    """Joins the existing channel as a host, turns the server's recording on or off
    (enable_record), and leaves; the recording goes on without it (docs/operations.md)."""
    async with _as_host_of_existing(
        url, channel_id, user_id=user_id, display_name=display_name, password=password, token=token, quit=quit or Quit()
    ) as channel:
        reason = await channel.enable_record_async(enable, params)
        if reason is not Reason.NONE:
            raise CommandFailed(f"cannot turn recording {'on' if enable else 'off'} in {channel_id!r}", reason)
        await channel.leave_async()
    state = "recording" if enable else "not recording"
    print(f"{channel_id!r} is {state} (the files are under the server's data directory: recordings/)", file=out, flush=True)
    return 0


async def cdn(
    url: str | Sequence[str], channel_id: str, enable: bool, *, key_interval_ms: int = 0, user_id: str | None = None, display_name: str = "",
    password: str | None = None, token: str | None = None, out: TextIO = sys.stdout, quit: Quit | None = None,
) -> int:
    """Joins the existing channel as a host, turns the CDN stream of its mix on or off
    (enable_cdn), and leaves; the stream goes on without it (docs/operations.md, CDN)."""
    async with _as_host_of_existing(
        url, channel_id, user_id=user_id, display_name=display_name, password=password, token=token, quit=quit or Quit()
    ) as channel:
        reason = await channel.enable_cdn_async(enable, key_interval_ms)
        if reason is not Reason.NONE:
            raise CommandFailed(f"cannot turn the CDN stream {'on' if enable else 'off'} in {channel_id!r}", reason)
        await channel.leave_async()
    if not enable:
        print(f"{channel_id!r} is not streaming to the CDN", file=out, flush=True)
        return 0
    from airwave.actors.core.cdn import hls_path, icecast_mount

    url = url if isinstance(url, str) else url[0]  # (a cluster has no CDN yet: any node would do)
    http = "http" + url[len("ws"):] if url.startswith("ws") else url
    print(f"{channel_id!r} is streaming: HLS at {http.rstrip('/')}{hls_path(channel_id)} (with serve --hls), "
          f"Icecast on mount {icecast_mount(channel_id)} (with serve --icecast-url)", file=out, flush=True)
    return 0
