"""The append-only event log: record format, recovery rules, and the trio writer.

Recovery tests build segment files byte by byte with the pure encoder and damage them on
purpose (LevelDB's log_test.cc style); writer tests run the real writer on tmp_path under
a fail_after limit.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from airwave.actors.log import format as logformat, writer as eventlog
from airwave.actors.log import (
    EventLog,
    FsyncMode,
    InvalidRecordBody,
    LogClosed,
    LogCorruption,
    LogFailed,
    LogLocked,
    read_events,
)
from airwave.actors.log.format import (
    MAX_RECORD_BYTES,
    encode_record,
    mask_crc,
    pack_event,
    record_from_packed,
    scan_segment,
    segment_path,
    unmask_crc,
)

IO_TIMEOUT = 10


def event(i: int, **extra: Any) -> dict[str, Any]:
    body = {
        "type": "participant_joined",
        "time": 1764000000.123 + i,
        "channel": "room1",
        "number": 3,
        "user_id": f"user-{i}",
        "role": 4096,
    }
    body.update(extra)
    return body


def write_segment(path: Path, bodies: list[dict[str, Any]]) -> list[int]:
    """Write records for ``bodies``; return each record's start offset."""
    offsets, data = [], b""
    for body in bodies:
        offsets.append(len(data))
        data += encode_record(body)
    path.write_bytes(data)
    return offsets


def seq_bodies(first: int, count: int) -> list[dict[str, Any]]:
    return [{"seq": seq, **event(seq)} for seq in range(first, first + count)]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@contextlib.asynccontextmanager
async def running(
    directory: Path, mode: FsyncMode = FsyncMode.BATCH, **options: Any
) -> AsyncIterator[EventLog]:
    log, _ = EventLog.open(directory, mode, **options)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            yield log
            await log.aclose()


# ------------------------------------------------------------------ record format


def test_encode_record_small_body_matches_golden_bytes() -> None:
    # The worked example in docs/eventlog.md.
    record = encode_record({"seq": 1, "type": "ping"})
    assert record == bytes.fromhex(
        "10000000" "b50cd87d" "82a3736571" "01a474797065a470696e67"
    )
    assert scan_segment(record, is_last=False).bodies == ({"seq": 1, "type": "ping"},)


def test_mask_crc_unmask_crc_round_trips() -> None:
    for crc in (0, 1, 0xFFFFFFFF, 0x12345678, 0xA282EAD8):
        assert unmask_crc(mask_crc(crc)) == crc
    assert mask_crc(0) == 0xA282EAD8


msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
bodies_strategy = st.dictionaries(st.text(max_size=10), msgpack_values, max_size=20)


@settings(deadline=None)  # a loaded 2-core CI box must not turn slowness into failure
@given(st.lists(bodies_strategy, max_size=8))
def test_encode_record_then_scan_segment_round_trips(bodies: list[dict[str, Any]]) -> None:
    data = b"".join(encode_record(body) for body in bodies)
    for is_last in (False, True):
        scan = scan_segment(data, is_last=is_last)
        assert scan.bodies == tuple(bodies)
        assert scan.end_offset == len(data)
        assert scan.torn_tail is None


@settings(deadline=None)
@given(bodies_strategy.filter(lambda b: "seq" not in b), st.integers(1, 2**64 - 1))
def test_record_from_packed_matches_encode_record_with_seq(
    body: dict[str, Any], seq: int
) -> None:
    assert record_from_packed(seq, pack_event(body)) == encode_record({"seq": seq, **body})


@pytest.mark.parametrize(
    "body",
    [
        {"type": "x", "nested": {1: "int key"}},
        {"type": "x", "value": object()},
        {"type": "x", "blob": b"\0" * MAX_RECORD_BYTES},
        ["not", "a", "map"],
    ],
    ids=["int-map-key", "unpackable", "too-large", "not-a-mapping"],
)
def test_encode_record_body_replay_cannot_decode_is_rejected(body: Any) -> None:
    with pytest.raises(InvalidRecordBody):
        encode_record(body)


def test_pack_event_with_seq_key_is_rejected() -> None:
    with pytest.raises(InvalidRecordBody, match="seq"):
        pack_event({"seq": 5, "type": "x"})


# ------------------------------------------------------------------ scanning rules


