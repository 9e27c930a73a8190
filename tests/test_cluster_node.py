"""Cluster mode end to end, first layer: server nodes (in this process, and real `airwave
serve --cluster` processes for SIGKILL and SIGSTOP) on one real nats-server; clients over
loopback WebSockets; the event log read back from JetStream.

What this layer promises: one authority per channel (the node holding its lease decides;
another node forwards its clients' commands there and follows the owner's events), the stream holds every acknowledged
event and replays to the live state, a dead owner's channel passes to another node after
the lease TTL (its members ended with server_restart), and a paused owner cannot append
after another took over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from airwave.actors.cluster import NatsBridge, read_records
from airwave.actors.cluster.lease import LeaseSettings
from airwave.actors.cluster.placement import ClusterSettings
from airwave.actors.cluster.server import ClusterServer, serve_cluster
from airwave.actors.core import fold
from airwave.actors.log.replay import replay_records
from airwave.cli import main
from airwave.protocol import Join, Leave, Left, Reason, SetCustomProperty
from airwave.wire import Wire, open_wire

from conftest import fast_settings
from helpers import HOST, next_push, ok, wait_until
from natsserver import NatsServer, bridge, free_port, nats_server  # noqa: F401 (fixtures)

TTL = 0.6
LEASE = LeaseSettings(ttl=TTL, renew_every=TTL / 3)


@asynccontextmanager
async def cluster_node(
    nats: NatsServer, node: str, tmp_path: Path, *, lease: LeaseSettings = LEASE, **session: object
) -> AsyncIterator[ClusterServer]:
    """A node in this process; ``session``: SessionSettings fields (resume_grace, ...)."""
    async with trio.open_nursery() as nursery:
        settings = fast_settings(tmp_path / node, **session)
        server: ClusterServer = await nursery.start(serve_cluster, settings, ClusterSettings((nats.url,), node, lease))
        try:
            yield server
        finally:
            server.shutdown()
            with trio.fail_after(10):
                await server.stopped.wait()


def events_of(records: list[dict[str, object]]) -> list[str]:
    """One line per record; channel instances named #1, #2, ... in order of appearance (which
    node reserved which block of channel numbers first is not the test's business)."""
    out = []
    instances: dict[int, int] = {}
    for item in replay_records(records, None):
        event = item.event
        instance = instances.setdefault(event.number, len(instances) + 1)
        who = getattr(event, "user_id", None) or getattr(event, "created_by", "")
        reason = getattr(event, "reason", None)
        out.append(f"{event.TYPE} {event.channel}#{instance} {who}" + (f" {reason.reason_name}" if reason is not None else ""))
    return out


async def test_cluster_owner_decides_and_another_node_forwards_to_it(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    async with cluster_node(nats_server, "node-a", tmp_path) as a, cluster_node(nats_server, "node-b", tmp_path) as b:
        with trio.fail_after(10):
            async with open_wire(a.url) as host, open_wire(a.url) as alice, open_wire(b.url) as bob, open_wire(b.url) as dan:
                joined = ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await alice.request(Join, channel="show", user_id="alice"))
                # node-b does not hold the lease: it forwards the join to node-a, which decides.
                forwarded = ok(await bob.request(Join, channel="show", user_id="bob"))
                assert forwarded.result["channel_number"] == joined.result["channel_number"]
                assert forwarded.result["member_count"] == 3
                assert [p["user_id"] for p in forwarded.result["participants"]] == ["host", "bob"]  # the scale rule
                ok(await dan.request(Join, channel="side", user_id="dan"))  # another channel: node-b's
                ok(await host.request(SetCustomProperty, value="on air"))
                assert a.placement.leases.held() == ["show"] and b.placement.leases.held() == ["side"]
                # Every reply came after its record was acknowledged: the stream has them all.
                records = await read_records(bridge)
                assert events_of(records) == [
                    "channel_created show#1 host", "participant_joined show#1 host", "participant_joined show#1 alice",
                    "participant_joined show#1 bob",
                    "channel_created side#2 dan", "participant_joined side#2 dan", "custom_property_changed show#1 ",
                ]
                number = joined.result["channel_number"]
                live = fold(item.event for item in replay_records(records, None))
                show, follower = a.registry.find("show"), b.registry.find("show")
                assert show is not None and live[number] == show.channel
                assert follower is not None and follower.follower
                await wait_until(lambda: follower.channel == show.channel, "node-b applied node-a's events")
                ok(await alice.request(Leave))
                ok(await bob.request(Leave))
                ok(await host.request(Leave))
            # The channel ended on node-a and its lease was given back: node-b may serve it now.
            with trio.fail_after(5):
                while a.placement.leases.held() != []:
                    await trio.sleep(0.01)
            await wait_until(lambda: b.registry.find("show") is None, "node-b stopped following the ended channel")
            async with open_wire(b.url) as carol:
                again = ok(await carol.request(Join, channel="show", user_id="carol"))
                assert again.result["channel_number"] not in {r["number"] for r in records}
                assert b.placement.leases.holds("show")


