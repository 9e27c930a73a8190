"""The append-only event log: one writer task, group commit, an explicit fsync policy.

The channel service appends domain events (msgpack-able dicts, opaque here) and gets
back their global sequence numbers once the records are as durable as the
:class:`FsyncMode` promises. At startup :meth:`EventLog.open` verifies every record,
truncates a torn tail, refuses to start on corruption, and hands back the recovered
events for the registry to fold.

Usage::

    log, report = EventLog.open(directory, FsyncMode.BATCH)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        seqs = await log.append([{"type": "channel_created", ...}])
        ...
        await log.aclose()

The format (framing, scanning) lives in the trio-free :mod:`.format` and start-up
recovery in :mod:`.recovery`; docs/eventlog.md has the byte layout.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, final

import attrs
import trio

from ..core.histogram import LATENCY_BOUNDS, Histogram
from .format import InvalidRecordBody, pack_event, record_from_packed, segment_path
from .recovery import RecoveryReport, recover

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "EventLog",
    "FsyncMode",
    "LogClosed",
    "LogFailed",
    "LogLocked",
    "LogStatistics",
]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES: Final = 64 * 2**20
# Submissions (one per append() call) waiting for the writer. When full, append() blocks:
# backpressure on the channel actors instead of unbounded memory. 1024 is far above the
# number of channel actors that append at once, so it is only reached when the disk stalls.
DEFAULT_MAX_PENDING_APPENDS: Final = 1024
# A group commit stops gathering once it holds this many bytes, to bound one write.
GROUP_MAX_BYTES: Final = 4 * 2**20
# One append() call is written as one unit (one write); bound it.
MAX_APPEND_BYTES: Final = 16 * 2**20

_fdatasync = getattr(os, "fdatasync", os.fsync)  # the size change is flushed either way


class FsyncMode(enum.Enum):
    """What a returned append() promises.

    ALWAYS: each append() call's records are written and fsynced on their own.
    BATCH: group commit: everything waiting is written with one write and one fsync.
    NEVER: written to the OS (survives a process crash, not a power cut); no fsync.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


class LogClosed(trio.ClosedResourceError):
    """append() on a log that was closed (or whose writer task has stopped)."""


class LogFailed(Exception):
    """The writer hit an I/O error; the log accepts nothing more. The records of the
    failed append may or may not be on disk; the next open() decides (torn tail)."""


class LogLocked(Exception):
    """Another EventLog (in this or another process) has the directory open."""


@attrs.frozen
class LogStatistics:
    """Counters since open(). ``appends`` counts append() calls written, ``records``
    their events, ``groups`` writes, ``fsyncs`` data syncs of segment files."""

    appends: int
    records: int
    groups: int
    fsyncs: int
    directory_fsyncs: int
    bytes_written: int
    segment: int  # number of the segment being written (0: none yet)
    pending_appends: int  # submissions waiting in the queue
    last_seq: int


class _Submission:
    """One append() call on its way through the writer."""

    __slots__ = ("packed", "nbytes", "done", "first_seq", "error")

    def __init__(self, packed: list[bytes], nbytes: int) -> None:
        self.packed = packed
        self.nbytes = nbytes
        self.done = trio.Event()
        self.first_seq = 0
        self.error: BaseException | None = None


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  # aclose() called, or the writer stopped
    FAILED = "failed"  # the writer hit an I/O error


