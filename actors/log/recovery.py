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

from ..core import Accepted, EndChannel, decide, event_from_record, event_to_record, fold
from .format import HEADER_BYTES, LogCorruption, TornTail, list_segments, scan_segment

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
        last_seq = _check_seqs(scan.bodies, last_seq, data, path)
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


def _check_seqs(
    bodies: tuple[dict[str, Any], ...], last_seq: int, data: bytes, path: Path
) -> int:
    """Seqs must be positive ints, each one more than the last: a gap or a repeat means
    records were lost or files were mixed up. The log's first seq may be above 1 (so
    that dropping old segments stays possible). Returns the last seq."""
    expected = last_seq + 1 if last_seq else None
    for index, body in enumerate(bodies):
        seq = body.get("seq")
        if type(seq) is not int or seq < 1 or (expected is not None and seq != expected):
            want = f"seq {expected}" if expected is not None else "a positive integer seq"
            raise LogCorruption(path, _record_offset(data, index),
                                f"record has seq {seq!r}, expected {want}")
        expected = seq + 1
    return last_seq if expected is None else expected - 1


def _record_offset(data: bytes, index: int) -> int:
    offset = 0
    for _ in range(index):
        offset += HEADER_BYTES + int.from_bytes(data[offset:offset + 4], "little")
    return offset


def closing_records(report: RecoveryReport, time: float) -> tuple[list[dict[str, Any]], int]:
    """The records that end every channel left open by a crash, and the next channel number."""
    channels = fold(event_from_record(body) for body in report.events)
    records: list[dict[str, Any]] = []
    for channel in channels.values():
        decision = decide(channel, EndChannel(time, Reason.SERVER_RESTART))
        if isinstance(decision, Accepted):
            records.extend(event_to_record(event) for event in decision.events)
    return records, max(channels, default=0) + 1