def test_scan_segment_partial_header_at_eof_of_last_segment_is_torn_tail() -> None:
    good = encode_record({"seq": 1})
    scan = scan_segment(good + b"\x05\x00\x00", is_last=True)
    assert scan.bodies == ({"seq": 1},)
    assert scan.end_offset == len(good)
    assert scan.torn_tail is not None and scan.torn_tail.dropped_bytes == 3


def test_scan_segment_any_damage_in_non_last_segment_raises() -> None:
    good = encode_record({"seq": 1})
    for damaged in (good + good[:5], good + good[:-1], good + good[:-1] + b"\x00"):
        with pytest.raises(LogCorruption) as caught:
            scan_segment(damaged, is_last=False)
        assert caught.value.offset == len(good)


def test_scan_segment_bad_record_followed_by_bytes_raises_with_offset() -> None:
    records = [encode_record({"seq": n, "pad": "x" * n}) for n in range(1, 4)]
    data = bytearray(b"".join(records))
    data[len(records[0]) + 9] ^= 0x01  # body byte of the second record
    with pytest.raises(LogCorruption, match=f"offset {len(records[0])}"):
        scan_segment(bytes(data), is_last=True)


def test_scan_segment_zero_filled_tail_is_torn_tail() -> None:
    good = encode_record({"seq": 1})
    scan = scan_segment(good + bytes(4096), is_last=True)
    assert scan.bodies == ({"seq": 1},)
    assert scan.torn_tail is not None and "zero-filled" in scan.torn_tail.reason


def test_scan_segment_length_above_maximum_raises_even_at_eof() -> None:
    good = encode_record({"seq": 1})
    bogus = (MAX_RECORD_BYTES + 1).to_bytes(4, "little") + b"\0\0\0\0"
    with pytest.raises(LogCorruption, match="exceeds the maximum"):
        scan_segment(good + bogus, is_last=True)


def test_scan_segment_valid_crc_over_non_map_body_is_damage() -> None:
    body = msgpack.packb([1, 2])
    crc = mask_crc(zlib.crc32(body))
    record = len(body).to_bytes(4, "little") + crc.to_bytes(4, "little") + body
    good = encode_record({"seq": 1})
    assert scan_segment(good + record, is_last=True).torn_tail is not None
    with pytest.raises(LogCorruption, match="not a map"):
        scan_segment(good + record + good, is_last=True)


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=64))
def test_scan_segment_garbage_raises_corruption_or_reports_torn_tail(garbage: bytes) -> None:
    good = encode_record({"seq": 1})
    try:
        scan = scan_segment(good + garbage, is_last=True)
    except LogCorruption as exc:
        assert exc.offset >= len(good)
    else:
        assert scan.bodies[0] == {"seq": 1}
        assert scan.end_offset + (scan.torn_tail.dropped_bytes if scan.torn_tail else 0) == len(
            good + garbage
        )


# ------------------------------------------------------------------ recovery on open


