"""The SDK end to end: the seed's call sequence with callbacks, real Opus through PyAV, a real
server on loopback, recordings checked by FFT."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

import airwave.client
from airwave.actors.server import RunningServer, serve
from airwave.audio import ToneSource
from airwave.client import (
    Client,
    JoinParam,
    JoinResult,
    LeaveEvent,
    MediaChannel,
    MediaChannelCallback,
    MediaDevice,
    MessageEvent,
    Participant,
    ParticipantJoinEvent,
    ParticipantUpdateEvent,
    StateChangeEvent,
    StopResult,
)
from airwave.protocol import ChannelState, CustomRole, CustomState, Reason, RolePolicy

from audio_checks import dominant_frequency, longest_gap_frames, read_wav, sounding_span
from conftest import fast_settings
from helpers import wait_until

HOST = CustomRole.ROLE_0


@attrs.define
class Recording(MediaChannelCallback):
    """Keeps every callback as (name, args), in order."""

    calls: list[tuple[str, tuple[object, ...]]] = attrs.field(factory=list)

    def __getattribute__(self, name: str) -> object:
        if name.startswith("on_"):
            return lambda *args: object.__getattribute__(self, "calls").append((name, args))
        return object.__getattribute__(self, name)

    def named(self, name: str) -> list[tuple[object, ...]]:
        return [args for call, args in self.calls if call == name]


def played_out(channel: MediaChannel) -> bool:
    """Whether every sender ``channel`` has heard has gone idle in its jitter buffer: nothing
    arrived for the buffer's concealment limit past the newest packet (the receiver's streams
    are not public; this is the one place a test needs them)."""
    streams = channel.receiver._streams.values()
    return bool(streams) and all(stream.jitter.idle for stream in streams)


async def wait_for(events: trio.MemoryReceiveChannel, kind: type, timeout: float = 3.0) -> object:
    with trio.fail_after(timeout):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"no {kind.__name__}")


async def test_seed_sequence_tone_arrives_as_tone_with_callbacks(server: RunningServer, tmp_path: Path) -> None:
    recording = tmp_path / "listener.wav"
    host_calls, listener_calls = Recording(), Recording()
    with trio.fail_after(20):
        async with Client.connect(server.url, user_id="host") as host_client, Client.connect(
            server.url, user_id="listener"
        ) as listener_client:
            host_device = MediaDevice.create(source=ToneSource(440.0, seconds=2.0))
            host = MediaChannel.create(host_client, host_device, host_calls)
            listener_device = MediaDevice.create(outputs=[str(recording)])
            listener = MediaChannel.create(listener_client, listener_device, listener_calls)
            host_events, listener_events = host.events(), listener.events()

            # The seed: set the role, enable upload, join by id (created on first join).
            assert host.set_custom_role(HOST)
            assert host.enable_upload_audio_stream(True)
            assert host.join("222", JoinParam(display_name="Host"))
            assert (await wait_for(host_events, JoinResult)) == JoinResult(True, Reason.NONE, "222")

            assert listener.join("222")
            assert (await wait_for(listener_events, JoinResult)).result
            joined = await wait_for(host_events, ParticipantJoinEvent)
            assert joined.participant.user_id == "listener"
            assert joined.participant.custom_role is CustomRole.ROLE_1

            with trio.fail_after(5):
                await host.source_finished.wait()
            # The jitter buffer's tail: nothing has arrived for its concealment limit past the
            # newest packet, so every packet has been played and the concealment has faded.
            await wait_until(lambda: played_out(listener), "the listener to play out the tone", timeout=3)
            (jitter,) = [stream.jitter.statistics() for stream in listener.receiver._streams.values()]

            assert host.stop()
            assert (await wait_for(host_events, StopResult)) == StopResult(True, Reason.NONE)
            assert (await wait_for(listener_events, LeaveEvent)) == LeaveEvent(Reason.OVER, "222")
            assert listener.state is ChannelState.IDLE and host.state is ChannelState.IDLE
            listener_device.close()

    assert host_calls.named("on_join") == [(True, Reason.NONE, "222")]
    assert host_calls.named("on_stop") == [(True, Reason.NONE)]
    assert listener_calls.named("on_leave") == [(Reason.OVER, "222")]
    states = [args for args in listener_calls.named("on_media_channel_state_change")]
    assert states[:2] == [(ChannelState.JOINING, ChannelState.IDLE), (ChannelState.JOINED, ChannelState.JOINING)]

    pcm = read_wav(recording)
    first, last = sounding_span(pcm)
    tone = pcm[first * 960 : (last + 1) * 960]
    # 2 s sent, plus up to 200 ms of concealment fading out after the last packet.
    assert 1.9 <= len(tone) / 48_000 <= 2.3, "about the 2 s that were sent"
    assert abs(dominant_frequency(tone) - 440.0) < 3.0
    # No gap longer than one frame on loopback, unless this process stalled (two test workers
    # on two cores): then frames came after their slot (late).
    assert longest_gap_frames(pcm) <= 1 or jitter.late > 0, jitter


async def test_co_host_flow_promoted_listener_is_heard_within_a_second(server: RunningServer, tmp_path: Path) -> None:
    heard = tmp_path / "bob.wav"
    with trio.fail_after(20):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(
            server.url, user_id="alice"
        ) as a, Client.connect(server.url, user_id="bob") as b:
            host = MediaChannel.create(h, MediaDevice.create())
            alice = MediaChannel.create(a, MediaDevice.create(source=ToneSource(880.0)))
            bob_device = MediaDevice.create(outputs=[str(heard)])
            bob = MediaChannel.create(b, bob_device)
            host_events = host.events()
            host.set_custom_role(HOST)
            assert (await host.join_async("stage")).result
            assert (await alice.join_async("stage")).result
            assert (await bob.join_async("stage")).result

            # Alice wants to talk: upload is refused (audience), and she raises her hand.
            assert await alice.enable_upload_audio_stream_async(True) is Reason.NO_PERMISSION
            assert alice.send_message("raise_hand", "may I speak?", to_user_id="host")
            hand = await wait_for(host_events, MessageEvent)
            assert (hand.type, hand.from_user_id) == ("raise_hand", "alice")

            promoted_at = trio.current_time()
            assert await host.set_custom_state_async(CustomState.STATE_0, "alice") is Reason.NONE
            # No rejoin, no second call: the SDK re-sends her upload wish once she may publish.
            await wait_until(lambda: bob.receiver.stats.packets > 0, "bob to hear alice", timeout=1.0)
            assert trio.current_time() - promoted_at < 1.0
            # A second of her tone, for the frequency check.
            await wait_until(lambda: bob.receiver.stats.packets >= 50, "a second of alice's audio at bob", timeout=3)
            assert alice.self_participant is not None and alice.self_participant.audio
            await bob.leave_async()
            bob_device.close()

    pcm = read_wav(heard)
    first, last = sounding_span(pcm)
    assert abs(dominant_frequency(pcm[first * 960 : (last + 1) * 960]) - 880.0) < 5.0


async def test_sdk_failure_reasons_reach_on_join_and_on_stop(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(server.url, user_id="guest") as g:
            host = MediaChannel.create(h, MediaDevice.create())
            guest = MediaChannel.create(g, MediaDevice.create())
            host.set_custom_role(HOST)
            assert (await host.join_async("vip", JoinParam(password="s3cret", capacity=2))).result
            assert await guest.join_async("vip", JoinParam(password="nope")) == JoinResult(False, Reason.INVALID_PASSWORD, "vip")
            assert await guest.join_async("ghost", JoinParam(uri_mode=True)) == JoinResult(False, Reason.NOT_FOUND, "ghost")
            assert (await guest.join_async("vip", JoinParam(password="s3cret"))).result
            assert await guest.join_async("vip") == JoinResult(False, Reason.ALREADY_JOINED, "vip")
            assert await guest.stop_async() == StopResult(False, Reason.NO_PERMISSION)
            assert await host.kick_async("guest") is Reason.NONE
            await wait_until(lambda: guest.state is ChannelState.IDLE, "the kicked guest to be idle", timeout=2)
            assert guest.participants == []


async def test_sdk_every_user_triggerable_failure_reaches_a_callback(server: RunningServer) -> None:
    """full, invalid_param, no_permission, kicked, duplicate_session, call_function_error,
    not_found: each arrives through the callback a vendor-SDK user would watch."""
    calls = {name: Recording() for name in ("host", "a", "b", "a2")}
    with trio.fail_after(15):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(server.url, user_id="a") as ca, \
                Client.connect(server.url, user_id="b") as cb, Client.connect(server.url, user_id="a") as ca2:
            host = MediaChannel.create(h, MediaDevice.create(), calls["host"])
            a = MediaChannel.create(ca, MediaDevice.create(), calls["a"])
            b = MediaChannel.create(cb, MediaDevice.create(), calls["b"])
            a2 = MediaChannel.create(ca2, MediaDevice.create(), calls["a2"])
            host.set_custom_role(HOST)
            assert (await host.join_async("small", JoinParam(capacity=3))).result
            assert (await a.join_async("small")).result
            assert (await b.join_async("small")).result
            assert not (await a2.join_async("ghost", JoinParam(uri_mode=True))).result  # not_found

            assert await host.kick_async("host") is Reason.INVALID_PARAM
            assert await b.kick_async("a") is Reason.NO_PERMISSION
            assert await b.set_custom_role_async(HOST) is Reason.NO_PERMISSION
            assert await a2.kick_async("b") is Reason.CALL_FUNCTION_ERROR  # not in a channel
            assert await host.kick_async("b") is Reason.NONE
            assert (await a2.join_async("small")).result  # same user id "a": the older session leaves
            await wait_until(lambda: bool(calls["a"].named("on_leave")), "the older session's on_leave")
            # Capacity 3: host and a are in (b was kicked); c takes the last place, d finds it full.
            async with Client.connect(server.url, user_id="c") as cc, Client.connect(server.url, user_id="d") as cd:
                c = MediaChannel.create(cc, MediaDevice.create())
                d = MediaChannel.create(cd, MediaDevice.create())
                assert (await c.join_async("small")).result
                full = await d.join_async("small")
    assert calls["a2"].named("on_join")[0] == (False, Reason.NOT_FOUND, "ghost")
    assert ("kick", Reason.INVALID_PARAM) in [(op, r) for op, r, _ in calls["host"].named("on_error")]
    assert ("kick", Reason.NO_PERMISSION) in [(op, r) for op, r, _ in calls["b"].named("on_error")]
    assert ("set_custom_role", Reason.NO_PERMISSION) in [(op, r) for op, r, _ in calls["b"].named("on_error")]
    assert ("kick", Reason.CALL_FUNCTION_ERROR) in [(op, r) for op, r, _ in calls["a2"].named("on_error")]
    assert calls["b"].named("on_leave")[0] == (Reason.KICKED, "small")
    assert calls["a"].named("on_leave") == [(Reason.DUPLICATE_SESSION, "small")]
    assert full == JoinResult(False, Reason.FULL, "small")
    left = [args for args in calls["host"].named("on_participant_left")]
    assert [(p.user_id, reason) for p, reason in left][:1] == [("b", Reason.KICKED)]


def seen_by(channel: MediaChannel) -> dict[str, Participant]:
    return {p.user_id: p for p in channel.participants}


async def test_sdk_follows_the_servers_role_policy_it_holds_no_copy_of(nursery: trio.Nursery, data_dir: Path) -> None:
    """A server whose mic is custom_state_1 (not the default custom_state_0): the audience keeps
    a speaker in its list while the server says they are in view and drops them when it says
    they are not, and a speaker's upload wish is granted once that server lets them publish."""
    mic = CustomState.STATE_1
    policy = RolePolicy(publishing_state=mic)
    running: RunningServer = await nursery.start(serve, attrs.evolve(fast_settings(data_dir), policy=policy))
    try:
        with trio.fail_after(15):
            async with Client.connect(running.url, user_id="host") as h, Client.connect(
                running.url, user_id="speaker"
            ) as s, Client.connect(running.url, user_id="fan") as f:
                host = MediaChannel.create(h, MediaDevice.create())
                speaker = MediaChannel.create(s, MediaDevice.create(source=ToneSource(660.0)))
                fan = MediaChannel.create(f, MediaDevice.create())
                host.set_custom_role(HOST)
                speaker.enable_upload_audio_stream(True)  # a wish: not granted at the join
                assert (await host.join_async("policy")).result
                assert (await speaker.join_async("policy")).result
                assert (await fan.join_async("policy")).result
                fan_events = fan.events()
                assert "speaker" not in seen_by(fan)

                assert await host.set_custom_state_async(mic, "speaker") is Reason.NONE
                update = await wait_for(fan_events, ParticipantUpdateEvent)
                assert update.participant.user_id == "speaker"
                assert update.participant.custom_state is mic
                assert "speaker" in seen_by(fan), "in view: on this server's mic"
                with trio.fail_after(3):  # the wish, sent again once the server allows it
                    while not seen_by(fan)["speaker"].audio:
                        await wait_for(fan_events, ParticipantUpdateEvent)

                assert await host.set_custom_state_async(CustomState.STATE_0, "speaker") is Reason.NONE
                with trio.fail_after(3):
                    while "speaker" in seen_by(fan):
                        await wait_for(fan_events, ParticipantUpdateEvent)
                assert "speaker" in seen_by(host), "a host sees everyone"
                assert await host.stop_async()
    finally:
        running.shutdown()
        with trio.fail_after(10):
            await running.stopped.wait()


async def test_events_iterator_that_falls_behind_loses_its_oldest_events(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(airwave.client, "EVENT_QUEUE", 2)
    with trio.fail_after(10):
        async with Client.connect(server.url, user_id="late") as c:
            channel = MediaChannel.create(c, MediaDevice.create())
            events = channel.events()
            # The join emits three events (joining, joined, on_join) to a queue of two, unread.
            assert (await channel.join_async("behind")).result
            unread = [events.receive_nowait(), events.receive_nowait()]
            assert unread == [StateChangeEvent(ChannelState.JOINED, ChannelState.JOINING), JoinResult(True, Reason.NONE, "behind")]
            assert channel.events_dropped == 1
            events.close()
            assert (await channel.leave_async()).reason is Reason.QUIT  # a closed iterator is not fed
            assert channel.events_dropped == 1
