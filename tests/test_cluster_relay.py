"""Cluster mode, second layer: a client on any node takes part in a channel another node owns.

Three nodes in this process (each with its own NATS connection and thread) on one real
nats-server; clients over loopback WebSockets. What is promised: commands forwarded to the
owner get the replies, reason codes and pushes one server gives; every node with members
follows the owner's events (presence, member counts, forced leaves); media crosses once
per packet per node and is heard on every node, in order, once.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from airwave.actors.cluster import NatsBridge, read_records
from airwave.actors.cluster.server import ClusterServer
from airwave.protocol import (
    CustomState,
    Join,
    Kick,
    Leave,
    Left,
    MemberCount,
    MessageReceived,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Query,
    Reason,
    SendMessage,
    SetCustomProperty,
    SetState,
    Stop,
    channel_info_from_wire,
)
from airwave.wire import Wire, open_wire

from helpers import HOST, next_push, ok, steady_media, wait_until
from natsserver import NatsServer, bridge, nats_server  # noqa: F401 (fixtures)
from test_cluster_node import TTL, cluster_node, events_of, processes, start_node_process, wait_listening  # noqa: F401 (fixture)


@asynccontextmanager
async def three_nodes(nats: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[ClusterServer, ClusterServer, ClusterServer]]:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(cluster_node(nats, f"node-{n}", tmp_path)) for n in "abc"]
        yield nodes[0], nodes[1], nodes[2]


async def test_cluster_listeners_on_every_node_hear_a_host_on_another_once_per_node(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    async with three_nodes(nats_server, tmp_path) as (a, b, c):
        with trio.fail_after(15):
            async with open_wire(a.url) as host, open_wire(a.url) as near, open_wire(b.url) as b1, open_wire(b.url) as b2, open_wire(c.url) as far:
                joined = ok(await host.request(Join, channel="show", user_id="host", role=HOST, upload=True))
                for n, wire in enumerate((near, b1, b2, far)):
                    ok(await wire.request(Join, channel="show", user_id=f"fan-{n}"))
                async with steady_media(host, [near, b1, b2, far], channel_info_from_wire(joined.result).self_sid) as flow:
                    pass
                follower = b.registry.find("show")
                assert follower is not None and follower.follower
                # One message per packet reached node-b, which fanned it out to its two listeners.
                assert follower.router.stats.relayed_in == flow.sent
                assert follower.router.stats.deliveries == 2 * flow.sent
                owner = a.registry.find("show")
                assert owner is not None and owner.router.stats.relayed_in == 0  # its own frames never come back


async def test_cluster_presence_and_forced_leaves_cross_nodes(nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path) -> None:
    async with three_nodes(nats_server, tmp_path) as (a, b, c):
        with trio.fail_after(15):
            async with open_wire(a.url) as host, open_wire(b.url) as cohost, open_wire(c.url) as bob, open_wire(b.url) as carol:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await cohost.request(Join, channel="show", user_id="cohost", role=HOST))
                assert (await next_push(host, ParticipantJoined)).participant.user_id == "cohost"
                ok(await bob.request(Join, channel="show", user_id="bob"))
                # An audience join is told to the hosts, on whichever node they are.
                for wire in (host, cohost):
                    assert (await next_push(wire, ParticipantJoined)).participant.user_id == "bob"
                # The audience gets the channel's member count, counted over every node.
                ok(await carol.request(Join, channel="show", user_id="carol"))
                while (await next_push(bob, MemberCount, timeout=3)).count != 4:
                    pass
                # A host on node-a puts bob (node-c) on the mic: everyone sees it.
                ok(await host.request(SetState, state=CustomState.STATE_0, user_id="bob"))
                for wire in (bob, carol, cohost):
                    update = await next_push(wire, ParticipantUpdated)
                    assert update.participant.user_id == "bob" and update.participant.state is CustomState.STATE_0
                # A host on node-b kicks bob on node-c.
                ok(await cohost.request(Kick, user_id="bob"))
                assert (await next_push(bob, Left)).reason is Reason.KICKED
                left = await next_push(host, ParticipantLeft)
                assert left.user_id == "bob" and left.reason is Reason.KICKED
                # Stopped on node-a: node-b's members leave with over.
                ok(await host.request(Stop))
                for wire in (cohost, carol):
                    assert (await next_push(wire, Left)).reason is Reason.OVER
                assert not (await cohost.request(Leave)).ok  # idle again, as on one server
        await wait_until(lambda: all(node.registry.find("show") is None for node in (a, b, c)), "every node let the channel go")
        assert events_of(await read_records(bridge, channel="show"))[-2:] == [
            "participant_left show#1 bob kicked", "channel_stopped show#1  over",
        ]


async def test_cluster_join_by_uri_and_query_on_a_node_that_does_not_own_the_channel(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    async with three_nodes(nats_server, tmp_path) as (a, b, c):
        with trio.fail_after(15):
            async with open_wire(a.url) as host, open_wire(b.url) as bob, open_wire(c.url) as asker:
                missing = await bob.request(Join, channel="airwave:show", user_id="bob", uri_mode=True)
                assert missing.reason is Reason.NOT_FOUND
                assert (await asker.request(Query, channel="show")).reason is Reason.NOT_FOUND
                created = ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                joined = ok(await bob.request(Join, channel="airwave:show", user_id="bob", uri_mode=True))
                assert joined.result["channel_number"] == created.result["channel_number"]
                answer = ok(await asker.request(Query, channel="show"))  # node-c has no actor of it: asks node-a
                assert answer.result["members"] == ["host", "bob"] and answer.result["client_count"] == 2
                assert c.registry.find("show") is None
                assert (await asker.request(Query, channel="other")).reason is Reason.NOT_FOUND
                assert not b.placement.leases.holds("show")


async def test_cluster_newer_session_on_another_node_ends_the_older(nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path) -> None:
    async with three_nodes(nats_server, tmp_path) as (a, b, _):
        with trio.fail_after(10):
            async with open_wire(a.url) as host, open_wire(a.url) as first, open_wire(b.url) as second:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await first.request(Join, channel="show", user_id="alice"))
                ok(await second.request(Join, channel="show", user_id="alice"))
                assert (await next_push(first, Left)).reason is Reason.DUPLICATE_SESSION
                follower = b.registry.find("show")
                assert follower is not None and follower.session("alice") is not None
                owner = a.registry.find("show")
                assert owner is not None and owner.session("alice") is None


async def test_cluster_text_messages_reach_members_on_other_nodes(nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path) -> None:
    async with three_nodes(nats_server, tmp_path) as (a, b, c):
        with trio.fail_after(10):
            async with open_wire(a.url) as host, open_wire(b.url) as bob, open_wire(c.url) as carol:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await bob.request(Join, channel="show", user_id="bob"))
                ok(await carol.request(Join, channel="show", user_id="carol"))
                ok(await bob.request(SendMessage, msg_type="chat", content="hello all"))
                for wire in (host, carol):
                    message = await next_push(wire, MessageReceived)
                    assert (message.content, message.from_user_id, message.to) == ("hello all", "bob", None)
                ok(await carol.request(SendMessage, msg_type="ask", content="mic please", to="host"))
                message = await next_push(host, MessageReceived)
                assert (message.content, message.from_user_id, message.to) == ("mic please", "carol", "host")
                refused = await carol.request(SendMessage, msg_type="ask", content="?", to="nobody")
                assert refused.reason is Reason.NOT_FOUND


async def test_cluster_join_storm_spread_over_three_nodes(nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path) -> None:
    """60 listeners at once, 20 on each node: each gets its join result, the stream has each
    join once, and every node's copy of the channel agrees with the owner's."""
    count = 60
    async with three_nodes(nats_server, tmp_path) as nodes:
        a = nodes[0]
        async with open_wire(a.url) as host, trio.open_nursery() as nursery:
            ok(await host.request(Join, channel="storm", user_id="host", role=HOST))
            wires: list[Wire] = []

            async def join(n: int) -> None:
                wire = await nursery.start(_hold_wire, nodes[n % 3].url)
                wires.append(wire)
                reply = ok(await wire.request(Join, channel="storm", user_id=f"fan-{n}"))
                assert reply.result["channel_id"] == "storm"

            with trio.fail_after(30):
                async with trio.open_nursery() as joining:
                    for n in range(count):
                        joining.start_soon(join, n)
            owner = a.registry.find("storm")
            assert owner is not None and owner.channel is not None and len(owner.channel.members) == count + 1
            for node in nodes[1:]:
                follower = node.registry.find("storm")
                assert follower is not None
                await wait_until(lambda: follower.channel == owner.channel, f"{node.node} caught up")
                assert len(follower.sessions()) == count // 3
            records = await read_records(bridge, channel="storm")
            joined = [r["user_id"] for r in records if r["type"] == "participant_joined"]
            assert sorted(joined) == sorted(["host", *(f"fan-{n}" for n in range(count))])
            # Every listener, whatever its node, hears the same member count.
            with trio.fail_after(10):
                for wire in wires:
                    while (await next_push(wire, MemberCount, timeout=5)).count != count + 1:
                        pass
            nursery.cancel_scope.cancel()


async def _hold_wire(url: str, *, task_status: trio.TaskStatus[Wire] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_wire(url) as wire:
        task_status.started(wire)
        await trio.sleep_forever()


async def test_cluster_owner_killed_media_between_survivors_never_stops_and_a_survivor_takes_over(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGKILL the owner while a listener on node-b hears a host on node-c: not one frame is
    lost between them; after the dead owner's lease expired, the next command on node-b
    takes the channel over (the instance goes on, nothing is ended) and is decided there."""
    process, url = start_node_process(nats_server, "node-a", tmp_path)
    processes.append(process)
    await wait_listening(url, process)
    async with cluster_node(nats_server, "node-b", tmp_path) as b, cluster_node(nats_server, "node-c", tmp_path) as c:
        with trio.fail_after(20):
            async with open_wire(url) as early, open_wire(c.url) as host, open_wire(b.url) as listener, open_wire(b.url) as late:
                ok(await early.request(Join, channel="show", user_id="early"))  # node-a owns the channel
                joined = ok(await host.request(Join, channel="show", user_id="host", role=HOST, upload=True))
                ok(await listener.request(Join, channel="show", user_id="fan"))
                async with steady_media(host, [listener], channel_info_from_wire(joined.result).self_sid, min_frames=100):
                    process.send_signal(signal.SIGKILL)
                    process.wait(5)
                    started = trio.current_time()
                    while not (reply := await late.request(Join, channel="show", user_id="late")).ok:
                        assert reply.reason is Reason.SERVER_ERROR, reply  # until the lease expired
                        await trio.sleep(0.05)
                    took = trio.current_time() - started
                    ok(await host.request(SetCustomProperty, value="after the owner died"))  # forwarded to node-b
                owner = b.registry.find("show")
                assert owner is not None and not owner.follower and b.placement.takeovers == 1
                assert took <= TTL + 2.5, f"joins accepted again after {took:.2f} s"
        records = await read_records(bridge, channel="show")
        assert events_of(records) == [
            "channel_created show#1 early", "participant_joined show#1 early", "participant_joined show#1 host",
            "participant_joined show#1 fan", "participant_joined show#1 late", "custom_property_changed show#1 ",
        ]


def test_every_channel_command_can_be_forwarded_to_the_owner() -> None:
    """A command the codec does not know would be refused by the owner as malformed."""
    import typing

    from airwave.actors.cluster.forwarded import COMMAND_TYPES, decode_command, encode_command
    from airwave.actors.core import Command, OperatorMute

    assert set(COMMAND_TYPES.values()) == set(typing.get_args(Command))
    mute = OperatorMute(1.5, "ops", "dj", True)
    assert decode_command(encode_command(mute)) == mute
