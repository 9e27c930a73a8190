"""Cluster mode, failure semantics: what a node's death does to the members it held.

Real `airwave serve --cluster` processes are the nodes that get SIGKILLed; the nodes that
survive run in this process (so the test can read their channel actors); one real
nats-server; clients are the SDK (real Opus through PyAV) and wires over loopback WebSockets.

What is promised (docs/operations.md section 10, "What each failure does"):
- a listener whose node is killed resumes on another node within the resume grace: no leave
  and no new join in the stream, the same sid, and it hears the host again within 5 s;
- members of a dead node are ghosts no longer: the owner, hearing no roll call for them
  for one lease TTL, holds them for the resume grace and then ends them with network;
- the owner's death is noticed by a follower through the roll call (its owner falls
  silent), which takes the channel over: the instance goes on, the others are unaffected,
  and the dead owner's members may resume on a survivor within the grace.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import trio

from airwave.actors.cluster import NatsBridge, read_records
from airwave.actors.cluster.lease import LeaseSettings
from airwave.actors.core import fold
from airwave.actors.log.replay import replay_records
from airwave.audio import ToneSource
from airwave.client import Client, ConnectionState, ConnectionStateEvent, JoinResult, MediaChannel, MediaDevice, ReconnectPolicy
from airwave.protocol import ChannelState, CustomRole, Join, Resume, SetCustomProperty, channel_info_from_wire, encode_client_media
from airwave.protocol.sessiontoken import resume_key
from airwave.protocol.tokens import mint_token
from airwave.wire import open_wire

from helpers import HOST, ok, steady_media, wait_until
from natsserver import NatsServer, bridge, nats_server  # noqa: F401 (fixtures)
from test_cluster_node import TTL, cluster_node, events_of, processes, start_node_process, wait_listening  # noqa: F401 (fixture)

HEARD_AGAIN_WITHIN = 5.0  # seconds from the SIGKILL to audio again (the bound)


async def test_cluster_listener_whose_node_is_killed_resumes_on_another_node_and_hears_the_host_again(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    grace = 2.0
    process, c_url = start_node_process(nats_server, "node-c", tmp_path, "--resume-grace", str(grace))
    processes.append(process)
    async with (
        cluster_node(nats_server, "node-a", tmp_path, resume_grace=grace) as a,
        cluster_node(nats_server, "node-b", tmp_path, resume_grace=grace) as b,
    ):
        await wait_listening(c_url, process)
        with trio.fail_after(30):
            async with (
                Client.connect(a.url, user_id="host") as h,
                Client.connect([c_url, b.url], user_id="fan", reconnect=ReconnectPolicy(0.05, 0.2, 10.0)) as f,
            ):
                host = MediaChannel.create(h, MediaDevice.create(source=ToneSource(440)))
                fan = MediaChannel.create(f, MediaDevice.create())
                host.set_custom_role(CustomRole.ROLE_0)
                host.enable_upload_audio_stream(True)
                assert (await host.join_async("show")).result  # node-a owns the channel
                assert (await fan.join_async("show")).result  # on node-c, a follower
                await wait_until(lambda: fan.receiver.stats.packets > 10, "the fan hears the host")
                owner = a.registry.find("show")
                assert owner is not None and owner.channel is not None
                sid = owner.channel.members["fan"].sid
                token = fan._session_token
                await wait_until(lambda: owner.roll.member_with_key(resume_key(token)) == "fan", "node-c announced the fan")
                events = fan.events()

                process.send_signal(signal.SIGKILL)
                killed = trio.current_time()
                heard = fan.receiver.stats.packets
                states = []
                async for event in events:
                    assert not isinstance(event, JoinResult), "the fan rejoined instead of resuming"
                    if isinstance(event, ConnectionStateEvent):
                        states.append(event.state)
                        if event.state is ConnectionState.CONNECTED:
                            break
                # 10 packets (200 ms of audio) past what was heard when node-c died: it flows again.
                await wait_until(lambda: fan.receiver.stats.packets > heard + 10, "the fan hears the host again", timeout=HEARD_AGAIN_WITHIN)
                took = trio.current_time() - killed
                print(f"\nSIGKILL of the fan's node -> resumed on node-b and hearing the host again: {took:.2f} s")
                assert took <= HEARD_AGAIN_WITHIN
                assert states == [ConnectionState.RECONNECTING, ConnectionState.CONNECTED]
                assert f.url == b.url and fan.state is ChannelState.JOINED
                follower = b.registry.find("show")
                assert follower is not None and follower.follower and follower.session("fan") is not None
                assert owner.channel.members["fan"].sid == sid  # the same member
                # Past the grace, still there: node-b announces the fan now.
                await trio.sleep(TTL + grace - (trio.current_time() - killed) + 0.3)
                assert "fan" in owner.channel.members
                records = await read_records(bridge, channel="show")
                assert events_of(records) == [
                    "channel_created show#1 host", "participant_joined show#1 host", "participant_joined show#1 fan",
                ]


async def test_cluster_owner_killed_its_members_leave_after_the_grace_and_the_others_go_on(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    grace = 1.0
    process, d_url = start_node_process(nats_server, "node-d", tmp_path, "--resume-grace", str(grace))
    processes.append(process)
    async with (
        cluster_node(nats_server, "node-a", tmp_path, resume_grace=grace) as a,
        cluster_node(nats_server, "node-b", tmp_path, resume_grace=grace) as b,
    ):
        await wait_listening(d_url, process)
        with trio.fail_after(30):
            async with (
                open_wire(d_url) as early, open_wire(b.url) as host, open_wire(a.url) as fan,
                Client.connect([d_url, a.url], user_id="mover", reconnect=ReconnectPolicy(0.05, 0.2, 10.0)) as m,
            ):
                ok(await early.request(Join, channel="show", user_id="early"))  # node-d owns the channel
                joined = ok(await host.request(Join, channel="show", user_id="host", role=HOST, upload=True))
                ok(await fan.request(Join, channel="show", user_id="fan"))
                mover = MediaChannel.create(m, MediaDevice.create())
                assert (await mover.join_async("show")).result  # on node-d too; it will come back on node-a
                followers = [node.registry.find("show") for node in (a, b)]
                assert all(f is not None and f.follower for f in followers)
                await wait_until(
                    lambda: all(f is not None and f.roll.member_with_key(resume_key(mover._session_token)) == "mover" for f in followers),
                    "node-d announced its members",
                )
                sid = followers[0].channel.members["mover"].sid  # type: ignore[union-attr]
                async with steady_media(host, [fan], channel_info_from_wire(joined.result).self_sid, min_frames=200):
                    process.send_signal(signal.SIGKILL)
                    killed = trio.current_time()

                    def new_owner() -> object:
                        return next((f for f in followers if f is not None and not f.follower), None)

                    await wait_until(lambda: new_owner() is not None, "a follower took over", timeout=TTL * 3 + 1)
                    took_over = trio.current_time() - killed
                    owner = new_owner()
                    assert owner is not None and owner.channel is not None
                    await wait_until(lambda: "early" not in owner.channel.members, "early left", timeout=TTL * 2 + grace + 2)  # type: ignore[union-attr]
                    gone = trio.current_time() - killed
                    print(f"\nSIGKILL of the owner -> taken over after {took_over:.2f} s; its member ended after {gone:.2f} s")
                    assert grace <= gone <= TTL * 2 + grace + 1.0  # held for the grace, then ended
                    ok(await host.request(SetCustomProperty, value="after the owner died"))  # the new owner decides
                    # The SDK member of the dead node resumed on node-a (through the take-over):
                    # the same member, hearing the host again.
                    heard = mover.receiver.stats.packets
                    await wait_until(lambda: mover.receiver.stats.packets > heard + 10, "the mover hears the host")
                    assert m.url == a.url and mover.state is ChannelState.JOINED
                    assert owner.channel.members["mover"].sid == sid  # type: ignore[union-attr]
                    assert a.registry.find("show").session("mover") is not None  # type: ignore[union-attr]
                records = await read_records(bridge, channel="show")
                assert events_of(records) == [
                    "channel_created show#1 early", "participant_joined show#1 early", "participant_joined show#1 host",
                    "participant_joined show#1 fan", "participant_joined show#1 mover", "participant_left show#1 early network",
                    "custom_property_changed show#1 ",
                ]
                live = fold(item.event for item in replay_records(records, None))
                assert list(live.values()) == [owner.channel]  # type: ignore[union-attr]
                other = next(f for f in followers if f is not owner)
                assert other is not None
                await wait_until(lambda: other.channel == owner.channel, "the other node applied the same events")  # type: ignore[union-attr]


async def test_cluster_dropped_session_resumed_on_another_live_node_moves_there_with_its_token_expiry(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    """Token mode, both nodes alive: a session dropped on node-a (held there for the grace)
    resumes on node-b. The member moves (same sid, nothing logged), node-a lets its held
    session go, so its grace timer ends nothing; the session keeps its join token's expiry."""
    secret, grace = b"a cluster's shared secret for the tests", 1.0
    expires = time.time() + 600

    def token(user: str, role: CustomRole) -> str:
        return mint_token(secret, channel="show", user_id=user, roles=[role], now=expires - 600, ttl=600)

    async with (
        cluster_node(nats_server, "node-a", tmp_path, secret=secret, resume_grace=grace) as a,
        cluster_node(nats_server, "node-b", tmp_path, secret=secret, resume_grace=grace) as b,
    ):
        with trio.fail_after(15):
            async with open_wire(a.url) as host, open_wire(a.url) as fan:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST, upload=True, token=token("host", HOST)))
                reply = ok(await fan.request(Join, channel="show", user_id="fan", token=token("fan", CustomRole.ROLE_1)))
                info = channel_info_from_wire(reply.result)
                await fan.ws._stream.aclose()  # the network drops it
                await wait_until(lambda: a.registry.suspensions("show"), "node-a holds the dropped session")
                async with open_wire(b.url) as again:
                    resumed = ok(await again.request(Resume, session_token=info.session_token))
                    assert channel_info_from_wire(resumed.result).self_sid == info.self_sid
                    follower, owner = b.registry.find("show"), a.registry.find("show")
                    assert follower is not None and owner is not None
                    session = follower.session("fan")
                    assert session is not None and session.token_expires_at == int(expires)
                    assert owner.session("fan") is None  # node-a let it go
                    await host.send_bytes(encode_client_media(7, 0, b"\xf8x"))
                    with trio.fail_after(2):
                        assert (await again.media.receive()).seq == 7  # heard on node-b
                    await trio.sleep(grace + 0.3)  # node-a's grace timer has fired: refused as stale
                    assert "fan" in owner.channel.members  # type: ignore[union-attr]
        assert events_of(await read_records(bridge, channel="show")) == [
            "channel_created show#1 host", "participant_joined show#1 host", "participant_joined show#1 fan",
        ]


