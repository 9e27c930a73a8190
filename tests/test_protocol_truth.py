"""The server does what docs/protocol.md says, over real sockets (issue 12, section 1): each
test here is a case where a client written from the document alone disagreed with the server."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import jwt
import msgpack
import pytest
import trio
import trio_websocket

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer, serve
from airwave.protocol import (
    CustomRole,
    Error,
    Join,
    Leave,
    ParticipantLeft,
    Ping,
    Query,
    Reason,
    Resume,
    channel_info_from_wire,
)
from airwave.protocol.tokens import mint_token
from airwave.wire import Wire, open_wire
from conftest import fast_settings
from helpers import wait_until

SECRET = b"a secret only the tests know, 32 bytes or more"
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
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir, secret=SECRET))
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
            await wait_until(lambda: token in server.registry._suspended, "the server to hold the closed session")
            async with open_wire(server.url) as reloaded:
                resumed = await reloaded.request(Resume, session_token=token)
                assert resumed.ok, resumed
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


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (msgpack.packb({"type": "ping", "id": 5}) + b"\x01", Reason.PROTOCOL_ERROR),  # trailing bytes
        (b"\x83\xa4type\xa4join\xa2id\x05\xa7channel\xa2\xff\xfe", Reason.PROTOCOL_ERROR),  # invalid UTF-8
        (msgpack.packb({"type": "ping", "id": "5"}), Reason.INVALID_PARAM),  # an id that is no integer
        (msgpack.packb({"type": "ping"}), Reason.INVALID_PARAM),  # no id
    ],
    ids=["trailing-bytes", "invalid-utf8", "id-not-int", "no-id"],
)
async def test_a_frame_without_a_usable_id_gets_an_error_push(server: RunningServer, frame: bytes, reason: Reason) -> None:
    """§2.1: the reason of an `error` push for a frame whose id cannot be used; the
    connection stays open and serves the next request."""
    with trio.fail_after(10):
        async with open_wire(server.url) as wire:
            await wire.send_bytes(frame)
            error = await wire.pushes.receive()
            assert isinstance(error, Error) and (error.reason, error.ref) == (reason, None), error
            assert (await wire.request(Ping)).ok


def test_every_reason_code_is_in_the_documents_table() -> None:
    """§7 is the one place that says what each reason means: its table lists every Reason
    the code has, with the number and name the wire carries, and nothing else."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = text.split("## 7. Reason codes", 1)[1].split("\n## ", 1)[0]
    rows = {int(number): name for number, name in re.findall(r"^\| (\d+) \| (\w+) \|", section, re.MULTILINE)}
    assert rows == {reason.value: reason.reason_name for reason in Reason}


def test_every_reason_the_server_sends_is_documented_where_it_is_sent() -> None:
    """Each reason the server names in its code appears in the document outside the §7
    table too, as `name [number]`, where a reader of the message that carries it looks."""
    root = Path(__file__).resolve().parent.parent
    used = {Reason[name] for path in (root / "actors").rglob("*.py") for name in re.findall(r"Reason\.([A-Z_]+)", path.read_text())}
    text = (root / "docs" / "protocol.md").read_text()
    outside_table = text.split("## 7. Reason codes", 1)[0] + text.split("## 8. Roles", 1)[1]
    missing = sorted(r.reason_name for r in used if r is not Reason.NONE and f"{r.reason_name} [{r.value}]" not in outside_table)
    assert missing == []


async def test_a_token_minted_by_a_standard_jwt_library_joins(secured: RunningServer) -> None:
    """§2.7 / issue 12 §3: any backend mints tokens with its JWT library; `alg: none` never passes."""
    claims = {"sub": "alice", "channel": "vip", "roles": [int(AUDIENCE)], "exp": int(time.time()) + 60}
    backend = jwt.encode(claims, SECRET, algorithm="HS256")
    unsigned = jwt.encode({**claims, "roles": [int(HOST)]}, None, algorithm="none")
    with trio.fail_after(10):
        async with open_wire(secured.url) as mallory, open_wire(secured.url) as alice:
            refused = await mallory.request(Join, channel="vip", user_id="alice", role=HOST, token=unsigned)
            assert refused.reason is Reason.TOKEN_INVALID
            assert (await alice.request(Join, channel="vip", user_id="alice", token=backend)).ok


