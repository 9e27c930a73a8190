"""The event log's on-disk format: record framing, segment scanning and replay.

No trio and no async here (a test enforces it): encoding and scanning are pure functions
of bytes, and read_events/list_segments read files synchronously, so replay tools and the
writer share one definition of the format. docs/eventlog.md fixes the byte layout.

A data directory holds segment files ``events-00000001.log``, ``events-00000002.log``,
... read in numeric order. A segment is a sequence of records::

    record = length (u32 LE) | masked CRC32 of body (u32 LE) | body (one msgpack map)

Recovery rules (LevelDB's reader, ``db/log_reader.cc``): damage that a writer dying
mid-write can explain, at the very end of the last segment, is a *torn tail* and is
reported and dropped; any other damage is :class:`LogCorruption` and is never skipped.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import msgpack

__all__ = [
    "HEADER_BYTES",
    "MAX_RECORD_BYTES",
    "InvalidRecordBody",
    "LogCorruption",
    "SegmentScan",
    "TornTail",
    "UnusableRecord",
    "check_seq",
    "encode_record",
    "list_segments",
    "mask_crc",
    "pack_event",
    "read_events",
    "record_from_packed",
    "scan_segment",
    "segment_path",
    "unmask_crc",
]

HEADER_BYTES: Final = 8
# Largest body a length field may announce. The writer never produces more, so a larger
# length is corruption wherever it appears: a dying writer leaves a true length or a
# partial header, never this, and trusting it could pass off good records as a torn tail.
MAX_RECORD_BYTES: Final = 1 << 20

_HEADER = struct.Struct("<II")
_MASK_DELTA: Final = 0xA282EAD8
_U32: Final = 0xFFFFFFFF
# 8 digits, or more without a leading zero (so one number has exactly one file name).
_SEGMENT_RE = re.compile(r"events-(\d{8}|[1-9]\d{8,})\.log")

# msgpack's own defaults today, spelled out because replay depends on them.
_PACK_OPTIONS: Final = {"use_bin_type": True}
_UNPACK_OPTIONS: Final = {"raw": False, "strict_map_key": True}


# --------------------------------------------------------------------------- errors


class LogCorruption(Exception):
    """A record that is damaged in a way a dying writer cannot explain.

    ``path`` is the segment file (None when scanning bytes with no file behind them),
    ``offset`` the byte offset of the damaged record's header within that segment.
    """

    def __init__(self, path: Path | None, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<segment>"
        return (
            f"event log corrupt: {where} at byte offset {self.offset}: {self.reason}; "
            "refusing to continue (records after this point cannot be trusted)"
        )


class UnusableRecord(Exception):
    """An intact record (good CRC, a msgpack map, the right seq) whose content this version
    cannot use: an unknown event type, a newer schema, an event that does not fit the state
    it meets. Like corruption, nothing is skipped: the server refuses to start and replay
    stops, each with one line saying what and where."""

    def __init__(self, path: Path | None, seq: object, reason: str) -> None:
        super().__init__(path, seq, reason)
        self.path = path
        self.seq = seq
        self.reason = reason

    def __str__(self) -> str:
        where = f"event log {self.path}: " if self.path else "event log: "
        return f"{where}record seq {self.seq}: {self.reason}"


class InvalidRecordBody(ValueError):
    """A body the log refuses to write: not a msgpack map that replay could decode,
    too large, or (for appended events) carrying the reserved ``seq`` key."""


# --------------------------------------------------------------------------- values


@attrs.frozen
class TornTail:
    """The unfinished end of the last segment, left by a writer that died mid-write."""

    path: Path | None
    offset: int  # where the damaged record starts == end of the last good record
    dropped_bytes: int
    reason: str


@attrs.frozen
class SegmentScan:
    """The result of verifying one segment's bytes."""

    bodies: tuple[dict[str, Any], ...] = attrs.field(repr=False)
    end_offset: int  # end of the last good record; the segment's valid length
    torn_tail: TornTail | None


# --------------------------------------------------------------------------- encoding


def mask_crc(crc: int) -> int:
    """LevelDB's CRC mask (util/crc32c.h): rotate right by 15 bits, add a constant."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    """Inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def _pack_map(body: Mapping[str, Any]) -> bytes:
    """Pack ``body`` as one msgpack map, guaranteeing replay can decode it back."""
    if type(body) is not dict:
        if not isinstance(body, Mapping):
            raise InvalidRecordBody(f"a record body must be a mapping, not {type(body).__name__}")
        body = dict(body)
    try:
        packed = msgpack.packb(body, **_PACK_OPTIONS)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecordBody(f"body is not msgpack-encodable: {exc}") from exc
    if len(packed) > MAX_RECORD_BYTES:
        raise InvalidRecordBody(
            f"body is {len(packed)} bytes packed; the limit is {MAX_RECORD_BYTES}"
        )
    # packb accepts things replay rejects (a non-str map key anywhere, say). Writing such
    # a record would make the log unreadable at the next start, so check the round trip.
    try:
        msgpack.unpackb(packed, **_UNPACK_OPTIONS)
    except Exception as exc:  # any decode failure, whatever msgpack calls it
        raise InvalidRecordBody(f"body would not decode on replay: {exc}") from exc
    return packed


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body), mask_crc(zlib.crc32(body))) + body


