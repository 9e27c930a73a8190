"""Server-to-client WebSocket frames, built once and sent as the same bytes to every listener.

RFC 6455 section 5.2: a server never masks its frames, and Airwave negotiates no extensions
(trio-websocket offers none), so one encoded frame is valid on every connection. That is
what lets the media fan-out build a frame once per packet and hand the same ``bytes`` object
to each listener's socket (design notes, section 3). wsproto's own serializer copies the
payload two or three times per call, which is fine once per message and wasteful once per
listener; this module copies it exactly once, into the returned frame.

Pure: no trio, no sockets.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_PAYLOAD_LENGTH", "ClientFrameMeter", "FrameViolation", "server_binary_frame"]

# FIN set, RSV1-3 clear, opcode 0x2 (binary).
_FIN_BINARY = 0x82
# The 64-bit length form requires the most significant bit to be 0 (RFC 6455 5.2).
MAX_PAYLOAD_LENGTH = (1 << 63) - 1

_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def server_binary_frame(payload: bytes) -> bytes:
    """Return ``payload`` as one complete, unmasked, final binary WebSocket frame.

    The header uses the shortest length form RFC 6455 allows: 7-bit for up to 125 bytes,
    16-bit for up to 65535, 64-bit beyond. The result is a fresh ``bytes`` object that may
    be sent unchanged on any server-side connection that negotiated no extensions.
    """
    length = len(payload)
    if length < 126:
        return bytes((_FIN_BINARY, length)) + payload
    if length < 0x10000:
        return _HEADER_16.pack(_FIN_BINARY, 126, length) + payload
    if length > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"payload of {length} bytes is too long for one WebSocket frame")
    return _HEADER_64.pack(_FIN_BINARY, 127, length) + payload


# --- the client's side, read: frame boundaries, so that every frame can be counted -----------

_CONTROL_OPCODES = frozenset({0x8, 0x9, 0xA})
_DATA_OPCODES = frozenset({0x1, 0x2})
_CONTINUATION = 0x0
_END_OF_REQUEST = b"\r\n\r\n"


class FrameViolation(Exception):
    """The client broke RFC 6455 (``code`` 1002) or the server's frame policy (1008)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientFrameMeter:
    """Walks a client's byte stream, upgrade request first, then frame by frame, reading
    headers only, so that the transport can count every frame (data, continuation,
    control) before anything parses it: rate limits that count whole messages never see
    a stream of empty continuations or unsolicited pongs.

    It also finds what wsproto would refuse, RFC 6455 violations (unmasked frames, reserved
    bits or opcodes, fragmented or long control frames, a continuation of nothing), so the
    server can close with 1002 as the RFC asks, and a message split into more than
    ``max_fragments`` frames (1008). Pure: the caller counts and times.
    """

    __slots__ = ("_fragments", "_header", "_in_request", "_max_fragments", "_payload_left", "_tail", "message_open")

    def __init__(self, max_fragments: int) -> None:
        self._max_fragments = max_fragments
        self._in_request = True
        self._tail = b""  # the request's last bytes, for an end marker split across reads
        self._header = bytearray()
        self._payload_left = 0
        self._fragments = 0
        self.message_open = False  # a data message has started and not finished

    def advance(self, data: bytes, max_frames: int) -> tuple[int, int]:
        """Read ``data`` until ``max_frames`` frames have been completed or it ends.

        Returns (bytes consumed, frames completed); raises `FrameViolation`. A frame is
        complete once its last payload byte is consumed (its header, for an empty one).
        """
        view = memoryview(data)
        at = 0
        if self._in_request:
            found = (self._tail + bytes(view)).find(_END_OF_REQUEST)
            if found < 0:
                self._tail = (self._tail + bytes(view))[-3:]
                return len(view), 0
            at = found + len(_END_OF_REQUEST) - len(self._tail)
            self._in_request, self._tail = False, b""
        frames = 0
        while at < len(view) and frames < max_frames:
            if self._payload_left:
                taken = min(self._payload_left, len(view) - at)
                self._payload_left -= taken
                at += taken
                if not self._payload_left:
                    frames += 1
                continue
            needed = _header_length(self._header)
            taken = min(needed - len(self._header), len(view) - at)
            self._header += view[at : at + taken]
            at += taken
            if len(self._header) < needed or needed == 2 and _header_length(self._header) > 2:
                continue  # more header bytes to come (the length said how many)
            self._payload_left = self._begin(bytes(self._header))
            self._header.clear()
            if not self._payload_left:
                frames += 1
        return at, frames

    def _begin(self, header: bytes) -> int:
        first, second = header[0], header[1]
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise FrameViolation(1002, "reserved bits set (no extension was negotiated)")
        if not second & 0x80:
            raise FrameViolation(1002, "a client's frames must be masked")
        length = second & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
            if length > MAX_PAYLOAD_LENGTH:
                raise FrameViolation(1002, "payload length with its most significant bit set")
        if opcode in _CONTROL_OPCODES:
            if not fin or length > 125:
                raise FrameViolation(1002, "a control frame must be final and at most 125 bytes")
        elif opcode in _DATA_OPCODES:
            if self.message_open:
                raise FrameViolation(1002, "a new message before the last one finished")
            self.message_open, self._fragments = not fin, 1
        elif opcode == _CONTINUATION:
            if not self.message_open:
                raise FrameViolation(1002, "a continuation frame with no message to continue")
            self._fragments += 1
            if self._fragments > self._max_fragments:
                raise FrameViolation(1008, f"a message in more than {self._max_fragments} fragments")
            self.message_open = not fin
        else:
            raise FrameViolation(1002, f"reserved opcode {opcode:#x}")
        return length


def _header_length(header: bytearray) -> int:
    """How long a frame header is, from what of it has arrived (2 bytes tell it all)."""
    if len(header) < 2:
        return 2
    length = header[1] & 0x7F
    return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if header[1] & 0x80 else 0)
