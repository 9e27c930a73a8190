"""Media frames: the fixed binary header the server routes without decoding the Opus payload.

Layout (protocol/media.py): one msgpack ext 16 value per frame,
client ``C8 LLLL 01 | seq u16 | timestamp u32 | level u8 | opus`` and
server ``C8 LLLL 02 | sid u32 | seq u16 | timestamp u32 | level u8 | opus``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airwave.protocol import (
    MediaPacket,
    ProtocolError,
    Reason,
    check_client_media,
    client_media_level,
    decode_client_media,
    decode_server_media,
    encode_client_media,
    is_media_frame,
    limits,
    relay_frame,
)
from airwave.protocol.media import (
    CLIENT_HEADER_BYTES,
    MAX_CLIENT_MEDIA_BYTES,
    NO_LEVEL,
    SERVER_HEADER_BYTES,
)

MEDIA = settings(max_examples=100, deadline=None)

seqs = st.integers(0, 2**16 - 1)
timestamps = st.integers(0, 2**32 - 1)
levels = st.none() | st.integers(0, 100)
payloads = st.binary(min_size=1, max_size=limits.MAX_OPUS_PAYLOAD)
sids = st.integers(0, 2**32 - 1)

OPUS = bytes.fromhex("f8fffe")


def _h(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


def _refusal(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as excinfo:
        check_client_media(frame)
    return excinfo.value


def _client_frame(payload: bytes = OPUS, *, marker: int = 0xC8, ext_type: int = 1, level: int = 42,
                  length_delta: int = 0) -> bytes:
    """A client frame built by hand, so tests can break one header field at a time."""
    body = (1).to_bytes(2, "big") + (960).to_bytes(4, "big") + bytes([level]) + payload
    return bytes([marker]) + (len(body) + length_delta).to_bytes(2, "big") + bytes([ext_type & 0xFF]) + body


# --- golden layout --------------------------------------------------------------------------


def test_encode_client_media_golden_frame_has_the_documented_layout() -> None:
    assert encode_client_media(seq=1, timestamp=960, payload=OPUS, level=42) == _h(
        "c8 000a 01",  # ext 16, 10 bytes after the type byte, ext type 1
        "0001",  # seq
        "000003c0",  # timestamp 960
        "2a",  # level 42
        "f8fffe",  # the Opus packet
    )


def test_encode_client_media_without_level_writes_255() -> None:
    frame = encode_client_media(seq=65535, timestamp=2**32 - 1, payload=b"\x00")
    assert frame == _h("c8 0008 01", "ffff", "ffffffff", "ff", "00")
    assert frame[CLIENT_HEADER_BYTES - 1] == NO_LEVEL


def test_relay_frame_golden_frame_has_the_documented_layout() -> None:
    client = encode_client_media(seq=1, timestamp=960, payload=OPUS, level=42)
    assert relay_frame(0x01020304, client) == _h(
        "c8 000e 02",  # ext 16, 14 bytes after the type byte, ext type 2
        "01020304",  # sid, stamped by the server
        "0001 000003c0 2a",  # the client's seq, timestamp and level, unchanged
        "f8fffe",  # the Opus packet, unchanged
    )


def test_media_header_sizes_are_11_and_15_bytes() -> None:
    assert (CLIENT_HEADER_BYTES, SERVER_HEADER_BYTES) == (11, 15)
    assert MAX_CLIENT_MEDIA_BYTES == 11 + 1275


# --- round trips ----------------------------------------------------------------------------


@MEDIA
@given(seq=seqs, timestamp=timestamps, level=levels, payload=payloads)
def test_decode_client_media_of_encoded_frame_gives_fields_back(
    seq: int, timestamp: int, level: int | None, payload: bytes
) -> None:
    frame = encode_client_media(seq, timestamp, payload, level)
    assert len(frame) == CLIENT_HEADER_BYTES + len(payload)
    check_client_media(frame)
    assert decode_client_media(frame) == MediaPacket(seq, timestamp, level, payload)
    assert client_media_level(frame) == level


@MEDIA
@given(seq=seqs, timestamp=timestamps, level=levels, payload=payloads, sid=sids)
def test_relay_frame_decodes_to_the_client_fields_plus_sid(
    seq: int, timestamp: int, level: int | None, payload: bytes, sid: int
) -> None:
    server_frame = relay_frame(sid, encode_client_media(seq, timestamp, payload, level))
    assert type(server_frame) is bytes
    assert len(server_frame) == SERVER_HEADER_BYTES + len(payload)
    assert decode_server_media(server_frame) == MediaPacket(seq, timestamp, level, payload, sid)


@MEDIA
@given(seq=seqs, timestamp=timestamps, level=levels, payload=payloads, sid=sids)
def test_media_frames_are_each_one_msgpack_ext_value(
    seq: int, timestamp: int, level: int | None, payload: bytes, sid: int
) -> None:
    client_frame = encode_client_media(seq, timestamp, payload, level)
    server_frame = relay_frame(sid, client_frame)
    assert msgpack.unpackb(client_frame) == msgpack.ExtType(1, client_frame[4:])
    assert msgpack.unpackb(server_frame) == msgpack.ExtType(2, server_frame[4:])
    assert is_media_frame(client_frame) and is_media_frame(server_frame)


def test_encode_client_media_seq_and_timestamp_wrap_around() -> None:
    frame = encode_client_media(seq=2**16 + 5, timestamp=2**32 + 7, payload=OPUS)
    packet = decode_client_media(frame)
    assert (packet.seq, packet.timestamp) == (5, 7)


def test_decode_client_media_accepts_the_largest_opus_packet() -> None:
    payload = bytes(range(256)) * 4 + bytes(limits.MAX_OPUS_PAYLOAD - 1024)
    frame = encode_client_media(1, 2, payload, 100)
    assert len(frame) == MAX_CLIENT_MEDIA_BYTES
    assert decode_client_media(frame).payload == payload


# --- encode refuses what check would refuse -------------------------------------------------


@pytest.mark.parametrize("size", [0, limits.MAX_OPUS_PAYLOAD + 1])
def test_encode_client_media_payload_outside_1_to_1275_bytes_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        encode_client_media(1, 2, bytes(size))


@pytest.mark.parametrize("level", [-1, 101, 254, 256])
def test_encode_client_media_level_outside_0_to_100_is_refused(level: int) -> None:
    with pytest.raises(ValueError):
        encode_client_media(1, 2, OPUS, level)


# --- check_client_media refusals ------------------------------------------------------------


def test_check_client_media_hand_built_frame_is_accepted() -> None:
    check_client_media(_client_frame())  # the baseline every refusal below breaks in one place


@pytest.mark.parametrize("size", range(CLIENT_HEADER_BYTES + 1))
def test_check_client_media_too_short_is_protocol_error(size: int) -> None:
    # A header with no Opus byte after it is too short as well.
    assert _refusal(_client_frame()[:size]).reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize("marker", [0xC7, 0xC9, 0xD8, 0x82, 0x00])
def test_check_client_media_wrong_marker_is_protocol_error(marker: int) -> None:
    assert _refusal(_client_frame(marker=marker)).reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize("ext_type", [0, 2, 3, 0x7F, -1, -128])
def test_check_client_media_wrong_ext_type_is_protocol_error(ext_type: int) -> None:
    # Type 2 is the server's frame: a client may not send one (it would forge a sid).
    assert _refusal(_client_frame(ext_type=ext_type)).reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize("delta", [-1, 1, -7, 2**15])
def test_check_client_media_length_field_mismatch_is_protocol_error(delta: int) -> None:
    assert _refusal(_client_frame(length_delta=delta)).reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize("extra", [1, 100])
def test_check_client_media_payload_over_1275_bytes_is_too_large(extra: int) -> None:
    frame = _client_frame(bytes(limits.MAX_OPUS_PAYLOAD + extra))
    assert _refusal(frame).reason is Reason.TOO_LARGE


@pytest.mark.parametrize("level", [101, 150, 254])
def test_check_client_media_level_101_to_254_is_invalid_param(level: int) -> None:
    assert _refusal(_client_frame(level=level)).reason is Reason.INVALID_PARAM


@pytest.mark.parametrize("level", [0, 100, 255])
def test_check_client_media_level_0_to_100_or_255_is_accepted(level: int) -> None:
    check_client_media(_client_frame(level=level))


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=MAX_CLIENT_MEDIA_BYTES + 20))
def test_check_client_media_arbitrary_bytes_never_crash(frame: bytes) -> None:
    try:
        check_client_media(frame)
    except ProtocolError as error:
        assert error.reason in {Reason.PROTOCOL_ERROR, Reason.INVALID_PARAM, Reason.TOO_LARGE}
    else:
        decode_client_media(frame)


# --- decode_server_media refusals (the client side) -----------------------------------------


def _server_refusal(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as excinfo:
        decode_server_media(frame)
    return excinfo.value


def test_decode_server_media_of_a_client_frame_is_protocol_error() -> None:
    assert _server_refusal(encode_client_media(1, 2, b"\x01\x02\x03\x04\x05")).reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize("cut", [0, 1, SERVER_HEADER_BYTES])
def test_decode_server_media_too_short_is_protocol_error(cut: int) -> None:
    assert _server_refusal(relay_frame(1, encode_client_media(1, 2, OPUS))[:cut]).reason is Reason.PROTOCOL_ERROR


def test_decode_server_media_length_field_mismatch_is_protocol_error() -> None:
    frame = bytearray(relay_frame(1, encode_client_media(1, 2, OPUS)))
    frame[2] += 1
    assert _server_refusal(bytes(frame)).reason is Reason.PROTOCOL_ERROR


# --- classification -------------------------------------------------------------------------


msgpack_keys = st.text(max_size=8)
msgpack_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8)
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(msgpack_keys, msgpack_leaves | st.lists(msgpack_leaves, max_size=3), max_size=40))
def test_is_media_frame_msgpack_map_is_false(value: dict[str, Any]) -> None:
    # Every control frame is a msgpack map (fixmap 0x80-0x8f, map16 0xde, map32 0xdf), so it
    # can never be taken for media. test_protocol_codec checks the real messages too.
    assert not is_media_frame(msgpack.packb(value, use_bin_type=True))


def test_is_media_frame_empty_frame_is_false() -> None:
    assert not is_media_frame(b"")
