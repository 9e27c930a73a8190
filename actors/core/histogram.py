"""A histogram as plain integers, for figures the hot path must not pay to keep.

Observing is a bisect and two additions; nothing is exported until something asks
(`actors/metrics.py` reads these at scrape time), so a server without metrics pays the
same as one with them.
"""

from __future__ import annotations

import bisect

import attrs


@attrs.define(slots=True)
class Histogram:
    """Counts per upper bound (seconds), cumulative only when read (`cumulative`)."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds) or len(set(self.bounds)) != len(self.bounds):
            raise ValueError("a histogram's bounds ascend, each once")
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with +Inf: Prometheus's buckets."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append((bound, running))
        return out


# From a loopback join (~1 ms) to a join that waited for an fsync on a slow disk.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
