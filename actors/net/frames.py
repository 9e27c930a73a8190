"""Server frames built once: the same bytes go to every recipient.

Server-to-client WebSocket frames are unmasked and Airwave negotiates no extensions, so one
encoded message is one byte string for every connection (design notes, section 3).
"""

from __future__ import annotations

from airwave.protocol import ServerMessage, encode
from airwave.protocol.wsframe import server_binary_frame

# An unmasked server WebSocket ping with no payload: the heartbeat's, built once.
PING_FRAME = b"\x89\x00"


def frame_of(message: ServerMessage) -> bytes:
    """Encodes once; the same bytes then go to every recipient."""
    return server_binary_frame(encode(message))
