"""The seed's call sequence over real loopback WebSockets, against a real server and log."""

from __future__ import annotations

import trio

from airwave.actors.log.replay import fold_replayed, replay_events
from airwave.actors.server import RunningServer
from airwave.protocol import (
    CustomState,
    EnableUpload,
    Join,
    Leave,
    Left,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Reason,
    SetState,
    Stop,
    channel_info_from_wire,
    encode_client_media,
)
from airwave.wire import open_wire

from helpers import AUDIENCE, HOST, next_push


async def test_seed_sequence_join_talk_listen_leave_stop(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as host, open_wire(server.url) as alice, open_wire(server.url) as bob:
            reply = await host.request(Join, channel="222", user_id="host", role=HOST, upload=True)
            assert reply.ok, reply
            info = channel_info_from_wire(reply.result)
            assert info.channel_id == "222" and info.member_count == 1 and info.self_sid == 1

            for wire, name in ((alice, "alice"), (bob, "bob")):
                reply = await wire.request(Join, channel="222", user_id=name)  # no role: audience
                assert reply.ok
                joined = await next_push(host, ParticipantJoined)
                assert joined.participant.user_id == name and joined.participant.role is AUDIENCE

            for seq in range(5):
                await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8opus", level=50))
            for wire in (alice, bob):
                with trio.fail_after(2):
                    packets = [await wire.media.receive() for _ in range(5)]
                assert [p.seq for p in packets] == list(range(5))
                assert {p.sid for p in packets} == {info.self_sid}
                assert packets[0].payload == b"\xf8opus" and packets[0].level == 50

            assert (await bob.request(Leave)).ok
            left = await next_push(host, ParticipantLeft)
            assert (left.user_id, left.reason) == ("bob", Reason.QUIT)

            assert (await host.request(Stop)).ok
            over = await next_push(alice, Left)
            assert (over.channel, over.reason) == ("222", Reason.OVER)

    channels = fold_replayed(list(replay_events(server.event_log.directory)))
    (channel,) = channels.values()
    assert channel.ended and channel.ended_reason is Reason.OVER and channel.ended_by == "host"


async def test_co_host_flow_promoted_listener_is_heard(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as host, open_wire(server.url) as alice, open_wire(server.url) as bob:
            assert (await host.request(Join, channel="room", user_id="host", role=HOST, upload=True)).ok
            assert (await alice.request(Join, channel="room", user_id="alice")).ok
            assert (await bob.request(Join, channel="room", user_id="bob")).ok

            refused = await alice.request(SetState, state=CustomState.STATE_0)
            assert refused.reason is Reason.NO_PERMISSION
            assert (await alice.request(EnableUpload, enabled=True)).reason is Reason.NO_PERMISSION

            assert (await host.request(SetState, state=CustomState.STATE_0, user_id="alice")).ok
            for wire in (alice, bob, host):
                update = await next_push(wire, ParticipantUpdated)
                assert update.participant.user_id == "alice" and update.participant.state is CustomState.STATE_0

            assert (await alice.request(EnableUpload, enabled=True)).ok
            await alice.send_bytes(encode_client_media(1, 960, b"\xf8hi"))
            for wire in (bob, host):
                with trio.fail_after(2):
                    packet = await wire.media.receive()
                assert packet.payload == b"\xf8hi"
