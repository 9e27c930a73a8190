"""The recording worker: one process, started by the server, that runs its recordings.

Recording work (jitter, decode, mix, encode, Ogg muxing, writing) costs a core tenths of a
millisecond per frame, and on the server's threads it competed with the fan-out for the
GIL (docs/performance.md section 11). Here it has a process, and its own GIL, of its own.

The server (`recorder_process`) writes to this process's stdin one message per 20 ms: a
list of `FeedBatch`, one per recording, each carrying the frames that arrived since the
last one (stamped with the server's monotonic clock, which is this machine's, so the same
clock here), the sender names learnt meanwhile and, last, the stop. A recording's first
batch carries its factory: any picklable callable (a module-level function, or a
``functools.partial`` of one) returning a `RecordingJob`, so this protocol knows nothing of
what a recording writes (`channel_recorder` makes the channel recorder; a CDN output can be
another factory). This process answers on its stdout with one `Ended` per recording, once
its `run` returned. Every message is a 4-byte big-endian length and a pickle: both ends are
this same program, started by the server; nothing else writes to these pipes.

The process ignores SIGINT and SIGTERM (a Ctrl-C or a service manager's SIGTERM reaches the
whole process group: the server then stops the recordings itself, in order, and closes the
pipe). End of file on stdin means the server is gone: killed outright, or done. Every
recording still running then stops at the server's last sign of life (when it took its last
batch, at most 20 ms before it died), is finalised, and the process exits: it never outlives
the server.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol, final

import attrs

log = logging.getLogger("airwave.recorder")

_LENGTH = struct.Struct(">I")
# A batch holds at most the stand-ins' bounded buffers (2,000 frames of < 1.5 KB each per
# recording); anything larger is not a message of this program.
MAX_MESSAGE = 256 * 1024 * 1024
NICENESS = 10  # added to the server's: the worker yields a shared core to the fan-out


class RecordingJob(Protocol):
    """What the worker needs of a recording: `media.recorder.Recorder` is one. ``stats`` is
    an attrs instance with a ``failed: str`` field (why the recording ended early; "" if it
    did not)."""

    stats: Any

    def name(self, sid: int, user_id: str) -> None:
        """Media from ``sid`` is ``user_id``'s."""

    def feed(self, frames: list[tuple[float, bytes]], dropped: int = 0, *, until: float | None = None) -> None:
        """``(monotonic arrival time, server WebSocket frame)`` in arrival order; ``dropped``
        frames were dropped before reaching this process; every frame that arrived before
        ``until`` has been fed now. Never blocks."""

    def stop(self, at: float | None = None) -> None:
        """Ends the recording at ``at`` (wall clock, epoch seconds; None: now); any thread."""

    def run(self) -> None:
        """Records until stopped, then finalises; never raises (a failure goes to stats.failed)."""


@final
@attrs.frozen
class FeedBatch:
    """One recording's share of one message from the server, applied in this order:
    ``factory`` (first batch only: the worker makes the recording), ``names``, ``frames``
    (``dropped``: how many the server's stand-in dropped since the last batch; ``taken_at``:
    the server's monotonic time when it took them, so every frame that arrived before it is
    in this batch or an earlier one), the stop."""

    key: str
    factory: Callable[[], RecordingJob] | None = None
    names: tuple[tuple[int, str], ...] = ()
    frames: tuple[tuple[float, bytes], ...] = ()
    dropped: int = 0
    taken_at: float | None = None
    stop: bool = False
    stop_at: float | None = None


@final
@attrs.frozen
class Ended:
    """The worker's report: the recording ``key`` is over and its files are closed."""

    key: str
    failed: str
    statistics: dict[str, Any]


def encode_message(value: object) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def take_messages(buffer: bytearray) -> list[Any]:
    """The whole messages at the front of ``buffer``, removed from it (a partial one stays)."""
    messages = []
    offset = 0
    while len(buffer) - offset >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer, offset)
        if length > MAX_MESSAGE:
            raise ValueError(f"a message of {length} bytes from the recording worker")
        end = offset + _LENGTH.size + length
        if len(buffer) < end:
            break
        messages.append(pickle.loads(buffer[offset + _LENGTH.size : end]))
        offset = end
    del buffer[:offset]
    return messages


