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

__all__ = ["MAX_PAYLOAD_LENGTH", "server_binary_frame"]

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
