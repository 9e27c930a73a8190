"""server_binary_frame is checked against wsproto acting as the client that receives it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage

from airwave.protocol.wsframe import server_binary_frame


def parse_as_client(data: bytes) -> list[object]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


def assert_one_binary_message(frame: bytes, payload: bytes) -> None:
    events = parse_as_client(frame)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, BytesMessage)
    assert event.data == payload
    assert event.frame_finished and event.message_finished


@pytest.mark.parametrize(
    ("length", "header_length"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)],
)
def test_server_binary_frame_length_forms_parse_as_one_message(length, header_length):
    payload = bytes(i % 251 for i in range(length))
    frame = server_binary_frame(payload)
    assert len(frame) == header_length + length
    assert frame[0] == 0x82  # FIN + binary
    assert frame[1] & 0x80 == 0  # unmasked
    assert_one_binary_message(frame, payload)


def test_server_binary_frame_uses_shortest_length_form():
    assert server_binary_frame(b"x" * 125)[1] == 125
    assert server_binary_frame(b"x" * 126)[1:4] == bytes((126, 0, 126))
    assert server_binary_frame(b"x" * 65536)[1:10] == bytes((127, 0, 0, 0, 0, 0, 1, 0, 0))


def test_server_binary_frame_accepts_memoryview_and_returns_bytes():
    frame = server_binary_frame(memoryview(b"abc"))
    assert type(frame) is bytes
    assert frame == b"\x82\x03abc"


@given(st.binary(max_size=70_000))
def test_server_binary_frame_any_payload_parses_back(payload):
    assert_one_binary_message(server_binary_frame(payload), payload)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20), st.integers(1, 64))
def test_server_binary_frames_back_to_back_fed_in_chunks_parse_in_order(payloads, chunk):
    stream = b"".join(server_binary_frame(p) for p in payloads)
    client = Connection(ConnectionType.CLIENT)
    received: list[bytes] = []
    current = b""
    for start in range(0, len(stream), chunk):
        client.receive_data(stream[start : start + chunk])
        for event in client.events():
            assert isinstance(event, BytesMessage)
            current += event.data
            if event.message_finished:
                received.append(current)
                current = b""
    assert received == payloads
