"""The counters kept for /metrics beside the ones the actors keep anyway: plain integers,
so counting costs an addition (`actors/metrics.py` turns them into Prometheus families only
when scraped, and is not even imported unless metrics are on)."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from airwave.protocol import Reason

from .core.histogram import LATENCY_BOUNDS, Histogram

if TYPE_CHECKING:
    from .net import TransportStatistics
    from .participant import SessionStatistics


@attrs.define(slots=True)
class EndedConnections:
    """What the connections that are gone had counted."""

    media_in: int = 0
    media_refused: int = 0
    rate_limited: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    slow_consumers: int = 0

    def add(self, session: SessionStatistics, transport: TransportStatistics) -> None:
        self.media_in += session.media_in
        self.media_refused += session.media_refused
        self.rate_limited += session.rate_limited
        self.frames_sent += transport.frames_sent_directly + transport.frames_queued - transport.frames_dropped
        self.frames_dropped += transport.frames_dropped
        self.slow_consumers += transport.slow_consumer


@attrs.define(slots=True)
class ServerMetrics:
    """The counters kept for /metrics beside the ones the actors keep anyway."""

    requests: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)  # (type, reason)
    log_events: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)  # (type, reason)
    join_seconds: Histogram = attrs.field(factory=lambda: Histogram(LATENCY_BOUNDS))
    heartbeat_timeouts: int = 0
    ended: EndedConnections = attrs.field(factory=EndedConnections)

    def count_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """The log's records as they are appended: joins, leaves (by reason), stops, roles."""
        for record in records:
            reason = record.get("reason")
            self.log_events[(str(record.get("type")), Reason(reason).reason_name if isinstance(reason, int) else "")] += 1