def encode_record(body: Mapping[str, Any]) -> bytes:
    """Frame ``body`` as one record: header + msgpack map.

    Raises :class:`InvalidRecordBody` if the body is not a mapping, cannot be packed,
    would not decode with the replay options, or exceeds :data:`MAX_RECORD_BYTES`.
    """
    return _frame(_pack_map(body))


# The writer packs each event in the appending task (so a bad event fails its caller,
# not the group) and adds the seq later in the writer: {"seq": seq, **event} is the
# event's map with one more entry in front, so no second pack is needed.

_SEQ_KEY: Final = b"\xa3seq"  # msgpack fixstr "seq"
# Worst case growth of a packed event when seq is added: map header +2 (fixmap -> map16),
# key 4, value 9 (uint64).
_SEQ_OVERHEAD: Final = 2 + 4 + 9
_FIXMAP: Final = tuple(bytes((0x80 | n,)) for n in range(16))


def pack_event(event: Mapping[str, Any]) -> bytes:
    """Validate and pack an event (without seq) for :func:`record_from_packed`.

    Raises :class:`InvalidRecordBody` as :func:`encode_record` does, and also if the
    event already has a ``seq`` key (the log assigns seqs).
    """
    if isinstance(event, Mapping) and "seq" in event:
        raise InvalidRecordBody("'seq' is assigned by the event log; events must not carry it")
    packed = _pack_map(event)
    if len(packed) + _SEQ_OVERHEAD > MAX_RECORD_BYTES:
        raise InvalidRecordBody(
            f"event is {len(packed)} bytes packed; with its seq it could exceed "
            f"{MAX_RECORD_BYTES}"
        )
    return packed


def _pack_seq(seq: int) -> bytes:
    # msgpack's smallest encoding of a non-negative int, as packb would choose.
    if seq < 0x80:
        return bytes((seq,))
    if seq < 0x100:
        return b"\xcc" + bytes((seq,))
    if seq < 0x10000:
        return b"\xcd" + seq.to_bytes(2, "big")
    if seq < 0x100000000:
        return b"\xce" + seq.to_bytes(4, "big")
    return b"\xcf" + seq.to_bytes(8, "big")


def record_from_packed(seq: int, packed: bytes) -> bytes:
    """The record for ``{"seq": seq, **event}`` given ``packed = pack_event(event)``.

    Byte-identical to ``encode_record({"seq": seq, **event})``.
    """
    tag = packed[0]
    if tag < 0x90:  # fixmap
        count, start = tag & 0x0F, 1
    elif tag == 0xDE:
        count, start = int.from_bytes(packed[1:3], "big"), 3
    else:  # 0xDF, map32; pack_event only produces maps
        count, start = int.from_bytes(packed[1:5], "big"), 5
    count += 1
    if count < 16:
        head = _FIXMAP[count]
    elif count < 0x10000:
        head = b"\xde" + count.to_bytes(2, "big")
    else:
        head = b"\xdf" + count.to_bytes(4, "big")
    body = b"".join((head, _SEQ_KEY, _pack_seq(seq), memoryview(packed)[start:]))
    return _HEADER.pack(len(body), mask_crc(zlib.crc32(body))) + body


# --------------------------------------------------------------------------- scanning


@attrs.define
class _ScanEnd:
    """Filled in by _iter_records when it finishes (a generator cannot return two
    things to list())."""

    end_offset: int = 0
    torn_tail: TornTail | None = None


def _classify(
    data: bytes, offset: int, stop: int, reason: str, *, is_last: bool, path: Path | None
) -> TornTail:
    """Decide whether damage at ``offset`` is a torn tail; raise LogCorruption if not.

    ``stop`` is where the damaged record claims to end. A torn tail is damage in the
    last segment that a writer dying mid-write explains: the damaged record reaches EOF
    (nothing was written after it), or everything from the damage to EOF is zero bytes
    (a crash after the file grew but before its data reached the disk, which some
    filesystems show). No record is all zeros, so that rule cannot hide a record.

    A record whose length runs past EOF is judged by the structure of the body bytes
    present (`_body_prefix`), never by searching them for something that looks like a
    record: a body holds client text (a custom property may itself be a valid record), so
    such a search would let a client's bytes decide whether the server starts.
    """
    size = len(data)
    if is_last:
        if stop == size:
            return TornTail(path, offset, size - offset, reason)  # the last record, damaged
        if stop > size:
            return _classify_past_eof(data, offset, reason, path)
        if data.count(0, offset) == size - offset:
            return TornTail(path, offset, size - offset, f"zero-filled tail ({reason})")
        reason += f", and {size - stop} more bytes follow that record"
    else:
        reason += " (in a segment that is not the last)"
    raise LogCorruption(path, offset, reason)


