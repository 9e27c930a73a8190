"""Reason codes: one number for every failure and every leave.

The numbers below 200 are the vendor SDK's own (JCMediaChannelReason), so a client written
against the vendor's documentation maps one to one; Airwave's additions start at 200.
Numbers are stable and never reused.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    NONE = 0
    NOT_LOGIN = 1
    TIMEOUT = 2
    NETWORK = 3
    CALL_FUNCTION_ERROR = 4
    ALREADY_JOINED = 5
    KICKED = 6
    OFFLINE = 7
    QUIT = 8
    OVER = 9
    FULL = 10
    INVALID_PASSWORD = 11
    INTERNAL_ERROR = 12
    SERVER_ERROR = 13
    INVALID_PARAM = 14
    OTHER = 100
    NOT_FOUND = 200
    NO_PERMISSION = 201
    TOKEN_INVALID = 202
    TOKEN_EXPIRED = 203
    RATE_LIMITED = 204
    TOO_LARGE = 205
    SERVER_SHUTDOWN = 206
    SERVER_RESTART = 207
    PROTOCOL_ERROR = 208
    SLOW_CONSUMER = 209
    DUPLICATE_SESSION = 210

    @property
    def reason_name(self) -> str:
        """The lower-case name printed next to the number in replay output and errors."""
        return self.name.lower()


class ProtocolError(Exception):
    """Raised by the sans-IO layer for input it refuses; the shell turns it into an error reply.

    ``ref`` is the request id when one could be read from the bad frame, so the client can
    match the error to its call. ``message`` is at most MAX_MESSAGE_CHARS characters (longer
    ones are cut), so it always fits the 1024-byte ``message`` of a Reply or an Error even
    when it quotes the peer's own (possibly multi-byte) field names.
    """

    MAX_MESSAGE_CHARS = 200  # 200 characters are at most 800 bytes of UTF-8

    def __init__(self, reason: Reason, message: str, ref: int | None = None) -> None:
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = message[: self.MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(f"{reason.reason_name} [{int(reason)}]: {message}")
        self.reason = reason
        self.message = message
        self.ref = ref
