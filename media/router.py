"""The server's per-channel media router: Opus frames from publishers fan out to listeners.

The hot path is ``publish``: it builds the outgoing frame once (new 8-byte media prefix in
front of the sender's fields, wrapped in one unmasked WebSocket frame) and hands the same
``bytes`` object to every listener's output with a synchronous, non-blocking call. Routes are
immutable tuples rebuilt only when membership, publishing rights or subscriptions change
(LiveKit's copy-on-write listener list), never per packet. The Opus payload is never decoded.

Anything that can receive a frame without blocking fits: the server passes its per-socket
ordered outputs. In cluster mode a channel's members may sit on other nodes: a member added
without a sink is remote (its node fans out to it), and the router's ``relay`` (a sink that
publishes to the channel's NATS media subject) is one more listener of every *local*
publisher, so each packet leaves this node once whatever the number of nodes. Frames that
other nodes relayed come in through ``deliver``, which fans the same bytes out to this
node's listeners and never back to the relay.
"""

from __future__ import annotations

import struct
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
    relayed_in: int = 0  # frames other nodes relayed (cluster mode)
    relayed_unrouted: int = 0  # ... whose sender is not a publisher here (yet, or any more)


_SID = struct.Struct(">I")
# A relayed frame is a server WebSocket frame (2-byte header up to 125 payload bytes, else
# 4: media frames are far below 64 KiB) around the server media layout: ext header (4
# bytes), then sid (4), seq (2), timestamp (4), level (1).
_SID_AFTER_HEADER = 4
_LEVEL_AFTER_HEADER = 14
_NO_LEVEL = 255


class MediaRouter:
    """Who hears whom in one channel. Keyed by sid, the server's per-channel sender id."""

    def __init__(self) -> None:
        self._sinks: dict[int, FrameSink] = {}  # members connected to this node
        self._remote: set[int] = set()  # members connected to other nodes (cluster mode)
        self._publishers: set[int] = set()
        self._muted_by: dict[int, set[int]] = {}  # listener sid -> publisher sids it unsubscribed
        self._routes: dict[int, tuple[FrameSink, ...]] | None = {}
        self.levels: dict[int, int] = {}  # last audio level each publisher reported
        self.stats = RouterStatistics()
        self._relay: FrameSink | None = None

    @property
    def relay(self) -> FrameSink | None:
        return self._relay

    @relay.setter
    def relay(self, sink: FrameSink | None) -> None:
        """The sink that carries local publishers' frames to the other nodes (cluster mode)."""
        self._relay = sink
        self._routes = None

    # --- membership (called by the channel actor, off the hot path) ---

    def add_member(self, sid: int, sink: FrameSink | None, *, publishing: bool) -> None:
        """``sink`` None: the member is connected to another node (heard through the relay)."""
        if sink is None:
            self._remote.add(sid)
            self._sinks.pop(sid, None)
        else:
            self._sinks[sid] = sink
            self._remote.discard(sid)
        if publishing:
            self._publishers.add(sid)
        self._routes = None

    def remove_member(self, sid: int) -> None:
        self._sinks.pop(sid, None)
        self._remote.discard(sid)
        self._publishers.discard(sid)
        self._muted_by.pop(sid, None)
        self.levels.pop(sid, None)
        self._routes = None

    def set_publishing(self, sid: int, publishing: bool) -> None:
        if publishing and (sid in self._sinks or sid in self._remote):
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
        relay = (self._relay,) if self._relay is not None else ()
        for publisher in self._publishers:
            local = tuple(
                sink
                for sid, sink in self._sinks.items()
                if sid != publisher and publisher not in self._muted_by.get(sid, ())
            )
            # A local publisher's frames also go to the relay, once, and first: the relay only
            # queues the frame for the NATS thread (~1 µs), while this node's own sends take
            # ~10 µs each, so relaying last made every other node wait for the whole local
            # fan-out (~5 ms at 500 listeners) before its own began. A remote publisher's
            # frames came from the relay and go to this node's listeners only.
            routes[publisher] = relay + local if publisher not in self._remote else local
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

    def deliver(self, frame: bytes) -> None:
        """Fans out a frame another node's router built (cluster mode) to this node's
        listeners of its sender: the same bytes, never re-framed, never sent back out."""
        stats = self.stats
        stats.relayed_in += 1
        if len(frame) < 4 + _LEVEL_AFTER_HEADER + 1:
            stats.relayed_unrouted += 1
            return
        header = 2 if frame[1] < 126 else 4
        sid = _SID.unpack_from(frame, header + _SID_AFTER_HEADER)[0]
        routes = self._routes if self._routes is not None else self._rebuild()
        route = routes.get(sid)
        if route is None or sid not in self._remote:
            stats.relayed_unrouted += 1
            return
        level = frame[header + _LEVEL_AFTER_HEADER]
        if level != _NO_LEVEL:
            self.levels[sid] = level
        for sink in route:
            sink.send_frame_nowait(frame, droppable=True)
        stats.deliveries += len(route)
