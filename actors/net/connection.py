"""One accepted client socket with one ordered output: the fan-out's way to the kernel.

Why this exists (design notes, section 3): fanning one small media frame out to N
listeners costs 91-99 µs per delivery through trio-websocket's ``send_message`` and about
10 µs, the kernel's floor, through a synchronous non-blocking ``socket.send`` of a frame
built once. So the media path sends the same ``bytes`` object straight from the fan-out
loop (`Connection.send_frame_nowait`), and a listener gets a queue and a flusher task only
while its socket is backlogged. trio-websocket is kept for the handshake, reads, pings and
close (`websocket.py`): it is handed the `Connection` itself as its stream, and
`Connection.send_all` goes through the same ordered output, so nothing writes to the
socket behind anyone's back.

The `Connection` owns its stdlib socket (never a raw fd) and its queue. Its flusher runs
in the nursery it was given (`listener.py` makes one per connection), and only while the
queue is non-empty or a close is pending: the common, unbacklogged path wakes no task at
all. Starting a flusher costs ~8 µs once per backlog episode (a parked per-connection task
would cost ~2 KB per listener and ~2.5 µs per wake-up; measured on this machine).
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import socket
from typing import final

import attrs
import trio

from airwave.protocol.ratelimit import TokenBucket
from airwave.protocol.reasons import Reason
from airwave.protocol.wsframe import ClientFrameMeter, FrameViolation

__all__ = ["Connection", "TransportSettings", "TransportStatistics"]

logger = logging.getLogger(__name__)

# A server-side close frame with no extensions always starts with FIN + opcode 0x8.
# trio-websocket hands each encoded event to send_all on its own, so a send_all that
# starts with this byte is a close frame; an HTTP response starts with "H" (0x48).
_CLOSE_FRAME_FIRST_BYTE = 0x88
# Queued buffers handed to one sendmsg call while draining a backlog (IOV_MAX is 1024).
_MAX_GATHER = 64

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number if Python lacks the name
_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)  # TCP options apply to these sockets only

_OPEN = "open"
# A failure was found (slow consumer, send error); the flusher task closes the socket soon.
_CLOSING = "closing"
_CLOSED = "closed"


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _optional_positive(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@attrs.frozen(slots=True)
class TransportSettings:
    """Limits and buffer sizes of the socket layer. Tests pass small values."""

    # SO_SNDBUF for accepted sockets; None keeps the OS default (and its autotuning).
    send_buffer_size: int | None = attrs.field(default=None, validator=_optional_positive)
    # TCP_NOTSENT_LOWAT: unsent bytes the kernel holds before a send would block. Without it
    # loopback autotunes to megabytes (minutes of audio) and the drop-oldest queue never
    # engages; 8 KiB is ~50 media frames, about a second. None keeps the OS behaviour.
    notsent_lowat: int | None = attrs.field(default=8 * 1024, validator=_optional_positive)
    # Media frames (droppable) queued per connection; beyond it the oldest queued whole
    # frame is dropped and counted. 64 frames of 20 ms is 1.3 s of audio.
    max_queued_media_frames: int = attrs.field(default=64, validator=_positive)
    # Undroppable bytes (control messages, partial remainders, trio-websocket's writes)
    # queued per connection; a control frame that would exceed it makes a slow consumer.
    max_queued_control_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    # A connection whose queue has not fully drained for this long is a slow consumer.
    max_backlog_seconds: float = attrs.field(default=5.0, validator=_positive)
    # Default receive_some size; also trio-websocket's receive buffer size.
    receive_chunk_size: int = attrs.field(default=16 * 1024, validator=_positive)
    # accept_websocket gives up on a client that has not completed its handshake by then.
    handshake_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    # Connections accepted per wake-up of the accept loop before it yields, so a connect
    # storm cannot stall the fan-out for long.
    accept_batch: int = attrs.field(default=256, validator=_positive)
    # Web page origins ("http://host:port") whose scripts may open a WebSocket here; "*" is
    # any. Browsers send Origin, so a page the user happens to visit cannot reach a loopback
    # server and, say, stop its channels. Clients that send no Origin (SDK, CLI) are not
    # browsers and are unaffected.
    allowed_origins: frozenset[str] = attrs.field(default=frozenset(), converter=lambda v: frozenset(o.lower().rstrip("/") for o in v))
    # Every frame a client sends counts, before trio-websocket parses it: data, continuation
    # and control frames alike (the request rate limits count whole messages only, so a
    # stream of empty continuations or unsolicited pongs would pass them). A speaker sends
    # ~55 frames a second; the burst covers a 10 s stall of the server's own making.
    frame_rate: float = attrs.field(default=200.0, validator=_positive)
    frame_burst: float = attrs.field(default=1000.0, validator=_positive)
    byte_rate: float = attrs.field(default=1 << 20, validator=_positive)
    byte_burst: float = attrs.field(default=4 << 20, validator=_positive)
    # A message may be split into this many frames and must be finished within this time.
    max_fragments: int = attrs.field(default=32, validator=_positive)
    max_message_seconds: float = attrs.field(default=10.0, validator=_positive)
    # Frames handed to the parser per read, so one connection's reads cannot hold the loop
    # (a 16 KiB read of empty frames is 8,192 of them).
    frames_per_read: int = attrs.field(default=64, validator=_positive)


@attrs.frozen(slots=True)
class TransportStatistics:
    """A snapshot of one connection's output. Counters only grow.

    A "frame" is one `Connection.send_frame_nowait` call or one `Connection.send_all`
    buffer.
    """

    frames_sent_directly: int  # taken whole by the kernel straight from the caller
    frames_queued: int  # went through the queue (socket full or a partial write)
    frames_dropped: int  # droppable frames dropped from a full media queue, oldest first
    frames_queued_now: int
    bytes_queued_now: int
    peak_bytes_queued: int
    would_block_events: int  # direct sends that found the socket full (EAGAIN or partial)
    slow_consumer: bool
    close_reason: Reason | None


@final
class _Pending:
    """One queued write. Invariant: a droppable item is whole and unsent."""

    __slots__ = ("data", "delivered", "done", "droppable")

    def __init__(self, data: bytes | memoryview, droppable: bool, done: trio.Event | None) -> None:
        self.data = data
        self.droppable = droppable
        self.done = done  # set for send_all waiters once the bytes reached the kernel or failed
        self.delivered = False


@final
class Connection(trio.abc.Stream):
    """One accepted client socket with one ordered output.

    Every write, from the media fan-out (`send_frame_nowait`) or from trio-websocket
    (`send_all`), goes out in call order. While the socket takes data, a write is one
    non-blocking ``send`` in the caller's task; once a send would block or is partial,
    later writes queue behind it and a flusher task drains the queue in order.

    ``close_reason`` is None while the connection is open, then `Reason.SLOW_CONSUMER`
    (the queue overflowed its limits or stayed backlogged too long), `Reason.NETWORK` (a
    send or receive failed: reset, broken pipe), `Reason.TIMEOUT` (the kernel gave up
    waiting for acknowledgements) or `Reason.NONE` (closed by `aclose`).
    After a failure every send is a no-op; the socket is closed by the flusher task.

    ``nursery`` runs the flusher and must stay open while the connection is in use;
    `serve_connections` makes one per connection. Usually built by `serve_connections`.
    """

    __slots__ = (
        "_backlog_since",
        "_close_reason",
        "_direct",
        "_drained",
        "_forwarded",
        "_flusher_running",
        "_last_received",
        "_n_direct",
        "_n_dropped",
        "_n_queued",
        "_n_would_block",
        "_nursery",
        "_peak_bytes",
        "_queue",
        "_queued_bytes",
        "_queued_control_bytes",
        "_queued_media",
        "_byte_bucket",
        "_frame_bucket",
        "_message_since",
        "_meter",
        "_receive_ended",
        "_receiving",
        "_unread",
        "_violation",
        "_remote_address",
        "_sealed",
        "_sending",
        "_settings",
        "_sock",
        "_sock_send",
        "_state",
        "_wait_scope",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        settings: TransportSettings,
        nursery: trio.Nursery,
        remote_address: object = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._sock_send = sock.send
        self._settings = settings
        self._nursery = nursery
        self._remote_address = _host_port(remote_address if remote_address else _peer(sock))
        self._state = _OPEN
        self._close_reason: Reason | None = None
        # True exactly while a write may go straight to the socket: open, nothing queued,
        # no close frame sent. The one check on the hot path.
        self._direct = True
        # Set once trio-websocket has sent a close frame: RFC 6455 allows no data after it.
        self._sealed = False
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bytes = 0
        self._queued_control_bytes = 0
        self._queued_media = 0
        self._backlog_since = 0.0
        self._flusher_running = False
        self._wait_scope: trio.CancelScope | None = None
        self._drained: trio.Event | None = None
        self._receive_ended = trio.Event()
        self._forwarded = False
        self._last_received = trio.current_time()
        self._receiving = False
        self._meter = ClientFrameMeter(settings.max_fragments)
        self._frame_bucket = TokenBucket(settings.frame_rate, settings.frame_burst)
        self._byte_bucket = TokenBucket(settings.byte_rate, settings.byte_burst)
        self._message_since: float | None = None
        self._unread = b""  # received, not yet handed on: beyond one read's frames
        self._violation: FrameViolation | None = None
        self._sending = False
        self._n_direct = 0
        self._n_queued = 0
        self._n_dropped = 0
        self._n_would_block = 0
        self._peak_bytes = 0

    def __repr__(self) -> str:
        # trio-websocket's ``remote`` and ``local`` fall back to repr() for streams that
        # are not trio.SocketStream; use `remote_address` for the address as a value.
        host, port = self._remote_address
        return f"<Connection {host}:{port} {self._state}>"

    @property
    def remote_address(self) -> tuple[str, int]:
        """The peer's (host, port), captured at accept time (valid after a reset too)."""
        return self._remote_address

    @property
    def nursery(self) -> trio.Nursery:
        """The connection's own nursery (its flusher runs there); a handler may start the
        tasks that live exactly as long as the connection in it, instead of opening another."""
        return self._nursery

    @property
    def last_received(self) -> float:
        """trio time of the last receive (data, pong or EOF): the heartbeat's evidence of life."""
        return self._last_received

    @property
    def forwarded(self) -> bool:
        """Whether the WebSocket upgrade came through a reverse proxy (it carried Forwarded,
        X-Forwarded-For or X-Real-IP): the TCP peer, and what it acknowledges, is the proxy."""
        return self._forwarded

    @forwarded.setter
    def forwarded(self, value: bool) -> None:
        self._forwarded = value

    @property
    def receive_ended(self) -> trio.Event:
        """Set once the peer's side ended (EOF, reset) or the connection closed: a handshake
        that waits for bytes must give up then (trio-websocket would wait forever)."""
        return self._receive_ended

    @property
    def frames_offered(self) -> int:
        """Frames handed to this connection so far (sent, queued or since dropped). The
        heartbeat compares it between sweeps to see whether anything went out."""
        return self._n_direct + self._n_queued

    def watch_acknowledgements(self, seconds: float) -> bool:
        """Ask the kernel to end the connection (reason timeout) when data sent on it stays
        unacknowledged, or unsent behind a zero window, for ``seconds`` (TCP_USER_TIMEOUT).

        While frames flow, that is a heartbeat the peer answers without any work of its
        own, so the server need not ping. False where the option is missing (not Linux) or
        the socket is not TCP: then only what the peer sends proves it is there.
        """
        if _TCP_USER_TIMEOUT is None or self._sock.family not in TCP_FAMILIES:
            return False
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, max(1, round(seconds * 1000)))
        except OSError:
            return False
        return True

    @property
    def settings(self) -> TransportSettings:
        return self._settings

    @property
    def close_reason(self) -> Reason | None:
        """None while open; why the connection closed or is closing otherwise."""
        return self._close_reason

    # ------------------------------------------------------------------ the fast path

    def send_frame_nowait(self, frame: bytes, *, droppable: bool) -> None:
        """Send ``frame`` now if the socket takes it, else queue it behind earlier writes.

        Never blocks and never raises for a connection problem, so one listener's failure
        cannot fail a broadcast. Pass the same ``bytes`` object to every listener.
        ``droppable`` frames (media) beyond the per-connection media limit drop the oldest
        queued whole droppable frame. Undroppable frames (control) beyond the control byte
        limit make the connection a slow consumer. After a failure or a close frame,
        calls are no-ops.
        """
        if self._direct:
            try:
                sent = self._sock_send(frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(frame):
                self._n_direct += 1
                return
            self._n_would_block += 1
            if sent:
                # A partially sent frame must be completed, or the stream tears.
                self._enqueue(memoryview(frame)[sent:], droppable=False)
            else:
                self._enqueue(frame, droppable)
            return
        if self._state is _OPEN and not self._sealed and frame:
            self._enqueue(frame, droppable)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            frames_sent_directly=self._n_direct,
            frames_queued=self._n_queued,
            frames_dropped=self._n_dropped,
            frames_queued_now=len(self._queue),
            bytes_queued_now=self._queued_bytes,
            peak_bytes_queued=self._peak_bytes,
            would_block_events=self._n_would_block,
            slow_consumer=self._close_reason is Reason.SLOW_CONSUMER,
            close_reason=self._close_reason,
        )

    # ------------------------------------------------------------------ trio.abc.Stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` in order with every other write; return once the kernel has it.

        If cancelled while waiting, the bytes stay queued and are still sent in order, so
        the stream never tears. Raises `trio.ClosedResourceError` after `aclose`,
        `trio.BrokenResourceError` after a failure or a slow-consumer close. A write that
        starts with a WebSocket close frame (first byte 0x88; trio-websocket writes one
        frame per call) seals the output: later `send_frame_nowait` calls are no-ops.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._raise_unless_open()
            if not data:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            if not isinstance(data, bytes):
                # Queued bytes must not change under us if the caller reuses its buffer.
                data = bytes(data)
            if self._direct:
                try:
                    sent = self._sock_send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    self._fail(exc)
                    raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                if sent == len(data):
                    self._n_direct += 1
                    self._seal_if_close_frame(data)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
                self._n_would_block += 1
                item = self._enqueue(memoryview(data)[sent:] if sent else data, False, trio.Event())
            else:
                item = self._enqueue(data, False, trio.Event())
            if item is None or item.done is None:
                self._raise_closed()
            self._seal_if_close_frame(data)
            await item.done.wait()
            if not item.delivered:
                self._raise_closed()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until nothing is queued (the next send will be tried directly)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._raise_unless_open()
        if not self._queue:
            await trio.lowlevel.checkpoint()
            return
        if self._drained is None:
            self._drained = trio.Event()
        await self._drained.wait()
        self._raise_unless_open()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return up to ``max_bytes`` received bytes; b"" once the peer has closed its side.

        A reset raises `trio.BrokenResourceError` (and fails the connection); `aclose`
        from another task wakes a waiting receiver with `trio.ClosedResourceError`.
        """
        if max_bytes is None:
            max_bytes = self._settings.receive_chunk_size
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._state is _CLOSED or self._violation is not None:
                    self._raise_closed()
                if self._unread:
                    data, self._unread = self._unread[:max_bytes], self._unread[max_bytes:]
                    break
                try:
                    data = self._sock.recv(max_bytes)
                except BlockingIOError:
                    try:
                        await trio.lowlevel.wait_readable(self._sock)
                    except trio.ClosedResourceError:
                        self._raise_closed()
                    waited = True
                    continue
                except OSError as exc:
                    self._receive_ended.set()
                    self._fail(exc)
                    raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
                break
            self._last_received = trio.current_time()
            if not data:
                self._receive_ended.set()
            else:
                data = self._metered(data)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close now: queued bytes are discarded, waiting tasks wake with an error.

        Idempotent; closes even when cancelled.
        """
        self.close_now()
        await trio.lowlevel.checkpoint()

    @property
    def violation(self) -> FrameViolation | None:
        """The frame rule the client broke, if it did; the connection then reads no more."""
        return self._violation

    def _metered(self, data: bytes) -> bytes:
        """The part of ``data`` within one read's frame allowance; the rest waits for the
        next read. A frame beyond the connection's budgets, or against RFC 6455, closes the
        connection with the close code and raises `trio.BrokenResourceError`."""
        try:
            used, frames = self._meter.advance(data, self._settings.frames_per_read)
            now = self._last_received
            if frames and not self._frame_bucket.allow(now, frames):
                raise FrameViolation(1008, "too many WebSocket frames per second")
            if not self._byte_bucket.allow(now, used):
                raise FrameViolation(1008, "too many bytes per second")
            if not self._meter.message_open:
                self._message_since = None
            elif self._message_since is None:
                self._message_since = now
            elif now - self._message_since > self._settings.max_message_seconds:
                raise FrameViolation(1008, f"a message left unfinished for over {self._settings.max_message_seconds:g} s")
        except FrameViolation as violation:
            self._violation = violation
            logger.debug("%r: %s; closing with %d", self, violation.reason, violation.code)
            reason = violation.reason.encode()[:120]
            self.send_frame_nowait(bytes((_CLOSE_FRAME_FIRST_BYTE, 2 + len(reason))) + violation.code.to_bytes(2, "big") + reason, droppable=False)
            self._sealed, self._direct = True, False
            raise trio.BrokenResourceError(violation.reason) from None
        if used < len(data):
            self._unread = data[used:] + self._unread
            return data[:used]
        return data

    def close_now(self) -> None:
        """`aclose` without the checkpoint: for a ``finally`` that must close when cancelled."""
        self._close_socket()

    # ------------------------------------------------------------------ internals

    def _enqueue(
        self, data: bytes | memoryview, droppable: bool, done: trio.Event | None = None
    ) -> _Pending | None:
        """Append one write behind everything queued; start a flusher if none runs."""
        if self._state is not _OPEN:
            return None
        queue = self._queue
        if not queue:
            self._direct = False
            self._backlog_since = trio.current_time()
        size = len(data)
        if droppable:
            if self._queued_media >= self._settings.max_queued_media_frames:
                self._drop_oldest_media()
            self._queued_media += 1
        else:
            self._queued_control_bytes += size
        item = _Pending(data, droppable, done)
        queue.append(item)
        self._queued_bytes += size
        self._n_queued += 1
        if self._queued_bytes > self._peak_bytes:
            self._peak_bytes = self._queued_bytes
        if (
            not droppable
            and done is None
            and self._queued_control_bytes > self._settings.max_queued_control_bytes
        ):
            self._begin_close(Reason.SLOW_CONSUMER)
            return item
        if not self._flusher_running:
            self._start_flusher()
        return item

    def _drop_oldest_media(self) -> None:
        queue = self._queue
        for index, item in enumerate(queue):
            if item.droppable:
                del queue[index]
                self._queued_media -= 1
                self._queued_bytes -= len(item.data)
                self._n_dropped += 1
                return

    def _start_flusher(self) -> None:
        self._flusher_running = True
        try:
            self._nursery.start_soon(self._flush)
        except RuntimeError:
            # The nursery no longer takes tasks: nobody is left to drain the queue.
            self._flusher_running = False
            logger.warning("%r: nursery closed while the connection was in use", self)
            self._close_socket()

    async def _flush(self) -> None:
        """Drain the queue in order, then exit; close the socket if a close is pending."""
        try:
            # Wait first: a flusher starts right after a send found the socket full.
            while self._state is _OPEN:
                deadline = self._backlog_since + self._settings.max_backlog_seconds
                with trio.CancelScope(deadline=deadline) as scope:
                    self._wait_scope = scope
                    try:
                        await trio.lowlevel.wait_writable(self._sock)
                    except trio.ClosedResourceError:
                        return
                    finally:
                        self._wait_scope = None
                if scope.cancelled_caught:
                    # The deadline (slow consumer) or _begin_close (already closing).
                    self._begin_close(Reason.SLOW_CONSUMER)
                    break
                self._write_queued()
                if not self._queue:
                    break
        finally:
            self._flusher_running = False
            if self._state is _CLOSING:
                self._close_socket()
            elif self._state is _OPEN and not self._queue:
                self._direct = not self._sealed
                if self._drained is not None:
                    self._drained.set()
                    self._drained = None

    def _write_queued(self) -> None:
        """Hand queued bytes to the kernel until the queue is empty or the socket is full."""
        queue = self._queue
        while queue:
            if len(queue) == 1:
                buffers = [queue[0].data]
            else:
                buffers = [item.data for item in itertools.islice(queue, _MAX_GATHER)]
            try:
                sent = self._sock.sendmsg(buffers)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                return
            self._consume(sent)
            if sent < sum(map(len, buffers)):
                return  # the kernel took what it could: the socket is full

    def _consume(self, sent: int) -> None:
        """Remove ``sent`` bytes from the head of the queue."""
        queue = self._queue
        while sent:
            item = queue[0]
            size = len(item.data)
            if sent < size:
                # Partial: the rest must go out whole, so it can no longer be dropped.
                item.data = memoryview(item.data)[sent:]
                if item.droppable:
                    item.droppable = False
                    self._queued_media -= 1
                    self._queued_control_bytes += size - sent
                else:
                    self._queued_control_bytes -= sent
                self._queued_bytes -= sent
                return
            queue.popleft()
            sent -= size
            self._queued_bytes -= size
            if item.droppable:
                self._queued_media -= 1
            else:
                self._queued_control_bytes -= size
            if item.done is not None:
                item.delivered = True
                item.done.set()

    def _seal_if_close_frame(self, data: bytes) -> None:
        """RFC 6455: no data after a close frame, so later fast-path frames are no-ops.

        Called right after trio-websocket's write was sent or queued, with no checkpoint
        in between, so no media frame can slip in behind the close frame.
        """
        if data[0] == _CLOSE_FRAME_FIRST_BYTE:
            self._sealed = True
            self._direct = False

    def _fail(self, exc: OSError) -> None:
        if self._state is _OPEN:
            logger.debug("%r: connection failed: %s", self, exc)
            # ETIMEDOUT: the kernel gave up on acknowledgements (watch_acknowledgements).
            self._begin_close(Reason.TIMEOUT if exc.errno == errno.ETIMEDOUT else Reason.NETWORK)

    def _begin_close(self, reason: Reason) -> None:
        """Mark the connection failed now; the flusher task closes the socket next tick.

        Runs synchronously inside the fan-out loop, so it only flips state, discards the
        queue and wakes (or starts) the flusher; it never closes the socket there.
        """
        if self._state is not _OPEN:
            return
        self._state = _CLOSING
        self._close_reason = reason
        self._direct = False
        self._discard_queue()
        if reason is Reason.SLOW_CONSUMER:
            logger.info("%r: closing slow consumer", self)
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        elif not self._flusher_running:
            self._start_flusher()

    def _close_socket(self) -> None:
        if self._state is _CLOSED:
            return
        if self._close_reason is None:
            self._close_reason = Reason.NONE
        self._state = _CLOSED
        self._direct = False
        self._discard_queue()
        self._receive_ended.set()
        # Wake every task waiting on the socket with ClosedResourceError, then close it;
        # no checkpoint in between, so no task can start waiting on a closed fd.
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    def _discard_queue(self) -> None:
        for item in self._queue:
            if item.done is not None:
                item.done.set()
        self._queue.clear()
        self._queued_bytes = 0
        self._queued_control_bytes = 0
        self._queued_media = 0
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def _raise_unless_open(self) -> None:
        if self._state is not _OPEN:
            self._raise_closed()

    def _raise_closed(self) -> None:
        if self._close_reason is Reason.NONE:
            raise trio.ClosedResourceError("connection was closed")
        reason = self._close_reason.reason_name if self._close_reason else "closed"
        raise trio.BrokenResourceError(f"connection failed: {reason}")


def _peer(sock: socket.socket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return None


def _host_port(address: object) -> tuple[str, int]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return (str(address) if address else "?", 0)
