"""Session tokens: what a client presents to resume a dropped session (decision 7).

Opaque to clients: ``<nonce>.<channel key>``, 24 base64url characters of randomness, a dot,
then 16 naming the channel: a hash of its id, not the id itself, since an id may have 128
characters and a token at most 64 (`messages.Resume`). The channel key lets a cluster node
that never saw the session find the channel (`actors/cluster/link.py`, ``airwave.where.<key>``);
the channel's owner then recognises the member by the token's *resume key* (a hash of the
whole token) that the node holding the session announced in its roll call. So the token
itself never crosses NATS, and neither it nor its hash reaches the event log.

Pure: the caller passes the randomness.
"""

from __future__ import annotations

import base64
import hashlib
import re

NONCE_BYTES = 18  # 24 base64url characters
_CHANNEL_KEY = re.compile(r"[A-Za-z0-9_-]{16}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def channel_key(channel_id: str) -> str:
    """16 characters naming ``channel_id`` (a 96-bit hash: two channels sharing one is not a
    practical worry, and a resume is checked against its resume key anyway)."""
    return _b64(hashlib.blake2b(channel_id.encode(), digest_size=12).digest())


def new_session_token(channel_id: str, nonce: bytes) -> str:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a session token's nonce has {NONCE_BYTES} bytes")
    return f"{_b64(nonce)}.{channel_key(channel_id)}"


def channel_key_of(token: str) -> str | None:
    """The channel key a session token carries; None for a token not made here."""
    _, dot, key = token.rpartition(".")
    return key if dot and _CHANNEL_KEY.fullmatch(key) else None


def resume_key(token: str) -> str:
    """What a node announces for a session instead of its token: recognises it, does not
    reveal it."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]
