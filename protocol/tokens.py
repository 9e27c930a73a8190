"""Join tokens: HMAC-signed claims that say who may join which channel in which roles.

Format (ASCII, URL-safe): ``aw1.<payload>.<signature>``, where ``payload`` is base64url
(no padding) of a msgpack map and ``signature`` is base64url of HMAC-SHA256(secret, "aw1." +
payload). Claims: ``c`` channel id or glob pattern (``*`` and ``?``), ``u`` user id, ``r``
list of role bit flags the holder may take, ``e`` expiry (UTC epoch seconds), ``i`` issued at.
Pure functions: the caller passes the secret and the clock.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
from typing import Any

import attrs
import msgpack

from .limits import MAX_TOKEN_CHARS
from .model import CustomRole
from .reasons import ProtocolError, Reason

PREFIX = "aw1."
DEV_SECRET = b"airwave-dev-secret: loopback only, never in production"


@attrs.frozen
class TokenClaims:
    channel: str  # an id or a glob pattern
    user_id: str
    roles: frozenset[CustomRole]
    expires_at: float
    issued_at: float

    def allows_channel(self, channel_id: str) -> bool:
        return fnmatch.fnmatchcase(channel_id, self.channel)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed_part: str) -> str:
    return _b64(hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest())


def mint_token(
    secret: bytes, *, channel: str, user_id: str, roles: list[CustomRole] | frozenset[CustomRole], now: float, ttl: float
) -> str:
    if not roles:
        raise ValueError("a token grants at least one role")
    claims = {"c": channel, "u": user_id, "r": sorted(int(r) for r in roles), "e": int(now + ttl), "i": int(now)}
    payload = _b64(msgpack.packb(claims, use_bin_type=True))
    return f"{PREFIX}{payload}.{_sign(secret, PREFIX + payload)}"


def verify_token(secret: bytes, token: str, *, now: float) -> TokenClaims:
    """The token's claims, or ProtocolError token_invalid [202] / token_expired [203]."""
    if type(token) is not str or len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.startswith(PREFIX):
        raise ProtocolError(Reason.TOKEN_INVALID, "not an Airwave token")
    body = token[len(PREFIX) :]
    payload, _, signature = body.partition(".")
    if not hmac.compare_digest(signature.encode("ascii", "replace"), _sign(secret, PREFIX + payload).encode("ascii")):
        raise ProtocolError(Reason.TOKEN_INVALID, "token signature does not verify")
    try:
        claims: Any = msgpack.unpackb(_unb64(payload), raw=False)
        result = TokenClaims(
            channel=claims["c"],
            user_id=claims["u"],
            roles=frozenset(CustomRole(r) for r in claims["r"]),
            expires_at=float(claims["e"]),
            issued_at=float(claims["i"]),
        )
        if not (type(result.channel) is str and type(result.user_id) is str and result.roles):
            raise ValueError("bad claim types")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(Reason.TOKEN_INVALID, f"token claims unreadable: {exc}") from None
    if now >= result.expires_at:
        raise ProtocolError(Reason.TOKEN_EXPIRED, "token expired")
    return result
