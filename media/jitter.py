"""A jitter buffer for one sender's stream of 20 ms Opus packets. Pure: no I/O, no clock.

The caller passes time in (seconds, from any monotonic clock) both when a packet arrives and
when it asks for playout. Packets are keyed by their u16 sequence number, which wraps; one
sequence step is one frame (``frame_duration``). The sender's timestamp is carried through to
the caller untouched.

Schedule. Each sequence number gets a playout time::

    playout(seq) = origin + index(seq) * frame_duration + delay

``index`` unwraps the sequence number from the first packet. ``origin`` is the earliest
arrival seen, reduced to index 0 (the smallest ``arrival - index * frame_duration``): the
moment the stream would have started had every packet come as fast as the fastest did. So a
packet whose network delay exceeds the fastest one's by more than ``delay`` misses its slot.

``pop(now)`` returns, in sequence order, every item whose playout time has come: ``Ready``
for a packet that arrived, ``Lost`` for one that did not (the caller conceals it). Past the
newest packet received, it conceals at most ``max_conceal`` frames; then the stream counts as
idle and ``pop`` returns nothing until a packet arrives, which starts a new schedule at its
arrival plus the delay (the sender paused, or the network stalled). That packet may carry a
sequence number already returned as ``Lost`` while the stream was going idle: after a
pause, the sender simply goes on from where it stopped. A ``Ready`` packet is never
returned twice, and ``Ready`` items always come in increasing sequence order.

Adaptation. ``delay`` starts at ``initial_delay``. Once a few packets have arrived it tracks
the 95th percentile of the recent (last 250) network delays above the fastest, clamped to
``[min_delay, max_delay]``: it rises at once (a later schedule means a pause in playout) and
falls by at most 1 ms per packet received (playout catches up by running at most 5% ahead).
Late packets count as observations too, which is what raises the delay after a stall.

Dropped on arrival, and counted: a duplicate (already buffered or played), a late packet
(its slot was already returned as ``Lost``). Reset, keeping the statistics and the learned
delay: a sequence jump of more than ``max_dropout`` forward or ``max_misorder`` back, or a
packet arriving more than ``max_delay`` ahead of its schedule (the sender's sequence jumped
while time did not).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import final

import attrs

_SEQ_MOD = 1 << 16
_HALF = 1 << 15
_WINDOW = 250  # network-delay observations kept: 5 s of 20 ms packets
_MIN_OBSERVATIONS = 10  # before the first adaptation
_QUANTILE = 0.95  # the share of recent packets the delay aims to get in on time
_DECAY_PER_FRAME = 0.05  # the delay falls by at most this fraction of a frame per packet


@attrs.frozen(slots=True)
class Ready:
    """A packet whose playout time has come."""

    seq: int
    timestamp: int
    payload: bytes


@attrs.frozen(slots=True)
class Lost:
    """A packet that had not arrived by its playout time: conceal one frame."""

    seq: int


Playout = Ready | Lost


class PushOutcome(enum.Enum):
    ACCEPTED = "accepted"
    RESUMED = "resumed"  # accepted, and it started a new schedule after the stream went idle
    RESET = "reset"  # accepted as the first packet of a new stream (sequence jump)
    DUPLICATE = "duplicate"  # dropped
    LATE = "late"  # dropped: its slot was already returned as Lost


@attrs.frozen(slots=True)
class JitterStatistics:
    received: int  # packets pushed, whatever became of them
    played: int  # Ready items returned
    lost: int  # Lost items returned
    late: int  # dropped: arrived after their slot
    duplicates: int  # dropped
    reordered: int  # accepted after a packet with a higher sequence number
    resets: int
    resumes: int
    buffered: int  # packets waiting for their playout time
    delay: float  # current playout delay, seconds
    jitter: float  # RFC 3550 interarrival jitter estimate, seconds


def seq_delta(seq: int, reference: int) -> int:
    """``seq - reference`` as a signed distance on the 16-bit circle: -32768..32767."""
    return (seq - reference + _HALF) % _SEQ_MOD - _HALF


@final
class JitterBuffer:
    """Reorders one sender's packets and releases them on a schedule; see the module doc."""

    def __init__(
        self,
        *,
        frame_duration: float = 0.020,
        initial_delay: float = 0.060,
        min_delay: float = 0.020,
        max_delay: float = 0.200,
        max_conceal: int = 10,
        max_misorder: int = 100,
        max_dropout: int = 3000,
    ) -> None:
        if not frame_duration > 0:
            raise ValueError("frame_duration must be positive")
        if not 0 <= min_delay <= initial_delay <= max_delay:
            raise ValueError("need 0 <= min_delay <= initial_delay <= max_delay")
        if max_conceal < 0 or max_misorder < 0 or not 0 < max_dropout < _HALF:
            raise ValueError("max_conceal and max_misorder >= 0, 0 < max_dropout < 32768")
        self._frame = frame_duration
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._max_conceal = max_conceal
        self._max_misorder = max_misorder
        self._max_dropout = max_dropout
        self._decay = _DECAY_PER_FRAME * frame_duration

        self._delay = initial_delay
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._transits: deque[float] = deque(maxlen=_WINDOW)

        # The schedule; _base_seq is None until the first packet.
        self._base_seq: int | None = None
        self._origin = 0.0
        self._next = 0  # index of the next slot pop() returns
        self._highest = 0  # highest index received
        self._pending: dict[int, Ready] = {}
        self._history: dict[int, bool] = {}  # recently returned slots: index -> was Ready
        self._history_floor = 0
        self._idle = False
        self._output_started = False  # since the schedule last (re)started

        self._received = self._played = self._lost = self._late = 0
        self._duplicates = self._reordered = self._resets = self._resumes = 0

    # --- input ---

    def push(self, seq: int, timestamp: int, payload: bytes, arrival_time: float) -> PushOutcome:
        """Offers one packet that arrived at ``arrival_time``; says what became of it."""
        if not 0 <= seq < _SEQ_MOD:
            raise ValueError(f"sequence number {seq} is not a u16")
        self._received += 1
        packet = Ready(seq, timestamp, payload)
        if self._base_seq is None:
            self._start(packet, arrival_time)
            return PushOutcome.ACCEPTED

        delta = seq_delta(seq, (self._base_seq + self._highest) % _SEQ_MOD)
        if delta > self._max_dropout or delta < -self._max_misorder:
            return self._reset(packet, arrival_time)
        index = self._highest + delta
        transit = arrival_time - index * self._frame

        if self._idle and index > self._highest:
            self._resume(index, packet, transit)
            return PushOutcome.RESUMED
        if self._origin - transit > self._max_delay:
            return self._reset(packet, arrival_time)

        self._observe(transit)
        if index < self._next:
            if self._history.get(index):
                self._duplicates += 1
                return PushOutcome.DUPLICATE
            if self._output_started or transit - self._origin > self._delay:
                self._late += 1
                return PushOutcome.LATE
            # Nothing released since the schedule (re)started and this packet's slot is still
            # ahead: the first packet to arrive was not the first sent, so extend back to it.
            self._next = index
        if index in self._pending:
            self._duplicates += 1
            return PushOutcome.DUPLICATE
        self._pending[index] = packet
        if index < self._highest:
            self._reordered += 1
        else:
            self._highest = index
        return PushOutcome.ACCEPTED

    # --- output ---

    def pop(self, now: float) -> list[Playout]:
        """Every item due at ``now``, in sequence order (empty if none is due)."""
        out: list[Playout] = []
        if self._base_seq is None or self._idle:
            return out
        next_before = self._next
        base = self._origin + self._delay
        while base + self._next * self._frame <= now:
            index = self._next
            packet = self._pending.pop(index, None)
            if packet is not None:
                out.append(packet)
                self._history[index] = True
                self._played += 1
            elif index - self._highest <= self._max_conceal:
                out.append(Lost((self._base_seq + index) % _SEQ_MOD))
                self._history[index] = False
                self._lost += 1
            else:
                self._idle = True
                break
            self._next += 1
        if self._next != next_before:
            self._output_started = True
        self._prune_history()
        return out

    # --- state ---

    @property
    def delay(self) -> float:
        """The current playout delay, seconds."""
        return self._delay

    @property
    def idle(self) -> bool:
        """True once nothing arrived for ``max_conceal`` frames past the newest packet."""
        return self._idle

    def next_playout_time(self) -> float | None:
        """When the next item falls due; None before the first packet and while idle."""
        if self._base_seq is None or self._idle:
            return None
        return self._origin + self._delay + self._next * self._frame

    def statistics(self) -> JitterStatistics:
        return JitterStatistics(
            received=self._received,
            played=self._played,
            lost=self._lost,
            late=self._late,
            duplicates=self._duplicates,
            reordered=self._reordered,
            resets=self._resets,
            resumes=self._resumes,
            buffered=len(self._pending),
            delay=self._delay,
            jitter=self._jitter,
        )

    # --- internals ---

    def _start(self, packet: Ready, arrival_time: float) -> None:
        self._base_seq = packet.seq
        self._origin = arrival_time
        self._next = self._highest = 0
        self._pending = {0: packet}
        self._history = {}
        self._history_floor = 0
        self._idle = False
        self._output_started = False
        self._last_transit = None
        self._transits.clear()
        self._observe(arrival_time)

    def _reset(self, packet: Ready, arrival_time: float) -> PushOutcome:
        self._resets += 1
        self._start(packet, arrival_time)
        return PushOutcome.RESET

    def _resume(self, index: int, packet: Ready, transit: float) -> None:
        # A new schedule that plays this packet at its arrival plus the delay. History
        # entries left from slots at or after `index` are rewritten by pop() before a push
        # can consult them.
        self._resumes += 1
        self._idle = False
        self._origin = transit
        self._next = self._highest = index
        self._output_started = False
        self._pending[index] = packet
        self._last_transit = None
        self._transits.clear()
        self._observe(transit)

    def _observe(self, transit: float) -> None:
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16
        self._last_transit = transit
        if transit < self._origin:
            self._origin = transit
        self._transits.append(transit)
        if len(self._transits) < _MIN_OBSERVATIONS:
            return
        ranked = sorted(self._transits)
        wanted = ranked[min(len(ranked) - 1, int(_QUANTILE * len(ranked)))] - self._origin
        target = min(self._max_delay, max(self._min_delay, wanted))
        self._delay = max(target, self._delay - self._decay)  # up at once, down slowly

    def _prune_history(self) -> None:
        floor = self._next - (self._max_misorder + self._max_conceal + 1)
        while self._history_floor < floor:
            self._history.pop(self._history_floor, None)
            self._history_floor += 1