async def test_open_log_truncated_at_every_offset_of_last_two_records_recovers(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source.log"
    offsets = write_segment(source, seq_bodies(1, 5))
    data = source.read_bytes()
    ends = offsets[1:] + [len(data)]
    for cut in range(offsets[3], len(data) + 1):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        segment_path(directory, 1).write_bytes(data[:cut])
        complete = sum(1 for end in ends if end <= cut)
        good_end = max([0] + [end for end in ends if end <= cut])

        log, report = EventLog.open(directory, FsyncMode.BATCH)
        assert report.records == complete == report.last_seq
        assert [e["seq"] for e in report.events] == list(range(1, complete + 1))
        assert report.truncated_bytes == cut - good_end
        assert (report.torn_tail is None) == (cut == good_end)
        assert segment_path(directory, 1).stat().st_size == good_end

        with trio.fail_after(IO_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(log.run)
                assert await log.append([event(99, marker="after")]) == [complete + 1]
                await log.aclose()
        replayed = list(read_events(directory))
        assert [e["seq"] for e in replayed] == list(range(1, complete + 2))
        assert replayed[-1]["marker"] == "after"


def test_issue_13_client_text_that_is_a_record_never_decides_recovery(tmp_path: Path) -> None:
    """A host's custom property holds records (one, and a whole forged tail). Cut the record
    carrying it at every offset: each cut is a torn tail, and every record before it is kept.
    The forgery is carried as raw bytes, a superset of what a text field can hold."""
    forged_one = encode_record({"seq": 4, "type": "participant_left", "user_id": "alice", "reason": 6})
    forged_tail = forged_one + encode_record({"seq": 5, "type": "channel_stopped", "reason": 9})
    for forged in (forged_one, forged_tail):
        bodies = [*seq_bodies(1, 3), {"seq": 4, "type": "custom_property_changed", "value": forged}]
        source = tmp_path / "source.log"
        offsets = write_segment(source, bodies)
        data = source.read_bytes()
        embedded = data.index(forged)
        assert scan_segment(data[embedded:], is_last=True).bodies  # the text really is a record
        for cut in range(offsets[3] + 1, len(data)):
            scan = scan_segment(data[:cut], is_last=True)
            assert [b["seq"] for b in scan.bodies] == [1, 2, 3], cut
            assert scan.torn_tail is not None and scan.torn_tail.offset == offsets[3], cut


async def test_issue_13_torn_custom_property_record_on_disk_recovers_and_appends(tmp_path: Path) -> None:
    forged = encode_record({"seq": 3, "type": "channel_stopped", "reason": 9})
    path = segment_path(tmp_path, 1)
    offsets = write_segment(path, [*seq_bodies(1, 2), {"seq": 3, "type": "custom_property_changed", "value": forged * 2}])
    data = path.read_bytes()
    path.write_bytes(data[: data.index(forged) + len(forged) + 3])  # one whole forged record, then a cut
    log, report = EventLog.open(tmp_path, FsyncMode.BATCH)
    assert (report.last_seq, report.torn_tail is not None) == (2, True)
    assert path.stat().st_size == offsets[2]
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            assert await log.append([event(3)]) == [3]
            await log.aclose()


def test_scan_length_past_eof_over_bytes_that_are_no_msgpack_is_judged_by_what_follows() -> None:
    """Not msgpack at all (no writer wrote it, no client text in it): torn unless an intact
    record follows inside those bytes."""
    good = encode_record({"seq": 1})
    garbage = (500).to_bytes(4, "little") + b"\0\0\0\0" + b"\xc1" * 9
    assert scan_segment(good + garbage, is_last=True).torn_tail is not None
    with pytest.raises(LogCorruption, match="an intact record follows"):
        scan_segment(good + garbage + encode_record({"seq": 2}), is_last=True)


def test_scan_damaged_length_of_last_record_with_nothing_after_is_torn_tail() -> None:
    """A complete body whose length runs past EOF and nothing but zeros after it: the last
    record, damaged; design.md: a length past EOF in the last record is a torn tail."""
    good, last = encode_record({"seq": 1}), bytearray(encode_record({"seq": 2, "type": "x"}))
    last[0] += 40
    for tail in (b"", b"\0" * 7):
        scan = scan_segment(good + bytes(last) + tail, is_last=True)
        assert [b["seq"] for b in scan.bodies] == [1] and scan.torn_tail is not None


async def test_open_flipped_byte_in_last_record_truncates_torn_tail(tmp_path: Path) -> None:
    offsets = write_segment(segment_path(tmp_path, 1), seq_bodies(1, 4))
    size = segment_path(tmp_path, 1).stat().st_size
    flip_byte(segment_path(tmp_path, 1), offsets[3] + 12)
    log, report = EventLog.open(tmp_path, FsyncMode.BATCH)
    await log.aclose()
    assert report.last_seq == 3
    assert report.truncated_bytes == size - offsets[3]
    assert report.torn_tail is not None
    assert report.torn_tail.offset == offsets[3]
    assert "checksum" in report.torn_tail.reason
    assert segment_path(tmp_path, 1).stat().st_size == offsets[3]


async def test_open_flipped_byte_in_middle_record_raises_corruption_naming_offset(
    tmp_path: Path,
) -> None:
    offsets = write_segment(segment_path(tmp_path, 1), seq_bodies(1, 4))
    flip_byte(segment_path(tmp_path, 1), offsets[1] + 12)
    before = segment_path(tmp_path, 1).read_bytes()
    with pytest.raises(LogCorruption) as caught:
        EventLog.open(tmp_path, FsyncMode.BATCH)
    assert caught.value.offset == offsets[1]
    assert caught.value.path == segment_path(tmp_path, 1)
    assert f"offset {offsets[1]}" in str(caught.value)
    assert segment_path(tmp_path, 1).read_bytes() == before  # nothing truncated
    with pytest.raises(LogCorruption):  # not LogLocked: the failed open released the lock
        EventLog.open(tmp_path, FsyncMode.BATCH)


async def test_open_length_past_eof_in_last_record_is_torn_tail(tmp_path: Path) -> None:
    path = segment_path(tmp_path, 1)
    offsets = write_segment(path, seq_bodies(1, 3))
    data = bytearray(path.read_bytes())
    data[offsets[2]:offsets[2] + 4] = (len(data) - offsets[2]).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    log, report = EventLog.open(tmp_path, FsyncMode.BATCH)
    await log.aclose()
    assert report.last_seq == 2
    assert report.torn_tail is not None and "past end of file" in report.torn_tail.reason


async def test_open_damage_in_non_last_segment_raises_corruption(tmp_path: Path) -> None:
    first = write_segment(segment_path(tmp_path, 1), seq_bodies(1, 3))
    write_segment(segment_path(tmp_path, 2), seq_bodies(4, 3))
    flip_byte(segment_path(tmp_path, 1), first[2] + 12)  # its last record
    with pytest.raises(LogCorruption) as caught:
        EventLog.open(tmp_path, FsyncMode.BATCH)
    assert caught.value.path == segment_path(tmp_path, 1)
    assert caught.value.offset == first[2]

    write_segment(segment_path(tmp_path, 1), seq_bodies(1, 3))
    data = segment_path(tmp_path, 1).read_bytes()
    segment_path(tmp_path, 1).write_bytes(data[:-3])  # torn, but not the last segment
    with pytest.raises(LogCorruption, match="not the last"):
        EventLog.open(tmp_path, FsyncMode.BATCH)


def test_read_events_after_a_seq_skips_the_segments_that_end_before_it(tmp_path: Path) -> None:
    for number, first in ((1, 1), (2, 4), (3, 7)):
        write_segment(segment_path(tmp_path, number), seq_bodies(first, 3))
    assert logformat.first_seq(segment_path(tmp_path, 2)) == 4

    def seqs(after: int) -> list[int]:
        return [body["seq"] for body in read_events(tmp_path, after=after)]

    assert seqs(0) == seqs(2) == list(range(1, 10))
    assert seqs(3) == seqs(5) == list(range(4, 10))  # from the segment holding after + 1
    assert seqs(6) == seqs(9) == [7, 8, 9]
    segment_path(tmp_path, 1).write_bytes(b"damage a reader from seq 6 never reads")
    assert seqs(6) == [7, 8, 9]
    with pytest.raises(LogCorruption):
        seqs(0)


async def test_open_missing_segment_raises_corruption(tmp_path: Path) -> None:
    write_segment(segment_path(tmp_path, 1), seq_bodies(1, 2))
    write_segment(segment_path(tmp_path, 3), seq_bodies(5, 2))
    with pytest.raises(LogCorruption, match="segment 2 is missing"):
        EventLog.open(tmp_path, FsyncMode.BATCH)


async def test_open_seq_gap_raises_corruption(tmp_path: Path) -> None:
    offsets = write_segment(segment_path(tmp_path, 1), seq_bodies(1, 2) + seq_bodies(4, 1))
    with pytest.raises(LogCorruption, match="expected seq 3") as caught:
        EventLog.open(tmp_path, FsyncMode.BATCH)
    assert caught.value.offset == offsets[2]


async def test_open_missing_directory_is_created_empty(tmp_path: Path) -> None:
    log, report = EventLog.open(tmp_path / "a" / "b", FsyncMode.NEVER)
    await log.aclose()
    assert (tmp_path / "a" / "b").is_dir()
    assert (report.segments, report.records, report.last_seq) == (0, 0, 0)


async def test_open_directory_already_open_raises_log_locked(tmp_path: Path) -> None:
    log, _ = EventLog.open(tmp_path, FsyncMode.BATCH)
    with pytest.raises(LogLocked):
        EventLog.open(tmp_path, FsyncMode.BATCH)
    await log.aclose()
    again, _ = EventLog.open(tmp_path, FsyncMode.BATCH)
    await again.aclose()


# ------------------------------------------------------------------ the writer


async def test_log_seq_continues_across_reopen(tmp_path: Path) -> None:
    async with running(tmp_path) as log:
        assert await log.append([event(1), event(2)]) == [1, 2]
        assert await log.append([event(3)]) == [3]
    reopened, report = EventLog.open(tmp_path, FsyncMode.BATCH)
    assert report.last_seq == reopened.last_seq == 3
    assert [e["user_id"] for e in report.events] == ["user-1", "user-2", "user-3"]
    await reopened.aclose()
    async with running(tmp_path) as log:
        assert await log.append([event(4)]) == [4]
        assert log.last_seq == 4
    assert [e["seq"] for e in read_events(tmp_path)] == [1, 2, 3, 4]


async def test_append_many_concurrent_tasks_get_consecutive_seqs_in_file_order(
    tmp_path: Path,
) -> None:
    returned: dict[int, tuple[int, int, int]] = {}

    async def appender(log: EventLog, task: int) -> None:
        for call in range(10):
            batch = [event(task, task=task, call=call, k=k) for k in range(1 + call % 3)]
            seqs = await log.append(batch)
            assert seqs == list(range(seqs[0], seqs[0] + len(batch)))
            for k, seq in enumerate(seqs):
                returned[seq] = (task, call, k)

    async with running(tmp_path, FsyncMode.BATCH) as log:
        async with trio.open_nursery() as nursery:
            for task in range(40):
                nursery.start_soon(appender, log, task)
    replayed = list(read_events(tmp_path))
    assert [e["seq"] for e in replayed] == list(range(1, len(returned) + 1))
    assert sorted(returned) == [e["seq"] for e in replayed]
    for body in replayed:
        assert returned[body["seq"]] == (body["task"], body["call"], body["k"])


async def test_append_batch_mode_under_concurrency_fsyncs_less_than_appends(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, FsyncMode.BATCH) as log:
        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(log.append, [event(i)])
        stats = log.statistics()
    assert stats.appends == stats.records == 64
    assert stats.fsyncs == stats.groups < stats.appends


async def test_append_always_mode_fsyncs_once_per_append(tmp_path: Path) -> None:
    async def appender(log: EventLog, i: int) -> None:
        for _ in range(4):
            await log.append([event(i), event(i)])

    async with running(tmp_path, FsyncMode.ALWAYS) as log:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(appender, log, i)
        stats = log.statistics()
    assert stats.appends == stats.groups == stats.fsyncs == 32
    assert stats.records == 64


async def test_append_never_mode_writes_without_fsync(tmp_path: Path) -> None:
    async with running(tmp_path, FsyncMode.NEVER) as log:
        await log.append([event(1)])
        stats = log.statistics()
    assert (stats.fsyncs, stats.directory_fsyncs, stats.records) == (0, 0, 1)
    assert [e["seq"] for e in read_events(tmp_path)] == [1]


async def test_append_after_aclose_raises_log_closed(tmp_path: Path) -> None:
    async with running(tmp_path) as log:
        await log.append([event(1)])
    with pytest.raises(LogClosed, match="closed"):
        await log.append([event(2)])
    await log.aclose()  # idempotent


async def test_aclose_writes_everything_already_submitted(tmp_path: Path) -> None:
    results: list[list[int]] = []

    async def appender(log: EventLog, i: int) -> None:
        results.append(await log.append([event(i)]))

    log, _ = EventLog.open(tmp_path, FsyncMode.BATCH)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(appender, log, i)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(log.run)
            await log.aclose()
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, 21))
    assert len(list(read_events(tmp_path))) == 20


