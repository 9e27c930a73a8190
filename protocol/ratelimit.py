"""A token bucket: the pure rule behind every per-connection rate limit.

Time is passed in, so the limits are tested without a clock and enforced before any state
changes (the caller asks ``allow`` before it decodes further or touches a channel).
"""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """``rate`` events per second on average, bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=None)
    updated: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if self.tokens is None:
            self.tokens = self.burst

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