async def test_token_mode_answers_query_only_to_members_for_their_channels(secured: RunningServer) -> None:
    """Issue 12 §4: without a valid token a connection may say hello and join or resume,
    nothing else; a member's token bounds which channels it may query."""
    credential = mint_token(SECRET, channel="vip", user_id="alice", roles=[AUDIENCE], now=time.time(), ttl=60)
    with trio.fail_after(10):
        async with open_wire(secured.url) as stranger, open_wire(secured.url) as alice:
            assert (await alice.request(Join, channel="vip", user_id="alice", token=credential)).ok
            anonymous = await stranger.request(Query, channel="vip")
            assert anonymous.reason is Reason.TOKEN_INVALID and anonymous.result is None
            assert (await alice.request(Query, channel="vip")).result["members"] == ["alice"]
            assert (await alice.request(Query, channel="elsewhere")).reason is Reason.NO_PERMISSION
            assert (await alice.request(Leave)).ok
            assert (await alice.request(Query, channel="vip")).reason is Reason.TOKEN_INVALID


async def test_a_browser_page_from_an_origin_not_allowed_cannot_connect(nursery: trio.Nursery, data_dir: Path) -> None:
    """Issue 12 §4: a web page the user visits cannot reach a loopback server; the origins
    the operator allows can, and clients that send no Origin (SDK, CLI) are unaffected."""
    settings = fast_settings(data_dir)
    allowed = "http://127.0.0.1:8000"
    settings = attrs.evolve(settings, transport=attrs.evolve(settings.transport, allowed_origins={allowed}))
    running: RunningServer = await nursery.start(serve, settings)
    with trio.fail_after(10):
        for forged in ([(b"Origin", b"http://evil.example")], [(b"Origin", b"null")], [(b"Origin", allowed.encode())] * 2):
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with trio_websocket.open_websocket_url(running.url, extra_headers=forged):
                    pass
            assert rejected.value.status_code == 403 and b"not allowed" in (rejected.value.body or b"")
        async with trio_websocket.open_websocket_url(running.url, extra_headers=[(b"Origin", b"HTTP://127.0.0.1:8000/")]):
            pass  # the allowed origin, however the browser spells it
        async with open_wire(running.url) as sdk:  # no Origin at all
            assert (await sdk.request(Ping)).ok
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()


async def test_a_token_for_a_channel_id_with_glob_characters_opens_only_that_channel(secured: RunningServer) -> None:
    """Issue 13 §4: patterns are explicit (`channel_pattern`); `channel` is an id, literally."""
    literal = mint_token(SECRET, channel="[ab]*", user_id="alice", roles=[AUDIENCE], now=time.time(), ttl=60)
    pattern = mint_token(SECRET, channel="a*", user_id="alice", roles=[AUDIENCE], now=time.time(), ttl=60, pattern=True)
    with trio.fail_after(10):
        async with open_wire(secured.url) as wire:
            assert (await wire.request(Join, channel="abc", user_id="alice", token=literal)).reason is Reason.TOKEN_INVALID
            assert (await wire.request(Join, channel="abc", user_id="alice", token=pattern)).ok
            assert (await wire.request(Leave)).ok
            assert (await wire.request(Join, channel="[ab]*", user_id="alice", token=literal)).ok


# --- section 2: a token is an identity ---------------------------------------------------------


async def test_sdk_with_a_token_joins_as_the_user_it_was_minted_for(secured: RunningServer) -> None:
    from airwave.client import Client, MediaChannel, MediaDevice

    credential = mint_token(SECRET, channel="vip", user_id="alice", roles=[HOST], now=time.time(), ttl=60)
    async with Client.connect(secured.url, token=credential) as client, Client.connect(
        secured.url, user_id="alice", token=credential  # the same id, said twice, is no contradiction
    ) as twin:
        assert client.user_id == twin.user_id == "alice"
        channel = MediaChannel.create(client, MediaDevice.create())
        channel.set_custom_role(HOST)
        result = await channel.join_async("vip")  # no JoinParam: the client's token goes with it
        assert result.result, result
        assert channel.self_participant is not None and channel.self_participant.user_id == "alice"
        fresh = mint_token(SECRET, channel="vip", user_id="alice", roles=[HOST], now=time.time(), ttl=120)
        assert await channel.refresh_token_async(fresh) is Reason.NONE
        assert client.token == fresh  # what a rejoin after a server restart will present


async def test_sdk_refuses_a_user_id_the_token_contradicts_before_connecting() -> None:
    from airwave.client import Client

    credential = mint_token(SECRET, channel="vip", user_id="alice", roles=[HOST], now=time.time(), ttl=60)
    url = "ws://127.0.0.1:9/"  # nothing listens there: a ValueError proves no connection was tried
    with pytest.raises(ValueError, match="user id bob contradicts the token, which was minted for alice"):
        async with Client.connect(url, user_id="bob", token=credential):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="the token cannot be used: not a JSON Web Token"):
        async with Client.connect(url, token="aw1.not-a-jwt"):
            pass  # pragma: no cover
