"""A cluster node while its NATS restarts: it reconnects and carries on; a command that must
be logged while NATS is away is refused at once with server_error (nothing buffered to reach
the stream later), and the channel is served again once NATS is back.

Its own nats-server (restarted here), so the other cluster modules' server is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from airwave.actors.cluster import open_bridge, read_records
from airwave.actors.cluster.lease import LeaseSettings
from airwave.actors.cluster.placement import ClusterSettings
from airwave.actors.cluster.server import serve_cluster
from airwave.protocol import Join, Left, Reason, SetCustomProperty
from airwave.wire import open_wire

from conftest import fast_settings
from helpers import HOST, next_push, ok
from natsserver import NatsServer, running_nats
from test_cluster_node import events_of


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "nats") as server:
        yield server


async def wait_connected(server: object, connected: bool) -> None:
    with trio.fail_after(10):
        while server.bridge.connected is not connected:  # type: ignore[attr-defined]
            await trio.sleep(0.02)


async def test_cluster_node_carries_on_after_nats_restarts_and_refuses_logging_while_it_is_away(
    nats: NatsServer, tmp_path: Path
) -> None:
    lease = LeaseSettings(ttl=10, renew_every=1)  # longer than the outage: the lease survives it
    async with trio.open_nursery() as nursery:
        node = await nursery.start(serve_cluster, fast_settings(tmp_path / "a"), ClusterSettings((nats.url,), "node-a", lease))
        try:
            async with open_wire(node.url) as host:
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await host.request(SetCustomProperty, value="before"))

                await trio.to_thread.run_sync(nats.stop)
                await wait_connected(node, False)
                with trio.fail_after(3):  # refused at once, not after a publish timeout
                    away = await host.request(SetCustomProperty, value="while NATS is away")
                assert away.reason is Reason.SERVER_ERROR, away
                assert (await next_push(host, Left, timeout=3)).reason is Reason.SERVER_ERROR

                await trio.to_thread.run_sync(nats.start)
                await wait_connected(node, True)
                ok(await host.request(Join, channel="show", user_id="host", role=HOST))
                ok(await host.request(SetCustomProperty, value="after"))
            async with open_bridge(nats.url) as reader:
                records = await read_records(reader, channel="show")
            assert events_of(records) == [
                "channel_created show#1 host", "participant_joined show#1 host", "custom_property_changed show#1 ",
                # Re-claimed after NATS came back: the instance left live by the step-down ends.
                "participant_left show#1 host server_restart", "channel_stopped show#1  none",
                "channel_created show#2 host", "participant_joined show#2 host", "custom_property_changed show#2 ",
            ]
            assert [r["value"] for r in records if r["type"] == "custom_property_changed"] == ["before", "after"]
        finally:
            node.shutdown()
            with trio.fail_after(15):
                await node.stopped.wait()