def read_message(stream: IO[bytes]) -> Any | None:
    """The next message, or None at end of file (a message cut short counts as the end: the
    server died writing it)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_MESSAGE:
        raise ValueError(f"a message of {length} bytes from the server")
    body = stream.read(length)
    if len(body) < length:
        return None
    return pickle.loads(body)


def channel_recorder(directory: str, **options: Any) -> RecordingJob:
    """The channel recorder (`media.recorder.Recorder`) for ``directory``: a factory the
    server can pickle without loading PyAV and numpy, which load here, in the worker."""
    from .recorder import Recorder

    return Recorder(Path(directory), **options)


def cdn_recorder(hls_dir: str | None, icecast_url: str | None, **options: Any) -> RecordingJob:
    """The CDN's recorder (`media.cdn.make_cdn_recorder`: the mix to HLS and/or Icecast, no
    files of its own), likewise picklable without loading PyAV in the server."""
    from .cdn import make_cdn_recorder

    return make_cdn_recorder(None if hls_dir is None else Path(hls_dir), icecast_url, **options)


@final
class Worker:
    """Applies the server's messages from ``commands`` and reports on ``reports``; one thread
    per recording runs its `RecordingJob.run` (they share this process's GIL, never the
    server's)."""

    def __init__(self, commands: IO[bytes], reports: IO[bytes]) -> None:
        self._commands = commands
        self._reports = reports
        self._report_lock = threading.Lock()
        self._jobs: dict[str, RecordingJob] = {}
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        """Until end of file on ``commands``; then every recording stops at the server's last
        sign of life (when it took the last batch: this process may read it much later, when
        it is behind), and this returns once all are finalised."""
        last_seen = time.monotonic()
        while (message := read_message(self._commands)) is not None:
            for batch in message:
                last_seen = batch.taken_at if batch.taken_at is not None else time.monotonic()
                self._apply(batch)
        for job in list(self._jobs.values()):
            job.stop(time.time() - (time.monotonic() - last_seen))
        for thread in self._threads:
            thread.join()

    def _apply(self, batch: FeedBatch) -> None:
        made = batch.factory is not None and self._make(batch.key, batch.factory)
        job = self._jobs.get(batch.key)
        if job is None:  # it could not be made (reported), or it already ended
            return
        for sid, user_id in batch.names:
            job.name(sid, user_id)
        job.feed(list(batch.frames), batch.dropped, until=batch.taken_at)
        if made:  # its first batch is in before it runs: it never runs ahead of the server
            self._start(batch.key, job)
        if batch.stop:
            job.stop(batch.stop_at)

    def _make(self, key: str, factory: Callable[[], RecordingJob]) -> bool:
        try:
            self._jobs[key] = factory()
        except Exception as exc:  # this recording cannot start; the others go on
            log.exception("recording %s could not start", key)
            self._report(Ended(key, f"{type(exc).__name__}: {exc}", {}))
            return False
        return True

    def _start(self, key: str, job: RecordingJob) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=self._run, args=(key, job), name=f"recording {key}")
        self._threads.append(thread)
        thread.start()

    def _run(self, key: str, job: RecordingJob) -> None:
        job.run()
        stats = job.stats
        statistics = attrs.asdict(stats) if attrs.has(type(stats)) else {}
        self._jobs.pop(key, None)
        self._report(Ended(key, str(getattr(stats, "failed", "")), statistics))

    def _report(self, ended: Ended) -> None:
        with self._report_lock:
            try:
                self._reports.write(encode_message(ended))
                self._reports.flush()
            except (BrokenPipeError, ValueError):  # the server is gone: nobody to tell
                pass


def main() -> int:
    # The server ends recordings in order on SIGINT/SIGTERM and then closes the pipe; the
    # signal reaching this process too (same process group) must not cut that short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Lower priority than the fan-out: on a core they share, the scheduler runs the server as
    # soon as it wakes; recording has 150 ms of slack (its jitter delay), the listeners none.
    os.nice(NICENESS)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: [recording worker %(process)d] %(message)s",
    )
    Worker(sys.stdin.buffer, sys.stdout.buffer).serve()
    return 0


if __name__ == "__main__":
    # Run as airwave.media.recorder_worker, not __main__: the classes it pickles (Ended) must
    # have the names the server unpickles them by.
    from airwave.media.recorder_worker import main as worker_main

    sys.exit(worker_main())
