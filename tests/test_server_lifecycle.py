"""The server's life: graceful shutdown, heartbeat timeouts, crashes, restarts and a damaged log.

In-process servers where that is enough; `airwave serve` as a real subprocess where the test
is about the process itself (SIGKILL, SIGINT/SIGTERM, refusing to start).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import wsproto
import wsproto.events as wse

from airwave.actors.log import EventLog, FsyncMode
from airwave.actors.log.format import HEADER_BYTES, LogCorruption, list_segments
from airwave.actors.server import RunningServer, serve
from airwave.actors.net import TransportSettings
from airwave.protocol import (
    Hello,
    Join,
    Leave,
    Left,
    ParticipantJoined,
    ParticipantLeft,
    Query,
    Reason,
    Reply,
    channel_info_from_wire,
    decode_server_message,
    encode,
    encode_client_media,
    is_media_frame,
    limits,
    query_info_from_wire,
)
from airwave.wire import open_wire

from conftest import fast_settings
from helpers import HOST, airwave_serve, logged, logged_seqs, next_push, ok, steady_media, wait_until


@asynccontextmanager
async def in_process_server(data: Path, **session: float) -> AsyncIterator[RunningServer]:
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(serve, fast_settings(data, **session))
        try:
            yield running
        finally:
            running.shutdown()
            with trio.fail_after(5):
                await running.stopped.wait()


class RawClient:
    """A client-side wsproto connection over a plain trio socket: it reads only when told to,
    so once the test stops calling it nothing answers the server's pings."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wse.Event] = []

    @classmethod
    async def connect(
        cls, port: int, *, receive_buffer: int | None = None, headers: list[tuple[bytes, bytes]] | None = None
    ) -> RawClient:
        sock = trio.socket.socket()
        if receive_buffer is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        request = wse.Request(host=f"127.0.0.1:{port}", target="/", extra_headers=headers or [])
        await client.stream.send_all(client.ws.send(request))
        await client.read_until(lambda e: isinstance(e, wse.AcceptConnection))
        return client

    async def read_until(self, done: object) -> wse.Event:
        while True:
            while self.events:
                event = self.events.pop(0)
                if done(event):  # type: ignore[operator]
                    return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())

    async def request(self, message: object) -> Reply:
        await self.stream.send_all(self.ws.send(wse.BytesMessage(encode(message))))  # type: ignore[arg-type]
        event = await self.read_until(
            lambda e: isinstance(e, wse.BytesMessage) and isinstance(decode_server_message(e.data), Reply)
        )
        return decode_server_message(event.data)  # type: ignore[attr-defined,return-value]


# --- graceful shutdown -----------------------------------------------------------------------