async def test_append_full_queue_blocks_and_close_refuses_unqueued(tmp_path: Path) -> None:
    outcomes: list[object] = []

    async def appender(log: EventLog, i: int) -> None:
        try:
            outcomes.append(await log.append([event(i)]))
        except LogClosed:
            outcomes.append("closed")

    log, _ = EventLog.open(tmp_path, FsyncMode.BATCH, max_pending_appends=2)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(appender, log, i)
            await trio.testing.wait_all_tasks_blocked()
            assert log.statistics().pending_appends == 2
            await log.aclose()  # no run(): aclose flushes the queue itself
    assert sorted(map(str, outcomes)) == ["[1]", "[2]", "closed", "closed", "closed"]
    assert [e["seq"] for e in read_events(tmp_path)] == [1, 2]


async def test_append_invalid_event_raises_and_writes_nothing(tmp_path: Path) -> None:
    async with running(tmp_path) as log:
        with pytest.raises(InvalidRecordBody, match="seq"):
            await log.append([event(1), {"seq": 7, "type": "x"}])
        with pytest.raises(InvalidRecordBody):
            await log.append([event(1), {"type": "x", "members": {3: "alice"}}])
        with pytest.raises(TypeError, match="sequence"):
            await log.append(event(1))  # type: ignore[arg-type]
        assert await log.append([]) == []
        assert await log.append([event(1)]) == [1]
    assert [e["seq"] for e in read_events(tmp_path)] == [1]


