"""Password guessing, slowed down: the pure rule behind the backoff on channel passwords.

Without it one address could try hundreds of passwords a second. The rule: an address gets a
few failures for free; after that its joins to password channels are spaced ever further
apart (doubling up to a cap), and the spacing is reserved, so forty parallel connections from
one address wait in one queue rather than guessing side by side. A channel that collects many
failures from anywhere also spaces out every address that has already failed on it. An address
that has never failed on a channel is never delayed: an attacker cannot lock the real members
out, who type the right password the first time. Time is passed in (tested without a clock).
"""

from __future__ import annotations

import attrs

__all__ = ["GuessPolicy", "PasswordGuesses"]


@attrs.frozen
class GuessPolicy:
    free_failures: int = 3  # per address, before any delay
    first_delay: float = 0.25  # seconds, doubling with each failure beyond the free ones
    max_delay: float = 10.0
    max_wait: float = 30.0  # a turn further off than this is refused outright (rate_limited)
    channel_failures: int = 20  # failures on one channel, from anywhere, before it is guarded
    channel_delay: float = 1.0  # then every address that failed on it waits at least this
    forget_after: float = 900.0  # failures older than this are forgotten
    max_tracked: int = 100_000  # addresses and channels remembered (memory bound)


@attrs.define
class _Failures:
    count: int = 0
    last: float = 0.0
    next_free: float = 0.0  # when this address may try next (reserved turns push it on)


@attrs.define
class PasswordGuesses:
    policy: GuessPolicy = attrs.field(factory=GuessPolicy)
    _by_address: dict[str, _Failures] = attrs.field(factory=dict, init=False)
    _by_channel: dict[str, _Failures] = attrs.field(factory=dict, init=False)
    _failed_on: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)

    def reserve(self, address: str, channel_id: str, now: float) -> float | None:
        """Seconds the caller waits before checking a password from ``address`` for
        ``channel_id``; the turn is booked, so the next caller from there waits longer.
        None: the queue from that address is already longer than ``max_wait``, and the
        attempt is refused without taking a turn (so a flood cannot grow it without bound)."""
        spacing = self._spacing(address, channel_id, now)
        if spacing == 0.0:
            return 0.0
        failures = self._by_address[address]  # a spacing implies failures on record
        turn = max(now, failures.next_free)
        if turn - now > self.policy.max_wait:
            return None
        failures.next_free = turn + spacing
        return turn - now

    def record(self, address: str, channel_id: str, *, failed: bool, now: float) -> None:
        """The outcome of a check. A success clears the address's record (not the channel's)."""
        if not failed:
            self._by_address.pop(address, None)
            self._failed_on.pop((address, channel_id), None)
            return
        for table, key in ((self._by_address, address), (self._by_channel, channel_id)):
            entry = self._fresh(table, key, now)
            entry.count += 1
            entry.last = now
        self._failed_on[(address, channel_id)] = now
        self._bound(now)

    def _spacing(self, address: str, channel_id: str, now: float) -> float:
        policy = self.policy
        own = self._fresh(self._by_address, address, now, create=False)
        if own is None:
            return 0.0
        spacing = 0.0
        beyond = own.count - policy.free_failures
        if beyond >= 0:
            spacing = min(policy.max_delay, policy.first_delay * 2.0 ** min(beyond, 32))
        channel = self._fresh(self._by_channel, channel_id, now, create=False)
        failed_here = now - self._failed_on.get((address, channel_id), -policy.forget_after) < policy.forget_after
        if channel is not None and channel.count >= policy.channel_failures and failed_here:
            spacing = max(spacing, policy.channel_delay)
        return spacing

    def _fresh(self, table: dict[str, _Failures], key: str, now: float, *, create: bool = True) -> _Failures | None:
        entry = table.get(key)
        if entry is not None and now - entry.last >= self.policy.forget_after:
            del table[key]
            entry = None
        if entry is None and create:
            entry = table[key] = _Failures()
        return entry

    def _bound(self, now: float) -> None:
        """Forgets the stale, then the oldest, once more than ``max_tracked`` are remembered."""
        limit = self.policy.max_tracked
        for table in (self._by_address, self._by_channel, self._failed_on):
            if len(table) <= limit:
                continue
            last_of = (lambda v: v) if table is self._failed_on else (lambda v: v.last)
            for key in [k for k, v in table.items() if now - last_of(v) >= self.policy.forget_after]:
                del table[key]
            while len(table) > limit:
                del table[next(iter(table))]  # dicts keep insertion order: the oldest first

    def tracked(self) -> int:
        """Addresses with failures on record (for statistics)."""
        return len(self._by_address)