async def test_a_client_that_leaves_and_closes_is_logged_as_a_goodbye_not_a_network_failure(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's log: a clean leave and close frame is `reason=none`; a connection that
    just goes away (no close frame) is `reason=network`."""
    caplog.set_level(logging.INFO, logger="airwave.gateway")
    with trio.fail_after(10):
        async with in_process_server(data_dir) as server:
            async with open_wire(server.url) as polite:
                ok(await polite.request(Join, channel="live", user_id="polite"))
                ok(await polite.request(Leave))
            rude = await RawClient.connect(server.port)
            ok(await rude.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
            await rude.stream.aclose()
            await wait_until(lambda: server.gateway.connections == 0, "both connections to end")
    disconnects = sorted(r.getMessage().split(" ", 2)[2] for r in caplog.records if r.getMessage().startswith("disconnect "))
    assert disconnects == ["- reason=network", "polite reason=none"]


async def test_shutdown_graceful_members_left_server_shutdown_and_log_closed(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airwave.gateway")
    with trio.fail_after(10):
        # A long resume grace: the dropped member below must still be held at shutdown.
        async with in_process_server(data_dir, resume_grace=30) as server:
            url = server.url
            async with open_wire(url) as host, open_wire(url) as a, open_wire(url) as b, open_wire(url) as c:
                joined = ok(await host.request(Join, channel="live", user_id="host", role=HOST, upload=True))
                sid = channel_info_from_wire(joined.result).self_sid
                ok(await a.request(Join, channel="live", user_id="a"))
                ok(await b.request(Join, channel="live", user_id="b"))
                ok(await c.request(Join, channel="side", user_id="c"))
                # A member whose connection dropped (no close frame) is held for resume: still a member.
                dropper = await RawClient.connect(server.port)
                ok(await dropper.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
                ok(await dropper.request(Join(id=2, channel="live", user_id="dropper")))
                await dropper.stream.aclose()
                await wait_until(lambda: server.gateway.connections == 4, "the server to see the drop")
                async with steady_media(host, [a, b], sid, min_frames=10):
                    pass

                server.shutdown()
                for wire, channel in ((host, "live"), (a, "live"), (b, "live"), (c, "side")):
                    left = await next_push(wire, Left)
                    assert (left.channel, left.reason) == (channel, Reason.SERVER_SHUTDOWN)
                # Each close handshake completes as soon as the client answers: the shutdown
                # does not sit out its bound (2 s) for handshakes it cut short itself.
                with trio.fail_after(1.5):
                    await server.stopped.wait()
                for wire in (host, a, b, c):
                    with trio.fail_after(2):
                        await wire.closed.wait()
                    assert wire.ws.closed is not None and wire.ws.closed.code == 1001
    disconnects = sorted(r.getMessage().split(" ", 2)[2] for r in caplog.records if r.getMessage().startswith("disconnect "))
    assert disconnects == [
        "a reason=server_shutdown", "b reason=server_shutdown", "c reason=server_shutdown",
        "dropper reason=network", "host reason=server_shutdown",
    ]
    events = logged(server.event_log.directory)
    assert events[:7] == [
        "created live by host",
        "joined live host role=0 upload",
        "joined live a role=1",
        "joined live b role=1",
        "created side by c",
        "joined side c role=1",
        "joined live dropper role=1",
    ]
    # The channels end concurrently; within each, every member leaves, then the channel stops.
    live = [
        "left live host server_shutdown",
        "left live a server_shutdown",
        "left live b server_shutdown",
        "left live dropper server_shutdown",
        "stopped live none",
    ]
    side = ["left side c server_shutdown", "stopped side none"]
    assert sorted(events[7:]) == sorted(live + side)
    assert [e for e in events[7:] if " live " in e] == live and [e for e in events[7:] if " side " in e] == side
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


# --- heartbeats ------------------------------------------------------------------------------


async def test_heartbeat_silent_client_left_timeout_while_ponging_client_stays(server: RunningServer) -> None:
    settings = fast_settings(Path("unused")).session
    deadline = settings.heartbeat_timeout + settings.heartbeat_time + 0.4
    with trio.fail_after(10):
        async with open_wire(server.url) as host, open_wire(server.url) as alive:
            ok(await host.request(Join, channel="hb", user_id="host", role=HOST))
            ok(await alive.request(Join, channel="hb", user_id="alive"))  # then silent, but ponging
            await next_push(host, ParticipantJoined)

            ghost = await RawClient.connect(server.port)
            ok(await ghost.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
            last_frame = trio.current_time()  # just before the ghost's last frame; then it never reads
            ok(await ghost.request(Join(id=2, channel="hb", user_id="ghost")))
            assert (await next_push(host, ParticipantJoined)).participant.user_id == "ghost"

            left = await next_push(host, ParticipantLeft, timeout=deadline + 1)
            took = trio.current_time() - last_frame
            assert (left.user_id, left.reason) == ("ghost", Reason.TIMEOUT)
            assert settings.heartbeat_timeout <= took <= deadline, took

            # What the ghost would have read: pings it never answered, then close 1001.
            close = await ghost.read_until(lambda e: isinstance(e, wse.CloseConnection))
            assert (close.code, close.reason) == (1001, "heartbeat timeout")
            await ghost.stream.aclose()

            # The silent-but-ponging member outlived three timeouts' worth of silence.
            await trio.sleep_until(last_frame + 3 * settings.heartbeat_timeout)
            members = query_info_from_wire(ok(await host.request(Query, channel="hb")).result).members
            assert sorted(members) == ["alive", "host"]
            ok(await alive.request(Leave))
            ok(await host.request(Leave))
    assert logged(server.event_log.directory) == [
        "created hb by host",
        "joined hb host role=0",
        "joined hb alive role=1",
        "joined hb ghost role=1",
        "left hb ghost timeout",
        "left hb alive quit",
        "left hb host quit",
        "stopped hb none",
    ]


async def test_heartbeat_media_stands_in_for_pings_which_resume_when_it_stops(data_dir: Path) -> None:
    """A listener receiving media is not pinged and owes no pongs: the kernel watches that it
    acknowledges what it is sent. Once the media stops, pings resume, and a listener that
    never answers them is timed out heartbeat_timeout after the last frame it was sent."""
    interval, timeout, sweep = 0.4, 1.0, 0.05
    async with in_process_server(data_dir, heartbeat_time=interval, heartbeat_timeout=timeout, heartbeat_sweep=sweep) as server:
        with trio.fail_after(15):
            async with open_wire(server.url) as host:
                ok(await host.request(Join, channel="air", user_id="host", role=HOST, upload=True))
                mute = await RawClient.connect(server.port)  # reads everything, answers nothing
                ok(await mute.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
                ok(await mute.request(Join(id=2, channel="air", user_id="mute")))
                await next_push(host, ParticipantJoined)

                media_at: list[float] = []
                pings_at: list[float] = []

                def tally(event: wse.Event) -> bool:
                    if isinstance(event, wse.Ping):
                        pings_at.append(trio.current_time())
                    elif isinstance(event, wse.BytesMessage) and is_media_frame(event.data):
                        media_at.append(trio.current_time())
                    return False

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mute.read_until, tally)
                    for seq in range(125):  # 2.5 s: two and a half timeouts of media, 20 ms apart
                        await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8", level=40))
                        last_sent = trio.current_time()
                        await trio.sleep(0.02)  # pacing: a speaker's 20 ms frames, against real-time heartbeats
                    members = query_info_from_wire(ok(await host.request(Query, channel="air")).result).members
                    assert sorted(members) == ["host", "mute"]
                    assert len(media_at) >= 120
                    assert [t for t in pings_at if media_at[0] <= t <= last_sent] == []

                    left = await next_push(host, ParticipantLeft, timeout=timeout + 2)
                    took = trio.current_time() - last_sent
                    assert (left.user_id, left.reason) == ("mute", Reason.TIMEOUT)
                    assert timeout <= took <= timeout + 3 * sweep + 0.3, took
                    assert [t for t in pings_at if t > last_sent], "no ping after the media stopped"
                    nursery.cancel_scope.cancel()
                ok(await host.request(Leave))
        assert logged(server.event_log.directory)[-3:] == ["left air mute timeout", "left air host quit", "stopped air none"]


async def test_heartbeat_behind_a_proxy_a_listener_is_pinged_during_media_and_times_out(data_dir: Path) -> None:
    """Behind a reverse proxy (its X-Forwarded-For on the upgrade request) the acknowledgements
    the kernel sees are the proxy's, so media proves nothing: the listener is pinged while it
    receives media, and one that never answers is timed out heartbeat_timeout after its join."""
    interval, timeout = 0.4, 1.0
    async with in_process_server(data_dir, heartbeat_time=interval, heartbeat_timeout=timeout) as server:
        with trio.fail_after(15):
            async with open_wire(server.url) as host:
                ok(await host.request(Join, channel="tls", user_id="host", role=HOST, upload=True))
                mute = await RawClient.connect(server.port, headers=[(b"X-Forwarded-For", b"203.0.113.7")])
                ok(await mute.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
                ok(await mute.request(Join(id=2, channel="tls", user_id="mute")))
                joined = trio.current_time()
                await next_push(host, ParticipantJoined)
                pings = 0

                def tally(event: wse.Event) -> bool:
                    nonlocal pings
                    pings += isinstance(event, wse.Ping)
                    return False

                async def stream() -> None:
                    for seq in range(10_000):
                        await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8", level=40))
                        await trio.sleep(0.02)  # pacing: a speaker's 20 ms frames

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mute.read_until, tally)
                    nursery.start_soon(stream)
                    left = await next_push(host, ParticipantLeft, timeout=timeout + 2)
                    took = trio.current_time() - joined
                    nursery.cancel_scope.cancel()
                assert (left.user_id, left.reason) == ("mute", Reason.TIMEOUT)
                # The server's clock starts at its join, a moment before our reply arrives.
                assert timeout - 0.1 <= took <= timeout + 0.6, took
                assert pings >= 1
                ok(await host.request(Leave))


async def test_heartbeat_a_listener_that_stops_reading_is_timed_out_by_the_kernel(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Media keeps a listener from being pinged, so what ends one that stops reading (a hung
    client) while media flows is the kernel: its window stays shut past heartbeat_timeout
    (TCP_USER_TIMEOUT). The backlog limit is set far beyond that here, to leave only the kernel."""
    settings = fast_settings(data_dir, heartbeat_time=0.4, heartbeat_timeout=1.0)
    settings = attrs.evolve(settings, transport=TransportSettings(max_backlog_seconds=60))
    caplog.set_level(logging.INFO, logger="airwave")
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve, settings)
        with trio.fail_after(20):
            async with open_wire(server.url) as host:
                ok(await host.request(Join, channel="hung", user_id="host", role=HOST, upload=True))
                hung = await RawClient.connect(server.port, receive_buffer=4096)
                ok(await hung.request(Hello(id=1, version=limits.PROTOCOL_VERSION)))
                ok(await hung.request(Join(id=2, channel="hung", user_id="hung")))  # then never reads
                await next_push(host, ParticipantJoined)

                async def stream() -> None:
                    for seq in range(10_000):
                        await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8" + bytes(1000), level=40))
                        await trio.sleep(0.01)  # pacing: media until the kernel's timer ends the listener

                async with trio.open_nursery() as streaming:
                    streaming.start_soon(stream)
                    left = await next_push(host, ParticipantLeft, timeout=15)
                    streaming.cancel_scope.cancel()
                assert (left.user_id, left.reason) == ("hung", Reason.TIMEOUT)
                await hung.stream.aclose()
                ok(await host.request(Leave))
        server.shutdown()
        await server.stopped.wait()
    assert logged(data_dir)[-3:] == ["left hung hung timeout", "left hung host quit", "stopped hung none"]
    # The kernel ended it (the connection failed with ETIMEDOUT), not the heartbeat sweep.
    assert re.search(r"disconnect \S+ hung reason=timeout", caplog.text)
    assert "(hung) timed out" not in caplog.text