async def test_run_cancelled_later_append_raises_log_closed(tmp_path: Path) -> None:
    log, _ = EventLog.open(tmp_path, FsyncMode.BATCH)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append([event(1)])
            nursery.cancel_scope.cancel()
    with pytest.raises(LogClosed, match="cancelled"):
        await log.append([event(2)])
    reopened, report = EventLog.open(tmp_path, FsyncMode.BATCH)  # files and lock released
    assert report.last_seq == 1
    await reopened.aclose()


async def test_write_error_fails_append_and_run_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    log, _ = EventLog.open(tmp_path, FsyncMode.BATCH)
    monkeypatch.setattr(eventlog, "_write_all", disk_full)
    with pytest.raises(ExceptionGroup) as caught:
        with trio.fail_after(IO_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(log.run)
                with pytest.raises(LogFailed, match="No space"):
                    await log.append([event(1)])
    assert caught.value.subgroup(OSError) is not None
    with pytest.raises(LogFailed):
        await log.append([event(2)])


# ------------------------------------------------------------------ segments and replay


async def test_segment_roll_tiny_segment_bytes_splits_and_replays_in_order(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, FsyncMode.BATCH, segment_bytes=256) as log:
        for i in range(30):
            await log.append([event(i)])
        stats = log.statistics()
    segments = sorted(tmp_path.glob("events-*.log"))
    assert len(segments) == stats.segment == stats.directory_fsyncs > 3
    for path in segments[:-1]:
        assert 256 <= path.stat().st_size < 256 + 200
    assert [e["seq"] for e in read_events(tmp_path)] == list(range(1, 31))

    per_file = [[e["seq"] for e in read_events(path)] for path in segments]
    assert [seq for seqs in per_file for seq in seqs] == list(range(1, 31))
    assert all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in per_file)

    log, report = EventLog.open(tmp_path, FsyncMode.BATCH, segment_bytes=256)
    assert (report.segments, report.last_seq) == (len(segments), 30)
    await log.aclose()


