"""The WebSocket handshake over a `Connection`, by trio-websocket.

trio-websocket does the HTTP upgrade and, from then on, reads frames, answers pings and runs
the close handshake; it writes through `Connection.send_all`, so its frames and the media
fast path share the one ordered output (design notes, section 6: never write to its stream
from outside).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from urllib.parse import urlsplit

import trio
import trio_websocket

from .connection import Connection
from .http import MAX_REQUEST_HEAD, Answer, DiskFile, Site, disk_answer, end_of_head, error_answer, route

__all__ = ["accept_websocket"]

logger = logging.getLogger(__name__)

# Upgrade-request headers a reverse proxy adds (h11 lower-cases names).
_FORWARDING_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def origin_refused(headers: list[tuple[bytes, bytes]], allowed: frozenset[str], host: str | None = None) -> str | None:
    """Why a handshake's ``Origin`` is refused, or None. A request without one is no
    browser's (browsers always send it on a WebSocket upgrade) and passes. With the
    request's ``host``, the server's own web page passes too (`_own_page`)."""
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins:
        return None
    origin = origins[0].decode("latin-1").strip().lower().rstrip("/")
    if len(origins) == 1 and ("*" in allowed or origin in allowed or _own_page(origin, host)):
        return None
    return f"origin {origin[:100]!r} is not allowed (the server's --allow-origin)"


def _own_page(origin: str, host: str | None) -> bool:
    """Whether ``origin`` is this server's own page: ``http://`` plus the request's Host,
    where that host is an IP address or ``localhost``. A host name is not enough: with DNS
    rebinding a hostile site's name can resolve to this server, and its Origin would then
    match the Host it sent; a page served under a name needs ``--allow-origin``."""
    if host is None or origin != "http://" + host.strip().lower():
        return False
    try:
        hostname = urlsplit(origin).hostname or ""
        return hostname == "localhost" or bool(ipaddress.ip_address(hostname))
    except ValueError:
        return False


class _Replayed(trio.abc.Stream):
    """``conn`` with the request head already read from it handed out again first, so
    trio-websocket sees the upgrade request whole. Reads only: writes and closes go
    straight to ``conn``, the one ordered output."""

    def __init__(self, conn: Connection, head: bytes) -> None:
        self._conn = conn
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._conn.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._conn.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._conn.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._conn.aclose()


async def _read_head(conn: Connection) -> bytes | None:
    """Every byte up to the end of the request head (and any after it in the same read);
    None if the peer left first. A head over the limit is returned as it is, for a 431."""
    received = b""
    while end_of_head(received) < 0 and len(received) <= MAX_REQUEST_HEAD:
        data = await conn.receive_some()
        if not data:
            return None
        received += data
    return received


async def _answer_http(conn: Connection, answer: Answer, line: str) -> None:
    """Writes a complete response and closes: one request per connection."""
    log = logger.warning if answer.status >= 500 else logger.info if answer.status >= 400 else logger.debug
    log("http %s from %r: %d %s", line, conn, answer.status, answer.note)
    await conn.send_all(answer.data)
    await conn.aclose()


async def _read_file(path: Path) -> bytes | None:
    """An HLS file's bytes (a few KiB; on a thread all the same: a disk may stall), or None
    if it is not there (not streaming, or a segment already deleted)."""
    try:
        return await trio.to_thread.run_sync(path.read_bytes)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


async def accept_websocket(
    conn: Connection,
    nursery: trio.Nursery,
    *,
    max_message_size: int = 1 << 20,
    message_queue_size: int = 1,
    site: Site | None = None,
) -> trio_websocket.WebSocketConnection | None:
    """Run the server side of the WebSocket handshake on ``conn``; None if it fails.

    With a ``site``, a request that is not an upgrade is answered as plain HTTP (the web
    page, its files, 404, 400: `http.route`) and None is returned; an upgrade goes on to
    trio-websocket exactly as without one.

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
    stream: trio.abc.Stream = conn
    host: str | None = None
    with trio.move_on_after(conn.settings.handshake_timeout_seconds):
        if site is not None:
            try:
                head = await _read_head(conn)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                head, failure = None, f"connection failed ({exc})"
            if head is None:
                if failure == "timed out":
                    failure = "connection ended before the request was complete"
                logger.info("request from %r failed: %s", conn, failure)
                await conn.aclose()
                return None
            end = end_of_head(head)
            outcome = route(head[:end], site) if end >= 0 else error_answer(431, "request head too large")
            if isinstance(outcome, DiskFile):
                outcome = disk_answer(outcome, await _read_file(outcome.path))
            if isinstance(outcome, Answer):
                first_line = head.split(b"\r\n", 1)[0][:100].decode("latin-1")
                try:
                    await _answer_http(conn, outcome, repr(first_line))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.aclose()
                return None
            stream, host = _Replayed(conn, head), outcome.host
        async with trio.open_nursery() as race:

            async def cancel_when_receive_ends() -> None:
                # trio-websocket waits for a request forever if the stream ends first.
                await conn.receive_ended.wait()
                race.cancel_scope.cancel()

            race.start_soon(cancel_when_receive_ends)
            try:
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    message_queue_size=message_queue_size,
                    max_message_size=max_message_size,
                    receive_buffer_size=conn.settings.receive_chunk_size,
                )
                conn.forwarded = any(name in _FORWARDING_HEADERS for name, _ in request.headers)
                refused = origin_refused(request.headers, conn.settings.allowed_origins, host)
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
