"""A server process in cluster mode: the same gateway, registry and actors as `actors/server.py`,
with the event log in JetStream and channels placed by lease (`placement.py`).

Kept apart from `serve` so the single-process server with its file log is untouched by
cluster mode; the start-up and shutdown order is the same.
"""

from __future__ import annotations

import logging

import trio

from airwave.protocol import Reason

from ..clock import now
from ..core.guesses import PasswordGuesses
from ..counters import ServerMetrics
from ..gateway import Gateway
from ..net import Site, close_listener, default_web_folder, open_listener, serve_connections
from ..registry import Registry
from ..server import RunningServer, ServerSettings, _log_statistics, gateway_for, start_metrics
from .bridge import NatsBridge, open_bridge
from .placement import ClusterPlacement, ClusterSettings

log = logging.getLogger("airwave.cluster.server")


class ClusterServer(RunningServer):
    """A running cluster node: what `serve_cluster` hands to whoever started it."""

    def __init__(self, port: int, registry: Registry, gateway: Gateway, bridge: NatsBridge, placement: ClusterPlacement) -> None:
        super().__init__(port, registry, gateway, None, None)  # type: ignore[arg-type]  # no file log
        self.bridge = bridge
        self.placement = placement

    @property
    def node(self) -> str:
        return self.placement.settings.node

    def statistics(self) -> dict[str, int]:
        return {
            **super().statistics(),
            "leases": len(self.placement.leases.held()),
            "leases_lost": self.placement.leases.lost,
            "followed": self.placement.followed,
            "takeovers": self.placement.takeovers,
            "nats_connected": int(self.bridge.connected),
        }


async def serve_cluster(
    settings: ServerSettings, cluster: ClusterSettings, *, task_status: trio.TaskStatus[ClusterServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Runs one cluster node until ``shutdown()``: NATS first (refusing to start without
    it), then the listener; on shutdown the node's channels end with server_shutdown in the
    stream and its leases are released, so other nodes may take them at once."""
    site = Site.load(settings.web_folder or default_web_folder())
    async with open_bridge(list(cluster.servers), name=f"airwave-{cluster.node}", no_echo=True) as bridge:
        async with trio.open_nursery() as root:
            placement = ClusterPlacement(bridge, cluster, root, resume_grace=settings.session.resume_grace)
            listener = open_listener(settings.host, settings.port)
            try:
                async with trio.open_nursery() as service:
                    registry = Registry(
                        service, _no_file_log, policy=settings.policy, max_channels=settings.max_channels,
                        guesses=PasswordGuesses(settings.password_guesses), placement=placement,
                    )
                    await placement.start(registry)
                    gateway = gateway_for(registry, settings, site, ServerMetrics())
                    await service.start(lambda task_status: serve_connections(listener, gateway.handle, settings=settings.transport, task_status=task_status))
                    service.start_soon(gateway.run_heartbeats, settings.session.heartbeat_sweep)
                    server = ClusterServer(listener.getsockname()[1], registry, gateway, bridge, placement)
                    await start_metrics(service, server, settings)
                    log.info("node %s listening on ws://%s:%d/ (cluster %s)", cluster.node, settings.host, server.port, ",".join(cluster.servers))
                    task_status.started(server)
                    if settings.stats_interval:
                        service.start_soon(_log_statistics, server, settings.stats_interval)
                    await server._stop.wait()
                    log.info("node %s shutting down", cluster.node)
                    close_listener(listener)
                    with trio.move_on_after(10):
                        await registry.end_all(Reason.SERVER_SHUTDOWN, now())
                    with trio.move_on_after(2):
                        await gateway.close_all()
                    with trio.move_on_after(2):
                        for channel_id in placement.leases.held():
                            await placement.leases.release(channel_id)
                    service.cancel_scope.cancel()
            finally:
                close_listener(listener)
            root.cancel_scope.cancel()
    server.stopped.set()
    log.info("node %s stopped", cluster.node)


async def _no_file_log(records: list[dict[str, object]]) -> object:
    """Cluster mode appends through each channel's fenced JetStream log, never here."""
    raise AssertionError("a cluster node has no file log")