def test_read_events_one_non_last_segment_with_torn_end_raises(tmp_path: Path) -> None:
    write_segment(segment_path(tmp_path, 1), seq_bodies(1, 3))
    write_segment(segment_path(tmp_path, 2), seq_bodies(4, 3))
    for number in (1, 2):
        path = segment_path(tmp_path, number)
        path.write_bytes(path.read_bytes()[:-2])
    assert [e["seq"] for e in read_events(segment_path(tmp_path, 2))] == [4, 5]
    with pytest.raises(LogCorruption):
        list(read_events(segment_path(tmp_path, 1)))
    with pytest.raises(LogCorruption):
        list(read_events(tmp_path))


def test_read_events_torn_tail_of_final_segment_ends_stream(tmp_path: Path) -> None:
    write_segment(segment_path(tmp_path, 1), seq_bodies(1, 3))
    path = segment_path(tmp_path, 2)
    write_segment(path, seq_bodies(4, 3))
    path.write_bytes(path.read_bytes()[:-1])
    assert [e["seq"] for e in read_events(tmp_path)] == [1, 2, 3, 4, 5]
    assert path.stat().st_size > 0  # reading never truncates


# ------------------------------------------------------------------ module boundaries


def test_logformat_import_leaves_trio_unloaded() -> None:
    # Loaded by file path: the property is the module's own imports, independent of what
    # the package __init__ (owned elsewhere) may pull in.
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('logformat', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['logformat'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert module.scan_segment(module.encode_record({'a': 1}), is_last=True).bodies\n"
        "assert 'trio' not in sys.modules, 'logformat imported trio'\n"
    )
    subprocess.run([sys.executable, "-c", code, logformat.__file__], check=True)


def test_scan_length_field_corrupted_past_eof_with_intact_records_after_is_corruption() -> None:
    """One flipped bit in a length must not read as a torn tail and wipe the records after it."""
    from airwave.actors.log.format import LogCorruption, encode_record, scan_segment

    records = [encode_record({"seq": n, "type": "x", "pad": "y" * 20}) for n in range(1, 6)]
    data = bytearray(b"".join(records))
    data[1] ^= 0x04  # the first record's length grows by 1 KiB: past the end of the file
    with pytest.raises(LogCorruption) as excinfo:
        scan_segment(bytes(data), is_last=True)
    assert excinfo.value.offset == 0 and "the length field is damaged" in str(excinfo.value)