@final
class EventLog:
    """An append-only, segmented, checksummed event log with a single writer task.

    Create it with :meth:`open`; start :meth:`run` in a nursery; :meth:`append` from any
    number of tasks; :meth:`aclose` to flush and stop.
    """

    def __init__(
        self,
        *,
        directory: Path,
        fsync: FsyncMode,
        segment_bytes: int,
        max_pending_appends: int,
        lock_fd: int,
        segment_number: int,
        segment_fd: int | None,
        segment_size: int,
        last_seq: int,
    ) -> None:
        """Internal: use :meth:`EventLog.open`."""
        self._directory = directory
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._lock_fd: int | None = lock_fd
        self._segment_number = segment_number
        self._fd = segment_fd
        self._segment_size = segment_size
        self._last_seq = last_seq
        self._send, self._receive = trio.open_memory_channel[_Submission](max_pending_appends)
        self._state = _State.OPEN
        self._refusal_reason = ""  # why append() is refused, once not OPEN
        self._writer: str | None = None  # "run" or "aclose": who drains the queue
        self._stopped = trio.Event()
        # The writer's own thread slot: it never waits behind other to_thread users.
        self._thread_limiter = trio.CapacityLimiter(1)
        self._appends = self._records = self._groups = 0
        self._fsyncs = self._directory_fsyncs = self._bytes_written = 0
        # How long each group's fdatasync took (metrics: a disk that slows shows here first).
        self.sync_seconds = Histogram(LATENCY_BOUNDS)

    # ------------------------------------------------------------------ startup

    @classmethod
    def open(
        cls,
        directory: Path,
        fsync: FsyncMode,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_pending_appends: int = DEFAULT_MAX_PENDING_APPENDS,
    ) -> tuple[EventLog, RecoveryReport]:
        """Open (creating if missing) the log in ``directory`` and recover it.

        Synchronous; call it at startup, before the event loop is busy. Verifies every
        record of every segment; truncates a torn tail at the end of the last segment
        (and fsyncs the file); raises :class:`LogCorruption` for any other damage, for
        a gap in segment numbers, or for seqs that are not consecutive. Raises
        :class:`LogLocked` if another EventLog has the directory open.
        """
        fsync = FsyncMode(fsync)
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        if max_pending_appends < 1:
            raise ValueError(f"max_pending_appends must be positive, not {max_pending_appends}")
        directory = Path(directory)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_directory(directory.parent)
        lock_fd = _lock_directory(directory)
        try:
            segments, events, last_seq, torn = recover(directory)
            number, fd, size = 0, None, 0
            if segments:
                number, path = segments[-1]
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                size = os.fstat(fd).st_size
        except BaseException:
            os.close(lock_fd)
            raise
        log = cls(
            directory=directory,
            fsync=fsync,
            segment_bytes=segment_bytes,
            max_pending_appends=max_pending_appends,
            lock_fd=lock_fd,
            segment_number=number,
            segment_fd=fd,
            segment_size=size,
            last_seq=last_seq,
        )
        report = RecoveryReport(
            directory=directory,
            segments=len(segments),
            records=len(events),
            last_seq=last_seq,
            truncated_bytes=torn.dropped_bytes if torn else 0,
            torn_tail=torn,
            events=tuple(events),
        )
        logger.info(
            "event log %s: %d segments, %d records, last seq %d",
            directory, report.segments, report.records, last_seq,
        )
        return log, report

    # ------------------------------------------------------------------ properties

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def fsync_mode(self) -> FsyncMode:
        return self._fsync

    @property
    def last_seq(self) -> int:
        """The highest seq on disk (as durable as the mode promises); 0 if none."""
        return self._last_seq

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            appends=self._appends,
            records=self._records,
            groups=self._groups,
            fsyncs=self._fsyncs,
            directory_fsyncs=self._directory_fsyncs,
            bytes_written=self._bytes_written,
            segment=self._segment_number,
            pending_appends=self._receive.statistics().current_buffer_used,
            last_seq=self._last_seq,
        )

    # ------------------------------------------------------------------ appending

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append ``events`` as consecutive records; return their seqs.

        Each record's body is ``{"seq": seq, **event}``. Returns once the records are as
        durable as the fsync mode promises. Safe to call from many tasks at once; blocks
        while the submission queue is full. Raises :class:`InvalidRecordBody` (nothing
        is written) for an event that is not a msgpack map replay can decode, that has a
        ``seq`` key, or is too large; :class:`LogClosed` after :meth:`aclose`;
        :class:`LogFailed` after an I/O error. If cancelled after the events were queued,
        they may still be written.
        """
        if isinstance(events, Mapping):
            raise TypeError("append() takes a sequence of events; wrap one event in a list")
        if self._state is not _State.OPEN:
            raise self._refusal()
        packed = [pack_event(event) for event in events]
        if not packed:
            return []
        nbytes = sum(map(len, packed))
        if nbytes > MAX_APPEND_BYTES:
            raise InvalidRecordBody(
                f"one append() may write at most {MAX_APPEND_BYTES} bytes, not {nbytes}"
            )
        submission = _Submission(packed, nbytes)
        # Queue without a scheduling pass when there is room (append() still blocks in
        # done.wait() below); a full queue takes the blocking send: backpressure.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                self._send.send_nowait(submission)
            except trio.WouldBlock:
                await self._send.send(submission)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._refusal() from None
        await submission.done.wait()
        if submission.error is not None:
            if isinstance(submission.error, trio.Cancelled):
                raise LogClosed("event log writer was cancelled before writing these events")
            raise LogFailed(f"event log write failed: {submission.error!r}") from (
                submission.error
            )
        first = submission.first_seq
        return list(range(first, first + len(packed)))

    def _refusal(self) -> Exception:
        if self._state is _State.FAILED:
            return LogFailed(self._refusal_reason)
        return LogClosed(self._refusal_reason)

    # ------------------------------------------------------------------ the writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The single writer task. Start it in a nursery (``await nursery.start(log.run)``).

        Returns after :meth:`aclose`, once everything submitted before it is written.
        On an I/O error it fails the waiting appends with :class:`LogFailed` and raises.
        """
        if self._writer is not None:
            if self._state is not _State.OPEN and self._writer == "aclose":
                task_status.started()
                return
            raise RuntimeError("EventLog.run() is already running (or has run)")
        self._writer = "run"
        task_status.started()
        await self._serve()

    async def aclose(self) -> None:
        """Stop accepting appends, write everything already submitted, close the files.

        Idempotent. If :meth:`run` is running this waits for it to finish; if it never
        started, the flush happens here.
        """
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
            self._refusal_reason = "event log is closed; append() after aclose() is not allowed"
            # Appends blocked on a full queue were not submitted: they get LogClosed.
            self._send.close()
        if self._writer is None:
            self._writer = "aclose"
            await self._serve()
        else:
            await self._stopped.wait()

    async def _serve(self) -> None:
        try:
            await self._write_loop()
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._state = _State.FAILED
                self._refusal_reason = f"event log failed and accepts no appends: {exc!r}"
            elif self._state is _State.OPEN:
                self._state = _State.CLOSED
                self._refusal_reason = "event log writer task was cancelled"
            self._send.close()
            self._fail_waiting(exc)
            raise
        finally:
            self._receive.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._stopped.set()

    def _fail_waiting(self, exc: BaseException) -> None:
        while True:
            try:
                submission = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            submission.error = exc
            submission.done.set()

    async def _write_loop(self) -> None:
        receive = self._receive
        gather = self._fsync is not FsyncMode.ALWAYS
        while True:
            try:
                first = await receive.receive()
            except trio.EndOfChannel:
                return
            group = [first]
            nbytes = first.nbytes
            while gather and nbytes < GROUP_MAX_BYTES:
                try:
                    submission = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                group.append(submission)
                nbytes += submission.nbytes
            first_seq = self._last_seq + 1
            try:
                written, dir_fsyncs, synced = await trio.to_thread.run_sync(
                    self._write_group, group, first_seq, limiter=self._thread_limiter
                )
            except BaseException as exc:
                for submission in group:
                    submission.error = exc
                    submission.done.set()
                raise
            seq = first_seq
            records = 0
            for submission in group:
                submission.first_seq = seq
                seq += len(submission.packed)
                records += len(submission.packed)
                submission.done.set()
            self._last_seq = seq - 1
            self._appends += len(group)
            self._records += records
            self._groups += 1
            if self._fsync is not FsyncMode.NEVER:
                self._fsyncs += 1
                self.sync_seconds.observe(synced)
            self._directory_fsyncs += dir_fsyncs
            self._bytes_written += written

    def _write_group(self, group: list[_Submission], first_seq: int) -> tuple[int, int, float]:
        """In a worker thread: frame, write and (by mode) sync one group.

        Only the writer touches the segment fields, and it awaits this call, so no lock.
        Returns (bytes written, directory fsyncs, seconds in fdatasync).
        """
        dir_fsyncs = 0
        if self._fd is None or self._segment_size >= self._segment_bytes:
            dir_fsyncs = self._roll_segment()
        frame = record_from_packed
        parts = []
        add = parts.append
        seq = first_seq
        for submission in group:
            for packed in submission.packed:
                add(frame(seq, packed))
                seq += 1
        data = b"".join(parts)
        _write_all(self._fd, data)
        self._segment_size += len(data)
        synced = 0.0
        if self._fsync is not FsyncMode.NEVER:
            started = time.perf_counter()
            _fdatasync(self._fd)
            synced = time.perf_counter() - started
        return len(data), dir_fsyncs, synced

    def _roll_segment(self) -> int:
        if self._fd is not None:
            os.close(self._fd)  # already synced unless the mode is NEVER
            self._fd = None
        number = self._segment_number + 1
        path = segment_path(self._directory, number)
        # O_EXCL: a segment we are about to start must not exist already.
        self._fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        self._segment_number = number
        self._segment_size = 0
        if self._fsync is FsyncMode.NEVER:
            return 0
        _fsync_directory(self._directory)  # make the new name durable before acking
        return 1


# ---------------------------------------------------------------------- file helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # regular files take it all at once, short of an error; be sure anyway
        view = view[os.write(fd, view):]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_directory(directory: Path) -> int:
    """One writer per directory, across processes: an exclusive flock on LOCK."""
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogLocked(f"{directory} is already open by another event log writer") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