async def test_cluster_graceful_shutdown_ends_the_nodes_channels_and_frees_them_at_once(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    async with cluster_node(nats_server, "node-b", tmp_path) as b:
        async with cluster_node(nats_server, "node-a", tmp_path) as a:
            async with open_wire(a.url) as host:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                a.shutdown()
                assert (await next_push(host, Left, timeout=5)).reason is Reason.SERVER_SHUTDOWN
        with trio.fail_after(5):
            async with open_wire(b.url) as carol:
                ok(await carol.request(Join, channel="show", user_id="carol"))  # no TTL to wait for
        assert events_of(await read_records(bridge, channel="show")) == [
            "channel_created show#1 host", "participant_joined show#1 host",
            "participant_left show#1 host server_shutdown", "channel_stopped show#1  none",
            "channel_created show#2 carol", "participant_joined show#2 carol",
        ]


# --- real node processes: SIGKILL and SIGSTOP ---

def start_node_process(nats: NatsServer, node: str, tmp_path: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    """`airwave serve --cluster` as a process (``options``: more of its flags)."""
    port = free_port()
    log_file = (tmp_path / f"{node}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--port", str(port), "--data", str(tmp_path / node),
         "--cluster", nats.url, "--node", node, "--lease-ttl", str(TTL), *options],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    return process, f"ws://127.0.0.1:{port}/"


async def wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with trio.fail_after(15):
        while True:
            assert process.poll() is None, "the node process exited"
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


async def join_when_served(url: str, channel: str, user: str, **fields: object) -> tuple[Wire, float]:
    """Joins on ``url`` as soon as that node may serve ``channel``; the seconds it took."""
    started = time.monotonic()
    while True:
        async with open_wire(url) as probe:
            reply = await probe.request(Join, channel=channel, user_id=user, **fields)
        if reply.ok:
            return started, time.monotonic() - started  # type: ignore[return-value]
        assert reply.reason is Reason.SERVER_ERROR, reply
        await trio.sleep(0.05)


@pytest.fixture
def processes() -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started  # type: ignore[misc]
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(5)


async def test_cluster_owner_killed_its_channel_passes_to_another_node_after_the_ttl(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGKILL the owner: within the lease TTL (and a little) another node takes the lease,
    ends the dead owner's instance in the stream (server_restart) and accepts joins; the
    stream has every acknowledged event and folds to the new owner's live state."""
    process, url = start_node_process(nats_server, "node-a", tmp_path)
    processes.append(process)
    await wait_listening(url, process)
    async with cluster_node(nats_server, "node-b", tmp_path) as b:
        async with open_wire(url) as host, open_wire(url) as alice:
            ok(await host.request(Join, channel="show", user_id="host", role=HOST))
            ok(await alice.request(Join, channel="show", user_id="alice"))
            ok(await host.request(SetCustomProperty, value="acked"))
            process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            process.wait(5)
        # A node with no members of the channel asks only once the lease has expired, so it
        # claims the channel (a new instance). One asking earlier follows the dead owner and
        # takes over its instance instead: tests/test_cluster_relay.py covers that path.
        await trio.sleep(max(0.0, killed + TTL + 0.4 - time.monotonic()))
        with trio.fail_after(TTL + 5):
            await join_when_served(b.url, "show", "carol")
        took = time.monotonic() - killed
        assert took <= TTL + 2.0, f"failover took {took:.2f} s"
        records = await read_records(bridge, channel="show")
        assert events_of(records) == [
            "channel_created show#1 host", "participant_joined show#1 host", "participant_joined show#1 alice",
            "custom_property_changed show#1 ",
            "participant_left show#1 host server_restart", "participant_left show#1 alice server_restart",
            "channel_stopped show#1  none",
            "channel_created show#2 carol", "participant_joined show#2 carol",
        ]
        live = fold(item.event for item in replay_records(records, None))
        show = b.registry.find("show")
        assert show is not None and show.channel is not None
        assert live[show.channel.number] == show.channel
        assert [c.ended for c in live.values()] == [True, False]
        assert b.placement.takeovers == 1


PAUSE = 10.0  # the SIGSTOP: 10 s, many TTLs


async def test_cluster_paused_owner_cannot_append_after_another_took_over(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGSTOP the owner for 10 s, then SIGCONT. Meanwhile node-b, a follower, hears no roll
    call from its owner for a TTL, takes the channel over (the instance goes on), ends the
    paused node's member after the grace (network: nobody announced it), and decides a
    change. Woken, the old owner's member asks for a change: refused, it is told
    server_restart, and nothing the old owner decided reaches the stream; no event is lost
    or written twice."""
    process, url = start_node_process(nats_server, "node-a", tmp_path)
    processes.append(process)
    await wait_listening(url, process)
    async with cluster_node(nats_server, "node-b", tmp_path) as b:
        async with open_wire(url) as host, open_wire(b.url) as carol:
            ok(await host.request(Join, channel="show", user_id="host", role=HOST))
            ok(await carol.request(Join, channel="show", user_id="carol", role=HOST))  # node-b follows node-a
            ok(await host.request(SetCustomProperty, value="before the pause"))
            follower = b.registry.find("show")
            assert follower is not None and follower.follower
            await wait_until(lambda: follower.roll.heard_at("host") is not None, "node-a announced its member")
            process.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                with trio.fail_after(PAUSE - 1):
                    await wait_until(lambda: not follower.follower, "node-b took over", timeout=PAUSE)
                    await wait_until(lambda: "host" not in follower.channel.members, "the paused node's member ended", timeout=PAUSE)  # type: ignore[union-attr]
                    ok(await carol.request(SetCustomProperty, value="during the pause"))  # decided on node-b
                await trio.sleep(max(0.0, stopped + PAUSE - time.monotonic()))
            finally:
                process.send_signal(signal.SIGCONT)
            with trio.fail_after(5):
                # Whichever comes first on the woken node (the failed lease renewal, or this
                # append meeting the fence), it steps down: refused, and told server_restart.
                late = await host.request(SetCustomProperty, value="from the paused owner")
                assert not late.ok
                assert (await next_push(host, Left, timeout=5)).reason is Reason.SERVER_RESTART
            ok(await carol.request(SetCustomProperty, value="after the pause"))
        records = await read_records(bridge, channel="show")
        assert events_of(records) == [
            "channel_created show#1 host", "participant_joined show#1 host", "participant_joined show#1 carol",
            "custom_property_changed show#1 ", "participant_left show#1 host network",
            "custom_property_changed show#1 ", "custom_property_changed show#1 ",
        ]
        assert [r.get("value") for r in records if r["type"] == "custom_property_changed"] == [
            "before the pause", "during the pause", "after the pause",
        ]
        seqs = [r["seq"] for r in records]
        assert seqs == sorted(set(seqs))
        assert fold(item.event for item in replay_records(records, None))[follower.channel.number] == follower.channel  # type: ignore[union-attr]


# --- the command line ---

@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--cluster", "nats://127.0.0.1:4222"], "--cluster and --node go together"),
        (["--node", "a"], "--cluster and --node go together"),
        (["--cluster", "http://x:1", "--node", "a"], "starts with nats:// or tls://"),
        (["--cluster", "nats://127.0.0.1:4222", "--node", "a", "--lease-ttl", "0"], "must be above 0"),
    ],
)
def test_cluster_serve_bad_options_exit_2_with_the_reason(args: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", *args]) == 2
    assert reason in capsys.readouterr().err


def test_serve_resume_grace_below_zero_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--resume-grace", "-1"])
    assert exited.value.code == 2
    assert "--resume-grace: must be a number of seconds, 0 or more, got -1" in capsys.readouterr().err


def test_cluster_serve_without_nats_exits_1_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", "--data", str(tmp_path), "--cluster", f"nats://127.0.0.1:{free_port()}", "--node", "a"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to NATS at nats://127.0.0.1:" in err and err.count("\n") == 1


_: Callable[..., object] = main  # (keeps the import used when the CLI tests are deselected)


async def test_cluster_join_storm_on_the_owner_is_all_in_the_stream_and_replays_to_the_live_state(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    """200 joins at once: the actor appends them in batches (one fenced append per record,
    each acknowledged before the batch is answered); every one is in the stream, once, in
    order, and the stream folds to the owner's live channel."""
    count = 200
    # Not a failover test: a lease of several seconds, so a busy machine's pause in the storm
    # is not taken for a dead owner.
    async with cluster_node(nats_server, "node-a", tmp_path, lease=LeaseSettings(ttl=3.0, renew_every=1.0)) as a:
        async with open_wire(a.url) as host:
            ok(await host.request(Join, channel="storm", user_id="host", role=HOST))
            async with trio.open_nursery() as nursery:
                wires: list[Wire] = []

                async def join(n: int) -> None:
                    wire = await nursery.start(_hold_wire, a.url)
                    wires.append(wire)
                    ok(await wire.request(Join, channel="storm", user_id=f"listener-{n}"))

                with trio.fail_after(30):
                    async with trio.open_nursery() as joining:
                        for n in range(count):
                            joining.start_soon(join, n)
                records = await read_records(bridge, channel="storm")
                joined = [r["user_id"] for r in records if r["type"] == "participant_joined"]
                assert sorted(joined) == sorted(["host", *(f"listener-{n}" for n in range(count))])
                assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + len(records)))
                storm = a.registry.find("storm")
                assert storm is not None and storm.channel is not None
                assert fold(item.event for item in replay_records(records, None))[storm.channel.number] == storm.channel
                nursery.cancel_scope.cancel()


async def _hold_wire(url: str, *, task_status: trio.TaskStatus[Wire] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_wire(url) as wire:
        task_status.started(wire)
        await trio.sleep_forever()


async def test_cluster_channel_ended_and_joined_again_at_once_keeps_its_lease_here(
    nats_server: NatsServer, bridge: NatsBridge, tmp_path: Path
) -> None:
    """Regression: the release of the ended instance's lease, still on its way to NATS, must
    not delete the lease the next join took at once."""
    async with cluster_node(nats_server, "node-a", tmp_path) as a, cluster_node(nats_server, "node-b", tmp_path) as b:
        async with open_wire(a.url) as host, open_wire(b.url) as bob:
            for _ in range(5):
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await host.request(Leave))  # the channel ends: its lease is given back
            ok(await host.request(Join, channel="show", user_id="host", role=HOST))
            await trio.sleep(TTL / 2)  # every give-back has reached NATS by now
            assert a.placement.leases.holds("show")
            ok(await bob.request(Join, channel="show", user_id="bob"))  # forwarded to node-a
            assert not b.placement.leases.holds("show")
            ok(await host.request(SetCustomProperty, value="still ours"))