# --- airwave serve as a process --------------------------------------------------------------


async def test_serve_process_sigkill_then_restart_ends_open_sessions_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(20):
        async with airwave_serve(data) as first:
            async with open_wire(first.url) as host, open_wire(first.url) as a, open_wire(first.url) as b:
                info = channel_info_from_wire(
                    ok(await host.request(Join, channel="radio", user_id="host", role=HOST, upload=True)).result
                )
                ok(await a.request(Join, channel="radio", user_id="a"))
                ok(await b.request(Join, channel="radio", user_id="b"))
                async with steady_media(host, [a, b], info.self_sid):
                    pass
                first.process.kill()  # SIGKILL: no chance to write anything
                assert await first.exit_code() == -signal.SIGKILL
                for wire in (host, a, b):
                    with trio.fail_after(2):
                        await wire.closed.wait()
        before = logged(data)
        assert before == [
            "created radio by host", "joined radio host role=0 upload", "joined radio a role=1", "joined radio b role=1"
        ]

        async with airwave_serve(data) as second:
            assert logged(data) == [
                *before,
                "left radio host server_restart",
                "left radio a server_restart",
                "left radio b server_restart",
                "stopped radio none",
            ]  # written before the server listened: recovery is done by the time anyone can join
            assert "channels left open by a crash (server_restart)" in second.stderr
            async with open_wire(second.url) as host:
                reply = ok(await host.request(Join, channel="radio", user_id="host", role=HOST))
                again = channel_info_from_wire(reply.result)
                assert again.channel_number > info.channel_number
                assert again.member_count == 1
                ok(await host.request(Leave))
            # seq keeps rising across the crash: one log, no gap, no repeat.
            assert logged_seqs(data) == list(range(1, len(before) + 4 + 4 + 1))
            assert logged(data)[-4:] == [
                "created radio by host", "joined radio host role=0", "left radio host quit", "stopped radio none"
            ]
            second.process.terminate()
            assert await second.exit_code() == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_serve_process_signal_exits_0_after_graceful_shutdown(tmp_path: Path, signum: int) -> None:
    data = tmp_path / "data"
    with trio.fail_after(15):
        async with airwave_serve(data) as served:
            async with open_wire(served.url) as host, open_wire(served.url) as fan:
                ok(await host.request(Join, channel="live", user_id="host", role=HOST))
                ok(await fan.request(Join, channel="live", user_id="fan"))
                served.process.send_signal(signum)
                for wire in (host, fan):
                    left = await next_push(wire, Left)
                    assert (left.channel, left.reason) == ("live", Reason.SERVER_SHUTDOWN)
                assert await served.exit_code() == 0
        assert "Traceback" not in served.stderr
        assert "stopped; event log flushed at seq 6" in served.stderr
    assert logged(data) == [
        "created live by host",
        "joined live host role=0",
        "joined live fan role=1",
        "left live host server_shutdown",
        "left live fan server_shutdown",
        "stopped live none",
    ]


