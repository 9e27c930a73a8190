"""Decision 7 over real sockets: a dropped connection is held for a grace period and resumed
with its session token, with no leave or join in the log and nothing shown to the others."""

from __future__ import annotations

from pathlib import Path

import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer
from airwave.protocol import (
    CustomRole,
    Join,
    ParticipantLeft,
    Reason,
    Resume,
    channel_info_from_wire,
    encode_client_media,
)
from airwave.wire import Wire, open_wire
from conftest import fast_settings
from helpers import settle, wait_until

GRACE = fast_settings(Path("unused")).session.resume_grace


async def drop(wire: Wire) -> None:
    """Lose the connection the way a network does: no close frame, just a dead socket."""
    await wire.ws._stream.aclose()


def logged_types(server: RunningServer) -> list[tuple[str, str | None]]:
    return [(item.event.TYPE, getattr(item.event, "user_id", None)) for item in replay_events(server.event_log.directory)]


async def test_dropped_host_resumes_without_leave_or_join_and_audio_continues(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as listener:
            async with open_wire(server.url) as host:
                reply = await host.request(Join, channel="r", user_id="host", role=CustomRole.ROLE_0, upload=True)
                token = channel_info_from_wire(reply.result).session_token
                assert len(token) >= 24
                assert (await listener.request(Join, channel="r", user_id="fan")).ok
                await drop(host)
            await wait_until(lambda: token in server.registry._suspended, "the server to hold the dropped session")
            held_at = trio.current_time()  # the grace timer started no later than this
            async with open_wire(server.url) as again:
                reply = await again.request(Resume, session_token=token)
                assert reply.ok, reply
                info = channel_info_from_wire(reply.result)
                assert info.session_token and info.session_token != token
                assert [p.user_id for p in info.participants if p.audio] == ["host"]
                await again.send_bytes(encode_client_media(7, 0, b"\xf8x"))
                with trio.fail_after(2):
                    assert (await listener.media.receive()).seq == 7
                # The old token was used up.
                async with open_wire(server.url) as thief:
                    assert (await thief.request(Resume, session_token=token)).reason is Reason.NOT_FOUND
                # Nothing may fire when the old grace period would have ended. There is no event
                # for "a timer did not fire", so wait until just past its end; then a ping round
                # trip brings whatever the server had sent the listener by then.
                await trio.sleep_until(held_at + GRACE + 0.1)
                assert not any(isinstance(m, ParticipantLeft) for m in await settle(listener))
                assert logged_types(server) == [
                    ("channel_created", None), ("participant_joined", "host"), ("participant_joined", "fan"),
                ]


async def test_drop_without_resume_leaves_with_network_after_the_grace(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as host, open_wire(server.url) as fan:
            assert (await host.request(Join, channel="r", user_id="host", role=CustomRole.ROLE_0)).ok
            assert (await fan.request(Join, channel="r", user_id="fan")).ok
            started = trio.current_time()
            await drop(fan)
            with trio.fail_after(2):
                while True:
                    message = await host.pushes.receive()
                    if isinstance(message, ParticipantLeft):
                        break
            assert (message.user_id, message.reason) == ("fan", Reason.NETWORK)
            assert trio.current_time() - started >= 0.45

