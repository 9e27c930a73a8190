"""The gateway: turns each accepted connection into a WebSocket and a participant actor."""

from __future__ import annotations

import collections
import ipaddress
import logging
from typing import TYPE_CHECKING

import trio

from airwave.protocol import Error, Reason

from .channel import frame_of
from .participant import ParticipantActor, SessionSettings
from .transport import Connection, accept_websocket

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("airwave.gateway")

# trio-websocket closes a connection (1009) for messages above this; smaller oversized
# messages (above the protocol's own limit) get a too_large error and the connection stays.
WEBSOCKET_MAX_MESSAGE = 1 << 20


class Gateway:
    """``max_per_address`` bounds the connections one peer address holds (decision 15: the
    loopback address is exempt unless ``limit_loopback``, so benchmarks run from one host)."""

    def __init__(
        self, registry: Registry, settings: SessionSettings, *, max_per_address: int = 64, limit_loopback: bool = False
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._max_per_address = max_per_address
        self._limit_loopback = limit_loopback
        self._per_address: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.refused_connections = 0
        self._open: set[ParticipantActor] = set()

    async def handle(self, conn: Connection) -> None:
        host, port = conn.remote_address
        peer = f"{host}:{port}"
        # trio-websocket's reader lives in the connection's own nursery: one per connection.
        nursery = conn.nursery
        ws = await accept_websocket(conn, nursery, max_message_size=WEBSOCKET_MAX_MESSAGE)
        if ws is None:
            return
        limited = self._limit_loopback or not ipaddress.ip_address(host).is_loopback
        if limited and self._per_address[host] >= self._max_per_address:
            self.refused_connections += 1
            log.warning("refused %s: %d connections from that address", peer, self._per_address[host])
            conn.send_frame_nowait(frame_of(Error(Reason.RATE_LIMITED, "too many connections from your address")), droppable=False)
            await ws.aclose(code=1008, reason="too many connections from your address")
            return
        self._per_address[host] += 1
        self.connections += 1

        log.info("connect %s", peer)
        participant = ParticipantActor(ws, conn, self._registry, self._settings, nursery, peer)
        self._open.add(participant)
        try:
            await participant.run()
        finally:
            self._open.discard(participant)
            self.connections -= 1
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]
            log.info(
                "disconnect %s %s reason=%s",
                peer,
                participant.user_id or "-",
                (conn.close_reason or participant.end_reason).reason_name,
            )
            nursery.cancel_scope.cancel()

    async def close_all(self, reason: str = "server shutting down") -> None:
        """Closes every WebSocket with 1001 (going away), so clients see a clean close."""
        async with trio.open_nursery() as nursery:
            for participant in list(self._open):
                nursery.start_soon(participant.close, 1001, reason)

    async def run_heartbeats(self, period: float) -> None:
        """One task for every connection's heartbeat (see ParticipantActor.tick)."""
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for participant in list(self._open):
                participant.tick(now)