# --- a damaged log on restart ----------------------------------------------------------------


async def short_session(url: str, channel: str) -> None:
    async with open_wire(url) as host, open_wire(url) as fan:
        ok(await host.request(Join, channel=channel, user_id="host", role=HOST))
        ok(await fan.request(Join, channel=channel, user_id="fan"))
        ok(await fan.request(Leave))
        ok(await host.request(Leave))


async def test_restart_torn_tail_dropped_reported_and_complete_records_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    caplog.set_level(logging.WARNING)
    with trio.fail_after(10):
        async with in_process_server(data) as running:
            await short_session(running.url, "one")
        complete = logged(data)
        assert complete[-1] == "stopped one none" and len(complete) == 6
        ((_, segment),) = list_segments(data)
        intact = segment.read_bytes()

        # 1. A writer that died mid-record: a header announcing 200 bytes, and 5 of them.
        garbage = (200).to_bytes(4, "little") + b"\x01\x02\x03\x04" + b"tail!"
        segment.write_bytes(intact + garbage)
        caplog.clear()
        async with in_process_server(data) as running:
            assert running.recovery.truncated_bytes == len(garbage)
            assert f"dropped a torn tail of {len(garbage)} bytes" in caplog.text
            assert logged(data) == complete  # every complete record kept, nothing added
            await short_session(running.url, "two")
        assert segment.read_bytes()[: len(intact)] == intact
        complete = logged(data)
        assert len(complete) == 12

        # 2. The last record cut short: it is dropped, the channel it ended is ended again.
        size = segment.stat().st_size
        last_record = size - _last_record_offset(segment.read_bytes())
        os.truncate(segment, size - 3)
        caplog.clear()
        async with in_process_server(data) as running:
            assert running.recovery.truncated_bytes == last_record - 3
            assert f"dropped a torn tail of {last_record - 3} bytes" in caplog.text
            assert logged(data) == complete  # the lost "stopped two none", written again by recovery
            assert logged_seqs(data) == list(range(1, 13))


