"""Join tokens: JWTs minted and verified with HS256, expiry and channel patterns enforced."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airwave.protocol import CustomRole, ProtocolError, Reason
from airwave.protocol.tokens import mint_token, unverified_user_id, verify_token

SECRET = b"test secret: 32 bytes or more, as RFC 7518 asks"
HOST, AUDIENCE = CustomRole.ROLE_0, CustomRole.ROLE_1


def test_token_round_trip_carries_channel_user_roles_and_expiry() -> None:
    token = mint_token(SECRET, channel="radio", user_id="dj", roles=[HOST, AUDIENCE], now=1000, ttl=60)
    claims = verify_token(SECRET, token, now=1059)
    assert (claims.channel, claims.user_id, claims.roles) == ("radio", "dj", frozenset({HOST, AUDIENCE}))
    assert claims.expires_at == 1060 and claims.allows_channel("radio") and not claims.allows_channel("radio2")


def test_token_pattern_matches_channel_globs() -> None:
    token = mint_token(SECRET, channel="room-*", user_id="u", roles=[AUDIENCE], now=0, ttl=10, pattern=True)
    claims = verify_token(SECRET, token, now=1)
    assert claims.allows_channel("room-1") and claims.allows_channel("room-") and not claims.allows_channel("hall-1")


def test_token_for_a_channel_is_for_that_id_literally() -> None:
    """An id with glob characters in it opens that channel, not the ones it would match."""
    claims = verify_token(SECRET, mint_token(SECRET, channel="[ab]*", user_id="u", roles=[AUDIENCE], now=0, ttl=10), now=1)
    assert claims.allows_channel("[ab]*") and not claims.allows_channel("abc") and not claims.allows_channel("a")


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


@given(st.text(max_size=300) | st.text(max_size=300).map(lambda t: "eyJhbGciOiJIUzI1NiJ9." + t))
def test_token_garbage_is_token_invalid_never_a_crash(text: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(SECRET, text, now=0)
    assert excinfo.value.reason is Reason.TOKEN_INVALID


# --- any backend can mint them: a standard JWT library agrees both ways ---------------------

BACKEND_SECRET = b"a backend's secret, long enough for HS512 too (RFC 7518, section 3.2)"


def test_token_minted_by_pyjwt_as_a_backend_would_verifies() -> None:
    token = jwt.encode({"sub": "alice", "channel": "radio", "roles": [8192], "exp": 2000}, BACKEND_SECRET, algorithm="HS256")
    claims = verify_token(BACKEND_SECRET, token, now=1000)
    assert (claims.user_id, claims.channel, claims.roles, claims.expires_at) == ("alice", "radio", frozenset({AUDIENCE}), 2000)


def test_token_minted_here_reads_with_pyjwt() -> None:
    token = mint_token(BACKEND_SECRET, channel="room-*", user_id="dj", roles=[HOST, AUDIENCE], now=1000, ttl=60)
    payload = jwt.decode(token, BACKEND_SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"sub": "dj", "channel": "room-*", "roles": [4096, 8192], "iat": 1000, "exp": 1060}
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def _forge(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    part = lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part(header)}.{part(claims)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


CLAIMS = {"sub": "mallory", "channel": "*", "roles": [4096], "exp": 2000}


@pytest.mark.parametrize(
    "token",
    [
        _forge({"alg": "none", "typ": "JWT"}, CLAIMS, b""),  # unsigned
        _forge({"alg": "none"}, CLAIMS, b"x"),
        jwt.encode(CLAIMS, BACKEND_SECRET, algorithm="HS512"),  # the right secret, another algorithm
        jwt.encode(CLAIMS, BACKEND_SECRET, algorithm="HS384"),
        _forge({"alg": "RS256"}, CLAIMS, b"\x00" * 32),
        jwt.encode(CLAIMS, BACKEND_SECRET, algorithm="HS256", headers={"crit": ["exp"]}),
    ],
    ids=["alg-none", "alg-none-signed", "hs512", "hs384", "rs256", "crit"],
)
def test_token_with_any_algorithm_but_hs256_is_token_invalid(token: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(BACKEND_SECRET, token, now=1000)
    assert excinfo.value.reason is Reason.TOKEN_INVALID


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({**CLAIMS, "sub": ""}, "'sub'"),
        ({k: v for k, v in CLAIMS.items() if k != "channel"}, "'channel'"),
        ({**CLAIMS, "roles": []}, "'roles'"),
        ({**CLAIMS, "roles": [5]}, "no role"),
        ({**CLAIMS, "roles": [True]}, "'roles'"),
        ({k: v for k, v in CLAIMS.items() if k != "exp"}, "'exp'"),
        ({**CLAIMS, "exp": "2000"}, "'exp'"),
        ({**CLAIMS, "nbf": 1500}, "not valid yet"),
        ({**CLAIMS, "channel_pattern": "*"}, "exactly one"),
    ],
)
def test_token_with_bad_claims_says_which(claims: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(BACKEND_SECRET, jwt.encode(claims, BACKEND_SECRET, algorithm="HS256"), now=1000)
    assert excinfo.value.reason is Reason.TOKEN_INVALID and why in excinfo.value.message


def test_token_with_a_repeated_claim_is_token_invalid() -> None:
    """Two readers must never see two different users in one token."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(b'{"sub":"alice","sub":"admin","channel":"*","roles":[4096],"exp":2000}').rstrip(b"=").decode()
    signature = hmac.new(BACKEND_SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(ProtocolError) as excinfo:
        verify_token(BACKEND_SECRET, f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}", now=1000)
    assert excinfo.value.reason is Reason.TOKEN_INVALID


def test_unverified_user_id_is_the_sub_a_client_joins_as() -> None:
    assert unverified_user_id(mint_token(SECRET, channel="c", user_id="alice", roles=[HOST], now=0, ttl=10)) == "alice"
    for garbage in ("", "a.b", "x.e30.y"):  # e30 is {}: no sub
        with pytest.raises(ValueError):
            unverified_user_id(garbage)