async def test_cluster_owner_killed_a_fresh_node_that_claims_the_channel_goes_on_with_its_instance(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The dead owner's lease expired before any follower took over (node-a's roll call waits
    3 s here), and a join arrives at node-b, which never had the channel: node-b takes the
    lease and, since node-a still follows the instance, goes on with it instead of ending
    it: nothing ends for node-a's member, and both nodes agree on the channel."""
    process, d_url = start_node_process(nats_server, "node-d", tmp_path)
    processes.append(process)
    await wait_listening(d_url, process)  # first: the lease bucket (its TTL) is node-d's
    async with (
        cluster_node(nats_server, "node-a", tmp_path, lease=LeaseSettings(ttl=3.0, renew_every=1.0)) as a,
        cluster_node(nats_server, "node-b", tmp_path) as b,
    ):
        with trio.fail_after(15):
            async with open_wire(d_url) as early, open_wire(a.url) as fan, open_wire(b.url) as late:
                ok(await early.request(Join, channel="show", user_id="early"))  # node-d owns the channel
                ok(await fan.request(Join, channel="show", user_id="fan"))
                process.send_signal(signal.SIGKILL)
                await trio.sleep(TTL + 0.4)  # node-d's lease has expired; node-a waits for 3 s of silence
                ok(await late.request(Join, channel="show", user_id="late"))
                owner, follower = b.registry.find("show"), a.registry.find("show")
                assert owner is not None and not owner.follower and follower is not None and follower.follower
                await wait_until(lambda: follower.channel == owner.channel, "node-a applied node-b's records")
                assert follower.session("fan") is not None
        assert events_of(await read_records(bridge, channel="show")) == [
            "channel_created show#1 early", "participant_joined show#1 early", "participant_joined show#1 fan",
            "participant_joined show#1 late",
        ]
