"""Join tokens: minted and verified with HMAC, expiry and channel patterns enforced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airwave.protocol import CustomRole, ProtocolError, Reason
from airwave.protocol.tokens import mint_token, verify_token

SECRET = b"test secret"
HOST, AUDIENCE = CustomRole.ROLE_0, CustomRole.ROLE_1


def test_token_round_trip_carries_channel_user_roles_and_expiry() -> None:
    token = mint_token(SECRET, channel="radio", user_id="dj", roles=[HOST, AUDIENCE], now=1000, ttl=60)
    claims = verify_token(SECRET, token, now=1059)
    assert (claims.channel, claims.user_id, claims.roles) == ("radio", "dj", frozenset({HOST, AUDIENCE}))
    assert claims.expires_at == 1060 and claims.allows_channel("radio") and not claims.allows_channel("radio2")


def test_token_pattern_matches_channel_globs() -> None:
    claims = verify_token(SECRET, mint_token(SECRET, channel="room-*", user_id="u", roles=[AUDIENCE], now=0, ttl=10), now=1)
    assert claims.allows_channel("room-1") and claims.allows_channel("room-") and not claims.allows_channel("hall-1")


def test_token_expired_is_token_expired() -> None:
    token = mint_token(SECRET, channel="c", user_id="u", roles=[AUDIENCE], now=0, ttl=10)
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(SECRET, token, now=10)
    assert excinfo.value.reason is Reason.TOKEN_EXPIRED


def test_token_signed_with_another_secret_is_token_invalid() -> None:
    token = mint_token(b"other", channel="c", user_id="u", roles=[HOST], now=0, ttl=10)
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(SECRET, token, now=1)
    assert excinfo.value.reason is Reason.TOKEN_INVALID


def test_token_with_edited_claims_is_token_invalid() -> None:
    """Raising your own roles by re-encoding the payload breaks the signature."""
    genuine = mint_token(SECRET, channel="c", user_id="u", roles=[AUDIENCE], now=0, ttl=10)
    forged_payload = mint_token(b"guess", channel="c", user_id="u", roles=[HOST], now=0, ttl=10).split(".")[1]
    head, _, signature = genuine.split(".")
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(SECRET, f"{head}.{forged_payload}.{signature}", now=1)
    assert excinfo.value.reason is Reason.TOKEN_INVALID


@given(st.text(max_size=300) | st.text(max_size=300).map(lambda t: "aw1." + t))
def test_token_garbage_is_token_invalid_never_a_crash(text: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(SECRET, text, now=0)
    assert excinfo.value.reason is Reason.TOKEN_INVALID
