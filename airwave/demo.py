"""`airwave demo`: the whole product in one command, in about fifteen seconds.

A server on a free port with a fresh event log; a host talking (generated speech); two
listeners recording; the co-host flow (a raised hand, a host putting a listener on the mic,
everyone hearing them); a role change; a stop; then the event log replayed.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import av
import trio

from airwave.actors.log.replay import event_text, final_state_text, fold_replayed, replay_events
from airwave.actors.participant import SessionSettings
from airwave.actors.server import ServerSettings, serve
from airwave.audio import SpeechSource
from airwave.client import Client, JoinParam, MediaChannel, MediaDevice
from airwave.commands import Narrator
from airwave.media import SAMPLE_RATE
from airwave.protocol import HOST_ROLE, ON_THE_MIC, CustomRole, CustomState, Reason
from airwave.protocol.tokens import mint_token

CHANNEL = "demo"


async def run_demo(workdir: Path | None = None, *, out: TextIO = sys.stdout, talk_seconds: float = 3.0) -> int:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="airwave-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"\n==> [{time.monotonic() - started:5.1f}s] {text}", file=out, flush=True)

    step(f"starting a server with a secret and its event log in {data_dir}")
    secret = secrets.token_bytes(32)

    def token(user_id: str, *roles: CustomRole) -> str:
        """What a backend hands each user: who they are, the channel, the roles they may take."""
        return mint_token(secret, channel=CHANNEL, user_id=user_id, roles=roles, now=time.time(), ttl=600)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, ServerSettings(port=0, data_dir=data_dir, session=SessionSettings(secret=secret)))
        print(f"    listening on {server.url}; every client connects with a token (JWT) that says who it is", file=out, flush=True)
        outputs = {
            "alice": [workdir / "alice.wav", workdir / "alice.ogg"],
            "bob": [workdir / "bob.wav"],
        }
        devices = {
            "host": MediaDevice.create(source=SpeechSource(seed=1)),
            "alice": MediaDevice.create(outputs=[str(p) for p in outputs["alice"]]),
            "bob": MediaDevice.create(source=SpeechSource(seed=7), outputs=[str(p) for p in outputs["bob"]]),
        }
        try:
            async with Client.connect(server.url, token=token("host", HOST_ROLE)) as h, Client.connect(
                server.url, token=token("alice", CustomRole.ROLE_1, CustomRole.ROLE_2)
            ) as a, Client.connect(server.url, token=token("bob", CustomRole.ROLE_1)) as b:
                host = MediaChannel.create(h, devices["host"], Narrator(out, "    [host]  ", show_speaking=False))
                alice = MediaChannel.create(a, devices["alice"], Narrator(out, "    [alice] "))
                bob = MediaChannel.create(b, devices["bob"], Narrator(out, "    [bob]   ", show_speaking=False))

                step(f"host sets role 0 (host), enables upload and joins {CHANNEL!r} (created on first join)")
                host.set_custom_role(HOST_ROLE)
                host.enable_upload_audio_stream(True)
                await _joined(host, JoinParam(title="Airwave demo", display_name="Host"))
                step("alice and bob join as the audience; the host starts talking")
                await _joined(alice, JoinParam(display_name="Alice"))
                await _joined(bob, JoinParam(display_name="Bob"))
                reason = await bob.enable_upload_audio_stream_async(True)
                print(f"    bob tries to upload audio: refused, {reason.reason_name} [{int(reason)}] (kept as a wish)", file=out)
                await trio.sleep(talk_seconds)

                step("bob raises his hand; the host puts him on the mic (custom_state_0)")
                await bob.send_message_async("raise_hand", "may I say something?", "host")
                await host.set_custom_state_async(ON_THE_MIC, "bob")
                await trio.sleep(talk_seconds)

                step("the host takes bob off the mic and gives alice custom_role_2")
                await host.set_custom_state_async(CustomState.NONE, "bob")
                await host.set_custom_role_async(CustomRole.ROLE_2, "alice")
                await trio.sleep(1.0)

                step(f"the host stops {CHANNEL!r}: everyone else gets on_leave(over)")
                result = await host.stop_async()
                print(f"    [host]  on_stop({result.result}, {result.reason.reason_name})", file=out)
                await trio.sleep(0.2)
                received = {name: channel.receiver.stats for name, channel in (("alice", alice), ("bob", bob))}
        finally:
            for device in devices.values():
                device.close()
        server.shutdown()

    step("the event log, replayed (airwave replay " + str(data_dir) + ")")
    items = list(replay_events(data_dir))
    for item in items:
        print("    " + event_text(item), file=out)
    for channel in fold_replayed(items).values():
        print("    " + final_state_text(channel).replace("\n", "\n    "), file=out)

    step("done; everything is here:")
    for name, paths in outputs.items():
        packets = received[name].packets
        for path in paths:
            print(f"    {path}  ({recorded_seconds(path):.1f} s recorded, mixing {packets} packets of 20 ms from every speaker)", file=out)
    print(f"    {data_dir}  (the event log: airwave replay {data_dir} --json)", file=out)
    print(f"    finished in {time.monotonic() - started:.1f} s", file=out, flush=True)
    return 0


def recorded_seconds(path: Path) -> float:
    """The recording's length as a player reads it back. Not packets x 20 ms: while two
    people talk at once, two packets make one 20 ms of the mix."""
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0)) / SAMPLE_RATE


async def _joined(channel: MediaChannel, param: JoinParam) -> None:
    result = await channel.join_async(CHANNEL, param)
    if not result.result:
        raise RuntimeError(f"demo join failed: {result.reason.reason_name} [{int(result.reason)}]")


__all__ = ["run_demo", "Reason"]
