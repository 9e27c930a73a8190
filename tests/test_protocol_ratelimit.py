"""The token bucket behind the rate limits, with time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airwave.protocol.ratelimit import TokenBucket


def test_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    for _ in range(3):
        bucket.allow(0.0)
    assert bucket.allow(0.1) and not bucket.allow(0.1)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]


@given(st.lists(st.floats(0, 0.05), min_size=1, max_size=300))
def test_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    bucket, now, allowed = TokenBucket(rate=50, burst=10), 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now)
    assert allowed <= 10 + 50 * now + 1e-9


def test_bucket_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=5)
