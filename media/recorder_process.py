"""The server's side of recording: a cheap stand-in in each channel's router, and the worker
process (`recorder_worker`) that does the work, off the fan-out's process and its GIL.

`RecordingFeed` is what the router and the channel actor hold. Its `send_frame_nowait` is
the hot path: it appends ``(monotonic time, frame)`` to a bounded deque and returns; a full
deque drops the frame and counts it (the worker fell behind; the listeners never wait for
it). `RecorderProcess` starts one worker process for the server, on the first recording,
and one task ships every recording's deque to it every 20 ms: one pipe write, one message,
however many recordings and frames. Names, the start (the recording's picklable factory)
and the stop travel in the same message, in order. The worker answers when a recording's
files are closed (`RecordingFeed.finished`).

If the worker dies, every recording it held ends with ``stats.failed`` saying so, and the
next recording gets a new worker. If the server dies, the worker reads end of file on its
stdin and ends every recording at the last batch (`recorder_worker`), so it never outlives
the server.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import attrs
import trio

from .recorder_worker import Ended, FeedBatch, RecordingJob, encode_message, take_messages

log = logging.getLogger("airwave.recorder")

BATCH_SECONDS = 0.020  # one message to the worker per Opus frame period
QUEUE_FRAMES = 2_000  # frames a recording may hold waiting for the worker (20 s of one speaker)
# How long a stopping server waits for the worker to finish what it holds (it writes 150 ms
# behind the clock and pads to the stop: well under a second) before killing it.
FINISH_SECONDS = 10.0
WORKER_COMMAND = (sys.executable, "-m", "airwave.media.recorder_worker")


@attrs.define
class FeedStatistics:
    frames_in: int = 0  # frames the router handed over
    dropped: int = 0  # not taken: the buffer was full (the worker fell behind, or died)
    failed: str = ""  # why the recording ended early, if it did (the worker's or ours)


@final
class RecordingFeed:
    """One recording, as the server sees it: a member of the channel's router (it never
    publishes) and the channel actor's handle (`name`, `stop`, `finished`)."""

    def __init__(self, key: str, factory: Callable[[], RecordingJob], capacity: int) -> None:
        self.key = key
        self.stats = FeedStatistics()
        self.statistics: dict[str, Any] = {}  # the worker's, once it ended (recording.json's)
        self._factory: Callable[[], RecordingJob] | None = factory  # sent with the first batch
        self._capacity = capacity
        self._queue: deque[tuple[float, bytes]] = deque()
        self._dropped_unsent = 0
        self._names: list[tuple[int, str]] = []
        self._stopping = False
        self._stop_at: float | None = None
        self._stop_sent = False
        self._ended = trio.Event()

    # --- the router's side: the hot path ---

    def send_frame_nowait(self, frame: bytes, *, droppable: bool = True) -> None:
        """Keeps the frame for the next batch, or drops and counts it if the buffer is full."""
        stats = self.stats
        stats.frames_in += 1
        if len(self._queue) >= self._capacity or self._ended.is_set():
            stats.dropped += 1
            self._dropped_unsent += 1
            return
        self._queue.append((time.monotonic(), frame))

    # --- the channel actor's side ---

    def name(self, sid: int, user_id: str) -> None:
        """Media from ``sid`` is ``user_id``'s (sent before any frame that follows this call)."""
        self._names.append((sid, user_id))

    def stop(self, at: float | None = None) -> None:
        """Ends the recording at ``at`` (wall clock; None: now), after the frames handed over
        before this call. Safe to call more than once."""
        if not self._stopping:
            self._stopping = True
            self._stop_at = time.time() if at is None else at

    async def finished(self) -> str:
        """Waits until the worker closed the files (or died); returns ``stats.failed``."""
        await self._ended.wait()
        return self.stats.failed

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # --- the shipper's side ---

    def _take(self) -> FeedBatch:
        """Everything since the last batch; the stop, if asked, comes last."""
        frames = tuple(self._queue)
        self._queue.clear()
        batch = FeedBatch(
            self.key, self._factory, tuple(self._names), frames, self._dropped_unsent,
            taken_at=time.monotonic(), stop=self._stopping, stop_at=self._stop_at,
        )
        self._factory = None
        self._names.clear()
        self._dropped_unsent = 0
        self._stop_sent = self._stopping
        return batch

    def _end(self, failed: str, statistics: dict[str, Any]) -> None:
        self.stats.failed = failed
        self.statistics = statistics
        self._queue.clear()
        self._ended.set()


@final
class _Worker:
    """One worker process and the recordings it holds (not ended yet)."""

    def __init__(self) -> None:
        self.process: trio.Process | None = None
        self.recordings: dict[str, RecordingFeed] = {}
        self.wake = trio.Event()  # set when there is something to ship
        self.closing = False
        self.reports = bytearray()
        self.at_eof = False


