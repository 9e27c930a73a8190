"""The password backoff as a pure rule (actors/core/guesses.py): time is passed in."""

from __future__ import annotations

from airwave.actors.core.guesses import GuessPolicy, PasswordGuesses

POLICY = GuessPolicy(free_failures=3, first_delay=0.25, max_delay=4.0, channel_failures=10, channel_delay=1.0,
                     forget_after=60.0, max_wait=8.0)


def fail(guesses: PasswordGuesses, address: str, times: int, now: float = 0.0, channel: str = "vault") -> None:
    for _ in range(times):
        guesses.record(address, channel, failed=True, now=now)


def test_a_few_failures_are_free_then_the_spacing_doubles_to_a_cap() -> None:
    guesses = PasswordGuesses(POLICY)
    spacings = []
    for failures in range(9):
        g = PasswordGuesses(POLICY)
        fail(g, "10.0.0.1", failures)
        g.reserve("10.0.0.1", "vault", 0.0)  # the first turn is now
        spacings.append(g.reserve("10.0.0.1", "vault", 0.0))  # the next waits one spacing
    assert spacings == [0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert guesses.reserve("10.0.0.1", "vault", 0.0) == 0.0


def test_parallel_attempts_from_one_address_queue_for_their_turns() -> None:
    guesses = PasswordGuesses(POLICY)
    fail(guesses, "10.0.0.1", 4)  # spacing 0.5 s
    waits = [guesses.reserve("10.0.0.1", "vault", 0.0) for _ in range(5)]
    assert waits == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert guesses.reserve("10.0.0.1", "vault", 1.2) == 1.3  # the queue runs on from the last turn


def test_a_queue_longer_than_max_wait_is_refused_without_taking_a_turn() -> None:
    guesses = PasswordGuesses(POLICY)
    fail(guesses, "10.0.0.1", 8)  # spacing 4 s
    assert [guesses.reserve("10.0.0.1", "vault", 0.0) for _ in range(5)] == [0.0, 4.0, 8.0, None, None]
    assert guesses.reserve("10.0.0.1", "vault", 4.0) == 8.0  # the refused ones booked nothing


def test_other_addresses_are_never_slowed_by_an_attacker() -> None:
    guesses = PasswordGuesses(POLICY)
    fail(guesses, "10.0.0.66", 50)
    assert guesses.reserve("10.0.0.7", "vault", 0.0) == 0.0
    assert guesses.reserve("10.0.0.7", "vault", 0.0) == 0.0


def test_a_channel_under_attack_spaces_out_every_address_that_failed_on_it() -> None:
    guesses = PasswordGuesses(POLICY)
    for i in range(10):  # ten addresses, one failure each: each free on its own
        fail(guesses, f"10.0.1.{i}", 1)
    fail(guesses, "10.0.0.7", 1, channel="lobby")
    guesses.reserve("10.0.1.0", "vault", 0.0)
    assert guesses.reserve("10.0.1.0", "vault", 0.0) == 1.0  # failed here, and the channel is guarded
    assert guesses.reserve("10.0.0.7", "vault", 0.0) == 0.0  # failed elsewhere only
    assert guesses.reserve("10.0.0.8", "vault", 0.0) == 0.0  # a real member's first try


def test_success_clears_the_address_and_old_failures_are_forgotten() -> None:
    guesses = PasswordGuesses(POLICY)
    fail(guesses, "10.0.0.1", 5)
    guesses.record("10.0.0.1", "vault", failed=False, now=1.0)
    guesses.reserve("10.0.0.1", "vault", 1.0)
    assert guesses.reserve("10.0.0.1", "vault", 1.0) == 0.0
    fail(guesses, "10.0.0.2", 5, now=0.0)
    guesses.reserve("10.0.0.2", "vault", 60.0)
    assert guesses.reserve("10.0.0.2", "vault", 60.0) == 0.0 and guesses.tracked() == 0


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    guesses = PasswordGuesses(GuessPolicy(max_tracked=100))
    for i in range(1000):
        guesses.record(f"10.{i // 256}.{i % 256}.1", f"c{i}", failed=True, now=float(i))
    assert guesses.tracked() <= 100
