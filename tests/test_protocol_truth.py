"""The server does what docs/protocol.md says, over real sockets (issue 12, section 1): each
test here is a case where a client written from the document alone disagreed with the server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer, serve
from airwave.protocol import CustomRole, Join, Leave, ParticipantLeft, Reason, Resume, channel_info_from_wire
from airwave.protocol.tokens import mint_token
from airwave.wire import Wire, open_wire
from conftest import fast_settings

SECRET = b"a secret only the tests know"
HOST, AUDIENCE = CustomRole.ROLE_0, CustomRole.ROLE_1


def drain(wire: Wire) -> list[object]:
    """Every push received so far, without waiting."""
    pushes = []
    while True:
        try:
            pushes.append(wire.pushes.receive_nowait())
        except trio.WouldBlock:
            return pushes


@pytest.fixture
async def secured(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    settings = fast_settings(data_dir)
    running: RunningServer = await nursery.start(serve, attrs.evolve(settings, session=attrs.evolve(settings.session, secret=SECRET)))
    yield running
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()


@pytest.mark.parametrize("granted", [[HOST], [AUDIENCE]], ids=["host-token", "audience-token"])
async def test_role_0_is_always_allowed_in_token_mode(secured: RunningServer, granted: list[CustomRole]) -> None:
    """§2.7 / §9.2: role 0 (no role) is always allowed, whatever roles the token grants."""
    credential = mint_token(SECRET, channel="vip", user_id="alice", roles=granted, now=time.time(), ttl=60)
    with trio.fail_after(10):
        async with open_wire(secured.url) as wire:
            reply = await wire.request(Join, channel="vip", user_id="alice", role=CustomRole.NONE, token=credential)
            assert reply.ok, reply
            (me,) = [p for p in reply.result["participants"] if p["user_id"] == "alice"]
            assert me["role"] == 0


@pytest.mark.parametrize("code", [1000, 1001], ids=["normal-closure", "going-away"])
async def test_clean_close_without_leave_is_held_for_resume(server: RunningServer, code: int) -> None:
    """§2.5 / §2.8: a connection that ends while joined without `leave` is held, whatever
    ended it; a browser tab that reloads closes cleanly and must be able to resume."""
    with trio.fail_after(10):
        async with open_wire(server.url) as host:
            assert (await host.request(Join, channel="tab", user_id="host", role=HOST)).ok
            async with open_wire(server.url) as tab:
                reply = await tab.request(Join, channel="tab", user_id="tab", role=AUDIENCE)
                token = channel_info_from_wire(reply.result).session_token
                await tab.ws.aclose(code=code)
            async with open_wire(server.url) as reloaded:
                while not (resumed := await reloaded.request(Resume, session_token=token)).ok:
                    assert resumed.reason is Reason.NOT_FOUND  # the server has not seen the close yet
                    await trio.sleep(0.01)
                assert [p.user_id for p in channel_info_from_wire(resumed.result).participants] == ["host", "tab"]
                assert not [m for m in drain(host) if isinstance(m, ParticipantLeft)], "the others see nothing"
                assert (await reloaded.request(Leave)).ok
    assert [type(e.event).__name__ for e in replay_events(server.event_log.directory)] == [
        "ChannelCreated", "MemberJoined", "MemberJoined", "MemberLeft"]


async def test_clean_close_not_resumed_leaves_with_network(server: RunningServer) -> None:
    """Past the grace period a closed connection leaves with network [3], as every drop does (§7)."""
    with trio.fail_after(10):
        async with open_wire(server.url) as host:
            assert (await host.request(Join, channel="tab", user_id="host", role=HOST)).ok
            async with open_wire(server.url) as tab:
                assert (await tab.request(Join, channel="tab", user_id="tab")).ok
            while not isinstance(message := await host.pushes.receive(), ParticipantLeft):
                pass
            assert (message.user_id, message.reason) == ("tab", Reason.NETWORK)