@final
class RecorderProcess:
    """Starts the recording worker process on the first recording, in ``nursery``, and a new
    one after a worker died. Made by `open_recorder_process`, which closes it."""

    def __init__(self, nursery: trio.Nursery, command: tuple[str, ...] = WORKER_COMMAND) -> None:
        self._nursery = nursery
        self._command = command
        self.queue_frames = QUEUE_FRAMES  # each new recording's bound (tests make it small)
        self._worker: _Worker | None = None
        self.workers_started = 0

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None before the first recording)."""
        worker = self._worker
        return worker.process.pid if worker is not None and worker.process is not None else None

    def start(self, key: str, factory: Callable[[], RecordingJob], *, queue_frames: int | None = None) -> RecordingFeed:
        """A new recording named ``key`` (unique among those running), made in the worker by
        calling ``factory`` (picklable: a module-level callable or a functools.partial of one)."""
        worker = self._worker
        if worker is None or worker.closing:
            worker = self._worker = _Worker()
            self.workers_started += 1
            self._nursery.start_soon(self._serve, worker)
        if key in worker.recordings:
            raise ValueError(f"recording {key!r} is already running")
        feed = RecordingFeed(key, factory, self.queue_frames if queue_frames is None else queue_frames)
        worker.recordings[key] = feed
        worker.wake.set()
        return feed

    def close(self) -> None:
        """No more recordings: the worker gets what is left, then end of file, and exits."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.closing = True
            worker.wake.set()

    async def _serve(self, worker: _Worker) -> None:
        try:
            worker.process = await trio.lowlevel.open_process(
                list(self._command), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            log.info("recording worker started, pid %d", worker.process.pid)
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._ship, worker)
                await self._read(worker)  # until it exits: a crash, or our end of file
                tasks.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(worker)

    async def _ship(self, worker: _Worker) -> None:
        """Every BATCH_SECONDS while there are recordings: one message with all of them."""
        process = worker.process
        assert process is not None and process.stdin is not None
        try:
            while True:
                if not worker.recordings and not worker.closing:
                    worker.wake = trio.Event()
                    await worker.wake.wait()  # nothing recording: no wake-ups at all
                batches = [feed._take() for feed in worker.recordings.values() if not feed._stop_sent]
                if batches:
                    await process.stdin.send_all(encode_message(batches))
                if worker.closing:  # recordings not stopped yet stop at this last batch
                    await process.stdin.aclose()
                    return
                await trio.sleep(BATCH_SECONDS)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the worker is gone: the reader sees its end of file

    async def _read(self, worker: _Worker) -> None:
        """The worker's reports (`Ended`), until its stdout ends (it exited)."""
        process = worker.process
        assert process is not None and process.stdout is not None
        while not worker.at_eof:
            chunk = await process.stdout.receive_some()
            if not chunk:
                worker.at_eof = True
                break
            worker.reports += chunk
            for ended in take_messages(worker.reports):
                assert isinstance(ended, Ended)
                feed = worker.recordings.pop(ended.key, None)
                if feed is not None:
                    feed._end(ended.failed, ended.statistics)

    async def _finish(self, worker: _Worker) -> None:
        """After the worker's end of file, or on cancellation: close its stdin (it finishes
        what it holds and exits), wait for it (bounded), and end every recording it did not."""
        if self._worker is worker:
            self._worker = None  # the next recording gets a new worker
        worker.closing = True
        process = worker.process
        if process is not None:
            with trio.move_on_after(FINISH_SECONDS):
                if process.stdin is not None:
                    await process.stdin.aclose()
                if not worker.at_eof:
                    await self._read(worker)
                await process.wait()
            if process.returncode is None:
                log.error("recording worker %d did not finish within %.0f s: killed", process.pid, FINISH_SECONDS)
                process.kill()
                await process.wait()
            code = process.returncode
            why = f"the recording worker (pid {process.pid}) exited with code {code}"
        else:
            why = "the recording worker could not start"
        if worker.recordings:
            log.error("%s while recording %s", why, ", ".join(sorted(worker.recordings)))
        for feed in list(worker.recordings.values()):
            feed._end(why, {})
        worker.recordings.clear()


@asynccontextmanager
async def open_recorder_process(command: tuple[str, ...] = WORKER_COMMAND) -> AsyncIterator[RecorderProcess]:
    """A `RecorderProcess` for the body; on the way out the worker finishes what it holds
    (recordings not stopped by then stop at their last batch) and exits before this returns."""
    async with trio.open_nursery() as nursery:
        recordings = RecorderProcess(nursery, command)
        try:
            yield recordings
        finally:
            recordings.close()
