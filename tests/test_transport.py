"""The socket layer over real loopback sockets.

Every test listens on 127.0.0.1 port 0, runs under ``trio.fail_after``, and uses short
timers and small socket buffers so backpressure happens within milliseconds. Raw clients
are trio sockets driven by a wsproto client, so the tests see the exact bytes on the wire
(a torn or reordered frame fails the parse or the sequence checks).
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import struct
import time
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from airwave.actors.net import (
    Connection,
    TransportSettings,
    accept_websocket,
    close_listener,
    open_listener,
    serve_connections,
)
from airwave.protocol.reasons import Reason
from airwave.protocol.wsframe import server_binary_frame
from helpers import wait_until

# Linux doubles SO_SNDBUF/SO_RCVBUF and enforces a floor; these are near that floor.
SMALL_SEND_BUFFER = 4096
SMALL_RECEIVE_BUFFER = 2048

MEDIA = 1
CONTROL = 2
END = 3
_HEADER = struct.Struct(">BI")


def numbered_payload(kind: int, seq: int, size: int = 0) -> bytes:
    """A payload whose every byte is a function of (kind, seq): any tear is detected."""
    return _HEADER.pack(kind, seq) + bytes((seq + i) % 251 for i in range(size))


def parse_numbered(payload: bytes) -> tuple[int, int]:
    kind, seq = _HEADER.unpack_from(payload)
    size = len(payload) - _HEADER.size
    assert payload[_HEADER.size :] == bytes((seq + i) % 251 for i in range(size)), "torn frame"
    return kind, seq


# ---------------------------------------------------------------------- harness


@asynccontextmanager
async def serving(handler, settings: TransportSettings):
    listener = open_listener("127.0.0.1", 0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_connections, listener, handler, settings=settings)
            )
            yield listener.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        close_listener(listener)


def websocket_handler(accepted: trio.MemorySendChannel, body=None):
    """Accept the WebSocket, publish (conn, ws) to the test, then run ``body`` or idle."""

    async def handler(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            ws = await accept_websocket(conn, nursery)
            if ws is None:
                return
            await accepted.send((conn, ws))
            if body is None:
                await trio.sleep_forever()
            await body(conn, ws)
            nursery.cancel_scope.cancel()

    return handler


class RawClient:
    """A WebSocket client on a plain trio socket: it reads only when the test says so."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.leftover = b""
        self._partial = b""

    @classmethod
    async def connect(cls, port: int, *, receive_buffer: int | None = None) -> RawClient:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            # Before connect, so the advertised window is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        return cls(sock)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def handshake(self, path: str = "/") -> None:
        await self.send_all(self.ws.send(Request(host="localhost", target=path)))
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await self.sock.recv(4096)
            assert chunk, "server closed during the handshake"
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.ws.receive_data(head + b"\r\n\r\n")
        assert any(isinstance(e, AcceptConnection) for e in self.ws.events())
        self.leftover = rest

    async def recv_raw(self, max_bytes: int) -> bytes:
        if self.leftover:
            data, self.leftover = self.leftover[:max_bytes], self.leftover[max_bytes:]
            return data
        return await self.sock.recv(max_bytes)

    def feed(self, data: bytes) -> list[object]:
        """Parse received bytes; return whole messages (bytes) and other events in order."""
        self.ws.receive_data(data)
        out: list[object] = []
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self._partial += event.data
                if event.message_finished:
                    out.append(self._partial)
                    self._partial = b""
            else:
                out.append(event)
        return out

    async def read_until_eof(self) -> bytes:
        data = b""
        while chunk := await self.recv_raw(65536):
            data += chunk
        return data

    def reset(self) -> None:
        """Close with SO_LINGER 0: the server sees a TCP reset, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def accept_one(port: int, accepted: trio.MemoryReceiveChannel, **kwargs):
    client = await RawClient.connect(port, **kwargs)
    await client.handshake()
    conn, ws = await accepted.receive()
    assert conn.remote_address == ("127.0.0.1", client.port)
    return client, conn, ws


def reset_arrived(conn: Connection) -> bool:
    """Whether the peer's reset has reached the server's socket (poll says error or hang-up),
    asked without reading or sending, so the connection itself still has to find out."""
    poller = select.poll()
    poller.register(conn._sock.fileno(), select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def tight(**overrides) -> TransportSettings:
    values = dict(
        send_buffer_size=SMALL_SEND_BUFFER,
        max_queued_media_frames=8,
        max_queued_control_bytes=256 * 1024,
        max_backlog_seconds=30.0,
        handshake_timeout_seconds=2.0,
    )
    values.update(overrides)
    return TransportSettings(**values)


# ---------------------------------------------------------------------- websocket seam


async def test_websocket_fast_path_and_send_message_interleave_in_order():
    with trio.fail_after(10):
        send, accepted = trio.open_memory_channel(1)  # one connection at a time
        async with serving(websocket_handler(send), TransportSettings()) as port:
            url = f"ws://127.0.0.1:{port}/feed"
            async with trio_websocket.open_websocket_url(url) as client:
                conn, server_ws = await accepted.receive()
                assert server_ws.path == "/feed"
                assert server_ws.remote == repr(conn)

                await client.send_message(b"hello")
                assert await server_ws.get_message() == b"hello"

                for i in range(60):
                    if i % 2:
                        conn.send_frame_nowait(server_binary_frame(b"fast %d" % i), droppable=False)
                    else:
                        await server_ws.send_message(b"slow %d" % i)
                received = [await client.get_message() for _ in range(60)]
                assert received == [(b"fast %d" if i % 2 else b"slow %d") % i for i in range(60)]

                await client.ping(b"from client")  # pong written by the server's reader task
                await server_ws.ping(b"from server")

            assert client.closed.code == 1000
            with pytest.raises(trio_websocket.ConnectionClosed):
                await server_ws.get_message()
            assert server_ws.closed.code == 1000
            assert conn.close_reason is Reason.NONE  # trio-websocket closed the stream
            stats = conn.statistics()
            assert stats.frames_dropped == 0 and stats.frames_queued_now == 0


async def test_accept_websocket_peer_leaves_before_handshake_returns_none():
    with trio.fail_after(5):
        results = []

        async def handler(conn):
            async with trio.open_nursery() as nursery:
                results.append(await accept_websocket(conn, nursery))

        async with serving(handler, TransportSettings()) as port:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            await sock.send(b"GET / HTTP/1.1\r\n")
            sock.close()
            await wait_until(lambda: bool(results), "accept_websocket to return")
        assert results == [None]


async def test_accept_websocket_silent_peer_times_out_and_returns_none():
    with trio.fail_after(5):
        results = []

        async def handler(conn):
            async with trio.open_nursery() as nursery:
                results.append(await accept_websocket(conn, nursery))
            results.append(conn.close_reason)

        settings = TransportSettings(handshake_timeout_seconds=0.2)
        async with serving(handler, settings) as port:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            assert await sock.recv(10) == b""  # closed by the server after the timeout
            sock.close()
            await wait_until(lambda: len(results) == 2, "the handler to finish")
        assert results == [None, Reason.NONE]


async def test_connection_after_close_frame_sends_no_more_frames():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)
        async with serving(websocket_handler(send), TransportSettings()) as port:
            client, conn, server_ws = await accept_one(port, accepted)
            first = server_binary_frame(b"before close")
            conn.send_frame_nowait(first, droppable=False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server_ws.aclose)  # sends the close frame, waits for ours
                await trio.testing.wait_all_tasks_blocked()
                conn.send_frame_nowait(server_binary_frame(b"after close"), droppable=True)
                conn.send_frame_nowait(server_binary_frame(b"after close"), droppable=False)
                wire = b""
                while not wire.endswith(b"\x88\x02\x03\xe8"):
                    wire += await client.recv_raw(4096)
                # Exactly the frame, then the close frame (code 1000): nothing after it.
                assert wire == first + b"\x88\x02\x03\xe8"
                (close,) = client.feed(wire)[1:]
                assert isinstance(close, CloseConnection)
                await client.send_all(client.ws.send(close.response()))
                assert await client.read_until_eof() == b""
            assert server_ws.closed.code == 1000


# ---------------------------------------------------------------------- backpressure


async def test_connection_slow_reader_sees_increasing_frames_with_gaps_equal_to_drops():
    with trio.fail_after(20):
        send, accepted = trio.open_memory_channel(1)
        async with serving(websocket_handler(send), tight()) as port:
            client, conn, server_ws = await accept_one(
                port, accepted, receive_buffer=SMALL_RECEIVE_BUFFER
            )
            media_total = 3000
            controls_sent: list[int] = []
            media_seen: list[int] = []
            controls_seen: list[int] = []

            async def publish() -> None:
                control_seq = 0
                for seq in range(media_total):
                    # Sizes up to ~3 KB make partial writes common, not just EAGAIN.
                    size = (seq * 397) % 3000
                    frame = server_binary_frame(numbered_payload(MEDIA, seq, size))
                    conn.send_frame_nowait(frame, droppable=True)
                    if seq % 100 == 50:
                        control = numbered_payload(CONTROL, control_seq, 40)
                        if seq % 500 == 50:
                            await server_ws.send_message(control)  # waits through the queue
                        else:
                            conn.send_frame_nowait(server_binary_frame(control), droppable=False)
                        controls_sent.append(control_seq)
                        control_seq += 1
                    if seq % 10 == 0:
                        await trio.sleep(0.001)  # pacing: the publisher runs at a media-like rate
                    if seq % 300 == 299:
                        await trio.sleep(0.05)  # a lull: the backlog drains, a new one begins
                conn.send_frame_nowait(server_binary_frame(numbered_payload(END, 0)), droppable=False)

            async def read_slowly() -> None:
                while True:
                    data = await client.recv_raw(2048)
                    assert data, "server closed the connection"
                    for message in client.feed(data):
                        kind, seq = parse_numbered(message)
                        if kind == END:
                            return
                        (media_seen if kind == MEDIA else controls_seen).append(seq)
                    await trio.sleep(0.001)  # pacing: a reader slower than the publisher

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                nursery.start_soon(read_slowly)

            stats = conn.statistics()
            assert stats.close_reason is None
            assert stats.would_block_events > 1 and stats.frames_queued > 0
            assert stats.frames_dropped > 0, "the reader was not slow enough to test drops"
            assert media_seen == sorted(set(media_seen))
            expected = 0
            gaps = 0
            for seq in media_seen:
                gaps += seq - expected
                expected = seq + 1
            gaps += media_total - expected
            assert gaps == stats.frames_dropped == media_total - len(media_seen)
            assert controls_seen == controls_sent
            assert stats.frames_queued_now == 0 and stats.bytes_queued_now == 0
            assert 0 < stats.peak_bytes_queued


async def test_connection_reader_stopped_forever_becomes_slow_consumer_without_delaying_others():
    with trio.fail_after(15):
        send, accepted = trio.open_memory_channel(1)
        max_backlog = 0.3
        async with serving(websocket_handler(send), tight(max_backlog_seconds=max_backlog)) as port:
            stuck, stuck_conn, _ = await accept_one(
                port, accepted, receive_buffer=SMALL_RECEIVE_BUFFER
            )
            healthy = [await accept_one(port, accepted) for _ in range(10)]
            conns = [stuck_conn] + [conn for _, conn, _ in healthy]
            ticks = 200
            received = [0] * len(healthy)

            async def read_all(index: int, client: RawClient) -> None:
                while received[index] < ticks:
                    data = await client.recv_raw(65536)
                    assert data
                    received[index] += len(client.feed(data))

            passes: list[float] = []
            backlog_at = closed_at = None
            async with trio.open_nursery() as nursery:
                for index, (client, _, _) in enumerate(healthy):
                    nursery.start_soon(read_all, index, client)
                for seq in range(ticks):
                    frame = server_binary_frame(numbered_payload(MEDIA, seq, 160))
                    started = time.perf_counter()
                    for conn in conns:
                        conn.send_frame_nowait(frame, droppable=True)
                    passes.append(time.perf_counter() - started)
                    now = trio.current_time()
                    if backlog_at is None and stuck_conn.statistics().would_block_events:
                        backlog_at = now
                    if closed_at is None and stuck_conn.close_reason is not None:
                        closed_at = now
                    await trio.sleep(0.005)  # pacing: a fan-out tick (the backlog limit is a real-time timer)

            assert stuck_conn.close_reason is Reason.SLOW_CONSUMER
            assert stuck_conn.statistics().slow_consumer
            assert backlog_at is not None and closed_at is not None
            assert max_backlog * 0.9 <= closed_at - backlog_at <= max_backlog + 0.5
            # The stuck listener never held up the loop, and the others lost nothing.
            # (11 sends take ~50 µs; a blocked loop would take max_backlog or forever.)
            passes.sort()
            assert passes[len(passes) // 2] < 0.002, f"median pass {passes[len(passes) // 2] * 1e3:.1f} ms"
            assert passes[-1] < 0.05, f"slowest fan-out pass {passes[-1] * 1e3:.1f} ms"
            assert received == [ticks] * len(healthy)
            for _, conn, _ in healthy:
                stats = conn.statistics()
                assert stats.frames_dropped == 0 and stats.close_reason is None
            # The server closed the stuck socket: the client drains what was buffered, then EOF.
            await stuck.read_until_eof()


async def test_connection_watching_acknowledgements_ends_a_shut_window_with_timeout():
    """The kernel (TCP_USER_TIMEOUT), not the backlog limit (30 s here), ends a peer whose
    window stays shut; the connection says timeout, and the sends never raised."""
    with trio.fail_after(15):
        send, accepted = trio.open_memory_channel(1)
        async with serving(websocket_handler(send), tight()) as port:
            stuck, conn, _ = await accept_one(port, accepted, receive_buffer=SMALL_RECEIVE_BUFFER)
            assert conn.watch_acknowledgements(0.5)
            frame = server_binary_frame(numbered_payload(MEDIA, 0, 160))
            started = trio.current_time()
            while conn.close_reason is None and trio.current_time() - started < 10:
                conn.send_frame_nowait(frame, droppable=True)
                await trio.sleep(0.005)  # pacing: media until the kernel's timer ends the connection
            assert conn.close_reason is Reason.TIMEOUT
            assert conn.statistics().would_block_events  # it was backlogged, not just slow
            stuck.sock.close()


async def test_connection_control_bytes_over_limit_closes_slow_consumer_promptly():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)
        limit = 16 * 1024
        async with serving(websocket_handler(send), tight(max_queued_control_bytes=limit)) as port:
            stuck, conn, _ = await accept_one(port, accepted, receive_buffer=SMALL_RECEIVE_BUFFER)
            frame = server_binary_frame(b"c" * 1000)
            sent = 0
            while conn.close_reason is None:
                conn.send_frame_nowait(frame, droppable=False)
                sent += 1
                assert sent < 1000
            assert conn.close_reason is Reason.SLOW_CONSUMER
            stats = conn.statistics()
            assert stats.frames_dropped == 0  # control frames are never dropped
            # Flagged synchronously; later sends are no-ops and nothing is queued.
            conn.send_frame_nowait(frame, droppable=False)
            assert conn.statistics() == stats and stats.bytes_queued_now == 0
            # Closed by the flusher on the next scheduler pass, not inside the send loop.
            await wait_until(lambda: "closed" in repr(conn), "the flusher to close the socket")
            await stuck.read_until_eof()


async def test_connection_reset_while_backlogged_is_contained_and_server_keeps_serving(caplog):
    with trio.fail_after(10):
        send, accepted = trio.open_memory_channel(1)

        async def body(conn, ws):
            # Lets ConnectionClosed escape (wrapped in an ExceptionGroup by the nursery):
            # serve_connections must log and contain it.
            await ws.get_message()

        async with serving(websocket_handler(send, body), tight()) as port:
            doomed, doomed_conn, _ = await accept_one(
                port, accepted, receive_buffer=SMALL_RECEIVE_BUFFER
            )
            other, other_conn, _ = await accept_one(port, accepted)
            seq = 0
            while doomed_conn.statistics().bytes_queued_now == 0:
                frame = server_binary_frame(numbered_payload(MEDIA, seq, 500))
                doomed_conn.send_frame_nowait(frame, droppable=True)
                other_conn.send_frame_nowait(frame, droppable=True)
                seq += 1
            doomed.reset()
            # Keep fanning out: the fast path meets the reset and must not raise.
            while doomed_conn.close_reason is None:
                frame = server_binary_frame(numbered_payload(MEDIA, seq, 500))
                for conn in (doomed_conn, other_conn):
                    conn.send_frame_nowait(frame, droppable=True)
                seq += 1
                await trio.sleep(0.01)  # pacing: media until the fast path meets the reset
            assert doomed_conn.close_reason is Reason.NETWORK
            doomed_conn.send_frame_nowait(frame, droppable=True)  # a no-op now

            seen = 0
            while seen < seq:
                data = await other.recv_raw(65536)
                assert data
                seen += len(other.feed(data))
            assert other_conn.close_reason is None
            assert other_conn.statistics().frames_dropped == 0

            newcomer, newcomer_conn, _ = await accept_one(port, accepted)
            newcomer_conn.send_frame_nowait(server_binary_frame(b"welcome"), droppable=False)
            assert newcomer.feed(await newcomer.recv_raw(100)) == [b"welcome"]

            await wait_until(
                lambda: any("handler failed" in r.getMessage() for r in caplog.records), "the handler's failure logged"
            )


async def test_connection_send_after_peer_reset_marks_network_failure_without_raising():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)

        async def handler(conn: Connection) -> None:
            await send.send(conn)
            await trio.sleep_forever()  # no reader: only the fast path can notice the reset

        async with serving(handler, TransportSettings()) as port:
            client = await RawClient.connect(port)
            conn = await accepted.receive()
            conn.send_frame_nowait(b"first", droppable=False)
            assert await client.recv_raw(10) == b"first"
            client.reset()
            await wait_until(lambda: reset_arrived(conn), "the reset at the server's socket")
            frame = server_binary_frame(b"media")
            for _ in range(3):
                conn.send_frame_nowait(frame, droppable=True)
            assert conn.close_reason is Reason.NETWORK
            with pytest.raises(trio.BrokenResourceError):
                await conn.send_all(b"control")
            stats = conn.statistics()
            assert stats.frames_sent_directly == 1 and stats.frames_queued_now == 0
            await wait_until(lambda: "closed" in repr(conn), "the flusher task to close the socket")


async def test_serve_connections_handler_error_is_logged_and_others_keep_working(caplog):
    with trio.fail_after(5):
        answered = []

        async def handler(conn: Connection) -> None:
            request = await conn.receive_some()
            if request == b"fail":
                raise RuntimeError("boom")
            await conn.send_all(b"ok")
            answered.append(request)

        async with serving(handler, TransportSettings()) as port:
            for message in (b"fail", b"fine"):
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", port))
                await sock.send(message)
                assert await sock.recv(10) == (b"ok" if message == b"fine" else b"")
                sock.close()
        assert answered == [b"fine"]
        failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
        assert len(failures) == 1 and failures[0].levelno == logging.ERROR


async def test_serve_connections_connect_storm_all_accepted():
    with trio.fail_after(20):
        clients = 300
        accepted = []

        async def handler(conn: Connection) -> None:
            accepted.append(conn.remote_address)
            await conn.send_all(b"!")
            assert await conn.receive_some() == b""

        greeted = []

        async def client(port: int) -> None:
            sock = trio.socket.socket()
            with sock:
                await sock.connect(("127.0.0.1", port))
                greeted.append(await sock.recv(1))

        async with serving(handler, TransportSettings(accept_batch=64)) as port:
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(client, port)
        assert len(accepted) == len(set(accepted)) == clients
        assert greeted == [b"!"] * clients


async def test_serve_connections_listener_closed_stops_accepting_and_returns():
    with trio.fail_after(5):
        listener = open_listener("127.0.0.1", 0)
        port = listener.getsockname()[1]

        async def handler(conn: Connection) -> None:
            await conn.send_all(b"hi")

        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_connections, listener, handler, settings=TransportSettings())
            )
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            assert await sock.recv(10) == b"hi"
            sock.close()
            close_listener(listener)
        # The nursery exited: serve_connections returned by itself.
        with pytest.raises(OSError):
            probe = socket.create_connection(("127.0.0.1", port), timeout=1)
            probe.close()


async def test_connection_aclose_wakes_blocked_receive_and_send_all():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)

        async def handler(conn: Connection) -> None:
            await send.send(conn)
            await trio.sleep_forever()

        async with serving(handler, TransportSettings(send_buffer_size=SMALL_SEND_BUFFER)) as port:
            client = await RawClient.connect(port, receive_buffer=SMALL_RECEIVE_BUFFER)
            conn = await accepted.receive()
            outcomes: dict[str, type[BaseException]] = {}

            async def blocked(name: str, operation) -> None:
                with pytest.raises(trio.ClosedResourceError) as excinfo:
                    await operation()
                outcomes[name] = excinfo.type

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked, "receive_some", conn.receive_some)
                nursery.start_soon(blocked, "send_all", functools.partial(conn.send_all, b"x" * 2_000_000))
                await trio.testing.wait_all_tasks_blocked()
                assert outcomes == {} and conn.statistics().bytes_queued_now > 0
                await conn.aclose()
                await conn.aclose()  # idempotent
            assert outcomes == {
                "receive_some": trio.ClosedResourceError,
                "send_all": trio.ClosedResourceError,
            }
            assert conn.close_reason is Reason.NONE
            conn.send_frame_nowait(b"ignored", droppable=False)  # a no-op after close
            client.sock.close()


async def test_connection_send_all_while_backlogged_waits_for_its_bytes_in_order():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)

        async def handler(conn: Connection) -> None:
            await send.send(conn)
            await trio.sleep_forever()

        async with serving(handler, tight()) as port:
            client = await RawClient.connect(port, receive_buffer=SMALL_RECEIVE_BUFFER)
            conn = await accepted.receive()
            blob = bytes(range(256)) * 64
            before = 0
            while conn.statistics().bytes_queued_now == 0:
                conn.send_frame_nowait(blob, droppable=False)
                before += 1
            finished = trio.Event()

            async def send_tail() -> None:
                await conn.send_all(b"TAIL")
                finished.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_tail)
                await trio.testing.wait_all_tasks_blocked()
                assert not finished.is_set()  # still queued behind the backlog
                wire = b""
                expected = blob * before + b"TAIL"
                while len(wire) < len(expected):
                    wire += await client.recv_raw(65536)
            assert wire == expected and finished.is_set()
            client.sock.close()


async def test_connection_wait_send_all_might_not_block_returns_once_drained():
    with trio.fail_after(5):
        send, accepted = trio.open_memory_channel(1)

        async def handler(conn: Connection) -> None:
            await send.send(conn)
            await trio.sleep_forever()

        async with serving(handler, tight()) as port:
            client = await RawClient.connect(port, receive_buffer=SMALL_RECEIVE_BUFFER)
            conn = await accepted.receive()
            await conn.wait_send_all_might_not_block()  # nothing queued: returns at once
            blob = b"y" * 10_000
            total = 0
            while conn.statistics().bytes_queued_now == 0:
                conn.send_frame_nowait(blob, droppable=False)
                total += len(blob)
            drained = trio.Event()

            async def wait_drained() -> None:
                await conn.wait_send_all_might_not_block()
                drained.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_drained)
                await trio.testing.wait_all_tasks_blocked()
                assert not drained.is_set()
                received = 0
                while received < total:
                    received += len(await client.recv_raw(65536))
            assert drained.is_set() and conn.statistics().bytes_queued_now == 0
            client.sock.close()


def test_open_listener_host_picks_address_family_and_port_zero_picks_a_port():
    listener = open_listener("127.0.0.1", 0)
    with listener:
        assert listener.family == socket.AF_INET and listener.getsockname()[1] > 0
        assert not listener.getblocking()
    if not socket.has_ipv6:
        return
    try:
        listener = open_listener("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        assert listener.family == socket.AF_INET6 and listener.getsockname()[1] > 0


def test_transport_settings_reject_nonpositive_limits():
    with pytest.raises(ValueError):
        TransportSettings(max_queued_media_frames=0)
    with pytest.raises(ValueError):
        TransportSettings(send_buffer_size=0)
    assert TransportSettings(send_buffer_size=None).send_buffer_size is None
