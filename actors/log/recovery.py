"""Start-up recovery: verify every segment, truncate a torn tail, refuse corruption, and end
the channels that a crash left open.

LevelDB's rules (design notes, section 6): damage a writer dying mid-write can explain, at
the very end of the last segment, is a torn tail and is dropped (and reported); anything else
stops the server. Seqs must run on without a gap or a repeat. The channels still live at the
end of the recovered log are folded with the same ``evolve`` as the live actors and ended
with server_restart (decision 7) before the first client is accepted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import attrs

from airwave.protocol import Reason

from ..core import Accepted, EndChannel, decide, event_to_record
from .format import TornTail, check_seq, list_segments, scan_segment
from .replay import fold_replayed, replay_records

__all__ = ["RecoveryReport", "closing_records", "recover"]

logger = logging.getLogger(__name__)


@attrs.frozen
class RecoveryReport:
    """What open() found. ``events`` are the recovered bodies in seq order."""

    directory: Path
    segments: int
    records: int
    last_seq: int
    truncated_bytes: int
    torn_tail: TornTail | None
    events: tuple[dict[str, Any], ...] = attrs.field(repr=False)


def recover(
    directory: Path,
) -> tuple[list[tuple[int, Path]], list[dict[str, Any]], int, TornTail | None]:
    segments = list_segments(directory)
    events: list[dict[str, Any]] = []
    last_seq = 0
    torn = None
    for index, (_, path) in enumerate(segments):
        data = path.read_bytes()
        scan = scan_segment(data, is_last=index == len(segments) - 1, path=path)
        for position, body in enumerate(scan.bodies):
            last_seq = check_seq(body, last_seq, data, position, path)
        events.extend(scan.bodies)
        if scan.torn_tail is not None:
            torn = scan.torn_tail
            with open(path, "r+b") as file:
                file.truncate(scan.end_offset)
                os.fsync(file.fileno())
            logger.warning(
                "event log %s: torn tail at byte %d (%s): dropped %d bytes",
                path, torn.offset, torn.reason, torn.dropped_bytes,
            )
    return segments, events, last_seq, torn


def closing_records(report: RecoveryReport, time: float) -> tuple[list[dict[str, Any]], int]:
    """The records that end every channel left open by a crash, and the next channel number."""
    channels = fold_replayed(list(replay_records(report.events, report.directory)), report.directory)
    records: list[dict[str, Any]] = []
    for channel in channels.values():
        decision = decide(channel, EndChannel(time, Reason.SERVER_RESTART))
        if isinstance(decision, Accepted):
            records.extend(event_to_record(event) for event in decision.events)
    return records, max(channels, default=0) + 1
