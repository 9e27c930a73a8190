"""The roll call: which members of a channel the other nodes of a cluster still hold.

A member connected to a node that dies never sends its leave, so without this it would stay
in the channel for ever (a ghost). Every node with an actor of the channel announces, every
``every`` seconds and soon after a change, the members it holds (connected, or dropped and
held for resume) with each one's *resume key* (`protocol/sessiontoken.py`), on
``airwave.roll.<channel>`` (`actors/cluster/link.py`). Every node's actor keeps what it heard
here, stamped with its own monotonic clock (no clocks are compared across hosts):

- the owner ends a member nobody announced for ``silent_after`` seconds (one lease TTL: the
  time after which a silent node is taken for dead anyway) plus the resume grace, like a
  dropped connection (decision 7): held for the grace, then left with reason network;
- a resume on any node is recognised by the resume key (the member keeps its sid, nothing
  is logged);
- a follower takes the channel over when its owner has announced nothing for
  ``silent_after`` (instead of waiting for a command of its own to find it gone), and, being
  the owner, already knows every member's last roll call.

Pure: no trio, no clock; the actor passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class RollSettings:
    every: float = 1.0  # seconds between a node's announcements (the lease renewal interval)
    silent_after: float = 3.0  # a node unheard this long is taken for gone (the lease TTL)
    grace: float = 15.0  # then its members are held this long for resume (decision 7)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.every < self.silent_after:
            raise ValueError(f"a roll call every {self.every} s must be above 0 and below silent_after ({self.silent_after} s)")
        if self.grace < 0:
            raise ValueError("the resume grace is never negative")


@attrs.frozen
class Heard:
    at: float  # monotonic seconds, this node's clock
    key: str  # the member's resume key; "" if not known (yet)
    token_expires_at: float | None = None  # token mode: its join token's expiry (epoch seconds)


class RollCall:
    """One channel's roll calls as this node heard them, by user id."""

    def __init__(self, now: float) -> None:
        self._heard: dict[str, Heard] = {}
        self._by_key: dict[str, str] = {}  # resume key -> user id
        self.owner_heard_at = now  # the owner's last announcement (a follower's view)

    def heard(self, user_id: str, key: str, at: float, token_expires_at: float | None = None) -> None:
        """A node holds ``user_id`` now (``key`` "" keeps the key known before)."""
        old = self._heard.get(user_id)
        if not key and old is not None:
            key = old.key
        if old is not None and old.key != key:
            self._by_key.pop(old.key, None)
        self._heard[user_id] = Heard(at, key, token_expires_at)
        if key:
            self._by_key[key] = user_id

    def expect(self, user_id: str, at: float) -> None:
        """A member nobody announced yet (it just joined, or this node just took over):
        counted from ``at``, so it is not ended before its node had a chance to speak."""
        if user_id not in self._heard:
            self._heard[user_id] = Heard(at, "")

    def resumed(self, user_id: str, at: float) -> None:
        """The member moved to a new connection: heard now, and its old key is spent (the
        new session has a new token, announced by its node)."""
        old = self._heard.get(user_id)
        if old is not None:
            self._by_key.pop(old.key, None)
        self._heard[user_id] = Heard(at, "")

    def forget(self, user_id: str) -> None:
        old = self._heard.pop(user_id, None)
        if old is not None:
            self._by_key.pop(old.key, None)

    def rebase(self, at: float) -> None:
        """This node itself heard nothing for a while (it was paused, or starved of CPU): what
        it missed says nothing of the others, so everyone counts as heard at ``at``. Without
        this an owner woken from a pause would end every remote member at once."""
        self._heard = {u: attrs.evolve(h, at=at) for u, h in self._heard.items()}
        self.owner_heard_at = at

    def heard_at(self, user_id: str) -> float | None:
        heard = self._heard.get(user_id)
        return heard.at if heard is not None else None

    def token_expiry(self, user_id: str) -> float | None:
        heard = self._heard.get(user_id)
        return heard.token_expires_at if heard is not None else None

    def member_with_key(self, key: str) -> str | None:
        return self._by_key.get(key) if key else None

    def unheard(self, members: Iterable[str], now: float, longer_than: float) -> list[str]:
        """Those of ``members`` nobody announced for more than ``longer_than`` seconds."""
        return [u for u in members if (h := self._heard.get(u)) is not None and now - h.at > longer_than]
