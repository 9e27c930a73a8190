"""The SDK survives its connection: a drop is resumed, a server crash is rejoined (decision 7)."""

from __future__ import annotations

import functools
import socket
import struct
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket

from airwave import wire
from airwave.actors.log.replay import replay_events
from airwave.actors.server import RunningServer, serve
from airwave.audio import ToneSource
from airwave.client import Client, ConnectionState, ConnectionStateEvent, JoinResult, MediaChannel, MediaDevice, ReconnectPolicy
from airwave.protocol import ChannelState, CustomRole, Reason
from airwave.wire import open_wire
from conftest import fast_settings
from helpers import next_join_result, wait_until


async def packets_flowing(channel: MediaChannel, more_than: int, timeout: float = 3.0) -> None:
    await wait_until(lambda: channel.receiver.stats.packets > more_than, f"more than {more_than} packets", timeout=timeout)


async def test_sdk_drop_is_resumed_and_audio_continues_without_leave_or_join(server: RunningServer) -> None:
    with trio.fail_after(15):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(server.url, user_id="fan") as f:
            host = MediaChannel.create(h, MediaDevice.create(source=ToneSource(440)))
            fan = MediaChannel.create(f, MediaDevice.create())
            host.set_custom_role(CustomRole.ROLE_0)
            host.enable_upload_audio_stream(True)
            assert (await host.join_async("live")).result
            assert (await fan.join_async("live")).result
            fan_events = fan.events()
            await packets_flowing(fan, 10)

            await f.wire.ws._stream.aclose()  # the network drops the fan's connection
            states = []
            with trio.fail_after(5):
                async for event in fan_events:
                    if isinstance(event, ConnectionStateEvent):
                        states.append(event.state)
                        if event.state is ConnectionState.CONNECTED:
                            break
            assert states == [ConnectionState.RECONNECTING, ConnectionState.CONNECTED]
            received = fan.receiver.stats.packets
            await packets_flowing(fan, received + 10)
            assert fan.state is ChannelState.JOINED and f.reconnects == 1
            logged = [(i.event.TYPE, getattr(i.event, "user_id", None)) for i in replay_events(server.event_log.directory)]
            assert logged == [("channel_created", None), ("participant_joined", "host"), ("participant_joined", "fan")]


async def test_sdk_rejoins_by_itself_after_a_server_crash(data_dir: Path) -> None:
    settings = fast_settings(data_dir)
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            crash_scope = trio.CancelScope()
            crashed = trio.Event()  # the first server's task is over: its port is free

            async def run_server(task_status: trio.TaskStatus[RunningServer]) -> None:
                with crash_scope:
                    await serve(settings, task_status=task_status)
                crashed.set()

            first: RunningServer = await outer.start(run_server)
            port = first.port
            async with Client.connect(first.url, user_id="fan") as f:
                fan = MediaChannel.create(f, MediaDevice.create())
                assert (await fan.join_async("live")).result
                events = fan.events()
                crash_scope.cancel()  # no graceful shutdown: as far as the log knows, a crash
                with trio.fail_after(5):
                    await crashed.wait()
                # The server comes back only once the SDK has noticed it is gone.
                reconnecting = None
                with trio.fail_after(5):
                    async for event in events:
                        if isinstance(event, ConnectionStateEvent):
                            reconnecting = event.state
                            break
                assert reconnecting is ConnectionState.RECONNECTING
                second: RunningServer = await outer.start(serve, attrs.evolve(settings, port=port))
                assert await next_join_result(events, 8) == JoinResult(True, Reason.NONE, "live")
                assert fan.state is ChannelState.JOINED
                second.shutdown()
    types = [(i.event.TYPE, getattr(i.event, "user_id", None), getattr(i.event, "reason", None)) for i in replay_events(data_dir)]
    assert ("participant_left", "fan", Reason.SERVER_RESTART) in types
    assert [t for t in types if t[0] == "channel_created"].__len__() == 2


async def test_a_handshake_the_server_cuts_short_fails_at_once_not_after_the_timeout() -> None:
    """A server that dies mid-handshake, or a load balancer with nothing behind it, accepts
    the TCP connection and closes it: the client moves on at once, so a reconnect tries
    again within its back-off instead of sitting out the whole connect timeout."""
    async def accept_and_close(stream: trio.SocketStream) -> None:
        await stream.receive_some(1)  # the upgrade request has arrived
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, accept_and_close, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        with pytest.raises(trio_websocket.HandshakeError, match="closed the connection during the WebSocket handshake"):
            async with open_wire(f"ws://127.0.0.1:{port}/", connect_timeout=5.0):
                pass
        assert trio.current_time() - started < 1.0
        nursery.cancel_scope.cancel()


