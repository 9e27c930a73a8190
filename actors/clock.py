"""Event time: the one clock the server stamps on commands (and so on the log)."""

from __future__ import annotations

import time


def now() -> float:
    """UTC epoch seconds: the log's clock, not trio's (which drives timers only)."""
    return time.time()
