"""The gateway: turns each accepted connection into a WebSocket and a participant actor."""

from __future__ import annotations

import collections
import ipaddress
import logging
from typing import TYPE_CHECKING

import trio

from airwave.protocol import Error, Reason
from airwave.protocol.text import shown

from .net import Connection, Site, accept_websocket, frame_of
from .counters import ServerMetrics
from .logcontext import LOG_SUBJECT
from .participant import ParticipantActor, SessionSettings, SessionState

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("airwave.gateway")

# trio-websocket closes a connection (1009) for messages above this; smaller oversized
# messages (above the protocol's own limit) get a too_large error and the connection stays.
WEBSOCKET_MAX_MESSAGE = 1 << 20
AWAY_AFTER = 1.0  # a heartbeat sweep this late: the process itself was paused, not its peers silent


class JoinAdmission:
    """Bounds how many connections are between accept and their first answered request.

    A join costs about a millisecond of the one core (handshake, hello, join, the log
    append, replies), and trio runs every runnable task once per scheduling batch. With
    2,000 connections joining at once the batches grew to about a second, and the
    publishers' reads waited behind them: the listeners lost nothing, but their audio stalled
    (p99 1.1 s during the storm). With at most ``slots`` joining at once a batch holds at
    most that many join steps, and the fan-out gets its turn every few milliseconds.

    A slot is given back at the connection's first answered request after hello, when the
    connection ends, or ``hold`` seconds after it was taken (checked by `expire`), whichever
    comes first, so a client that stalls mid-handshake delays the others by at most ``hold``.
    Waiting connections are served in arrival order (trio's Semaphore is fair).
    """

    def __init__(self, slots: int, hold: float) -> None:
        self._free = trio.Semaphore(slots)
        self._hold = hold
        self._deadlines: dict[AdmissionSlot, float] = {}

    @property
    def joining(self) -> int:
        return len(self._deadlines)

    async def enter(self) -> AdmissionSlot:
        await self._free.acquire()
        slot = AdmissionSlot(self)
        self._deadlines[slot] = trio.current_time() + self._hold
        return slot

    def expire(self, now: float) -> None:
        for slot in [slot for slot, deadline in self._deadlines.items() if deadline <= now]:
            slot.release()

    def _release(self, slot: AdmissionSlot) -> None:
        del self._deadlines[slot]
        self._free.release()


class AdmissionSlot:
    __slots__ = ("_admission",)

    def __init__(self, admission: JoinAdmission) -> None:
        self._admission: JoinAdmission | None = admission

    def release(self) -> None:
        """Idempotent."""
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self)


class Gateway:
    """``max_per_address`` bounds the connections one peer address holds (decision 15: the
    loopback address is exempt unless ``limit_loopback``, so benchmarks run from one host)."""

    def __init__(
        self,
        registry: Registry,
        settings: SessionSettings,
        *,
        max_per_address: int = 64,
        limit_loopback: bool = False,
        max_joining: int = 64,
        admission_hold: float = 0.5,
        max_unjoined: int = 1024,
        site: Site | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ServerMetrics()
        self._registry = registry
        self._site = site  # the web page, answered on plain HTTP requests (net/http.py)
        self.admission = JoinAdmission(max_joining, admission_hold)
        self._settings = settings
        self._max_per_address = max_per_address
        self._limit_loopback = limit_loopback
        self._per_address: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.refused_connections = 0
        self._open: set[ParticipantActor] = set()
        # Connections not in a channel, as of the last heartbeat sweep plus those accepted
        # since: counted there, where every connection is visited anyway.
        self._max_unjoined = max_unjoined
        self._unjoined = 0

    async def handle(self, conn: Connection) -> None:
        slot = await self.admission.enter()
        try:
            await self._serve(conn, slot)
        finally:
            slot.release()

    async def _serve(self, conn: Connection, slot: AdmissionSlot) -> None:
        host, port = conn.remote_address
        peer = f"{host}:{port}"
        # trio-websocket's reader lives in the connection's own nursery: one per connection.
        nursery = conn.nursery
        ws = await accept_websocket(conn, nursery, max_message_size=WEBSOCKET_MAX_MESSAGE, site=self._site)
        if ws is None:
            return
        limited = self._limit_loopback or not ipaddress.ip_address(host).is_loopback
        if limited and self._per_address[host] >= self._max_per_address:
            self.refused_connections += 1
            log.warning("refused %s: %d connections from that address", peer, self._per_address[host])
            conn.send_frame_nowait(frame_of(Error(Reason.RATE_LIMITED, "too many connections from your address")), droppable=False)
            await ws.aclose(code=1008, reason="too many connections from your address")
            return
        if self._unjoined >= self._max_unjoined:
            # Loopback and proxied clients too: the cap is on the server, not on an address.
            self.refused_connections += 1
            log.warning("refused %s: %d connections not in a channel", peer, self._unjoined)
            conn.send_frame_nowait(frame_of(Error(Reason.RATE_LIMITED, "too many connections not in a channel; try again")), droppable=False)
            await ws.aclose(code=1008, reason="too many connections not in a channel")
            return
        self._unjoined += 1
        self._per_address[host] += 1
        self.connections += 1

        participant = ParticipantActor(
            ws, conn, self._registry, self._settings, nursery, peer, admitted=slot.release, metrics=self.metrics
        )
        LOG_SUBJECT.set(participant)  # this task's log lines are about this session
        log.info("connect %s", peer)
        self._open.add(participant)
        try:
            await participant.run()
        finally:
            self._open.discard(participant)
            self.metrics.ended.add(participant.stats, conn.statistics())
            self.connections -= 1
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]
            log.info("disconnect %s %s reason=%s", peer, shown(participant.user_id or "-"), _ended_by(conn, participant).reason_name)
            nursery.cancel_scope.cancel()

    def sessions(self) -> list[ParticipantActor]:
        """Every open connection's session (a copy: for the metrics' scrape)."""
        return list(self._open)

    async def close_all(self, reason: str = "server shutting down") -> None:
        """Closes every WebSocket with 1001 (going away), so clients see a clean close."""
        async with trio.open_nursery() as nursery:
            for participant in list(self._open):
                nursery.start_soon(participant.close, 1001, reason, Reason.SERVER_SHUTDOWN)

    async def run_heartbeats(self, period: float) -> None:
        """One task for every connection's heartbeat (see ParticipantActor.tick).

        A sweep that comes far later than its period means this process itself was away
        (SIGSTOP, a VM freeze, a swap storm): its peers could not be heard meanwhile, so
        silence is counted only from then on (``awake_since``), never against them."""
        awake_since = last = trio.current_time()
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            if now - last > max(AWAY_AFTER, 10 * period):
                awake_since = now
            last = now
            self.admission.expire(now)
            unjoined = 0
            for participant in list(self._open):
                participant.tick(now, awake_since)
                unjoined += participant.state is not SessionState.JOINED
            self._unjoined = unjoined


def _ended_by(conn: Connection, participant: ParticipantActor) -> Reason:
    """Why a connection ended, for its `disconnect` log line: the transport's failure (slow
    consumer, timeout, a failed send), else what the session saw. A client's close frame
    (1000, 1001) is a goodbye, not a network failure, although a member who leaves that way
    is still held for resume (a browser tab that reloads)."""
    if conn.close_reason not in (None, Reason.NONE):
        return conn.close_reason
    if participant.end_reason is Reason.NETWORK and participant.peer_close_code in (1000, 1001):
        return Reason.NONE
    return participant.end_reason
