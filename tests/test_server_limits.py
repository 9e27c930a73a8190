"""Limits over real sockets: each hit answers with its reason code, is counted, and a repeat
offender is disconnected, while everyone else is served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket

from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer, ServerSettings, serve
from airwave.protocol import CustomRole, Error, Join, Ping, Reason, decode_server_message, encode_client_media
from airwave.wire import open_wire
from conftest import fast_settings
from helpers import settle, wait_until


@asynccontextmanager
async def running(settings: ServerSettings) -> AsyncIterator[RunningServer]:
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve, settings)
        yield server
        server.shutdown()


async def test_control_flood_is_rate_limited_then_disconnected_and_logged(data_dir: Path) -> None:
    settings = fast_settings(data_dir, control_rate=5.0, control_burst=5.0, max_strikes=20)
    with trio.fail_after(10):
        async with running(settings) as server, open_wire(server.url) as bystander:
            assert (await bystander.request(Join, channel="c", user_id="calm")).ok
            async with open_wire(server.url) as flooder:
                assert (await flooder.request(Join, channel="c", user_id="flood")).ok
                reasons = []
                try:
                    for _ in range(60):
                        reasons.append((await flooder.request(Ping)).reason)
                except Exception:
                    pass  # closed by the server once it has had enough
                with trio.fail_after(2):
                    await flooder.closed.wait()
                assert Reason.RATE_LIMITED in reasons and reasons[0] is Reason.NONE
                assert flooder.ws.closed.code == 1008
            assert (await bystander.request(Ping)).ok  # everyone else is still served

            def left() -> list[tuple[str, Reason]]:
                events = [i.event for i in replay_events(server.event_log.directory)]
                return [(e.user_id, e.reason) for e in events if e.TYPE == "participant_left"]

            await wait_until(lambda: bool(left()), "the flooder's leave in the log")
            assert left() == [("flood", Reason.RATE_LIMITED)]


async def test_media_flood_is_capped_per_publisher_with_one_error_a_second(data_dir: Path) -> None:
    settings = fast_settings(data_dir, media_rate=50.0, media_burst=20.0, max_strikes=10_000)
    with trio.fail_after(10):
        async with running(settings) as server, open_wire(server.url) as host, open_wire(server.url) as fan:
            assert (await host.request(Join, channel="c", user_id="host", role=CustomRole.ROLE_0, upload=True)).ok
            assert (await fan.request(Join, channel="c", user_id="fan")).ok
            for seq in range(200):
                await host.send_bytes(encode_client_media(seq, 0, b"\xf8x"))
            # The host's ping is answered after the server acted on every frame before it,
            # fanning each one it let through out to the fan at once; the fan's ping reply
            # comes after all of them on the fan's one ordered output.
            errors = [m.reason for m in await settle(host) if isinstance(m, Error)]
            await settle(fan)
            delivered = fan.media.statistics().current_buffer_used
            assert 20 <= delivered <= 40, delivered
            assert errors == [Reason.RATE_LIMITED]


async def test_channel_count_limit_refuses_a_new_channel_with_full(data_dir: Path) -> None:
    settings = attrs.evolve(fast_settings(data_dir), max_channels=2)
    with trio.fail_after(10):
        async with running(settings) as server, open_wire(server.url) as a, open_wire(server.url) as b, open_wire(server.url) as c:
            assert (await a.request(Join, channel="one", user_id="a")).ok
            assert (await b.request(Join, channel="two", user_id="b")).ok
            refused = await c.request(Join, channel="three", user_id="c")
            assert refused.reason is Reason.FULL and "maximum of 2 channels" in refused.message
            assert (await c.request(Join, channel="one", user_id="c")).ok  # existing channels still take joins
            assert server.registry.refused_channels == 1


async def test_connections_per_address_over_the_limit_get_rate_limited_and_closed(data_dir: Path) -> None:
    settings = attrs.evolve(fast_settings(data_dir), max_connections_per_address=2, limit_loopback=True)
    with trio.fail_after(10):
        async with running(settings) as server, open_wire(server.url) as first, open_wire(server.url) as second:
            async with trio_websocket.open_websocket_url(server.url) as third:
                message = decode_server_message(await third.get_message())
                assert isinstance(message, Error) and message.reason is Reason.RATE_LIMITED
                with trio.fail_after(2), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await third.get_message()
                assert closed.value.reason.code == 1008
            assert server.gateway.refused_connections == 1
            assert (await first.request(Ping)).ok and (await second.request(Ping)).ok


async def test_a_client_stalled_mid_handshake_holds_the_only_join_slot_for_at_most_the_hold(data_dir: Path) -> None:
    settings = attrs.evolve(fast_settings(data_dir), max_joining=1, admission_hold=0.3)
    with trio.fail_after(10):
        async with running(settings) as server:
            stalled = await trio.open_tcp_stream("127.0.0.1", server.port)  # connects, never upgrades
            await wait_until(lambda: server.gateway.admission.joining == 1, "the stalled client to take the join slot")
            started = trio.current_time()
            async with open_wire(server.url) as late:
                assert (await late.request(Join, channel="c", user_id="late")).ok
            waited = trio.current_time() - started
            # the slot came back after the hold (+ one heartbeat sweep), long before the
            # stalled client's 10 s handshake timeout
            assert 0.15 <= waited < 1.0
            async with open_wire(server.url) as next_one:
                assert (await next_one.request(Join, channel="c", user_id="next")).ok
            assert server.gateway.admission.joining == 0
            await stalled.aclose()
