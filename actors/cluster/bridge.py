"""The one place where trio meets asyncio: nats-py on its own thread and event loop.

nats-py is asyncio-only and Airwave is trio. Rather than run the whole server on
trio-asyncio, the NATS client gets a thread of its own with a plain asyncio loop, and the
trio side sees three things only:

- ``await bridge.run(fn, *args)``: runs the coroutine ``fn(*args)`` on the NATS loop and
  returns its result (or raises its exception) in trio; cancelling the trio caller cancels it.
- ``bridge.publish_nowait(subject, payload)``: the media hot path; never blocks, never
  awaits. Messages go into a bounded outbox that the NATS thread drains; one wake-up crosses
  the thread boundary per burst, not per packet. A full outbox drops its oldest message and
  counts it (audio: late is as bad as lost).
- ``await bridge.subscribe(subject, buffer=N)``: a `Subscription` whose ``receive()`` gives
  `Delivery` values in trio; the NATS thread hands them over in bursts (one
  ``run_sync_soon`` per burst). A full buffer drops the newest and counts it; subscribers
  that must not lose anything (the event stream) read JetStream instead.

Nothing else in Airwave imports ``asyncio`` or ``nats``'s connection objects from trio code:
everything that touches them is a coroutine handed to ``run``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import nats
import nats.aio.client
import nats.aio.msg
import nats.js
import trio

log = logging.getLogger("airwave.cluster.bridge")

T = TypeVar("T")

OUTBOX_SIZE = 8192  # media messages waiting for the NATS thread: ~160 ms of 50 speakers at 50 packets/s
DEFAULT_SUBSCRIPTION_BUFFER = 4096  # deliveries waiting for their trio reader


class BridgeClosed(Exception):
    """The bridge was closed (or its NATS connection ended for good)."""


@attrs.frozen(slots=True)
class Delivery:
    """One message received from NATS, as a plain value the trio side owns."""

    subject: str
    data: bytes
    reply: str
    headers: dict[str, str] | None


@attrs.frozen
class BridgeStatistics:
    published: int  # handed to nats-py by the outbox drainer
    dropped_outbox: int  # oldest messages dropped because the outbox was full
    delivered: int  # handed to trio subscribers
    dropped_delivery: int  # newest messages dropped because a subscriber's buffer was full
    wakeups_to_nats: int  # thread crossings trio -> asyncio for the outbox
    reconnects: int
    connected: bool


class Subscription:
    """Deliveries of one NATS subscription, received in trio. Close it with ``aclose``."""

    def __init__(self, bridge: NatsBridge, buffer: int) -> None:
        self._bridge = bridge
        self._send, self._receive = trio.open_memory_channel[Delivery](buffer)
        self._handoff: collections.deque[Delivery] = collections.deque()
        self._wake_pending = False
        self._nats_sub: Any = None
        self.dropped = 0

    async def receive(self) -> Delivery:
        return await self._receive.receive()

    async def receive_batch(self, limit: int = 256) -> list[Delivery]:
        """Waits for one delivery, then takes up to ``limit`` in all without waiting: one
        trio checkpoint per burst instead of one per message (the media relay's loop)."""
        batch = [await self._receive.receive()]
        receive_nowait = self._receive.receive_nowait
        while len(batch) < limit:
            try:
                batch.append(receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._receive.__aiter__()

    # NATS thread: collect, and wake trio once per burst.
    def _from_nats(self, delivery: Delivery) -> None:
        self._handoff.append(delivery)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._bridge._trio_token.run_sync_soon(self._into_trio)
            except trio.RunFinishedError:
                pass

    # trio thread, outside any task: move the burst into the bounded channel.
    def _into_trio(self) -> None:
        self._wake_pending = False
        handoff = self._handoff
        while handoff:
            delivery = handoff.popleft()
            try:
                self._send.send_nowait(delivery)
                self._bridge._delivered += 1
            except trio.WouldBlock:
                self.dropped += 1
                self._bridge._dropped_delivery += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                handoff.clear()
                return

    async def unsubscribe(self) -> list[Delivery]:
        """Stops the subscription and returns what was received and not yet read. It drains:
        a round trip to the server after the UNSUB, so every message the server routed here
        before it is handed over (before the drain's answer: none comes later)."""
        sub, self._nats_sub = self._nats_sub, None
        if sub is not None:
            try:
                await self._bridge.run(sub.drain)
            except (BridgeClosed, nats.errors.Error) as exc:
                log.warning("NATS: cannot drain a subscription (%s); unsubscribing", exc or type(exc).__name__)
                try:
                    await self._bridge.run(sub.unsubscribe)
                except (BridgeClosed, nats.errors.Error):
                    pass
        left: list[Delivery] = []
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return left

    async def aclose(self) -> None:
        sub, self._nats_sub = self._nats_sub, None
        if sub is not None:
            try:
                await self._bridge.run(sub.unsubscribe)
            except (BridgeClosed, nats.errors.Error):
                pass
        self._send.close()
        await self._receive.aclose()


class NatsBridge:
    """A NATS connection on its own thread; see the module docstring for the three faces."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, trio_token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._thread = thread
        self._trio_token = trio_token
        self._nc: nats.aio.client.Client | None = None
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._outbox_wake: asyncio.Event | None = None
        self._outbox_wake_pending = False
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._published = 0
        self._dropped_outbox = 0
        self._delivered = 0
        self._dropped_delivery = 0
        self._wakeups = 0
        self._reconnects = 0

    @property
    def nc(self) -> nats.aio.client.Client:
        """The nats-py client: touch it only inside coroutines given to ``run``."""
        if self._nc is None:
            raise BridgeClosed("not connected")
        return self._nc

    @property
    def js(self) -> nats.js.JetStreamContext:
        """The JetStream context: likewise, only inside coroutines given to ``run``."""
        return self.nc.jetstream()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            published=self._published, dropped_outbox=self._dropped_outbox, delivered=self._delivered,
            dropped_delivery=self._dropped_delivery, wakeups_to_nats=self._wakeups,
            reconnects=self._reconnects, connected=self.connected,
        )

    # --- trio face ---

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the NATS loop; its result or exception comes back here."""
        if self._closed:
            raise BridgeClosed("the NATS bridge is closed")
        done = trio.Event()
        token = self._trio_token

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future = asyncio.run_coroutine_threadsafe(_call(fn, args), self._loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def publish_nowait(self, subject: str, payload: bytes) -> None:
        """Core-NATS publish, fire and forget, from trio without awaiting (the media path)."""
        if self._closed:
            return
        outbox = self._outbox
        if len(outbox) >= OUTBOX_SIZE:
            outbox.popleft()
            self._dropped_outbox += 1
        outbox.append((subject, payload))
        if not self._outbox_wake_pending:
            self._outbox_wake_pending = True
            self._wakeups += 1
            self._loop.call_soon_threadsafe(self._wake_drainer)

    async def subscribe(self, subject: str, *, queue: str = "", buffer: int = DEFAULT_SUBSCRIPTION_BUFFER) -> Subscription:
        """A core-NATS subscription read from trio (``queue``: a NATS queue group)."""
        subscription = Subscription(self, buffer)

        async def on_message(msg: nats.aio.msg.Msg) -> None:
            subscription._from_nats(Delivery(msg.subject, msg.data, msg.reply, msg.headers))

        async def start() -> Any:
            # nats-py's own queue feeds ``on_message``, which only appends: it never fills.
            return await self.nc.subscribe(subject, queue=queue, cb=on_message)

        subscription._nats_sub = await self.run(start)
        return subscription

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Core-NATS request/reply: the first answer's bytes. ``nats.errors.NoRespondersError``
        at once if nobody subscribes to ``subject``; ``nats.errors.TimeoutError`` past ``timeout``."""

        async def ask() -> bytes:
            return (await self.nc.request(subject, payload, timeout=timeout)).data

        return await self.run(ask)

    async def flush(self, timeout: float = 5.0) -> None:
        """Every message published so far (outbox included) has reached the NATS server."""
        await self.run(self._flush_all, timeout)

    # --- NATS thread ---

    def _wake_drainer(self) -> None:
        assert self._outbox_wake is not None
        self._outbox_wake.set()

    async def _drain_outbox(self) -> None:
        assert self._outbox_wake is not None
        wake, outbox = self._outbox_wake, self._outbox
        while True:
            await wake.wait()
            wake.clear()
            self._outbox_wake_pending = False  # from here on, a new message schedules a new wake
            nc = self._nc
            while outbox:
                subject, payload = outbox.popleft()
                if nc is None or nc.is_closed:
                    continue
                try:
                    await nc.publish(subject, payload)
                    self._published += 1
                except nats.errors.Error:
                    # Disconnected with its reconnect buffer full: audio is dropped, counted.
                    self._dropped_outbox += 1

    async def _flush_all(self, timeout: float) -> None:
        while self._outbox:
            await asyncio.sleep(0)
        await self.nc.flush(timeout)

    async def _connect(self, servers: list[str], name: str, reconnect_wait: float, connect_within: float, no_echo: bool) -> None:
        last_error: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            last_error[:] = [exc]
            if isinstance(exc, nats.errors.SlowConsumerError):
                self._dropped_delivery += 1  # per message: counted, not logged
            elif self._nc is not None:  # while connecting the first time, the caller reports it
                log.warning("NATS: %s", exc)

        async def on_reconnect() -> None:
            self._reconnects += 1
            url = self._nc.connected_url if self._nc is not None else None
            log.info("NATS: reconnected to %s", url.netloc if url else "?")

        async def on_disconnect() -> None:
            if not self._closed:
                log.warning("NATS: disconnected; reconnecting")

        self._outbox_wake = asyncio.Event()
        # Once connected, reconnect for ever (NATS restarts, a server of the cluster goes);
        # the first connection, though, tries each server twice (at most ``connect_within``
        # seconds) and is then refused with the last error: a wrong address is one clear
        # line, not a hang. nats-py reads ``options`` at each reconnect, so the first
        # attempt's bound is lifted once connected.
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers, name=name, error_cb=on_error, reconnected_cb=on_reconnect,
                    disconnected_cb=on_disconnect, max_reconnect_attempts=1, reconnect_time_wait=reconnect_wait,
                    connect_timeout=2, allow_reconnect=True,
                    # A cluster node never wants its own messages back: the media relay
                    # publishes and subscribes on the same subject.
                    no_echo=no_echo,
                    # Nothing is buffered while disconnected: an append then fails at once
                    # (its requester is told, the channel steps down) instead of reaching the
                    # stream after reconnecting, long after it was reported as failed; media
                    # published meanwhile is dropped and counted (it would be late anyway).
                    pending_size=0,
                ),
                connect_within,
            )
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            reason = last_error[0] if last_error else exc
            raise ConnectionError(
                f"cannot connect to NATS at {', '.join(servers)} within {connect_within:g} s: {reason or type(reason).__name__}"
            ) from None
        self._nc.options["max_reconnect_attempts"] = -1
        self._drainer = asyncio.get_running_loop().create_task(self._drain_outbox())

    async def _disconnect(self) -> None:
        """Drains the connection, then ends every task left on the loop (none may outlive it)."""
        self._closed = True
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), 2)
            except (asyncio.TimeoutError, nats.errors.Error):
                await self._nc.close()
        here = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not here]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def _call(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)


@asynccontextmanager
async def open_bridge(
    servers: str | list[str], *, name: str = "airwave", reconnect_wait: float = 0.5, connect_within: float = 5.0,
    no_echo: bool = False,
) -> AsyncIterator[NatsBridge]:
    """Starts the NATS thread and connects (``ConnectionError`` with the reason if no server
    answers within ``connect_within`` seconds); on exit drains the connection and joins the
    thread. ``no_echo``: this connection never receives what it published itself."""
    urls = [servers] if isinstance(servers, str) else list(servers)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="airwave-nats", daemon=True)
    thread.start()
    bridge = NatsBridge(loop, thread, trio.lowlevel.current_trio_token())
    try:
        await bridge.run(bridge._connect, urls, name, reconnect_wait, connect_within, no_echo)
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            try:
                await bridge.run(bridge._disconnect)
            except Exception:
                log.exception("NATS: error while closing")
            loop.call_soon_threadsafe(loop.stop)
            await trio.to_thread.run_sync(thread.join, 5)
            if not thread.is_alive():
                loop.close()
