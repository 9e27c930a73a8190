"""Bad input gets a clear error and loses nothing.

Every test runs against a real server on a loopback port with a real event log, over real
WebSockets. In each, a host streams numbered media frames to a listener in the same channel
while another client misbehaves (`steady_media` checks that every frame arrived, in order);
each refusal is checked for its exact reason code and for what happens to the offending
connection; and at the end the event log is replayed and must hold exactly the expected events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio
import trio.testing
import trio_websocket

from airwave.actors.server import RunningServer
from airwave.protocol import (
    CustomRole,
    CustomState,
    EnableUpload,
    Error,
    Hello,
    Join,
    Kick,
    Leave,
    Left,
    MemberCount,
    MessageReceived,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Ping,
    Query,
    Reason,
    SendMessage,
    SetCustomProperty,
    SetRole,
    SetState,
    Stop,
    SubscribeAudio,
    channel_info_from_wire,
    encode_client_media,
    limits,
    query_info_from_wire,
)
from airwave.wire import Wire, open_wire

from helpers import AUDIENCE, HOST, logged, next_push, ok, settle, steady_media, wait_until

ON_MIC = CustomState.STATE_0


@asynccontextmanager
async def on_air(server: RunningServer, channel: str, **host_join: object) -> AsyncIterator[tuple[Wire, Wire, int]]:
    """A host (uploading) and a listener in ``channel``; both leave, listener first, at the end."""
    async with open_wire(server.url) as host, open_wire(server.url) as listener:
        reply = ok(await host.request(Join, channel=channel, user_id="host", role=HOST, upload=True, **host_join))
        sid = channel_info_from_wire(reply.result).self_sid
        ok(await listener.request(Join, channel=channel, user_id="listener", password=host_join.get("password")))
        await next_push(host, ParticipantJoined)
        yield host, listener, sid
        ok(await listener.request(Leave))
        ok(await host.request(Leave))


def opening(channel: str) -> list[str]:
    return [f"created {channel} by host", f"joined {channel} host role=0 upload", f"joined {channel} listener role=1"]


def closing(channel: str) -> list[str]:
    return [f"left {channel} listener quit", f"left {channel} host quit", f"stopped {channel} none"]


def errors(pushes: list[object]) -> list[tuple[Reason, int | None]]:
    return [(p.reason, p.ref) for p in pushes if isinstance(p, Error)]


def packed(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


# --- the session lifecycle: hello first, once ------------------------------------------------


async def test_session_requests_before_and_after_hello_get_lifecycle_reasons(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "hello") as (host, listener, sid):
            async with steady_media(host, [listener], sid), open_wire(server.url, hello=False) as raw:
                assert (await raw.request(Join, channel="hello", user_id="early")).reason is Reason.NOT_LOGIN
                assert (await raw.request(Query, channel="hello")).reason is Reason.NOT_LOGIN
                assert (await raw.request(Ping)).reason is Reason.NOT_LOGIN

                refused = await raw.request(Hello, version=limits.PROTOCOL_VERSION + 1)
                assert refused.reason is Reason.PROTOCOL_ERROR and "version 1" in refused.message
                # Still not logged in, and free to try again.
                assert (await raw.request(Join, channel="hello", user_id="early")).reason is Reason.NOT_LOGIN
                hello = ok(await raw.request(Hello, version=limits.PROTOCOL_VERSION, client="test"))
                assert hello.result["version"] == limits.PROTOCOL_VERSION

                assert (await raw.request(Hello, version=limits.PROTOCOL_VERSION)).reason is Reason.CALL_FUNCTION_ERROR
                ok(await raw.request(Join, channel="hello", user_id="late"))
                assert (await raw.request(Hello, version=limits.PROTOCOL_VERSION)).reason is Reason.CALL_FUNCTION_ERROR
                ok(await raw.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("hello"),
        "joined hello late role=1",
        "left hello late quit",
        *closing("hello"),
    ]


# --- undecodable frames ----------------------------------------------------------------------


async def test_decoder_unreadable_frames_get_protocol_error_push_without_ref(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "garbage") as (host, listener, sid), open_wire(server.url) as abuser:
            ok(await abuser.request(Join, channel="garbage", user_id="abuser"))
            await next_push(host, ParticipantJoined)
            # The abuser is a listener too: nothing it sends may cost it its place or its media.
            async with steady_media(host, [listener, abuser], sid):
                bad_frames: list[bytes | str] = [
                    b"\xc1\xff\x00 not msgpack",  # 0xc1 is never used by msgpack
                    b"",  # an empty message
                    msgpack.packb([1, 2, 3]),  # a value, but not a map
                    msgpack.packb("ping"),
                    msgpack.packb({"type": "ping", "id": 7}) + b"\x00",  # trailing bytes: two values
                    msgpack.packb({1: "ping"}),  # a non-string key
                    "a text frame",
                    packed(type="dance"),  # unknown type, no id
                    packed(type=5),  # type not a string
                    packed(channel="garbage"),  # no type at all
                    packed(type="ping", id=True),  # an id that is a bool is no id
                ]
                for frame in bad_frames:
                    await abuser.ws.send_message(frame)
                    expected = Reason.INVALID_PARAM if frame == packed(type="ping", id=True) else Reason.PROTOCOL_ERROR
                    assert errors(await settle(abuser)) == [(expected, None)], frame

                # A readable id gets a reply to that id instead (protocol.md 2.1).
                for request_id, frame in ((9001, packed(type="dance", id=9001)), (9002, packed(id=9002))):
                    reply = await abuser.request_raw(request_id, frame)
                    assert (reply.id, reply.reason) == (request_id, Reason.PROTOCOL_ERROR)
                assert errors(await settle(abuser)) == []
            ok(await abuser.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("garbage"),
        "joined garbage abuser role=1",
        "left garbage abuser quit",
        *closing("garbage"),
    ]


async def test_decoder_bad_fields_with_readable_id_reply_invalid_param(server: RunningServer) -> None:
    bad_requests = {
        9101: packed(type="ping", id=9101, colour="red"),  # unknown field
        9102: packed(type="join", id=9102, channel=7, user_id="x"),  # wrong type
        9103: packed(type="join", id=9103, channel="fields2", user_id="x", capacity=True),  # bool for int
        9104: packed(type="join", id=9104, channel="fields2", user_id="x", upload=1),  # int for bool
        9105: packed(type="join", id=9105, channel=b"fields2", user_id="x"),  # bin for str
        9106: packed(type="kick", id=9106),  # a required field missing
        9107: packed(type="join", id=9107, channel="fields2", user_id="x", role=3),  # not a role's bit
        9108: packed(type="join", id=9108, channel="fields2", user_id="x", heartbeat_time=5, heartbeat_timeout=4),
        9109: packed(type="send_message", id=9109, msg_type="t", content=""),  # content 1..4096 bytes
    }
    with trio.fail_after(10):
        async with on_air(server, "fields") as (host, listener, sid), open_wire(server.url) as abuser:
            async with steady_media(host, [listener], sid):
                for request_id, frame in bad_requests.items():
                    reply = await abuser.request_raw(request_id, frame)
                    assert (reply.id, reply.reason) == (request_id, Reason.INVALID_PARAM), reply
                    assert reply.message  # a readable explanation
                assert errors(await settle(abuser)) == []
                # Nothing was created or joined; the connection is as good as new.
                assert (await abuser.request(Query, channel="fields2")).reason is Reason.NOT_FOUND
                ok(await abuser.request(Join, channel="fields", user_id="x"))
                ok(await abuser.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("fields"),
        "joined fields x role=1",
        "left fields x quit",
        *closing("fields"),
    ]


# --- sizes -----------------------------------------------------------------------------------


async def test_size_limits_too_large_keeps_connection_and_over_1mib_closes_1009(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "sizes") as (host, listener, sid), open_wire(server.url) as abuser:
            ok(await abuser.request(Join, channel="sizes", user_id="abuser"))
            async with steady_media(host, [listener], sid):
                # A control message over 16 KiB (but a WebSocket message under 64 KiB).
                content = "x" * (limits.MAX_CONTROL_BYTES + 1)
                oversized = packed(type="send_message", id=9201, msg_type="t", content=content)
                assert limits.MAX_CONTROL_BYTES < len(oversized) < limits.MAX_FRAME_BYTES
                await abuser.send_bytes(oversized)
                assert errors(await settle(abuser)) == [(Reason.TOO_LARGE, None)]
                # A WebSocket message between 64 KiB and 1 MiB: too_large, and the connection stays.
                for size in (limits.MAX_FRAME_BYTES + 1, 512 * 1024, 1 << 20):
                    await abuser.send_bytes(b"\x81" + bytes(size - 1))
                    assert errors(await settle(abuser)) == [(Reason.TOO_LARGE, None)]
                # An oversized media frame from a member (the abuser may not publish either way).
                await abuser.send_bytes(encode_client_media(1, 960, b"\xf8" * 1275) + b"\x00")
                assert errors(await settle(abuser)) == [(Reason.TOO_LARGE, None)]
                ok(await abuser.request(Ping))  # the session still works

                # Over 1 MiB: trio-websocket closes that connection with 1009; nobody else notices.
                async with open_wire(server.url) as huge:
                    try:
                        await huge.send_bytes(bytes((1 << 20) + 1))
                    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):  # the close may win
                        pass
                    with trio.fail_after(3):
                        await huge.closed.wait()
                    assert huge.ws.closed is not None and huge.ws.closed.code == 1009
                ok(await abuser.request(Ping))
            ok(await abuser.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("sizes"),
        "joined sizes abuser role=1",
        "left sizes abuser quit",
        *closing("sizes"),
    ]


# --- requests in the wrong state -------------------------------------------------------------


async def test_requests_in_wrong_state_get_already_joined_or_call_function_error(server: RunningServer) -> None:
    idle_only_refused = [
        (Leave, {}),
        (Stop, {}),
        (SetRole, {"role": CustomRole.ROLE_2}),
        (SetState, {"state": ON_MIC}),
        (Kick, {"user_id": "host"}),
        (EnableUpload, {"enabled": True}),
        (SendMessage, {"msg_type": "t", "content": "hi"}),
        (SubscribeAudio, {"user_id": "host", "enabled": False}),
        (SetCustomProperty, {"value": "x"}),
    ]
    with trio.fail_after(10):
        async with on_air(server, "state") as (host, listener, sid), open_wire(server.url) as abuser:
            async with steady_media(host, [listener], sid):
                for kind, fields in idle_only_refused:
                    assert (await abuser.request(kind, **fields)).reason is Reason.CALL_FUNCTION_ERROR, kind
                ok(await abuser.request(Join, channel="state", user_id="abuser"))
                assert (await abuser.request(Join, channel="state", user_id="abuser")).reason is Reason.ALREADY_JOINED
                assert (await abuser.request(Join, channel="other", user_id="abuser")).reason is Reason.ALREADY_JOINED
                ok(await abuser.request(Leave))
                # Idle again: the same refusals as before joining.
                for kind, fields in idle_only_refused:
                    assert (await abuser.request(kind, **fields)).reason is Reason.CALL_FUNCTION_ERROR, kind
                assert errors(await settle(abuser)) == []
    assert logged(server.event_log.directory) == [
        *opening("state"),
        "joined state abuser role=1",
        "left state abuser quit",
        *closing("state"),
    ]


# --- join refusals ---------------------------------------------------------------------------


async def test_join_password_and_capacity_refusals_leave_channel_unchanged(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "locked", password="s3cret") as (host, listener, sid):
            async with steady_media(host, [listener], sid), open_wire(server.url) as a, open_wire(server.url) as b:
                wrong = await a.request(Join, channel="locked", user_id="a", password="guess")
                assert wrong.reason is Reason.INVALID_PASSWORD
                assert (await a.request(Join, channel="locked", user_id="a")).reason is Reason.INVALID_PASSWORD
                # A refused join leaves the session idle, free to try again.
                ok(await a.request(Join, channel="locked", user_id="a", password="s3cret"))
                ok(await a.request(Leave))

                ok(await a.request(Join, channel="solo", user_id="a", capacity=1))
                full = await b.request(Join, channel="solo", user_id="b")
                assert full.reason is Reason.FULL
                ok(await b.request(Join, channel="locked", user_id="b", password="s3cret"))
                ok(await b.request(Leave))
                ok(await a.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("locked"),
        "joined locked a role=1",
        "left locked a quit",
        "created solo by a",
        "joined solo a role=1",
        "joined locked b role=1",
        "left locked b quit",
        "left solo a quit",
        "stopped solo none",
        *closing("locked"),
    ]


async def test_join_uri_mode_finds_only_existing_channels(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "uri") as (host, listener, sid), open_wire(server.url) as a:
            async with steady_media(host, [listener], sid):
                for channel in ("nowhere", "airwave:nowhere"):
                    missing = await a.request(Join, channel=channel, user_id="a", uri_mode=True)
                    assert missing.reason is Reason.NOT_FOUND, channel
                # A uri is joined with uri_mode; by id it is not a channel id.
                assert (await a.request(Join, channel="airwave:uri", user_id="a")).reason is Reason.INVALID_PARAM
                number = (await a.request(Query, channel="uri")).result["channel_number"]
                for channel in ("uri", "airwave:uri"):
                    reply = ok(await a.request(Join, channel=channel, user_id="a", uri_mode=True))
                    info = channel_info_from_wire(reply.result)
                    assert (info.channel_id, info.channel_uri, info.channel_number) == ("uri", "airwave:uri", number)
                    ok(await a.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("uri"),
        "joined uri a role=1",
        "left uri a quit",
        "joined uri a role=1",
        "left uri a quit",
        *closing("uri"),
    ]


# --- permissions -----------------------------------------------------------------------------


async def test_permissions_audience_stop_and_kick_refused_and_nobody_kicks_themselves(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "perm") as (host, listener, sid), open_wire(server.url) as fan:
            ok(await fan.request(Join, channel="perm", user_id="fan"))
            async with steady_media(host, [listener], sid):
                assert (await fan.request(Stop)).reason is Reason.NO_PERMISSION
                assert (await fan.request(Kick, user_id="listener")).reason is Reason.NO_PERMISSION
                assert (await fan.request(Kick, user_id="host")).reason is Reason.NO_PERMISSION
                assert (await fan.request(SetRole, role=HOST)).reason is Reason.NO_PERMISSION
                assert (await fan.request(SetState, state=ON_MIC)).reason is Reason.NO_PERMISSION
                assert (await fan.request(SetRole, role=AUDIENCE, user_id="host")).reason is Reason.NO_PERMISSION
                assert (await fan.request(EnableUpload, enabled=True)).reason is Reason.NO_PERMISSION
                assert (await fan.request(SetCustomProperty, value="mine")).reason is Reason.NO_PERMISSION
                assert (await host.request(Kick, user_id="host")).reason is Reason.INVALID_PARAM
                assert (await host.request(Kick, user_id="ghost")).reason is Reason.NOT_FOUND
                ok(await fan.request(Ping))
            ok(await fan.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("perm"),
        "joined perm fan role=1",
        "left perm fan quit",
        *closing("perm"),
    ]


# --- media from someone who may not publish --------------------------------------------------


async def test_media_from_audience_dropped_with_at_most_one_error_per_second(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "mute") as (host, listener, sid), open_wire(server.url) as fan:
            fan_sid = channel_info_from_wire(ok(await fan.request(Join, channel="mute", user_id="fan")).result).self_sid
            async with steady_media(host, [listener], sid) as flow:

                async def burst(start: int) -> list[tuple[Reason, int | None]]:
                    for seq in range(start, start + 50):
                        await fan.send_bytes(encode_client_media(seq, seq * 960, b"\xf8fan", level=90))
                    return errors(await settle(fan))

                assert await burst(0) == [(Reason.NO_PERMISSION, None)]
                first_error = trio.current_time()  # the server sent that error before this moment
                assert await burst(50) == []  # within the same second: dropped silently
                await trio.sleep_until(first_error + 1.05)
                assert await burst(100) == [(Reason.NO_PERMISSION, None)]  # a new second, one new error
            assert fan_sid != sid
            assert not [p for p in flow.packets(listener) if p.sid == fan_sid]
            # The host hears every other member: it heard nothing from the fan either.
            heard = []
            while True:
                try:
                    heard.append(host.media.receive_nowait())
                except trio.WouldBlock:
                    break
            assert not [p for p in heard if p.sid == fan_sid]
            ok(await fan.request(Leave))

        async with open_wire(server.url) as stranger:
            await stranger.send_bytes(encode_client_media(0, 0, b"\xf8x"))
            assert errors(await settle(stranger)) == [(Reason.CALL_FUNCTION_ERROR, None)]
    assert logged(server.event_log.directory) == [
        *opening("mute"),
        "joined mute fan role=1",
        "left mute fan quit",
        *closing("mute"),
    ]


# --- identity: the newer session wins --------------------------------------------------------


async def test_duplicate_user_id_older_session_left_duplicate_session_newer_in(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "dup") as (host, listener, sid):
            async with steady_media(host, [listener], sid), open_wire(server.url) as old, open_wire(server.url) as new:
                ok(await old.request(Join, channel="dup", user_id="twin"))
                await next_push(host, ParticipantJoined)
                reply = ok(await new.request(Join, channel="dup", user_id="twin"))
                new_sid = channel_info_from_wire(reply.result).self_sid

                left = await next_push(old, Left)
                assert (left.channel, left.reason) == ("dup", Reason.DUPLICATE_SESSION)
                gone = await next_push(host, ParticipantLeft)
                assert (gone.user_id, gone.reason) == ("twin", Reason.DUPLICATE_SESSION)
                joined = await next_push(host, ParticipantJoined)
                assert (joined.participant.user_id, joined.participant.sid) == ("twin", new_sid)
                with trio.fail_after(2):
                    assert (await new.media.receive()).sid == sid  # the newer session is in

                # The older connection is idle again: it may join another channel.
                assert (await old.request(Leave)).reason is Reason.CALL_FUNCTION_ERROR
                ok(await old.request(Join, channel="elsewhere", user_id="twin"))
                ok(await old.request(Leave))
                query = query_info_from_wire(ok(await new.request(Query, channel="dup")).result)
                assert sorted(query.members) == ["host", "listener", "twin"]
                ok(await new.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("dup"),
        "joined dup twin role=1",
        "left dup twin duplicate_session",
        "joined dup twin role=1",
        "created elsewhere by twin",
        "joined elsewhere twin role=1",
        "left elsewhere twin quit",
        "stopped elsewhere none",
        "left dup twin quit",
        *closing("dup"),
    ]


# --- kick ------------------------------------------------------------------------------------


async def test_kick_target_gets_left_kicked_and_host_sees_participant_left(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "kick") as (host, listener, sid), open_wire(server.url) as victim:
            ok(await victim.request(Join, channel="kick", user_id="victim"))
            await next_push(host, ParticipantJoined)
            async with steady_media(host, [listener], sid):
                ok(await host.request(Kick, user_id="victim"))
                left = await next_push(victim, Left)
                assert (left.channel, left.reason) == ("kick", Reason.KICKED)
                gone = await next_push(host, ParticipantLeft)
                assert (gone.user_id, gone.reason) == ("victim", Reason.KICKED)
                # An audience member's leave is for the hosts only (decision 5).
                assert not [p for p in await settle(listener) if isinstance(p, ParticipantLeft)]
                # The kicked session is idle, and its connection still works.
                refused = await victim.request(SendMessage, msg_type="t", content="hey")
                assert refused.reason is Reason.CALL_FUNCTION_ERROR
                ok(await victim.request(Ping))
    assert logged(server.event_log.directory) == [
        *opening("kick"),
        "joined kick victim role=1",
        "left kick victim kicked by host",
        *closing("kick"),
    ]


# --- presence and the scale rule (decision 5) ------------------------------------------------


async def test_presence_audience_churn_goes_to_hosts_publishers_to_everyone(server: RunningServer) -> None:
    with trio.fail_after(15):
        async with on_air(server, "scale") as (host, listener, sid):
            seen: list[tuple[float, object]] = []  # the listener's pushes, with their arrival time

            async def watch() -> None:
                async for message in listener.pushes:
                    seen.append((trio.current_time(), message))

            def counts_seen() -> int:
                return sum(isinstance(m, MemberCount) for _, m in seen)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with open_wire(server.url) as fan1, open_wire(server.url) as fan2:

                    async def churn_round() -> None:
                        """Both fans join and leave; the host hears every join and leave."""
                        for wire, name in ((fan1, "fan1"), (fan2, "fan2")):
                            ok(await wire.request(Join, channel="scale", user_id=name))
                            joined = await next_push(host, ParticipantJoined)
                            assert joined.participant.user_id == name
                        ok(await fan1.request(Leave))
                        assert (await next_push(host, ParticipantLeft)).user_id == "fan1"
                        # Pacing, not synchronisation: fan1 and fan2 stay under the control
                        # rate limit (20 requests/s), and the count is 3 for a while.
                        await trio.sleep(0.1)
                        ok(await fan2.request(Leave))
                        assert (await next_push(host, ParticipantLeft)).user_id == "fan2"

                    # Audience churn until the listener has had a member count (they come on
                    # the channel's once-a-second tick, only if the count changed), then one
                    # more round: the count changes after that push, so another one follows.
                    rounds = 0
                    while rounds < 3 or counts_seen() < 1:
                        await churn_round()
                        rounds += 1
                    await churn_round()
                    rounds += 1
                    # The member count settles on 2 (host and listener) at the next tick.
                    await wait_until(
                        lambda: counts_seen() >= 2 and isinstance(seen[-1][1], MemberCount) and seen[-1][1].count == 2,
                        "a second member count, of 2, as the listener's latest push",
                        timeout=1.5,
                    )

                    # Publishers are announced to everyone: a second host, and a fan put on the mic.
                    ok(await fan1.request(Join, channel="scale", user_id="cohost", role=HOST))
                    info = channel_info_from_wire(ok(await fan2.request(Join, channel="scale", user_id="fan2")).result)
                    assert sorted(p.user_id for p in info.participants) == ["cohost", "fan2", "host"]
                    assert info.member_count == 4
                    ok(await host.request(SetState, state=ON_MIC, user_id="fan2"))
                    ok(await fan1.request(Leave))
                    ok(await fan2.request(Leave))
                    # The pushes those leaves caused were queued to the listener before the
                    # reply to its ping; once every task is blocked, `watch` has taken them all.
                    ok(await listener.request(Ping))
                    await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()

    counts = [(at, m.count) for at, m in seen if isinstance(m, MemberCount)]
    assert len(counts) >= 2 and rounds >= 3
    gaps = [later - earlier for (earlier, _), (later, _) in zip(counts, counts[1:])]
    assert min(gaps) >= 0.8, f"member_count more often than once a second: {gaps}"  # 0.25 s ticks, arrival jitter
    presence = [m for _, m in seen if isinstance(m, ParticipantJoined | ParticipantLeft | ParticipantUpdated)]
    described = [
        (type(m).__name__, m.user_id if isinstance(m, ParticipantLeft) else m.participant.user_id) for m in presence
    ]
    # Not one of the audience's 4 x rounds joins and leaves reached the listener.
    assert described == [
        ("ParticipantJoined", "cohost"),
        ("ParticipantUpdated", "fan2"),
        ("ParticipantLeft", "cohost"),
        ("ParticipantLeft", "fan2"),  # on the mic, so a publisher: everyone hears it leave
    ]
    one_round = ["joined scale fan1 role=1", "joined scale fan2 role=1", "left scale fan1 quit", "left scale fan2 quit"]
    churn = one_round * rounds
    assert logged(server.event_log.directory) == [
        *opening("scale"),
        *churn,
        "joined scale cohost role=0",
        "joined scale fan2 role=1",
        "state scale fan2 0 by host",
        "left scale cohost quit",
        "left scale fan2 quit",
        *closing("scale"),
    ]


# --- query, messages, subscriptions ----------------------------------------------------------


async def test_query_send_message_and_subscribe_audio_reach_only_their_targets(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with on_air(server, "talk") as (host, listener, sid), open_wire(server.url) as other:
            ok(await other.request(Join, channel="talk", user_id="other"))
            await next_push(host, ParticipantJoined)
            async with steady_media(host, [listener], sid) as flow, open_wire(server.url) as outsider:
                # query works while idle, by id or by uri; a missing channel is not_found.
                for channel in ("talk", "airwave:talk"):
                    info = query_info_from_wire(ok(await outsider.request(Query, channel=channel)).result)
                    assert (info.channel_id, info.client_count, sorted(info.members)) == (
                        "talk", 3, ["host", "listener", "other"]
                    )
                assert (await outsider.request(Query, channel="missing")).reason is Reason.NOT_FOUND

                # send_message to everyone, then to one user.
                ok(await listener.request(SendMessage, msg_type="chat", content="hello all"))
                for wire in (host, other):
                    message = await next_push(wire, MessageReceived)
                    assert (message.from_user_id, message.to, message.content) == ("listener", None, "hello all")
                ok(await other.request(SendMessage, msg_type="ask", content="may I?", to="host"))
                message = await next_push(host, MessageReceived)
                assert (message.msg_type, message.from_user_id, message.to) == ("ask", "other", "host")
                missing = await other.request(SendMessage, msg_type="ask", content="?", to="nobody")
                assert missing.reason is Reason.NOT_FOUND
                for wire in (listener, other):  # nobody got a copy of what was not for them
                    assert not [p for p in await settle(wire) if isinstance(p, MessageReceived)]

                # subscribe_audio false: this listener stops hearing the host; the others do not.
                assert (await other.request(SubscribeAudio, user_id="nobody", enabled=False)).reason is Reason.NOT_FOUND
                with trio.fail_after(2):
                    assert (await other.media.receive()).sid == sid
                ok(await other.request(SubscribeAudio, user_id="host", enabled=False))
                while True:  # what was sent before the reply may still be queued
                    try:
                        other.media.receive_nowait()
                    except trio.WouldBlock:
                        break
                # Ten frames sent after that reply reach the subscribed listener (frames are
                # numbered from 0 and arrive in order). The server fans each frame out to every
                # subscriber at once, and whatever it queued for `other` arrives before the
                # reply to other's ping.
                sent_before = flow.sent
                await wait_until(
                    lambda: len([p for p in flow.packets(listener) if p.sid == sid]) >= sent_before + 10,
                    "ten frames sent after the unsubscribe at the subscribed listener",
                )
                ok(await other.request(Ping))
                with pytest.raises(trio.WouldBlock):
                    other.media.receive_nowait()  # an unsubscribed listener received media
                ok(await other.request(SubscribeAudio, user_id="host", enabled=True))
                with trio.fail_after(2):
                    assert (await other.media.receive()).sid == sid
            ok(await other.request(Leave))
    assert logged(server.event_log.directory) == [
        *opening("talk"),
        "joined talk other role=1",
        "left talk other quit",
        *closing("talk"),
    ]


async def test_member_count_pushes_stay_within_the_channel_budget_during_churn(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel of N listeners gets its count every N / budget seconds (at least 1 s), so a
    join storm costs O(N) member_count messages, not O(N x its duration)."""
    monkeypatch.setattr("airwave.actors.channel.MEMBER_COUNT_MESSAGES_PER_SECOND", 2)
    with trio.fail_after(20):
        async with on_air(server, "budget") as (host, watcher, _sid):
            arrivals: list[float] = []

            async def watch() -> None:
                async for message in watcher.pushes:
                    if isinstance(message, MemberCount):
                        arrivals.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with open_wire(server.url) as a, open_wire(server.url) as b, open_wire(server.url) as churner:
                    ok(await a.request(Join, channel="budget", user_id="a"))
                    ok(await b.request(Join, channel="budget", user_id="b"))
                    # An audience of 3-4: a count at most every 1.5-2 s while it keeps changing.
                    # Churn until two have arrived (about 3 s), so there is a gap to measure.
                    while len(arrivals) < 2:
                        ok(await churner.request(Join, channel="budget", user_id="churner"))
                        # Pacing, not synchronisation: the count keeps changing at a rate the
                        # control limit (20 requests/s) allows.
                        await trio.sleep(0.1)
                        ok(await churner.request(Leave))
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()

    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert len(arrivals) >= 2, arrivals
    assert min(gaps) >= 1.8, f"member_count more often than the budget allows: {gaps}"
