"""Prometheus metrics: counted as plain integers where things happen, read at scrape time.

Loaded only when the server is asked for metrics (`--metrics`), so prometheus-client costs
nothing otherwise.

Nothing on the media path touches a Prometheus object: the router, the connections and the
sessions keep the integer counters they always kept (`Connection.statistics`,
`SessionStatistics`, `RouterStatistics`), and `ServerCollector.collect` adds them up when
someone fetches /metrics. Counters of connections that ended are folded into
`ServerMetrics.ended` (`actors/counters.py`) as they end, and an open one's by the same
`EndedConnections.add` at scrape time, so totals never go backwards. Labels are bounded
(request types, reasons, session states, roles); no user or channel id becomes a label.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs
import h11
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from airwave.protocol import CustomRole

from .core.histogram import Histogram
from .events_http import EventsEndpoint, send_whole

if TYPE_CHECKING:
    from .server import RunningServer

log = logging.getLogger("airwave.metrics")


def _role_name(role: CustomRole) -> str:
    return "none" if role.index is None else f"custom_role_{role.index}"


class ServerCollector(Collector):
    """Reads a running server's counters into Prometheus metric families."""

    def __init__(self, server: RunningServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        metrics = server.metrics
        sessions = server.gateway.sessions()

        by_state = GaugeMetricFamily("airwave_connections", "Open WebSocket connections, by session state", labels=["state"])
        states = collections.Counter(session.state.name.lower() for session in sessions)
        for state, count in sorted(states.items()):
            by_state.add_metric([state], count)
        yield by_state

        channels = [actor.channel for actor in map(server.registry.find, server.registry.channel_ids()) if actor and actor.channel]
        yield GaugeMetricFamily("airwave_channels", "Live channels", value=len(channels))
        members = GaugeMetricFamily("airwave_members", "Channel members, by role", labels=["role"])
        roles = collections.Counter(_role_name(member.role) for channel in channels for member in channel.members.values())
        for role, count in sorted(roles.items()):
            members.add_metric([role], count)
        yield members

        requests = CounterMetricFamily("airwave_requests", "Requests answered, by type and outcome (reason)", labels=["type", "outcome"])
        for (kind, outcome), count in sorted(metrics.requests.items()):
            requests.add_metric([kind, outcome], count)
        yield requests
        resumes = sum(count for (kind, outcome), count in metrics.requests.items() if kind == "resume" and outcome == "none")
        yield CounterMetricFamily("airwave_resumes", "Sessions resumed after a drop", value=resumes)

        events = CounterMetricFamily("airwave_log_events", "Events appended to the log, by type and reason", labels=["type", "reason"])
        for (kind, reason), count in sorted(metrics.log_events.items()):
            events.add_metric([kind, reason], count)
        yield events
        joins = CounterMetricFamily("airwave_joins", "Members joined (participant_joined events)")
        joins.add_metric([], sum(c for (kind, _), c in metrics.log_events.items() if kind == "participant_joined"))
        yield joins
        leaves = CounterMetricFamily("airwave_leaves", "Members left, by reason", labels=["reason"])
        for (kind, reason), count in sorted(metrics.log_events.items()):
            if kind == "participant_left":
                leaves.add_metric([reason], count)
        yield leaves

        totals = attrs.evolve(metrics.ended)  # the ended connections', plus the open ones'
        peak = 0
        for session in sessions:
            transport = session.output.statistics()
            totals.add(session.stats, transport)
            peak = max(peak, transport.peak_bytes_queued)
        yield CounterMetricFamily("airwave_media_packets_in", "Media frames received from speakers", value=totals.media_in)
        yield CounterMetricFamily("airwave_frames_out", "Frames handed to the kernel or queued for it (media and control)", value=totals.frames_sent)
        drops = CounterMetricFamily("airwave_drops", "What was refused or dropped, by cause", labels=["cause"])
        drops.add_metric(["no_permission"], totals.media_refused)
        drops.add_metric(["rate_limited"], totals.rate_limited)
        drops.add_metric(["backlog"], totals.frames_dropped)  # oldest media of a backlogged connection
        drops.add_metric(["slow_consumer"], totals.slow_consumers)  # connections closed for it
        yield drops
        yield GaugeMetricFamily(
            "airwave_connection_backlog_peak_bytes", "The largest send backlog any open connection has had", value=peak
        )
        yield CounterMetricFamily("airwave_heartbeat_timeouts", "Connections ended by the heartbeat", value=metrics.heartbeat_timeouts)

        if server.event_log is not None:  # a cluster node's log is JetStream's (not counted here yet)
            log_stats = server.event_log.statistics()
            yield CounterMetricFamily("airwave_log_appends", "Appends to the event log", value=log_stats.appends)
            yield CounterMetricFamily("airwave_log_records", "Records written to the event log", value=log_stats.records)
            yield _histogram("airwave_log_fsync_seconds", "Time in fdatasync per group commit", server.event_log.sync_seconds)
        yield _histogram("airwave_join_seconds", "From a join request to its reply", metrics.join_seconds)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


def registry_for(server: RunningServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    events: EventsEndpoint | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The operator's HTTP port (h11, one request per connection): ``GET /metrics`` and,
    given ``events``, ``GET /events`` (`events_http.py`); hands the bound port to
    ``task_status``. Everything else is 404 or 405; a bad request 400."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(lambda stream: _answer(stream, registry, events), listeners)


async def _read_request(connection: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            connection.receive_data(data)
            if not data:
                return None
            continue
        return event if isinstance(event, h11.Request) else None


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry, events: EventsEndpoint | None) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(10):
            request = await _read_request(connection, stream)
        if request is None:
            return
        target = request.target.split(b"?", 1)[0]
        paths = b"/metrics or /events" if events is not None else b"/metrics"
        if request.method not in (b"GET", b"HEAD"):
            status, content_type, body = 405, b"text/plain", b"only GET " + paths + b"\n"
        elif target == b"/events" and events is not None and request.method == b"GET":
            await events.answer(connection, stream, request)
            return
        elif target != b"/metrics":
            status, content_type, body = 404, b"text/plain", b"this port serves " + paths + b"\n"
        else:
            status, content_type, body = 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)
        await send_whole(connection, stream, status, content_type, body, head=request.method == b"HEAD")
    except h11.RemoteProtocolError:
        try:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        except trio.BrokenResourceError:
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


__all__ = ["ServerCollector", "registry_for", "serve_metrics"]
