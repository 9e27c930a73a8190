"""The client's end of the wire: one WebSocket, requests matched to replies, pushes queued.

This is the layer the SDK builds on, and what the integration tests drive directly when they
need byte-level control. Pushed control messages and media frames arrive on two bounded
channels; a consumer that falls behind on media loses the oldest frames (counted), never
control messages.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_websocket

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


@asynccontextmanager
async def open_wire(
    url: str, *, hello: bool = True, client: str = "airwave-py", connect_timeout: float = 5.0
) -> AsyncIterator[Wire]:
    """A connected Wire (after the hello exchange unless ``hello`` is False)."""
    # A bounded handshake: a connection cut mid-handshake (a server dying) must not hold a
    # reconnecting client for trio-websocket's 60 s default.
    async with trio_websocket.open_websocket_url(
        url, max_message_size=limits.MAX_SERVER_MESSAGE_BYTES, connect_timeout=connect_timeout, disconnect_timeout=5.0
    ) as ws:
        wire = Wire(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run)
            if hello:
                reply = await wire.request(Hello, version=limits.PROTOCOL_VERSION, client=client)
                if not reply.ok:
                    raise ConnectionError(f"hello refused: {reply.reason.reason_name} {reply.message}")
            yield wire
            nursery.cancel_scope.cancel()
