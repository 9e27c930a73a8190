"""Protocol-level limits, checked before any state changes."""

from __future__ import annotations

PROTOCOL_VERSION = 1

MAX_FRAME_BYTES = 64 * 1024  # any client message; larger ones are refused with too_large
# A server message: a host's join reply lists every member (~150 bytes each).
MAX_SERVER_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_CONTROL_BYTES = 16 * 1024  # one msgpack control message
MAX_ID_CHARS = 128  # channel ids and user ids
MAX_NAME_CHARS = 64  # display names, message types
MAX_PASSWORD_CHARS = 128
MAX_PROPERTY_BYTES = 4096  # custom_property, title
MAX_MESSAGE_CONTENT_BYTES = 4096  # send_message content (vendor: 1..4096)
MAX_OPUS_PAYLOAD = 1275  # the largest single Opus frame (RFC 6716)
MAX_REQUEST_ID = 2**31 - 1
MAX_TOKEN_CHARS = 2048

DEFAULT_CAPACITY = 10_000
MAX_CAPACITY = 100_000

# Heartbeats (decision 6): Airwave's defaults, and the range a join may choose.
DEFAULT_HEARTBEAT_TIME = 3
DEFAULT_HEARTBEAT_TIMEOUT = 9
HEARTBEAT_TIME_RANGE = (1, 60)
HEARTBEAT_TIMEOUT_RANGE = (3, 300)
