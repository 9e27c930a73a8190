"""The server process: event log, registry, gateway, and a graceful shutdown.

Start-up order matters: the log is verified (a torn tail truncated, corruption refused)
before anything listens; channels that were live at a crash are ended in the log with
server_restart before the first client is accepted, so replay and the registry agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from airwave.media.recorder_process import RecorderProcess, open_recorder_process
from airwave.protocol import DEFAULT_POLICY, Reason, RolePolicy

from .clock import now
from .counters import ServerMetrics
from .core.cdn import HLS_FOLDER, CdnSettings
from .core.guesses import GuessPolicy, PasswordGuesses
from .gateway import Gateway
from .log import EventLog, FsyncMode, LogFailed, RecoveryReport, closing_records
from .net import Site, TransportSettings, close_listener, default_web_folder, open_listener, serve_connections
from .participant import SessionSettings
from .registry import Registry
from .feed import EventFeed
from .webhooks import WebhookDelivery, WebhookSettings

log = logging.getLogger("airwave.server")


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("airwave-data")
    fsync: FsyncMode = FsyncMode.BATCH
    session: SessionSettings = SessionSettings()
    transport: TransportSettings = TransportSettings()
    max_channels: int = 10_000
    max_connections_per_address: int = 64
    limit_loopback: bool = False  # decision 15: loopback is exempt from per-address limits
    # Connections between accept and their first answered request, and how long one may hold
    # its slot (gateway.JoinAdmission).
    max_joining: int = 64
    admission_hold: float = 0.5
    # Connections open but not in a channel (no hello yet, or idle), from all addresses.
    max_unjoined: int = 1024
    stats_interval: float | None = None  # log a statistics line this often (soak runs read it)
    # What each role and state may do; the server tells clients what follows from it for them
    # (participant_updated.in_view, replies), so no client needs a copy.
    policy: RolePolicy = DEFAULT_POLICY
    # The backoff on wrong channel passwords, per address and per channel (core/guesses.py).
    password_guesses: GuessPolicy = GuessPolicy()
    # Where Prometheus scrapes /metrics (host, port); None: no metrics endpoint.
    metrics_address: tuple[str, int] | None = None
    # POST every log event to a URL, in order, at least once (actors/webhooks.py).
    webhook: WebhookSettings | None = None
    # The browser client served on plain HTTP on the same port; None: the page airwave ships.
    web_folder: Path | None = None
    # Where enable_cdn streams a channel's mix: Icecast and/or HLS (served under /hls/).
    cdn: CdnSettings = CdnSettings()


class RunningServer:
    """What ``serve`` hands to whoever started it: the bound address and a way to stop."""

    def __init__(self, port: int, registry: Registry, gateway: Gateway, event_log: EventLog, report: RecoveryReport) -> None:
        self.port = port
        self.registry = registry
        self.gateway = gateway
        self.event_log = event_log
        self.recovery = report
        self.metrics_port: int | None = None  # where /metrics is served, if it is
        self.webhook: WebhookDelivery | None = None
        self.recordings: RecorderProcess | None = None  # the recording worker's handle
        self._stop = trio.Event()
        self.stopped = trio.Event()

    @property
    def metrics(self) -> ServerMetrics:
        return self.gateway.metrics

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def page_url(self, host: str = "127.0.0.1") -> str:
        """Where a browser joins: the web page on the same port (net/http.py)."""
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"

    def statistics(self) -> dict[str, int]:
        """What an operator watches for leaks: tasks, connections, channels, memory, the log."""
        return {
            "tasks": count_tasks(),
            "connections": self.gateway.connections,
            "joining": self.gateway.admission.joining,
            "refused_connections": self.gateway.refused_connections,
            "channels": len(self.registry.channel_ids()),
            "members": sum(len(a.channel.members) for a in map(self.registry.find, self.registry.channel_ids()) if a and a.channel),
            "rss_kb": rss_kb(),
            **({"log_seq": self.event_log.last_seq} if self.event_log is not None else {}),  # a cluster's is JetStream's
        }

    def shutdown(self) -> None:
        """Asks for a graceful stop: members told server_shutdown, the log flushed."""
        self._stop.set()


def gateway_for(registry: Registry, settings: ServerSettings, site: Site, metrics: ServerMetrics) -> Gateway:
    return Gateway(
        registry, settings.session, max_per_address=settings.max_connections_per_address,
        limit_loopback=settings.limit_loopback, max_joining=settings.max_joining,
        admission_hold=settings.admission_hold, max_unjoined=settings.max_unjoined, site=site,
        metrics=metrics,
    )


async def start_metrics(service: trio.Nursery, server: RunningServer, settings: ServerSettings, feed: EventFeed | None = None) -> None:
    """The operator's HTTP port in ``service``, if the settings ask for one: /metrics, and
    /events when there is a ``feed`` of the log to serve."""
    if settings.metrics_address is None:
        return
    from .events_http import EventsEndpoint
    from .metrics import registry_for, serve_metrics  # prometheus-client only if asked

    host, port = settings.metrics_address
    events = EventsEndpoint(feed, settings.session.secret) if feed is not None else None
    server.metrics_port = await service.start(serve_metrics, registry_for(server), host, port, events)


async def serve(settings: ServerSettings, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
    site = Site.load(settings.web_folder or default_web_folder())
    if settings.cdn.hls:
        site = attrs.evolve(site, hls_root=settings.data_dir / HLS_FOLDER)
    event_log, report = EventLog.open(settings.data_dir, settings.fsync)
    if report.truncated_bytes:
        log.warning("event log: dropped a torn tail of %d bytes", report.truncated_bytes)
    async with trio.open_nursery() as root:
        await root.start(_run_event_log, event_log)
        records, next_number = closing_records(report, now())
        if records:
            await event_log.append(records)
            log.info("ended %d member sessions and channels left open by a crash (server_restart)", len(records))
        listener = open_listener(settings.host, settings.port)
        try:
            # Outside the service nursery: a channel actor cancelled at shutdown still has its
            # recording finalised by the worker, which exits once the service is done.
            async with open_recorder_process() as recordings, trio.open_nursery() as service:
                metrics = ServerMetrics()
                # The log as a feed for its followers: webhook delivery and GET /events.
                feed = EventFeed(settings.data_dir, lambda: event_log.last_seq) if settings.webhook or settings.metrics_address else None
                webhook = WebhookDelivery(settings.webhook, feed) if settings.webhook and feed else None

                async def append(records: Sequence[Mapping[str, Any]]) -> list[int]:
                    seqs = await event_log.append(records)
                    metrics.count_records(records)
                    if feed is not None:
                        feed.offer(seqs, records)
                    return seqs

                registry = Registry(
                    service, append, next_number=next_number, policy=settings.policy,
                    max_channels=settings.max_channels, guesses=PasswordGuesses(settings.password_guesses),
                    data_dir=settings.data_dir, cdn=settings.cdn, recordings=recordings,
                )
                gateway = gateway_for(registry, settings, site, metrics)
                await service.start(lambda task_status: serve_connections(listener, gateway.handle, settings=settings.transport, task_status=task_status))
                service.start_soon(gateway.run_heartbeats, settings.session.heartbeat_sweep)
                server = RunningServer(listener.getsockname()[1], registry, gateway, event_log, report)
                server.recordings = recordings
                await start_metrics(service, server, settings, feed)
                if webhook is not None:
                    server.webhook = webhook
                    service.start_soon(webhook.run)
                    log.info("webhook: POSTing every event to %s from seq %d", settings.webhook.url, webhook.acknowledged + 1)  # type: ignore[union-attr]
                log.info("listening on ws://%s:%d/", settings.host, server.port)
                log.info("web page: open %s in a browser", server.page_url(settings.host))
                task_status.started(server)
                if settings.stats_interval:
                    service.start_soon(_log_statistics, server, settings.stats_interval)
                await server._stop.wait()
                log.info("shutting down")
                close_listener(listener)
                with trio.move_on_after(10):
                    await registry.end_all(Reason.SERVER_SHUTDOWN, now())
                with trio.move_on_after(2):
                    await gateway.close_all()
                service.cancel_scope.cancel()
        finally:
            close_listener(listener)
            with trio.CancelScope(shield=True):
                await event_log.aclose()
    server.stopped.set()
    log.info("stopped; event log flushed at seq %d", event_log.last_seq)


async def _log_statistics(server: RunningServer, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        log.info("stats %s", " ".join(f"{key}={value}" for key, value in server.statistics().items()))


def count_tasks() -> int:
    """Every live task under the run's root: a leak of tasks shows up here."""
    pending = [trio.lowlevel.current_root_task()]
    count = 0
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def rss_kb() -> int:
    """Resident memory of this process (Linux /proc), in KiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _run_event_log(event_log: EventLog, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The log's writer; a write or fsync failure stops the server, and says so."""
    try:
        await event_log.run(task_status=task_status)
    except OSError as exc:
        log.error("the event log failed, stopping the server (nothing after this was acknowledged): %s", exc)
        raise LogFailed(f"the event log failed: {exc}") from exc
