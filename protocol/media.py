"""Media frames: Opus packets in a fixed binary header the server routes without decoding.

A media frame is one msgpack ext value (ext 16: 0xC8, u16 length, i8 type), so every frame on
the socket is still exactly one msgpack value, but its fields sit at fixed offsets:

    client -> server, ext type 1:  C8 LLLL 01 | seq u16 | timestamp u32 | level u8 | opus
    server -> client, ext type 2:  C8 LLLL 02 | sid u32 | seq u16 | timestamp u32 | level u8 | opus

Integers are big-endian (msgpack's byte order). ``level`` is 0-100, or 255 when the sender
measured none. ``sid`` is the sender's id, stamped by the server, from the sender's
ParticipantInfo. The server turns a client frame into a server frame by writing a new 8-byte
prefix in front of the client's fields: the Opus payload is never decoded or re-encoded.
"""

from __future__ import annotations

import struct

import attrs

from .limits import MAX_OPUS_PAYLOAD
from .reasons import ProtocolError, Reason

EXT16 = 0xC8
CLIENT_MEDIA_TYPE = 1
SERVER_MEDIA_TYPE = 2
NO_LEVEL = 255

_EXT_HEADER = struct.Struct(">BHb")
_CLIENT_FIELDS = struct.Struct(">HIB")  # seq, timestamp, level
_SERVER_PREFIX = struct.Struct(">BHbI")  # ext header + sid
_SERVER_FIELDS = struct.Struct(">IHIB")  # sid, seq, timestamp, level
CLIENT_HEADER_BYTES = _EXT_HEADER.size + _CLIENT_FIELDS.size  # 11
SERVER_HEADER_BYTES = _EXT_HEADER.size + _SERVER_FIELDS.size  # 15
MAX_CLIENT_MEDIA_BYTES = CLIENT_HEADER_BYTES + MAX_OPUS_PAYLOAD


@attrs.frozen
class MediaPacket:
    """A decoded media frame (client side, or tests). ``sid`` is 0 on client frames."""

    seq: int
    timestamp: int
    level: int | None
    payload: bytes
    sid: int = 0


def is_media_frame(data: bytes) -> bool:
    """Cheap classification: control frames are msgpack maps and never start with 0xC8."""
    return len(data) > 0 and data[0] == EXT16


def encode_client_media(seq: int, timestamp: int, payload: bytes, level: int | None = None) -> bytes:
    """A client media frame. ``seq`` and ``timestamp`` wrap (mod 2**16, 2**32); ``level`` is
    0-100 or None (written as 255); anything else raises ValueError, as the server would
    refuse the frame."""
    if not 1 <= len(payload) <= MAX_OPUS_PAYLOAD:
        raise ValueError(f"opus payload must be 1..{MAX_OPUS_PAYLOAD} bytes")
    if level is not None and level != NO_LEVEL and not 0 <= level <= 100:
        raise ValueError(f"audio level must be 0..100 or None, not {level}")
    body_len = _CLIENT_FIELDS.size + len(payload)
    return (
        _EXT_HEADER.pack(EXT16, body_len, CLIENT_MEDIA_TYPE)
        + _CLIENT_FIELDS.pack(seq & 0xFFFF, timestamp & 0xFFFFFFFF, NO_LEVEL if level is None else level)
        + payload
    )


def check_client_media(frame: bytes) -> None:
    """Validates a client media frame's header without touching the payload."""
    if len(frame) > MAX_CLIENT_MEDIA_BYTES:
        raise ProtocolError(Reason.TOO_LARGE, f"media frame of {len(frame)} bytes")
    if len(frame) <= CLIENT_HEADER_BYTES:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "media frame shorter than its header")
    marker, body_len, ext_type = _EXT_HEADER.unpack_from(frame)
    if marker != EXT16 or ext_type != CLIENT_MEDIA_TYPE or body_len != len(frame) - _EXT_HEADER.size:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "malformed media frame header")
    level = frame[CLIENT_HEADER_BYTES - 1]
    if level > 100 and level != NO_LEVEL:
        raise ProtocolError(Reason.INVALID_PARAM, f"audio level {level} is not 0-100 or 255")


def relay_frame(sid: int, client_frame: bytes) -> bytes:
    """The server frame for a checked client frame: a new prefix, the client's fields after it."""
    return _SERVER_PREFIX.pack(EXT16, len(client_frame) - _EXT_HEADER.size + 4, SERVER_MEDIA_TYPE, sid) + (
        memoryview(client_frame)[_EXT_HEADER.size :]
    )


def client_media_level(frame: bytes) -> int | None:
    level = frame[CLIENT_HEADER_BYTES - 1]
    return None if level == NO_LEVEL else level


def decode_client_media(frame: bytes) -> MediaPacket:
    check_client_media(frame)
    seq, timestamp, level = _CLIENT_FIELDS.unpack_from(frame, _EXT_HEADER.size)
    return MediaPacket(seq, timestamp, None if level == NO_LEVEL else level, bytes(frame[CLIENT_HEADER_BYTES:]))


def decode_server_media(frame: bytes) -> MediaPacket:
    if len(frame) <= SERVER_HEADER_BYTES:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "media frame shorter than its header")
    marker, body_len, ext_type = _EXT_HEADER.unpack_from(frame)
    if marker != EXT16 or ext_type != SERVER_MEDIA_TYPE or body_len != len(frame) - _EXT_HEADER.size:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "malformed media frame header")
    sid, seq, timestamp, level = _SERVER_FIELDS.unpack_from(frame, _EXT_HEADER.size)
    return MediaPacket(
        seq, timestamp, None if level == NO_LEVEL else level, bytes(frame[SERVER_HEADER_BYTES:]), sid
    )