def _classify_past_eof(data: bytes, offset: int, reason: str, path: Path | None) -> TornTail:
    """A record at the end of the last segment whose length says it goes on past EOF.

    A dying writer leaves a prefix of a true record, and msgpack is self-delimiting, so the
    body bytes present are then an unfinished map (perhaps followed by zeros that never
    reached the disk). A map that is complete before EOF, with more bytes after it, means
    the length field itself is damaged and the bytes after the map are the next records:
    corruption, whatever the records contain. Bytes that are no map at all were not written
    as a record (and hold no client text): they are a torn tail unless an intact record
    follows inside them.
    """
    size = len(data)
    body = bytes(data[offset + HEADER_BYTES:])
    if _body_prefix(body.rstrip(b"\0")) is _Prefix.UNFINISHED:
        return TornTail(path, offset, size - offset, reason)
    shape = _body_prefix(body)
    if isinstance(shape, int):
        rest = body[shape:]
        if not rest.strip(b"\0"):
            return TornTail(path, offset, size - offset, reason)  # the last record, its length damaged
        raise LogCorruption(
            path, offset, f"{reason}, but its body ends at byte offset {offset + HEADER_BYTES + shape} "
            f"and {len(rest)} more bytes follow: the length field is damaged")
    intact = _intact_record_after(data, offset + 1)
    if intact is None:
        return TornTail(path, offset, size - offset, reason)
    raise LogCorruption(path, offset, f"{reason}, but an intact record follows at byte offset {intact}")


def _intact_record_after(data: bytes, start: int) -> int | None:
    """The offset of the first complete record with a good checksum at or after ``start``."""
    size = len(data)
    unpack_header = _HEADER.unpack_from
    for offset in range(start, size - HEADER_BYTES + 1):
        length, stored = unpack_header(data, offset)
        stop = offset + HEADER_BYTES + length
        if 0 < length <= MAX_RECORD_BYTES and stop <= size and mask_crc(zlib.crc32(data[offset + HEADER_BYTES : stop])) == stored:
            return offset
    return None


class _Prefix(enum.Enum):
    UNFINISHED = "unfinished"  # a proper prefix of one msgpack map (or nothing)
    INVALID = "invalid"  # not the start of a msgpack map: no writer wrote it


