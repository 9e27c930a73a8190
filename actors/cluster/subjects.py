"""NATS names for Airwave's things: the event stream, each channel's subjects, the lease bucket.

Pure (no trio, no nats), so the names are one table that tests and operators can read.
A channel id may hold any character up to 128 of them (`protocol/limits.py`), NATS subject
tokens may not hold ``.``, ``*``, ``>`` or white space, and KV keys allow fewer still, so
each id is escaped into one token: ``[A-Za-z0-9-]`` stand for themselves and every other
UTF-8 byte becomes ``_XX`` (upper-case hex; ``_`` itself is ``_5F``). The escape is
injective, so two channels never share a subject, and reversible, so replay names them.
"""

from __future__ import annotations

import re

EVENT_STREAM = "AIRWAVE_EVENTS"
EVENT_SUBJECT_PREFIX = "airwave.events."
EVENT_SUBJECTS = EVENT_SUBJECT_PREFIX + ">"
MEDIA_SUBJECT_PREFIX = "airwave.media."
COMMAND_SUBJECT_PREFIX = "airwave.cmd."  # requests to a channel's owner (forwarded commands, queries)
LIVE_SUBJECT_PREFIX = "airwave.live."  # core NATS: the records the owner just appended, for followers
TEXT_SUBJECT_PREFIX = "airwave.text."  # core NATS: text messages for members on other nodes
ROLL_SUBJECT_PREFIX = "airwave.roll."  # core NATS: each node's members of a channel (`actors/rollcall.py`)
WHERE_SUBJECT_PREFIX = "airwave.where."  # requests: which channel has this channel key (a resume elsewhere)
LEASE_BUCKET = "airwave_leases"

_PLAIN = re.compile(rb"[A-Za-z0-9-]")
_TOKEN = re.compile(r"(?:[A-Za-z0-9-]|_[0-9A-F]{2})+")


def channel_token(channel_id: str) -> str:
    """The channel id as one NATS subject token (and KV key)."""
    if not channel_id:
        raise ValueError("a channel id is never empty")
    return "".join(chr(b) if _PLAIN.fullmatch(bytes([b])) else f"_{b:02X}" for b in channel_id.encode())


def channel_from_token(token: str) -> str:
    """The channel id a token stands for; ``ValueError`` for a token no id escapes to."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not an escaped channel id: {token!r}")
    out = bytearray()
    index = 0
    while index < len(token):
        if token[index] == "_":
            out.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            out.append(ord(token[index]))
            index += 1
    channel_id = out.decode()  # UnicodeDecodeError is a ValueError
    if channel_token(channel_id) != token:  # e.g. "_41" for "A": not what the escape writes
        raise ValueError(f"not an escaped channel id: {token!r}")
    return channel_id


def event_subject(channel_id: str) -> str:
    return EVENT_SUBJECT_PREFIX + channel_token(channel_id)


def channel_of_event_subject(subject: str) -> str:
    if not subject.startswith(EVENT_SUBJECT_PREFIX):
        raise ValueError(f"not an event subject: {subject!r}")
    return channel_from_token(subject[len(EVENT_SUBJECT_PREFIX) :])


def media_subject(channel_id: str) -> str:
    return MEDIA_SUBJECT_PREFIX + channel_token(channel_id)


def command_subject(channel_id: str) -> str:
    return COMMAND_SUBJECT_PREFIX + channel_token(channel_id)


def live_subject(channel_id: str) -> str:
    return LIVE_SUBJECT_PREFIX + channel_token(channel_id)


def text_subject(channel_id: str) -> str:
    return TEXT_SUBJECT_PREFIX + channel_token(channel_id)


def roll_subject(channel_id: str) -> str:
    return ROLL_SUBJECT_PREFIX + channel_token(channel_id)


def where_subject(channel_key: str) -> str:
    """``channel_key`` (`protocol/sessiontoken.py`) is base64url: a valid subject token."""
    return WHERE_SUBJECT_PREFIX + channel_key
