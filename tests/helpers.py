"""Helpers shared by the integration tests that drive a real server over loopback WebSockets."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio
import trio.testing

from airwave.actors.core import events as ev
from airwave.actors.log.replay import replay_events
from airwave.client import JoinResult
from airwave.protocol import CustomRole, MediaPacket, Ping, Reply, encode_client_media
from airwave.wire import Wire

HOST = CustomRole.ROLE_0
AUDIENCE = CustomRole.ROLE_1


POLL_INTERVAL = 0.01  # how often `wait_until` looks


async def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = 5.0) -> None:
    """Returns once ``condition()`` holds, looking every 10 ms; fails naming ``what`` after
    ``timeout`` seconds. For state that no message or event announces (a server counter, a
    record in the log, a task's result), so that a test waits for exactly what it needs
    instead of sleeping for a guess."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(POLL_INTERVAL)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def next_push(wire: Wire, kind: type, timeout: float = 2.0) -> object:
    """The next pushed message of ``kind``, skipping others (member counts, volumes)."""
    with trio.fail_after(timeout):
        while True:
            message = await wire.pushes.receive()
            if isinstance(message, kind):
                return message


def queued_pushes(wire: Wire) -> list[object]:
    """Every push already received and not yet consumed, without waiting."""
    found = []
    while True:
        try:
            found.append(wire.pushes.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return found


async def settle(wire: Wire) -> list[object]:
    """A ping round trip, then the pushes queued so far: the server answers a session's
    requests in order after acting on everything it read before, so whatever those frames
    caused for this session has arrived once the ping's reply has."""
    reply = await wire.request(Ping)
    assert reply.ok, reply
    return queued_pushes(wire)


def describe(event: ev.Event) -> str:
    """A short, stable line for one logged event (time and salts left out)."""
    match event:
        case ev.ChannelCreated():
            return f"created {event.channel} by {event.created_by}"
        case ev.MemberJoined():
            upload = " upload" if event.upload else ""
            return f"joined {event.channel} {event.user_id} role={event.role.index}{upload}"
        case ev.MemberLeft():
            by = f" by {event.by}" if event.by else f" by operator {event.operator}" if event.operator else ""
            return f"left {event.channel} {event.user_id} {event.reason.reason_name}{by}"
        case ev.ChannelStopped():
            by = f" by {event.by}" if event.by else f" by operator {event.operator}" if event.operator else ""
            return f"stopped {event.channel} {event.reason.reason_name}{by}"
        case ev.MuteChanged():
            return f"{'muted' if event.muted else 'unmuted'} {event.channel} {event.user_id} by operator {event.operator}"
        case ev.RoleChanged():
            return f"role {event.channel} {event.user_id} {event.role.index} by {event.by}"
        case ev.StateChanged():
            return f"state {event.channel} {event.user_id} {event.state.index} by {event.by}"
        case ev.AudioUploadChanged():
            return f"upload {event.channel} {event.user_id} {event.enabled}"
        case ev.CustomPropertyChanged():
            return f"property {event.channel} {event.value!r} by {event.by}"
    raise TypeError(event)  # pragma: no cover


def logged(directory: Path) -> list[str]:
    """The event log replayed (every segment, CRCs verified), one `describe` line per event."""
    return [describe(item.event) for item in replay_events(directory)]


def logged_seqs(directory: Path) -> list[int]:
    return [item.seq for item in replay_events(directory)]


def ok(reply: Reply) -> Reply:
    assert reply.ok, reply
    return reply


@attrs.define
class MediaFlow:
    """What `steady_media` saw: the frames sent, and what each listener received."""

    sid: int
    sent: int = 0
    received: dict[int, list[MediaPacket]] = attrs.field(factory=dict)

    def packets(self, listener: Wire) -> list[MediaPacket]:
        return self.received[id(listener)]


@asynccontextmanager
async def steady_media(
    sender: Wire, listeners: list[Wire], sid: int, *, interval: float = 0.005, min_frames: int = 20
) -> AsyncIterator[MediaFlow]:
    """``sender`` (a publisher with media sender id ``sid``) streams numbered frames while the
    body runs; on exit, every listener must have received every one of them, in order, each
    once, and nothing else from ``sid``. Other senders' frames are kept for the test to check.

    The point: whatever abuse the body commits, media to the others flows undisturbed.
    """
    flow = MediaFlow(sid)
    stop = trio.Event()

    async def send_loop() -> None:
        # Never cancelled mid-send (a torn WebSocket frame would be the test's own fault).
        # The sleep paces the stream (a frame every ``interval``); it synchronises nothing.
        while not stop.is_set():
            seq = flow.sent
            await sender.send_bytes(encode_client_media(seq, seq * 960, b"\xf8" + seq.to_bytes(4, "big"), level=40))
            flow.sent += 1
            await trio.sleep(interval)

    async def receive_loop(listener: Wire, into: list[MediaPacket]) -> None:
        async for packet in listener.media:
            into.append(packet)

    def from_sender(listener: Wire) -> list[MediaPacket]:
        return [p for p in flow.packets(listener) if p.sid == sid]

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            flow.received[id(listener)] = []
            nursery.start_soon(receive_loop, listener, flow.received[id(listener)])
        async with trio.open_nursery() as sending:
            sending.start_soon(send_loop)
            yield flow
            # The body was too quick to prove anything: let the stream run on a little.
            await wait_until(lambda: flow.sent >= min_frames, f"{min_frames} frames sent", timeout=3)
            stop.set()
        with trio.move_on_after(2):  # then the comparison below says what went missing
            while any(len(from_sender(listener)) < flow.sent for listener in listeners):
                await trio.sleep(POLL_INTERVAL)
        # A duplicate or stray frame would be queued to a listener before the reply to its
        # ping (one ordered output per connection); once every task is blocked, the receive
        # loops have taken everything that arrived before those replies.
        for listener in listeners:
            assert (await listener.request(Ping)).ok
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    for listener in listeners:
        assert listener.media_dropped == 0
        packets = from_sender(listener)
        assert [p.seq for p in packets] == list(range(flow.sent)), "media to another member was disturbed"
        assert [p.payload for p in packets] == [b"\xf8" + seq.to_bytes(4, "big") for seq in range(flow.sent)]


async def next_join_result(events: trio.MemoryReceiveChannel, timeout: float) -> JoinResult:
    """The next `JoinResult` among a channel's events (a rejoin's, say), within ``timeout``."""
    with trio.fail_after(timeout):
        async for event in events:
            if isinstance(event, JoinResult):
                return event
    raise AssertionError("no JoinResult")


class ServeProcess:
    """`python -m airwave.cli serve --port 0 --data DIR ...`, its stderr collected as it comes."""

    LISTENING = re.compile(r"listening on (ws://127\.0\.0\.1:(\d+)/)")

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = ""
        self.url = ""
        self.listening = trio.Event()

    async def collect_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk.decode(errors="replace")
            match = self.LISTENING.search(self.stderr)
            if match and not self.listening.is_set():
                self.url = match.group(1)
                self.listening.set()

    async def exit_code(self, timeout: float = 5) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def airwave_serve(data: Path, *extra: str) -> AsyncIterator[ServeProcess]:
    command = [sys.executable, "-m", "airwave.cli", "serve", "--port", "0", "--data", str(data), *extra]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    server = ServeProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.collect_stderr)  # ends at the process's exit (EOF on stderr)
        try:
            with trio.fail_after(10):
                await server.listening.wait()
            yield server
        finally:
            if process.returncode is None:  # the test did not end it: do not leave it running
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