def _body_prefix(body: bytes) -> _Prefix | int:
    """How ``body`` begins: an unfinished msgpack map, one complete map (its length in bytes
    is returned), or anything else. Every record body is a map, so only those two shapes can
    come from the writer."""
    if body and not (0x80 <= body[0] <= 0x8F or body[0] in (0xDE, 0xDF)):
        return _Prefix.INVALID
    unpacker = msgpack.Unpacker(**_UNPACK_OPTIONS, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return _Prefix.UNFINISHED
    except Exception:  # whatever msgpack raises for bytes that are no msgpack value
        return _Prefix.INVALID
    return unpacker.tell()


def _iter_records(
    data: bytes, is_last: bool, path: Path | None, end: _ScanEnd
) -> Iterator[dict[str, Any]]:
    """Yield the bodies of ``data`` in order; on finishing, fill ``end``.

    This is the replay hot loop: locals are bound once, slices are memoryviews (no
    copies), and msgpack decodes straight from the view.
    """
    size = len(data)
    unpack_header = _HEADER.unpack_from
    crc32 = zlib.crc32
    unpackb = msgpack.unpackb
    max_len = MAX_RECORD_BYTES
    delta = _MASK_DELTA
    u32 = _U32
    offset = 0
    with memoryview(data) as view:
        while offset + 8 <= size:
            length, stored = unpack_header(data, offset)
            if length > max_len:
                # A dying writer leaves a true length (or a partial header), never this.
                raise LogCorruption(path, offset, f"length field {length} exceeds the "
                                    f"maximum record size {max_len}")
            start = offset + 8
            stop = start + length
            if stop > size:
                end.torn_tail = _classify(
                    data, offset, stop, f"record length {length} runs past end of file "
                    f"({size - start} body bytes present)", is_last=is_last, path=path)
                break
            body = view[start:stop]
            crc = crc32(body)
            if (((crc >> 15) | (crc << 17)) + delta) & u32 != stored:
                end.torn_tail = _classify(
                    data, offset, stop, "checksum mismatch",
                    is_last=is_last, path=path)
                break
            try:
                value = unpackb(body, raw=False, strict_map_key=True)  # _UNPACK_OPTIONS
            except Exception as exc:  # whatever msgpack raises, the body is unusable
                end.torn_tail = _classify(
                    data, offset, stop, f"body does not decode: {exc}",
                    is_last=is_last, path=path)
                break
            if type(value) is not dict:
                end.torn_tail = _classify(
                    data, offset, stop,
                    f"body is a msgpack {type(value).__name__}, not a map",
                    is_last=is_last, path=path)
                break
            yield value
            offset = stop
        else:
            if offset != size:
                end.torn_tail = _classify(
                    data, offset, size, f"partial header ({size - offset} of 8 bytes)",
                    is_last=is_last, path=path)
    end.end_offset = offset


def scan_segment(data: bytes, *, is_last: bool, path: Path | None = None) -> SegmentScan:
    """Verify every record of one segment's bytes and decode the bodies.

    ``is_last``: the segment is the newest one, so a torn tail is allowed at its end.
    ``path`` is used only to name the segment in errors and in the torn-tail report.
    Raises :class:`LogCorruption` for damage that is not a torn tail.
    """
    end = _ScanEnd()
    bodies = tuple(_iter_records(data, is_last, path, end))
    return SegmentScan(bodies=bodies, end_offset=end.end_offset, torn_tail=end.torn_tail)


# --------------------------------------------------------------------------- files


def check_seq(body: Mapping[str, Any], last_seq: int, data: bytes, index: int, path: Path | None) -> int:
    """A record's seq is a positive int, one more than the last (a gap or a repeat means
    records were lost or files mixed up); the log's first seq may be above 1, so that
    dropping old segments stays possible (``last_seq`` 0: none yet). Returns the seq."""
    seq = body.get("seq")
    if type(seq) is not int or seq < 1 or (last_seq and seq != last_seq + 1):
        want = f"seq {last_seq + 1}" if last_seq else "a positive integer seq"
        raise LogCorruption(path, _record_offset(data, index), f"record has seq {seq!r}, expected {want}")
    return seq


def _record_offset(data: bytes, index: int) -> int:
    offset = 0
    for _ in range(index):
        offset += HEADER_BYTES + int.from_bytes(data[offset:offset + 4], "little")
    return offset


def segment_path(directory: Path, number: int) -> Path:
    """The file name of segment ``number`` (1-based) in ``directory``."""
    return directory / f"events-{number:08d}.log"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segments in ``directory`` as (number, path), in numeric order.

    Raises :class:`LogCorruption` if the numbering has a gap: a missing segment
    would silently drop events from replay. Other files are ignored.
    """
    found = []
    for entry in directory.iterdir():
        match = _SEGMENT_RE.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort()
    for (prev, _), (number, path) in zip(found, found[1:]):
        if number != prev + 1:
            raise LogCorruption(path, 0, f"segment {prev + 1} is missing "
                                f"(found {prev} then {number})")
    return found


def first_seq(segment: Path) -> int | None:
    """The seq of a segment's first record (None if it holds no whole record). Records are
    small (a control message is at most 16 KiB), so the first 1 MiB holds the first one."""
    with open(segment, "rb") as file:
        data = file.read(1 << 20)
    for body in _iter_records(data, True, segment, _ScanEnd()):
        seq = body.get("seq")
        return seq if type(seq) is int else None
    return None


def read_events(path: Path, *, after: int = 0) -> Iterator[dict[str, Any]]:
    """Yield the event bodies of a data directory (every segment in order) or of one
    segment file, verifying every record and that the seqs run on without a gap, as the
    server's recovery does. ``after``: a directory's segments that end at or before that seq
    are skipped unread (a reader following the log from a seq need not read it all); the
    bodies yielded may still start before it.

    A torn tail at the end of the final segment ends the stream quietly (nothing after
    it is used); when ``path`` is one segment file, it counts as final unless the
    segment with the next number sits beside it. Any other damage raises :class:`LogCorruption`
    when the iteration reaches it (the bodies before it have been yielded).
    """
    path = Path(path)
    if path.is_dir():
        segments = [p for _, p in list_segments(path)]
        while after and len(segments) > 1 and (first := first_seq(segments[1])) is not None and first <= after + 1:
            del segments[0]
        last_index = len(segments) - 1
        plan = [(p, i == last_index) for i, p in enumerate(segments)]
    else:
        match = _SEGMENT_RE.fullmatch(path.name)
        is_last = True
        if match:
            number = int(match.group(1))
            is_last = not segment_path(path.parent, number + 1).exists()
        plan = [(path, is_last)]
    last_seq = 0
    for segment, is_last in plan:
        data = segment.read_bytes()
        end = _ScanEnd()
        for index, body in enumerate(_iter_records(data, is_last, segment, end)):
            last_seq = check_seq(body, last_seq, data, index, segment)
            yield body
