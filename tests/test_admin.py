"""Admin requests (issue 17) against a real server over real sockets: what an operator sees,
the levers it pulls, what the members and the log make of them, and who may send them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio_websocket
from airwave.actors.server import RunningServer, serve
from airwave.protocol import (
    AdminChannels,
    AdminEndSession,
    AdminKick,
    AdminMembers,
    AdminMute,
    AdminStop,
    ChannelSummary,
    CustomRole,
    EnableUpload,
    Join,
    Left,
    MemberSummary,
    ParticipantChange,
    ParticipantLeft,
    ParticipantUpdated,
    Reason,
    Resume,
    channel_info_from_wire,
    encode_client_media,
    summaries_from_wire,
)
from airwave.protocol.tokens import mint_admin_token, mint_token
from conftest import fast_settings
from helpers import logged, next_push, ok, settle, wait_until

from airwave.audio import ToneSource
from airwave.client import Client, MediaChannel, MediaDevice
from airwave.wire import Wire, open_wire

HOST, AUDIENCE = CustomRole.ROLE_0, CustomRole.ROLE_1
SECRET = b"the admin tests' secret"


async def channels(admin: Wire, **token: str) -> list[ChannelSummary]:
    return summaries_from_wire(ChannelSummary, ok(await admin.request(AdminChannels, **token)).result)


async def members(admin: Wire, channel: str) -> list[MemberSummary]:
    return summaries_from_wire(MemberSummary, ok(await admin.request(AdminMembers, channel=channel)).result)


async def test_admin_lists_channels_and_members_and_a_new_server_has_none(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as admin, open_wire(server.url) as host, open_wire(server.url) as fan:
            assert await channels(admin) == []
            ok(await host.request(Join, channel="talk", user_id="dj", display_name="DJ", role=HOST, upload=True, title="Morning"))
            ok(await fan.request(Join, channel="talk", user_id="fan"))
            for seq in range(5):
                await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8\xff\xfe"))
            for _ in range(5):
                await fan.media.receive()
            (summary,) = await channels(admin)
            assert (summary.channel_id, summary.title, summary.members, summary.hosts, summary.speakers) == ("talk", "Morning", 2, 1, 1)
            assert (summary.packets_in, summary.deliveries) == (5, 5)
            assert 0 <= summary.uptime < 10 and abs(summary.created_at - time.time()) < 10
            dj, listener = await members(admin, "talk")
            assert (dj.user_id, dj.display_name, dj.role, dj.audio, dj.muted, dj.session) == ("dj", "DJ", HOST, True, False, "connected")
            assert (listener.user_id, listener.role, listener.audio) == ("fan", AUDIENCE, False)
            assert listener.address.startswith("127.0.0.1:") and listener.connected_since <= listener.joined_at
            # The admin connection is no member: nobody was told of it, and it can still join.
            assert not any(isinstance(m, ParticipantUpdated | ParticipantLeft) for m in await settle(host))
            ok(await admin.request(Join, channel="other", user_id="ops"))
            assert sorted(s.channel_id for s in await channels(admin)) == ["other", "talk"]


async def test_admin_kick_stop_and_refusals_are_in_the_log_with_the_operator(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as admin, open_wire(server.url) as host, open_wire(server.url) as fan:
            ok(await host.request(Join, channel="c", user_id="dj", role=HOST))
            ok(await fan.request(Join, channel="c", user_id="fan"))
            assert (await admin.request(AdminKick, channel="c", user_id="nobody")).reason is Reason.NOT_FOUND
            assert (await admin.request(AdminMembers, channel="gone")).reason is Reason.NOT_FOUND
            assert (await admin.request(AdminStop, channel="gone")).reason is Reason.NOT_FOUND
            assert server.registry.find("gone") is None and server.registry.channel_ids() == ["c"]
            ok(await admin.request(AdminKick, channel="c", user_id="fan"))
            left = await next_push(fan, Left)
            assert (left.channel, left.reason) == ("c", Reason.KICKED)
            gone = await next_push(host, ParticipantLeft)
            assert (gone.user_id, gone.reason) == ("fan", Reason.KICKED)
            ok(await fan.request(Join, channel="c", user_id="fan"))  # a kick is no ban
            ok(await admin.request(AdminStop, channel="c"))
            for wire in (host, fan):
                assert (await next_push(wire, Left)).reason is Reason.OVER
            assert await channels(admin) == []
    assert logged(server.event_log.directory) == [
        "created c by dj", "joined c dj role=0", "joined c fan role=1",
        "left c fan kicked by operator local", "joined c fan role=1", "stopped c over by operator local",
    ]


async def test_admin_mute_revokes_upload_until_unmuted(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as admin, open_wire(server.url) as host, open_wire(server.url) as fan:
            ok(await host.request(Join, channel="m", user_id="dj", role=HOST, upload=True))
            ok(await fan.request(Join, channel="m", user_id="fan"))
            ok(await admin.request(AdminMute, channel="m", user_id="dj"))
            update = await next_push(host, ParticipantUpdated)
            assert update.participant.user_id == "dj" and not update.participant.audio and update.changes == ParticipantChange.AUDIO
            refused = await host.request(EnableUpload, enabled=True)
            assert (refused.reason, refused.message) == (Reason.NO_PERMISSION, "muted by an administrator")
            await host.send_bytes(encode_client_media(1, 0, b"\xf8\xff\xfe"))  # dropped: no upload
            (dj, _) = await members(admin, "m")
            assert dj.muted and not dj.audio
            ok(await admin.request(AdminMute, channel="m", user_id="dj", muted=False))
            back = await next_push(host, ParticipantUpdated)  # the right is back; upload still off
            assert back.participant.user_id == "dj" and not back.participant.audio
            ok(await host.request(EnableUpload, enabled=True))
            await host.send_bytes(encode_client_media(2, 960, b"\xf8\xff\xfe"))
            assert (await fan.media.receive()).seq == 2
    assert logged(server.event_log.directory)[3:] == [
        "muted m dj by operator local", "upload m dj False", "unmuted m dj by operator local", "upload m dj True",
    ]


async def test_admin_end_session_closes_the_connection_or_ends_a_held_one(nursery: trio.Nursery, data_dir: Path) -> None:
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir, resume_grace=30.0))
    with trio.fail_after(10):
        async with open_wire(running.url) as admin, open_wire(running.url) as host:
            ok(await host.request(Join, channel="e", user_id="dj", role=HOST))
            async with open_wire(running.url) as fan:
                ok(await fan.request(Join, channel="e", user_id="fan"))
                ok(await admin.request(AdminEndSession, channel="e", user_id="fan"))
                assert (await next_push(fan, Left)).reason is Reason.KICKED
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await fan.ws.get_message()
                assert closed.value.reason.code == 1008
            # A session held for resume after a drop: ended now, not after the grace period.
            async with open_wire(running.url) as dropper:
                reply = ok(await dropper.request(Join, channel="e", user_id="walker"))
                token = channel_info_from_wire(reply.result).session_token
                await dropper.ws._stream.aclose()
            await wait_until(lambda: token in running.registry._suspended, "the dropped session to be held")
            (_, walker) = await members(admin, "e")
            assert (walker.user_id, walker.session) == ("walker", "held")
            ok(await admin.request(AdminEndSession, channel="e", user_id="walker"))
            assert [m.user_id for m in await members(admin, "e")] == ["dj"]
            async with open_wire(running.url) as again:
                assert (await again.request(Resume, session_token=token)).reason is Reason.NOT_FOUND
    running.shutdown()
    await running.stopped.wait()
    assert "left e walker kicked by operator local" in logged(data_dir)


@pytest.fixture
async def secured(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir, secret=SECRET))
    yield running
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()


async def test_with_a_secret_admin_requests_need_an_admin_token(secured: RunningServer) -> None:
    member_token = mint_token(SECRET, channel="s", user_id="dj", roles=[HOST], now=time.time(), ttl=60)
    refusals = {
        "no token": ({}, Reason.NO_PERMISSION),
        "a member's join token": ({"token": member_token}, Reason.NO_PERMISSION),
        "another secret's admin token": ({"token": mint_admin_token(b"other", user_id="ops", now=time.time(), ttl=60)}, Reason.TOKEN_INVALID),
        "an expired admin token": ({"token": mint_admin_token(SECRET, user_id="ops", now=time.time() - 120, ttl=60)}, Reason.TOKEN_EXPIRED),
        "not a token": ({"token": "x.y.z"}, Reason.TOKEN_INVALID),
    }
    admin_token = mint_admin_token(SECRET, user_id="ops-alice", now=time.time(), ttl=60)
    with trio.fail_after(10):
        async with open_wire(secured.url) as admin, open_wire(secured.url) as host:
            ok(await host.request(Join, channel="s", user_id="dj", role=HOST, token=member_token))
            for what, (fields, reason) in refusals.items():
                for request, extra in ((AdminChannels, {}), (AdminKick, {"channel": "s", "user_id": "dj"})):
                    reply = await admin.request(request, **extra, **fields)
                    assert reply.reason is reason, (what, request.TYPE, reply)
            assert [s.channel_id for s in await channels(admin, token=admin_token)] == ["s"]
            ok(await admin.request(AdminStop, channel="s", token=admin_token))
            assert (await next_push(host, Left)).reason is Reason.OVER
    assert logged(secured.event_log.directory)[-1] == "stopped s over by operator ops-alice"


async def test_sdk_host_muted_stops_sending_and_after_unmute_uploads_again_by_itself(server: RunningServer) -> None:
    with trio.fail_after(20):
        async with Client.connect(server.url, user_id="dj") as h, Client.connect(server.url, user_id="fan") as f, open_wire(server.url) as admin:
            host = MediaChannel.create(h, MediaDevice.create(source=ToneSource(440.0)))
            fan = MediaChannel.create(f, MediaDevice.create())
            host.set_custom_role(HOST)
            host.enable_upload_audio_stream(True)
            assert (await host.join_async("air")).result
            assert (await fan.join_async("air")).result
            await wait_until(lambda: fan.receiver.stats.packets > 0, "the fan to hear the host")
            ok(await admin.request(AdminMute, channel="air", user_id="dj"))
            await wait_until(lambda: host.self_participant is not None and not host.self_participant.audio, "the host to learn it is muted")
            sent = host.media_sent
            await trio.sleep(0.2)  # ten frames' time: none may go out while muted
            # None is sent once the host knows. (Frames already on their way when the mute was
            # decided are refused, and those refusals may arrive after the update: not counted.)
            assert host.media_sent == sent
            ok(await admin.request(AdminMute, channel="air", user_id="dj", muted=False))
            heard = fan.receiver.stats.packets
            await wait_until(lambda: fan.receiver.stats.packets > heard + 10, "the fan to hear the host again, with no call by the host")
