"""The server's per-channel media router: Opus frames from publishers fan out to listeners.

The hot path is ``publish``: it builds the outgoing frame once (new 8-byte media prefix in
front of the sender's fields, wrapped in one unmasked WebSocket frame) and hands the same
``bytes`` object to every listener's output with a synchronous, non-blocking call. Routes are
immutable tuples rebuilt only when membership, publishing rights or subscriptions change
(LiveKit's copy-on-write listener list), never per packet. The Opus payload is never decoded.

Anything that can receive a frame without blocking fits: the server passes its per-socket
ordered outputs; a relay to another server process could stand behind the same interface.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from airwave.protocol.media import client_media_level, relay_frame
from airwave.protocol.wsframe import server_binary_frame


class FrameSink(Protocol):
    def send_frame_nowait(self, frame: bytes, *, droppable: bool) -> None: ...


@attrs.define
class RouterStatistics:
    packets_in: int = 0
    packets_refused: int = 0
    deliveries: int = 0


class MediaRouter:
    """Who hears whom in one channel. Keyed by sid, the server's per-channel sender id."""

    def __init__(self) -> None:
        self._sinks: dict[int, FrameSink] = {}
        self._publishers: set[int] = set()
        self._muted_by: dict[int, set[int]] = {}  # listener sid -> publisher sids it unsubscribed
        self._routes: dict[int, tuple[FrameSink, ...]] | None = {}
        self.levels: dict[int, int] = {}  # last audio level each publisher reported
        self.stats = RouterStatistics()

    # --- membership (called by the channel actor, off the hot path) ---

    def add_member(self, sid: int, sink: FrameSink, *, publishing: bool) -> None:
        self._sinks[sid] = sink
        if publishing:
            self._publishers.add(sid)
        self._routes = None

    def remove_member(self, sid: int) -> None:
        self._sinks.pop(sid, None)
        self._publishers.discard(sid)
        self._muted_by.pop(sid, None)
        self.levels.pop(sid, None)
        self._routes = None

    def set_publishing(self, sid: int, publishing: bool) -> None:
        if publishing and sid in self._sinks:
            self._publishers.add(sid)
        else:
            self._publishers.discard(sid)
            self.levels.pop(sid, None)
        self._routes = None

    def set_subscription(self, listener_sid: int, publisher_sid: int, enabled: bool) -> None:
        muted = self._muted_by.setdefault(listener_sid, set())
        if enabled:
            muted.discard(publisher_sid)
        else:
            muted.add(publisher_sid)
        self._routes = None

    def is_publishing(self, sid: int) -> bool:
        return sid in self._publishers

    def _rebuild(self) -> dict[int, tuple[FrameSink, ...]]:
        routes = {}
        for publisher in self._publishers:
            routes[publisher] = tuple(
                sink
                for sid, sink in self._sinks.items()
                if sid != publisher and publisher not in self._muted_by.get(sid, ())
            )
        self._routes = routes
        return routes

    # --- the hot path ---

    def publish(self, sid: int, client_frame: bytes) -> bool:
        """Fans a checked client media frame out; False (and nothing sent) if ``sid`` may not publish."""
        routes = self._routes if self._routes is not None else self._rebuild()
        route = routes.get(sid)
        stats = self.stats
        if route is None:
            stats.packets_refused += 1
            return False
        level = client_media_level(client_frame)
        if level is not None:
            self.levels[sid] = level
        frame = server_binary_frame(relay_frame(sid, client_frame))
        for sink in route:
            sink.send_frame_nowait(frame, droppable=True)
        stats.packets_in += 1
        stats.deliveries += len(route)
        return True