def _last_record_offset(data: bytes) -> int:
    offset = last = 0
    while offset < len(data):
        last = offset
        offset += HEADER_BYTES + int.from_bytes(data[offset : offset + 4], "little")
    return last


async def test_serve_process_corruption_mid_log_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(15):
        async with in_process_server(data) as running:
            await short_session(running.url, "one")
            await short_session(running.url, "two")
        ((_, segment),) = list_segments(data)
        damaged = bytearray(segment.read_bytes())
        damaged[HEADER_BYTES + 5] ^= 0x40  # inside the first record's body: its CRC no longer matches
        segment.write_bytes(bytes(damaged))

        done = await trio.run_process(
            [sys.executable, "-m", "airwave.cli", "serve", "--port", "0", "--data", str(data)],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode != 0
    assert "airwave: the event log is corrupt, refusing to start" in stderr
    assert "checksum mismatch" in stderr and "Traceback" not in stderr and "listening on" not in stderr
    assert segment.read_bytes() == bytes(damaged)  # corruption is reported, never "repaired"


async def test_restart_corrupt_length_mid_log_refused_not_truncated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(10):
        async with in_process_server(data) as running:
            await short_session(running.url, "one")
            await short_session(running.url, "two")
    ((_, segment),) = list_segments(data)
    damaged = bytearray(segment.read_bytes())
    damaged[1] ^= 0x10  # the first record's length, plus 4096: past the end of this small file
    segment.write_bytes(bytes(damaged))
    try:
        event_log, report = EventLog.open(data, FsyncMode.BATCH)
    except LogCorruption:
        pass
    else:
        await event_log.aclose()
        pytest.fail(f"a corrupt first record passed for a torn tail: {report.truncated_bytes} bytes dropped")
    assert segment.read_bytes() == bytes(damaged)
