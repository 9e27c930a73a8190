"""The jitter buffer: ordering, loss, lateness, wraparound, resets and delay adaptation.

Times are seconds on a made-up clock; slot i of a stream that starts at t=0 plays at
i * 20 ms + delay. Tests that are not about adaptation pin the delay (min = max).
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airwave.media import JitterBuffer, Lost, PushOutcome, Ready, seq_delta
from airwave.media import jitter as jitter_module

FRAME = 0.020
EPS = 1e-6


def fixed(delay: float = 0.060, **kwargs: int) -> JitterBuffer:
    return JitterBuffer(initial_delay=delay, min_delay=delay, max_delay=delay, **kwargs)


def push(jb: JitterBuffer, seq: int, arrival: float) -> PushOutcome:
    return jb.push(seq, seq * 960 % 2**32, f"p{seq}".encode(), arrival)


def seqs(items: list[Ready | Lost]) -> list[tuple[str, int]]:
    return [("ready" if isinstance(i, Ready) else "lost", i.seq) for i in items]


def test_jitter_in_order_packets_play_after_the_delay() -> None:
    jb = fixed()
    for i in range(5):
        assert push(jb, i, i * FRAME) is PushOutcome.ACCEPTED
    assert jb.pop(0.060 - EPS) == []
    assert jb.pop(0.060 + EPS) == [Ready(0, 0, b"p0")]
    assert jb.next_playout_time() == 0.060 + FRAME
    assert seqs(jb.pop(0.140 + EPS)) == [("ready", 1), ("ready", 2), ("ready", 3), ("ready", 4)]
    stats = jb.statistics()
    assert (stats.received, stats.played, stats.lost, stats.buffered) == (5, 5, 0, 0)


def test_jitter_reordered_within_window_play_in_seq_order() -> None:
    jb = fixed()
    for seq, arrival in [(0, 0.000), (2, 0.040), (1, 0.045), (4, 0.080), (3, 0.090)]:
        assert push(jb, seq, arrival) is PushOutcome.ACCEPTED
    assert seqs(jb.pop(1.0))[:5] == [("ready", s) for s in range(5)]
    assert jb.statistics().reordered == 2


def test_jitter_duplicate_is_dropped_and_counted() -> None:
    jb = fixed()
    push(jb, 0, 0.0)
    push(jb, 1, 0.020)
    assert push(jb, 1, 0.025) is PushOutcome.DUPLICATE  # while buffered
    jb.pop(0.090)  # plays 0 and 1
    assert push(jb, 0, 0.095) is PushOutcome.DUPLICATE  # after it played
    assert jb.statistics().duplicates == 2
    assert jb.statistics().played == 2


def test_jitter_missing_packet_becomes_lost_at_its_playout_time() -> None:
    jb = fixed()
    for seq in (0, 1, 3):
        push(jb, seq, seq * FRAME)
    assert seqs(jb.pop(0.100 - EPS)) == [("ready", 0), ("ready", 1)]  # slot 2 plays at 0.100
    assert jb.pop(0.100 + EPS) == [Lost(2)]
    assert seqs(jb.pop(0.120 + EPS)) == [("ready", 3)]
    assert jb.statistics().lost == 1


def test_jitter_too_late_packet_is_dropped_and_counted() -> None:
    jb = fixed()
    push(jb, 0, 0.0)
    push(jb, 2, 0.040)
    assert seqs(jb.pop(0.081)) == [("ready", 0), ("lost", 1)]
    assert push(jb, 1, 0.085) is PushOutcome.LATE
    assert seqs(jb.pop(0.101)) == [("ready", 2)]
    stats = jb.statistics()
    assert (stats.late, stats.played, stats.lost) == (1, 2, 1)


def test_jitter_seq_wraps_from_65535_to_0() -> None:
    jb = fixed()
    for i, seq in enumerate([65534, 65535, 0, 1]):
        assert push(jb, seq, i * FRAME) is PushOutcome.ACCEPTED
    assert seqs(jb.pop(0.060 + 3 * FRAME + EPS)) == [("ready", s) for s in (65534, 65535, 0, 1)]
    assert jb.statistics().resets == 0


def test_jitter_first_arrival_out_of_order_extends_schedule_back() -> None:
    jb = fixed()
    assert push(jb, 1, 0.010) is PushOutcome.ACCEPTED
    assert push(jb, 0, 0.015) is PushOutcome.ACCEPTED  # sent first, arrived second
    assert seqs(jb.pop(0.080 + EPS)) == [("ready", 0), ("ready", 1)]
    assert jb.statistics().late == 0


def test_jitter_first_arrival_far_out_of_order_is_late_not_a_burst() -> None:
    jb = fixed()
    push(jb, 100, 0.000)
    assert push(jb, 20, 0.005) is PushOutcome.LATE  # its slot was 1.6 s ago
    assert seqs(jb.pop(0.060 + EPS)) == [("ready", 100)]


def test_jitter_reordered_across_wrap_play_in_seq_order() -> None:
    jb = fixed()
    for seq, arrival in [(65535, 0.0), (1, 0.040), (0, 0.041)]:
        assert push(jb, seq, arrival) is PushOutcome.ACCEPTED
    assert seqs(jb.pop(0.101)) == [("ready", 65535), ("ready", 0), ("ready", 1)]


def test_jitter_large_sequence_jump_resets_without_loss_burst() -> None:
    jb = fixed()
    for i in range(5):
        push(jb, i, i * FRAME)
    jb.pop(0.070)  # plays 0
    assert push(jb, 20_000, 0.100) is PushOutcome.RESET
    assert jb.pop(0.160 - EPS) == []  # the new stream plays at its arrival plus the delay
    assert seqs(jb.pop(0.160 + EPS)) == [("ready", 20_000)]
    stats = jb.statistics()
    assert (stats.resets, stats.lost) == (1, 0)


def test_jitter_backward_jump_beyond_misorder_resets() -> None:
    jb = fixed()
    for i in range(1000, 1005):
        push(jb, i, (i - 1000) * FRAME)
    assert push(jb, 10, 0.100) is PushOutcome.RESET


def test_jitter_jump_ahead_of_schedule_resets() -> None:
    # Within max_dropout by sequence, but 10 s early by time: the sender's numbering jumped.
    jb = fixed()
    for i in range(5):
        push(jb, i, i * FRAME)
    assert push(jb, 505, 5 * FRAME) is PushOutcome.RESET
    assert seqs(jb.pop(5 * FRAME + 0.060 + EPS)) == [("ready", 505)]


def test_jitter_silent_sender_is_concealed_briefly_then_idle() -> None:
    jb = fixed(max_conceal=10)
    for i in range(10):
        push(jb, i, i * FRAME)
    out = jb.pop(5.0)
    assert seqs(out) == [("ready", s) for s in range(10)] + [("lost", s) for s in range(10, 20)]
    assert jb.idle and jb.next_playout_time() is None
    assert jb.pop(10.0) == []


def test_jitter_sender_resuming_after_idle_starts_a_new_schedule() -> None:
    jb = fixed(max_conceal=10)
    for i in range(10):
        push(jb, i, i * FRAME)
    jb.pop(5.0)
    # The sender paused and goes on with the next sequence numbers, 5 s later.
    assert push(jb, 10, 5.0) is PushOutcome.RESUMED
    assert push(jb, 11, 5.0 + FRAME) is PushOutcome.ACCEPTED
    assert jb.pop(5.060 - EPS) == []
    assert seqs(jb.pop(5.080 + EPS)) == [("ready", 10), ("ready", 11)]
    stats = jb.statistics()
    assert (stats.resumes, stats.late, stats.lost) == (1, 0, 10)


def test_jitter_delay_starts_at_60ms_and_falls_to_minimum_without_jitter() -> None:
    jb = JitterBuffer()
    assert jb.delay == 0.060
    delays = []
    for i in range(200):
        push(jb, i, i * FRAME)
        jb.pop(i * FRAME)
        delays.append(jb.delay)
    # It falls by at most 1 ms per packet, so playout never races ahead more than 5%.
    assert all(0 <= a - b <= 0.001 + EPS for a, b in zip(delays, delays[1:]))
    assert delays[-1] == 0.020
    assert jb.statistics().lost == 0


def run_with_jitter(jb: JitterBuffer, spread: float, count: int, seed: int) -> None:
    rng = random.Random(seed)
    arrivals = sorted((i * FRAME + rng.uniform(0, spread), i) for i in range(count))
    tick = 0.0
    for arrival, seq in arrivals:
        while tick <= arrival:
            jb.pop(tick)
            tick += FRAME
        push(jb, seq % 65536, arrival)


def test_jitter_delay_grows_under_jitter_and_stays_within_bounds() -> None:
    jb = JitterBuffer()
    delays = []
    for chunk in range(5):
        run_with_jitter(jb, spread=0.120, count=100, seed=chunk)
        delays.append(jb.delay)
    # 120 ms of spread needs about 114 ms (its 95th percentile).
    assert all(0.095 <= d <= 0.130 for d in delays[1:]), delays
    stormy = JitterBuffer()
    run_with_jitter(stormy, spread=0.600, count=300, seed=7)
    assert stormy.delay == 0.200


def test_jitter_delay_adapts_to_a_network_delay_step() -> None:
    jb = JitterBuffer()
    tick = 0.0
    late_by_second = []
    for second in range(4):
        late_before = jb.statistics().late
        for i in range(second * 50, second * 50 + 50):
            arrival = i * FRAME + (0.120 if i >= 50 else 0.0)  # +120 ms from the second second on
            while tick <= arrival:
                jb.pop(tick)
                tick += FRAME
            push(jb, i, arrival)
        late_by_second.append(jb.statistics().late - late_before)
    assert late_by_second[0] == 0
    assert late_by_second[1] > 0  # the step costs some packets
    assert late_by_second[2:] == [0, 0]  # then the delay covers it
    assert 0.120 <= jb.delay <= 0.200


def test_jitter_rejects_invalid_sequence_number() -> None:
    with pytest.raises(ValueError):
        JitterBuffer().push(65536, 0, b"", 0.0)


def test_seq_delta_is_signed_distance_on_the_circle() -> None:
    assert seq_delta(0, 65535) == 1
    assert seq_delta(65535, 0) == -1
    assert seq_delta(100, 50) == 50
    assert seq_delta(32767, 0) == 32767
    assert seq_delta(32768, 0) == -32768


@st.composite
def arrivals_within_window(draw: st.DrawFn) -> tuple[int, int, list[tuple[float, int]], set[int]]:
    start = draw(st.integers(0, 65535))
    count = draw(st.integers(1, 40))
    dropped = set(draw(st.sets(st.integers(0, count - 2), max_size=count // 3))) if count > 1 else set()
    events = []
    for i in range(count):
        if i in dropped:
            continue
        # Up to 55 ms behind its nominal time: inside the pinned 60 ms delay.
        events.append((i * FRAME + draw(st.floats(0, 0.055)), i))
        if draw(st.booleans()) and draw(st.booleans()):
            events.append((i * FRAME + draw(st.floats(0, 0.300)), i))  # a duplicate, any time
    return start, count, events, dropped


@settings(max_examples=150, deadline=None)
@given(arrivals_within_window())
def test_jitter_any_arrival_order_within_window_plays_in_seq_order_once(
    case: tuple[int, int, list[tuple[float, int]], set[int]],
) -> None:
    start, count, events, dropped = case
    jb = fixed()
    out: list[Ready | Lost] = []
    tick = 0.0
    for arrival, i in sorted(events):
        while tick <= arrival:
            out += jb.pop(tick)
            tick += 0.005
        push(jb, (start + i) % 65536, arrival)
    out += jb.pop((count - 1) * FRAME + 0.060 + 0.055 + EPS)  # the last packet is never dropped
    # The stream starts at the lowest sequence number received: nothing says earlier ones exist.
    first = min(i for _, i in events)
    expected = [("lost" if i in dropped else "ready", (start + i) % 65536) for i in range(first, count)]
    assert seqs(out)[: len(expected)] == expected
    assert all(isinstance(item, Lost) for item in out[len(expected) :])  # concealment past the end
    stats = jb.statistics()
    assert stats.late == 0 and stats.resets == 0
    assert stats.duplicates == len(events) - (count - len(dropped))


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(0, 65535),
    delays=st.lists(st.one_of(st.none(), st.floats(0, 0.200)), min_size=1, max_size=80),
    duplicates=st.lists(st.tuples(st.integers(0, 79), st.floats(0, 0.400)), max_size=10),
    tick=st.sampled_from([0.005, 0.020, 0.050]),
)
def test_jitter_any_arrivals_never_replay_or_go_backwards(
    start: int, delays: list[float | None], duplicates: list[tuple[int, float]], tick: float
) -> None:
    # Adaptive delay, packets up to 200 ms late, losses (None) and duplicates at any time.
    events = [(i * FRAME + d, i) for i, d in enumerate(delays) if d is not None]
    events += [(i * FRAME + d, i) for i, d in duplicates if i < len(delays)]
    jb = JitterBuffer()
    out: list[Ready | Lost] = []
    resumed_at = set()  # positions in `out` where a new schedule begins
    now = 0.0
    for arrival, i in sorted(events):
        while now <= arrival:
            out += jb.pop(now)
            now += tick
        if push(jb, (start + i) % 65536, arrival) is PushOutcome.RESUMED:
            resumed_at.add(len(out))
    out += jb.pop(now + 10.0)
    # Each schedule runs forward one slot at a time; a new one may go back over Lost slots.
    for k in range(1, len(out)):
        if k not in resumed_at:
            assert seq_delta(out[k].seq, out[k - 1].seq) == 1
    played = [item.seq for item in out if isinstance(item, Ready)]
    assert all(seq_delta(b, a) >= 1 for a, b in zip(played, played[1:]))  # never replayed
    stats = jb.statistics()
    assert stats.played == len(played) and stats.lost == len(out) - len(played)
    assert stats.received == len(events)
    assert stats.received == stats.played + stats.late + stats.duplicates + stats.buffered
    assert stats.resets == 0 and stats.buffered == 0
    assert 0.020 <= stats.delay <= 0.200


def test_jitter_module_is_pure() -> None:
    tree = ast.parse(Path(jitter_module.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "enum", "collections", "typing", "attrs"}, imported
