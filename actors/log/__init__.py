"""The event log: its on-disk format, the single writer, start-up recovery, and replay.

`format` and `recovery` and `replay` are plain synchronous code (no trio); only `writer`, the
one task that owns the open segment, is async.
"""

from .format import InvalidRecordBody, LogCorruption, UnusableRecord, read_events
from .recovery import RecoveryReport, closing_records
from .replay import ReplayedEvent, replay_events
from .writer import EventLog, FsyncMode, LogClosed, LogFailed, LogLocked

__all__ = [
    "EventLog",
    "FsyncMode",
    "InvalidRecordBody",
    "LogClosed",
    "LogCorruption",
    "LogFailed",
    "LogLocked",
    "RecoveryReport",
    "ReplayedEvent",
    "UnusableRecord",
    "closing_records",
    "read_events",
    "replay_events",
]