async def test_a_connection_reset_before_the_upgrade_request_is_sent_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node SIGKILLed while the kernel still takes connections for it: the TCP connect
    succeeds, then the connection is reset before the client sends its upgrade request.
    trio-websocket's reader then stops without ever reading (its send failed) and its
    handshake waits out the timeout; the client must move on at once (issue 16: a fan whose
    node died tried that node again first and sat out 5 s before trying the next one)."""
    async def accept_and_reset(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # with a zero linger: a reset, not a FIN

    real_open = trio.open_tcp_stream

    async def open_then_wait_for_the_reset(host: str, port: int) -> trio.SocketStream:
        stream = await real_open(host, port)
        await trio.sleep(0.2)  # the reset arrives before anything is sent
        return stream

    monkeypatch.setattr(wire.trio, "open_tcp_stream", open_then_wait_for_the_reset)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, accept_and_reset, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        with pytest.raises(trio_websocket.HandshakeError):
            async with open_wire(f"ws://127.0.0.1:{port}/", connect_timeout=5.0):
                pass
        assert trio.current_time() - started < 1.0
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_the_handshake_times_out_as_trio_websocket_does() -> None:
    async def accept_and_wait(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, accept_and_wait, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(trio_websocket.ConnectionTimeout):
            async with open_wire(f"ws://127.0.0.1:{port}/", connect_timeout=0.3):
                pass
        nursery.cancel_scope.cancel()


async def test_a_ping_that_crosses_the_clients_close_frame_ends_the_connection_cleanly() -> None:
    """trio-websocket answers such a ping with a pong wsproto refuses (its issue 184); the
    client's exit must not turn that into an error."""
    import wsproto
    from wsproto.events import AcceptConnection, CloseConnection, Request

    async def server(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        await stream.send_all(ws.send(AcceptConnection()))
                    elif isinstance(event, CloseConnection):
                        await stream.send_all(b"\x89\x00")  # a ping, sent as if before the close arrived
                        await trio.sleep(0.05)
                        await stream.send_all(ws.send(event.response()))
                        return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            async with open_wire(f"ws://127.0.0.1:{port}/", hello=False) as wire:
                pass
        assert wire.ws.closed is not None
        nursery.cancel_scope.cancel()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_sdk_given_several_urls_connects_to_the_first_that_answers_and_moves_on_when_it_dies(tmp_path: Path) -> None:
    nowhere = f"ws://127.0.0.1:{closed_port()}/"
    with pytest.raises(BaseExceptionGroup) as none_answers:  # as for one URL: the last attempt's error
        async with Client.connect([nowhere, nowhere], user_id="fan"):
            pass
    assert none_answers.group_contains(trio_websocket.HandshakeError)
    with pytest.raises(BaseExceptionGroup) as no_url:
        async with Client.connect([], user_id="fan"):
            pass
    assert no_url.group_contains(ValueError, match="needs a URL")
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            crash_a = trio.CancelScope()

            async def run_a(task_status: trio.TaskStatus[RunningServer]) -> None:
                with crash_a:
                    await serve(fast_settings(tmp_path / "a"), task_status=task_status)

            a: RunningServer = await outer.start(run_a)
            b: RunningServer = await outer.start(serve, fast_settings(tmp_path / "b"))
            async with Client.connect([nowhere, a.url, b.url], user_id="fan", reconnect=ReconnectPolicy(0.05, 0.2, 10.0)) as f:
                assert f.url == a.url  # the first address refused the connection: the next one at once
                fan = MediaChannel.create(f, MediaDevice.create())
                assert (await fan.join_async("live")).result
                events = fan.events()
                crash_a.cancel()  # a's node dies; b never heard of this session, so it rejoins there
                assert await next_join_result(events, 8) == JoinResult(True, Reason.NONE, "live")
                assert f.url == b.url and fan.state is ChannelState.JOINED
                assert {m.user_id for m in b.registry.find("live").channel.members.values()} == {"fan"}  # type: ignore[union-attr]
                b.shutdown()
