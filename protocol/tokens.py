"""Join tokens: JSON Web Tokens (RFC 7519) signed with HS256 and the server's secret, so any
backend with a JWT library can mint them (docs/protocol.md 2.7 shows two lines).

Claims: ``sub`` the user id, either ``channel`` (one channel id, literally) or
``channel_pattern`` (a glob over channel ids: ``*``, ``?``, ``[...]``), ``roles`` the CustomRole bit flags the holder may take, ``exp`` expiry and ``iat`` issue time
(UTC epoch seconds), and ``nbf`` if the minter wants one. The header must say ``alg: HS256``:
``none`` and every other algorithm are refused, so a token's own header can never choose how
it is checked.

Written here rather than with PyJWT, which the tests use to mint and read tokens as a backend
would: importing PyJWT loads socket, ssl and http.client (its key-set client), and the protocol
layer loads no I/O. Pure functions: the caller passes the secret and the clock.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

import attrs

from .limits import MAX_TOKEN_CHARS
from .model import CustomRole
from .reasons import ProtocolError, Reason

ALGORITHM = "HS256"
DEV_SECRET = b"airwave-dev-secret: loopback only, never in production"
_HEADER = {"alg": ALGORITHM, "typ": "JWT"}


@attrs.frozen
class TokenClaims:
    channel: str  # a channel id, or a glob pattern if ``pattern``
    user_id: str
    roles: frozenset[CustomRole]
    expires_at: float
    issued_at: float | None = None
    # Explicit, so that a token for a channel whose id holds glob characters ("[ab]*")
    # opens that channel only, never "abc".
    pattern: bool = False

    def allows_channel(self, channel_id: str) -> bool:
        return fnmatch.fnmatchcase(channel_id, self.channel) if self.pattern else channel_id == self.channel


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if "=" in text:
        raise ValueError("base64url without padding expected")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A repeated key is refused: two readers could otherwise see two different claims."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key is repeated")
    return result


def _read_json(part: str) -> dict[str, Any]:
    value = json.loads(_unb64(part), object_pairs_hook=_unique_keys)
    if type(value) is not dict:
        raise ValueError("not a JSON object")
    return value


def _sign(secret: bytes, signing_input: str) -> bytes:
    return hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()


def mint_token(
    secret: bytes,
    *,
    channel: str,
    user_id: str,
    roles: Iterable[CustomRole],
    now: float,
    ttl: float,
    pattern: bool = False,
) -> str:
    """A token for ``channel``, or with ``pattern`` for every channel id the glob matches."""
    granted = sorted({int(role) for role in roles})
    if not granted:
        raise ValueError("a token grants at least one role")
    claims = {"sub": user_id, "channel_pattern" if pattern else "channel": channel, "roles": granted, "iat": int(now), "exp": int(now + ttl)}
    signing_input = f"{_b64(_json(_HEADER))}.{_b64(_json(claims))}"
    return f"{signing_input}.{_b64(_sign(secret, signing_input))}"


def _invalid(why: str) -> ProtocolError:
    return ProtocolError(Reason.TOKEN_INVALID, why)


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if type(value) not in (int, float):
        raise _invalid(f"token claim {name!r} must be a number (epoch seconds)")
    return float(value)


def _claims(payload: dict[str, Any]) -> TokenClaims:
    user_id, roles = payload.get("sub"), payload.get("roles")
    if type(user_id) is not str or not user_id:
        raise _invalid("token claim 'sub' (the user id) must be a non-empty string")
    if ("channel" in payload) == ("channel_pattern" in payload):
        raise _invalid("a token names its channels with exactly one of the claims 'channel' and 'channel_pattern'")
    pattern = "channel_pattern" in payload
    channel = payload["channel_pattern" if pattern else "channel"]
    if type(channel) is not str or not channel:
        raise _invalid("token claim 'channel' or 'channel_pattern' must be a non-empty string")
    if type(roles) is not list or not roles or any(type(role) is not int for role in roles):
        raise _invalid("token claim 'roles' must be a non-empty list of role numbers")
    try:
        granted = frozenset(CustomRole(role) for role in roles)
    except ValueError:
        valid = ", ".join(str(int(role)) for role in CustomRole if role is not CustomRole.NONE)
        raise _invalid(f"token claim 'roles' holds a number that is no role (roles are {valid})") from None
    expires_at = _number(payload, "exp", required=True)
    assert expires_at is not None
    return TokenClaims(channel, user_id, granted, expires_at, _number(payload, "iat", required=False), pattern)


def mint_admin_token(secret: bytes, *, user_id: str, now: float, ttl: float) -> str:
    """A token for the admin requests (``admin: true``): it opens no channel and grants no role."""
    claims = {"sub": user_id, "admin": True, "iat": int(now), "exp": int(now + ttl)}
    signing_input = f"{_b64(_json(_HEADER))}.{_b64(_json(claims))}"
    return f"{signing_input}.{_b64(_sign(secret, signing_input))}"


def verify_admin_token(secret: bytes, token: str, *, now: float) -> str:
    """The operator an admin token names (its ``sub``), or ProtocolError: token_invalid /
    token_expired as for a join token, no_permission [201] for a valid token without the
    ``admin: true`` claim (a member's join token)."""
    payload = _signed_payload(secret, token)
    if payload.get("admin") is not True:
        raise ProtocolError(Reason.NO_PERMISSION, "this token has no admin claim (mint one with airwave token --admin)")
    user_id = payload.get("sub")
    if type(user_id) is not str or not user_id:
        raise _invalid("token claim 'sub' (the operator) must be a non-empty string")
    expires_at = _number(payload, "exp", required=True)
    assert expires_at is not None
    _check_times(payload, expires_at, now)
    return user_id


def verify_token(secret: bytes, token: str, *, now: float) -> TokenClaims:
    """The token's claims, or ProtocolError token_invalid [202] / token_expired [203]."""
    payload = _signed_payload(secret, token)
    claims = _claims(payload)
    _check_times(payload, claims.expires_at, now)
    return claims


def _signed_payload(secret: bytes, token: str) -> dict[str, Any]:
    """The claims of a well-formed HS256 token whose signature verifies (times not checked)."""
    if type(token) is not str or len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
        raise _invalid("not a JSON Web Token (header.payload.signature)")
    header_part, payload_part, signature_part = token.split(".")
    try:
        header = _read_json(header_part)
        signature = _unb64(signature_part)
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise _invalid("token header or signature unreadable") from None
    if header.get("alg") != ALGORITHM:
        raise _invalid(f"token algorithm must be {ALGORITHM}, not {str(header.get('alg'))[:20]!r}")
    if "crit" in header or header.get("typ", "JWT") != "JWT":
        raise _invalid("token header asks for what this server does not do (crit, or a typ other than JWT)")
    if not hmac.compare_digest(signature, _sign(secret, f"{header_part}.{payload_part}")):
        raise _invalid("token signature does not verify")
    try:
        return _read_json(payload_part)
    except (ValueError, RecursionError):
        raise _invalid("token claims unreadable") from None


def _check_times(payload: dict[str, Any], expires_at: float, now: float) -> None:
    not_before = _number(payload, "nbf", required=False)
    if not_before is not None and now < not_before:
        raise _invalid("token not valid yet (nbf)")
    if now >= expires_at:
        raise ProtocolError(Reason.TOKEN_EXPIRED, "token expired")


def unverified_user_id(token: str) -> str:
    """The ``sub`` a token names, read without its signature: what a client joins as. The
    server verifies the token; a client only needs to know who it says it is."""
    try:
        user_id = _read_json(token.split(".")[1]).get("sub")
    except (ValueError, RecursionError, IndexError):
        raise ValueError("not a JSON Web Token (header.payload.signature)") from None
    if type(user_id) is not str or not user_id:
        raise ValueError("the token names no user (its 'sub' claim)")
    return user_id
