"""The gateway: turns each accepted connection into a WebSocket and a participant actor."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .participant import ParticipantActor, SessionSettings
from .transport import Connection, accept_websocket

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("airwave.gateway")

# trio-websocket closes a connection (1009) for messages above this; smaller oversized
# messages (above the protocol's own limit) get a too_large error and the connection stays.
WEBSOCKET_MAX_MESSAGE = 1 << 20


class Gateway:
    def __init__(self, registry: Registry, settings: SessionSettings) -> None:
        self._registry = registry
        self._settings = settings
        self.connections = 0

    async def handle(self, conn: Connection) -> None:
        host, port = conn.remote_address
        peer = f"{host}:{port}"
        async with trio.open_nursery() as nursery:
            ws = await accept_websocket(conn, nursery, max_message_size=WEBSOCKET_MAX_MESSAGE)
            if ws is None:
                return
            self.connections += 1
            log.info("connect %s", peer)
            participant = ParticipantActor(ws, conn, self._registry, self._settings, peer)
            try:
                await participant.run()
            finally:
                self.connections -= 1
                log.info(
                    "disconnect %s %s reason=%s",
                    peer,
                    participant.user_id or "-",
                    (conn.close_reason or participant.end_reason).reason_name,
                )
                nursery.cancel_scope.cancel()
