"""The client's end of the wire: one WebSocket, requests matched to replies, pushes queued.

This is the layer the SDK builds on, and what the integration tests drive directly when they
need byte-level control. Pushed control messages and media frames arrive on two bounded
channels; a consumer that falls behind on media loses the oldest frames (counted), never
control messages.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio
import trio_websocket
import wsproto.utilities

from airwave.protocol import (
    Hello,
    MediaPacket,
    Reply,
    ServerMessage,
    decode_server_media,
    decode_server_message,
    encode,
    is_media_frame,
    limits,
)

PUSH_QUEUE = 4096  # control pushes buffered for the application; beyond it the reader waits
MEDIA_QUEUE = 256  # ~5 s of one speaker; beyond it the oldest frames are dropped
DISCONNECT_TIMEOUT = 5.0  # for the close handshake when leaving

T = TypeVar("T")


def send_dropping_oldest(send: trio.MemorySendChannel[T], oldest: trio.MemoryReceiveChannel[T], item: T) -> bool:
    """Queues ``item`` without waiting; a full queue first loses its oldest item (``oldest``
    is a receiving end of the same channel). Returns True when one was dropped, for the
    caller to count. A consumer that fell behind then reads what is recent, not what is stale."""
    try:
        send.send_nowait(item)
        return False
    except trio.WouldBlock:
        oldest.receive_nowait()
        send.send_nowait(item)
        return True


class WireClosed(Exception):
    """The connection ended while a request was waiting for its reply."""


class Wire:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[Reply]] = {}
        self._push_send, self.pushes = trio.open_memory_channel[ServerMessage](PUSH_QUEUE)
        self._media_send, self.media = trio.open_memory_channel[MediaPacket](MEDIA_QUEUE)
        self.media_dropped = 0
        self.closed = trio.Event()

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, message_type: type, **fields: Any) -> Reply:
        """Sends a request (its id is filled in) and waits for its one reply."""
        request_id = self.next_id()
        return await self.request_raw(request_id, encode(message_type(id=request_id, **fields)))

    async def request_raw(self, request_id: int, data: bytes) -> Reply:
        """Sends pre-encoded bytes and waits for the reply to ``request_id`` (for tests of bad input)."""
        send, receive = trio.open_memory_channel[Reply](1)
        self._pending[request_id] = send
        try:
            await self.ws.send_message(data)
            async with receive:
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    raise WireClosed("connection closed before the reply") from None
        finally:
            self._pending.pop(request_id, None)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def run(self) -> None:
        """The reader: dispatches replies to waiting requests, queues pushes and media."""
        try:
            while True:
                try:
                    data = await self.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                if isinstance(data, str):
                    continue
                if is_media_frame(data):
                    if send_dropping_oldest(self._media_send, self.media, decode_server_media(data)):
                        self.media_dropped += 1
                    continue
                message = decode_server_message(data)
                if isinstance(message, Reply):
                    waiter = self._pending.pop(message.id, None)
                    if waiter is not None:
                        waiter.send_nowait(message)
                        continue
                await self._push_send.send(message)
        finally:
            self.closed.set()
            for waiter in self._pending.values():
                waiter.close()
            self._push_send.close()
            self._media_send.close()


class _EndWatchedStream(trio.abc.Stream):
    """A client's TCP (or TLS) stream that says when its receiving side has ended.

    trio-websocket's client waits for the handshake's answer until its timeout even after the
    server has closed the connection, or reset it before the upgrade request went out (its
    reader then stops without reading); a reconnecting client would sit out the whole timeout
    for a server that died (or a load balancer with no server behind it) mid-handshake."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.socket = getattr(stream, "socket", None)  # for tests that cut the TCP connection
        self.ended = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.stream.receive_some(max_bytes)
        except BaseException:
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except BaseException:
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _connect(
    nursery: trio.Nursery, url: str, *, connect_timeout: float, max_message_size: int
) -> trio_websocket.WebSocketConnection:
    """The client's handshake, its reader task started in ``nursery``; over in
    ``connect_timeout`` at most, and as soon as the server closes the connection.
    Raises what trio-websocket's own opening raises: HandshakeError (ConnectionTimeout,
    or from the OSError of a refused connection), ConnectionRejected."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host_header = parts.hostname if port in (80, 443) else f"{parts.hostname}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ws: trio_websocket.WebSocketConnection | None = None
    try:
        with trio.fail_after(connect_timeout):
            if secure:
                context = ssl.create_default_context()
                tcp: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    parts.hostname, port, ssl_context=context, https_compatible=True
                )
            else:
                tcp = await trio.open_tcp_stream(parts.hostname, port)
            stream = _EndWatchedStream(tcp)
            async with trio.open_nursery() as race:

                async def cancel_when_receive_ends() -> None:
                    await stream.ended.wait()
                    race.cancel_scope.cancel()

                race.start_soon(cancel_when_receive_ends)
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, host_header, resource, max_message_size=max_message_size  # type: ignore[arg-type]
                )
                race.cancel_scope.cancel()
    except trio.TooSlowError:
        raise trio_websocket.ConnectionTimeout from None
    except OSError as exc:
        raise trio_websocket.HandshakeError from exc
    if ws is None:
        await stream.aclose()
        raise trio_websocket.HandshakeError(f"{url}: the server closed the connection during the WebSocket handshake")
    return ws


def _pong_while_closing(error: BaseException) -> bool:
    return isinstance(error, wsproto.utilities.LocalProtocolError) and str(error).startswith("Event Pong(") and "LOCAL_CLOSING" in str(error)


@asynccontextmanager
async def _websocket(url: str, *, connect_timeout: float, max_message_size: int) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """trio-websocket's ``open_websocket_url``, but a handshake the server cuts short ends at
    once. An error while connecting is raised as itself, not in an exception group, so a
    caller can catch it as it would trio-websocket's."""
    connected = False
    try:
        async with trio.open_nursery() as nursery:
            ws = await _connect(nursery, url, connect_timeout=connect_timeout, max_message_size=max_message_size)
            connected = True
            try:
                yield ws
            finally:
                with trio.move_on_after(DISCONNECT_TIMEOUT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if connected:
            # trio-websocket answers a ping that arrives after our close frame with a pong
            # wsproto refuses (trio-websocket#184, open): the close is under way, nothing lost.
            _, rest = group.split(_pong_while_closing)
            if rest is None:
                return
            raise rest
        errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        rejected = [e for e in errors if isinstance(e, trio_websocket.ConnectionRejected)]
        if not errors:
            raise
        error = (rejected or errors)[0]
        context = error.__context__
        try:
            raise error  # its own cause kept (a refused connection's OSError); not the group
        finally:
            error.__context__ = context


@asynccontextmanager
async def open_wire(
    url: str, *, hello: bool = True, client: str = "airwave-py", connect_timeout: float = 5.0
) -> AsyncIterator[Wire]:
    """A connected Wire (after the hello exchange unless ``hello`` is False). The handshake
    is bounded by ``connect_timeout`` (trio-websocket's default is 60 s) and ends as soon as
    the server closes the connection, so a reconnecting client moves on at once."""
    async with _websocket(url, connect_timeout=connect_timeout, max_message_size=limits.MAX_SERVER_MESSAGE_BYTES) as ws:
        wire = Wire(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run)
            if hello:
                reply = await wire.request(Hello, version=limits.PROTOCOL_VERSION, client=client)
                if not reply.ok:
                    raise ConnectionError(f"hello refused: {reply.reason.reason_name} {reply.message}")
            yield wire
            nursery.cancel_scope.cancel()
