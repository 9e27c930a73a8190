"""The event log as a feed for readers that follow it from a seq: webhook delivery and
`GET /events` (docs/operations.md section 8).

The newest durable records are kept in memory, as the append path hands them over; a reader
further behind reads the log on disk, from the segment that holds its seq. Only records the
log has made durable are handed out, so a reader never sees an event a crash could undo.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from .log import read_events

MEMORY = 10_000  # the newest records kept for readers that keep up


class EventFeed:
    def __init__(self, data_dir: Path, durable_seq: Callable[[], int], *, memory: int = MEMORY) -> None:
        self.data_dir = data_dir
        self._durable_seq = durable_seq  # what the log has acknowledged: never hand out beyond it
        self._memory: collections.deque[dict[str, Any]] = collections.deque(maxlen=memory)
        self._newer = trio.Event()
        # The last seq handed over by the append path (or on disk at start): what `after`
        # can already return, which the log's own counter may run a moment ahead of.
        self.last_seq = durable_seq()

    def offer(self, seqs: Sequence[int], records: Sequence[Mapping[str, Any]]) -> None:
        """Records just made durable by the log (called by the append path)."""
        for seq, record in zip(seqs, records, strict=True):
            self._memory.append({"seq": seq, **record})
        if seqs:
            self.last_seq = max(self.last_seq, seqs[-1])
        self._newer.set()
        self._newer = trio.Event()

    def after(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """The event bodies after ``seq``, in log order, at most ``limit`` of them."""
        memory = self._memory
        if memory and memory[0]["seq"] <= seq + 1:
            found = [body for body in memory if body["seq"] > seq]
        else:
            durable = self._durable_seq()  # a record on disk may not be synced yet
            found = []
            for body in read_events(self.data_dir, after=seq):
                if body["seq"] > durable or (limit is not None and len(found) >= limit):
                    break
                if body["seq"] > seq:
                    found.append(body)
        return found if limit is None else found[:limit]

    async def wait_beyond(self, seq: int) -> None:
        """Returns once the log has a durable event after ``seq``."""
        while self.last_seq <= seq:
            await self._newer.wait()
