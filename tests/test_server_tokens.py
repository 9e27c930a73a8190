"""Credentials over real sockets: a server with a secret admits only what its tokens grant."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from airwave.actors.server import RunningServer, serve
from airwave.protocol import CustomRole, Join, Left, Reason, RefreshToken, SetRole
from airwave.protocol.tokens import mint_token
from airwave.wire import open_wire
from conftest import fast_settings
from helpers import settle

SECRET = b"a secret only the tests know"
HOST, AUDIENCE = CustomRole.ROLE_0, CustomRole.ROLE_1


def token(
    user: str, roles: list[CustomRole], *, channel: str = "vip", ttl: float = 60, secret: bytes = SECRET, pattern: bool = False
) -> str:
    return mint_token(secret, channel=channel, user_id=user, roles=roles, now=time.time(), ttl=ttl, pattern=pattern)


@pytest.fixture
async def secured(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir, secret=SECRET))
    yield running
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()


async def test_token_join_refusals_carry_their_reason_codes(secured: RunningServer) -> None:
    cases = [
        (None, "alice", AUDIENCE, Reason.TOKEN_INVALID),  # no token at all
        (token("alice", [AUDIENCE], secret=b"forged"), "alice", AUDIENCE, Reason.TOKEN_INVALID),
        (token("alice", [AUDIENCE], ttl=-1), "alice", AUDIENCE, Reason.TOKEN_EXPIRED),
        (token("alice", [AUDIENCE], channel="other"), "alice", AUDIENCE, Reason.TOKEN_INVALID),
        (token("mallory", [AUDIENCE]), "alice", AUDIENCE, Reason.TOKEN_INVALID),  # someone else's
        (token("alice", [AUDIENCE]), "alice", HOST, Reason.NO_PERMISSION),  # a role not granted
    ]
    with trio.fail_after(10):
        async with open_wire(secured.url) as wire:
            for credential, user, role, reason in cases:
                reply = await wire.request(Join, channel="vip", user_id=user, role=role, token=credential)
                assert reply.reason is reason, (credential, user, role, reply)
            reply = await wire.request(Join, channel="vip", user_id="alice", role=AUDIENCE, token=token("alice", [AUDIENCE]))
            assert reply.ok


async def test_token_bounds_role_changes_even_by_a_host(secured: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(secured.url) as host, open_wire(secured.url) as fan, open_wire(secured.url) as cohost:
            assert (await host.request(Join, channel="vip", user_id="host", role=HOST, token=token("host", [HOST]))).ok
            assert (await fan.request(Join, channel="vip", user_id="fan", role=AUDIENCE, token=token("fan", [AUDIENCE]))).ok
            cohost_token = token("co", [AUDIENCE, HOST], channel="v*", pattern=True)
            assert (await cohost.request(Join, channel="vip", user_id="co", role=AUDIENCE, token=cohost_token)).ok

            assert (await host.request(SetRole, role=HOST, user_id="fan")).reason is Reason.NO_PERMISSION
            assert (await cohost.request(SetRole, role=HOST)).ok  # raising to a role the token grants


async def test_token_expiry_while_joined_removes_the_member_unless_refreshed(secured: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(secured.url) as keeper, open_wire(secured.url) as lapser:
            assert (await keeper.request(Join, channel="vip", user_id="keeper", token=token("keeper", [AUDIENCE], ttl=1.5))).ok
            assert (await lapser.request(Join, channel="vip", user_id="lapser", token=token("lapser", [AUDIENCE], ttl=1.5))).ok
            assert (await keeper.request(RefreshToken, token=token("keeper", [AUDIENCE], ttl=60))).ok
            forged = await keeper.request(RefreshToken, token=token("keeper", [AUDIENCE], secret=b"nope"))
            assert forged.reason is Reason.TOKEN_INVALID

            with trio.fail_after(3):
                left = await lapser.pushes.receive()
                while not isinstance(left, Left):
                    left = await lapser.pushes.receive()
            assert left.reason is Reason.TOKEN_EXPIRED
            # Had the refresh not taken, keeper's first token (minted first, the same ttl)
            # would have expired in the same heartbeat sweep as lapser's, or an earlier one,
            # and its left would have been queued to keeper before the reply to this ping.
            assert not [p for p in await settle(keeper) if isinstance(p, Left)]
            assert set(secured.registry.find("vip").channel.members) == {"keeper"}
