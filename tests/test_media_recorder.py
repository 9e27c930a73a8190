"""The recorder's edges, without a server: its hot-path side never blocks, a failure is a value."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import numpy as np

from airwave.media.opus import OpusEncoder, packet_samples
from airwave.media.recorder import Recorder, track_name
from airwave.protocol.media import encode_client_media, relay_frame
from airwave.protocol.wsframe import server_binary_frame


def media_frame(sid: int, seq: int) -> bytes:
    packet = OpusEncoder().encode(np.zeros(960, np.int16))
    return bytes(server_binary_frame(relay_frame(sid, encode_client_media(seq, seq * 960, packet, 0))))


def test_recorder_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r", queue_frames=3)  # no worker: nothing drains the queue
    frame = media_frame(1, 0)

    started = time.perf_counter()
    for _ in range(1000):
        recorder.send_frame_nowait(frame, droppable=True)

    assert (recorder.stats.frames_in, recorder.stats.dropped) == (1000, 997)
    assert time.perf_counter() - started < 0.1


def test_recorder_that_cannot_write_stops_with_the_reason_and_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "recordings"
    blocker.write_text("a file where the directory would go")
    recorder = Recorder(blocker / "222" / "1-x")
    worker = threading.Thread(target=recorder.run)

    worker.start()
    worker.join(5)

    assert not worker.is_alive() and recorder.finished.is_set()
    assert "NotADirectoryError" in recorder.stats.failed or "FileExistsError" in recorder.stats.failed


def test_recorder_names_a_track_by_user_slug_and_lists_it_in_the_manifest(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r")
    recorder.name(7, "ann/../x")
    worker = threading.Thread(target=recorder.run)
    worker.start()
    recorder.send_frame_nowait(media_frame(7, 0), droppable=True)
    recorder.stop()  # what arrived before the stop is written, however soon it comes
    worker.join(5)

    manifest = json.loads((tmp_path / "r" / "recording.json").read_text())
    assert manifest["finalised"] and manifest["tracks"] == {"ann/../x": track_name("ann/../x")}
    assert track_name("ann/../x") == "speaker-ann%2F%2E%2E%2Fx.opus"
    assert (tmp_path / "r" / track_name("ann/../x")).exists()


class Collected:
    """A mix output that keeps what it is given."""

    def __init__(self, fail: bool = False) -> None:
        self.packets: list[bytes] = []
        self.closed = False
        self.fail = fail

    def write(self, packet: bytes) -> None:
        if self.fail:
            raise OSError("the network is away")
        self.packets.append(packet)

    def close(self) -> None:
        self.closed = True


def test_recorder_with_mix_outputs_only_writes_no_files_and_feeds_every_20_ms_of_the_mix(tmp_path: Path) -> None:
    outputs, failing = Collected(), Collected(fail=True)
    started_at = time.time()
    recorder = Recorder(tmp_path / "cdn", mix="", tracks=False, mix_outputs=(failing, outputs), started_at=started_at)
    recorder.name(7, "ann")
    worker = threading.Thread(target=recorder.run)
    worker.start()
    for seq in range(10):
        recorder.send_frame_nowait(media_frame(7, seq), droppable=True)
        time.sleep(0.02)
    time.sleep(0.2)
    stopped_at = time.time()
    recorder.stop(stopped_at)
    worker.join(5)

    assert not (tmp_path / "cdn").exists()  # no directory, no recording.json, no track
    assert outputs.closed and failing.closed and not recorder.stats.failed
    # Continuous from the start to the stop, silence included: a packet per 20 ms (the
    # decoded length counts from the encoder's pre-skip: one more, at most).
    frames = (stopped_at - started_at) / 0.020
    assert frames - 0.5 <= len(outputs.packets) <= frames + 1.5, (len(outputs.packets), frames)
    assert all(packet_samples(p) == 960 for p in outputs.packets)
    assert recorder.stats.output_errors == len(outputs.packets)  # the failing one, counted, never fatal


def test_recorder_feed_counts_frames_dropped_upstream_and_bounds_its_own_queue(tmp_path: Path) -> None:
    """The worker process's way in: frames stamped by the server's stand-in, and what it
    dropped, so recording.json's statistics cover the whole path."""
    recorder = Recorder(tmp_path / "r", queue_frames=3)
    frame = media_frame(1, 0)

    recorder.feed([(time.monotonic(), frame)] * 5, dropped=7)

    assert (recorder.stats.frames_in, recorder.stats.dropped) == (12, 9)


def tone_frame(sid: int, seq: int, encoder: OpusEncoder) -> bytes:
    t = (np.arange(960) + seq * 960) / 48_000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return bytes(server_binary_frame(relay_frame(sid, encode_client_media(seq, seq * 960, encoder.encode(pcm), 50))))


def test_recorder_fed_late_by_a_worker_that_started_late_still_mixes_what_arrived_early(tmp_path: Path) -> None:
    """A worker process that starts (or reads its pipe) half a second after the frames
    arrived at the server: its recorder must not write the mix past what the server has
    handed over so far (``until``), or the frames arriving late in its pipe land in a part
    of the mix already encoded as silence, and are missing from it though in the track."""
    recorder = Recorder(tmp_path / "r")
    recorder.name(7, "ann")
    started = time.monotonic()
    recorder.feed([], until=started)  # the first batch: nothing yet (as the worker applies it)
    worker = threading.Thread(target=recorder.run)
    worker.start()
    time.sleep(0.6)  # the server's next batches wait in the pipe meanwhile
    encoder = OpusEncoder()
    frames = [(started + 0.05 + seq * 0.02, tone_frame(7, seq, encoder)) for seq in range(25)]  # 0.05 .. 0.55 s
    recorder.feed(frames, until=started + 0.6)
    time.sleep(0.3)
    recorder.stop()
    worker.join(5)

    def pcm_of(name: str) -> np.ndarray:
        with av.open(str(tmp_path / "r" / name)) as container:
            return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])

    for name in ("mix.opus", track_name("ann")):
        pcm = pcm_of(name)
        heard = pcm[int(0.1 * 48_000) : int(0.5 * 48_000)]
        assert np.sqrt(np.mean(heard**2)) > 0.1, name  # the tone (amplitude 0.24), not silence
