"""The WebSocket handshake over a `Connection`, by trio-websocket.

trio-websocket does the HTTP upgrade and, from then on, reads frames, answers pings and runs
the close handshake; it writes through `Connection.send_all`, so its frames and the media
fast path share the one ordered output (design notes, section 6: never write to its stream
from outside).
"""

from __future__ import annotations

import logging

import trio
import trio_websocket

from .connection import Connection

__all__ = ["accept_websocket"]

logger = logging.getLogger(__name__)

# Upgrade-request headers a reverse proxy adds (h11 lower-cases names).
_FORWARDING_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def origin_refused(headers: list[tuple[bytes, bytes]], allowed: frozenset[str]) -> str | None:
    """Why a handshake's ``Origin`` is refused, or None. A request without one is no
    browser's (browsers always send it on a WebSocket upgrade) and passes."""
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins:
        return None
    origin = origins[0].decode("latin-1").strip().lower().rstrip("/")
    if len(origins) == 1 and ("*" in allowed or origin in allowed):
        return None
    return f"origin {origin[:100]!r} is not allowed (the server's --allow-origin)"


async def accept_websocket(
    conn: Connection,
    nursery: trio.Nursery,
    *,
    max_message_size: int = 1 << 20,
    message_queue_size: int = 1,
) -> trio_websocket.WebSocketConnection | None:
    """Run the server side of the WebSocket handshake on ``conn``; None if it fails.

    trio-websocket's reader task (reads, pongs, close handshake) starts in ``nursery`` and
    runs until the WebSocket or ``conn`` closes, so the nursery's owner ends it with
    ``ws.aclose()`` or ``conn.aclose()``. A handshake that fails (timeout after
    ``conn.settings.handshake_timeout_seconds``, the peer leaving, a malformed request) is
    logged, ``conn`` is closed, and None is returned.

    The returned WebSocket's ``remote`` and ``local`` are ``repr(conn)`` strings, because
    trio-websocket only reads addresses from ``trio.SocketStream``; use
    ``conn.remote_address``.
    """
    ws: trio_websocket.WebSocketConnection | None = None
    failure: str = "timed out"
    with trio.move_on_after(conn.settings.handshake_timeout_seconds):
        async with trio.open_nursery() as race:

            async def cancel_when_receive_ends() -> None:
                # trio-websocket waits for a request forever if the stream ends first.
                await conn.receive_ended.wait()
                race.cancel_scope.cancel()

            race.start_soon(cancel_when_receive_ends)
            try:
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    conn,
                    message_queue_size=message_queue_size,
                    max_message_size=max_message_size,
                    receive_buffer_size=conn.settings.receive_chunk_size,
                )
                conn.forwarded = any(name in _FORWARDING_HEADERS for name, _ in request.headers)
                refused = origin_refused(request.headers, conn.settings.allowed_origins)
                if refused is None:
                    ws = await request.accept()
                else:
                    failure = refused
                    await request.reject(403, body=f"{refused}\n".encode())
            except trio_websocket.ConnectionClosed as exc:
                failure = f"connection closed ({exc.reason})"
            race.cancel_scope.cancel()
    if ws is None:
        if conn.receive_ended.is_set() and failure == "timed out":
            failure = "connection ended before the handshake completed"
        logger.info("websocket handshake from %r failed: %s", conn, failure)
        await conn.aclose()
    return ws
