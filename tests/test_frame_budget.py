"""Every WebSocket frame a client sends counts (issue 13, section 1), and a frame that breaks
RFC 6455 gets the close code the RFC asks for, 1002 (issue 13, section 4).

The meter is tested pure (any frames, cut at any byte, are counted exactly); the budgets over
a real server on loopback, with an honest stream in another channel that must lose nothing.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from airwave.actors.server import RunningServer, serve
from airwave.protocol import Error, Hello, Join, ParticipantJoined, ParticipantLeft, Reason, limits
from airwave.protocol.codec import encode
from airwave.protocol.wsframe import ClientFrameMeter, FrameViolation
from airwave.wire import open_wire
from conftest import fast_settings
from helpers import HOST, next_push, steady_media
from test_server_errors import on_air

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """One client frame, masked with the all-zero key (so the payload reads as written)."""
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    mask = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes((mask | n,))
    elif n < 1 << 16:
        head += bytes((mask | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mask | 127,)) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


# --- the meter, pure ---------------------------------------------------------------------------

frames_strategy = st.lists(
    st.one_of(
        st.tuples(st.just(0x2), st.binary(max_size=300)),  # whole binary messages
        st.tuples(st.just(0x9), st.binary(max_size=125)),  # pings
        st.tuples(st.just(0xA), st.binary(max_size=125)),  # pongs
        st.tuples(st.just(-1), st.lists(st.binary(max_size=40), min_size=2, max_size=6)),  # fragmented
    ),
    max_size=30,
)


@given(frames_strategy, st.lists(st.integers(1, 200), min_size=1, max_size=20), st.integers(1, 8))
def test_meter_counts_every_frame_wherever_reads_cut_the_stream(spec, cuts, per_read) -> None:
    stream, expected = REQUEST, 0
    for opcode, payload in spec:
        if opcode == -1:
            parts = [frame(0x2, payload[0], fin=False)] + [frame(0x0, p, fin=i == len(payload) - 2) for i, p in enumerate(payload[1:])]
            stream += b"".join(parts)
            expected += len(parts)
        else:
            stream += frame(opcode, payload)
            expected += 1
    meter = ClientFrameMeter(max_fragments=8)
    at = counted = 0
    reads = iter(cuts * (len(stream) + 1))
    while at < len(stream):
        chunk = stream[at : at + next(reads)]
        used, frames = meter.advance(chunk, per_read)
        assert 0 < used <= len(chunk) and frames <= per_read
        at, counted = at + used, counted + frames
    assert counted == expected and not meter.message_open


@pytest.mark.parametrize(
    ("data", "code", "why"),
    [
        (frame(0x2, b"x", masked=False), 1002, "must be masked"),
        (frame(0x2, b"x", rsv=4), 1002, "reserved bits"),
        (frame(0x3), 1002, "reserved opcode"),
        (frame(0x9, fin=False), 1002, "control frame"),
        (frame(0xA, b"p" * 126), 1002, "control frame"),
        (frame(0x0, b"x"), 1002, "no message to continue"),
        (frame(0x2, b"a", fin=False) + frame(0x2, b"b"), 1002, "before the last one finished"),
        (frame(0x2, fin=False) + frame(0x0, fin=False) * 3, 1008, "more than 3 fragments"),
    ],
)
def test_meter_refuses_what_rfc_6455_and_the_fragment_limit_forbid(data: bytes, code: int, why: str) -> None:
    meter = ClientFrameMeter(max_fragments=3)
    with pytest.raises(FrameViolation, match=why) as refused:
        meter.advance(REQUEST + data, 100)
    assert refused.value.code == code


# --- over a real server ------------------------------------------------------------------------


class RawPeer:
    """A WebSocket client that writes whatever frames the test crafts."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, server: RunningServer) -> RawPeer:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", server.port))
        ws = WSConnection(ConnectionType.CLIENT)
        await sock.send(ws.send(Request(host="localhost", target="/")))
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += await sock.recv(4096)
        ws.receive_data(raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
        assert any(isinstance(e, AcceptConnection) for e in ws.events())
        peer = cls(sock)
        await peer.write(frame(0x2, encode(Hello(id=1, version=limits.PROTOCOL_VERSION, client="raw"))))
        return peer

    async def write(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            view = memoryview(data)
            while view:
                view = view[await self.sock.send(view) :]
        except OSError:
            return False
        return True

    async def close_frame(self) -> tuple[int, str]:
        """The close frame the server sent (its code and reason), skipping frames before it."""
        received = b""
        while chunk := await self.sock.recv(65536):
            received += chunk
        at = received.find(b"\x88")
        while at >= 0:
            length = received[at + 1]
            body = received[at + 2 : at + 2 + length]
            if length >= 2 and len(body) == length and 1000 <= int.from_bytes(body[:2], "big") < 5000:
                return int.from_bytes(body[:2], "big"), body[2:].decode()
            at = received.find(b"\x88", at + 1)
        raise AssertionError(f"no close frame in {received[-200:]!r}")


FLOODS = {
    "empty continuations": frame(0x2, fin=False) + frame(0x0, fin=False) * 20_000,
    "unsolicited pongs": frame(0xA) * 20_000,
    "one-byte fragments": frame(0x2, b"\x01", fin=False) + frame(0x0, b"\x01", fin=False) * 20_000,
}


@pytest.mark.parametrize("flood", list(FLOODS), ids=list(FLOODS))
async def test_tiny_frame_floods_are_closed_with_1008_and_cost_another_channel_nothing(server: RunningServer, flood: str) -> None:
    with trio.fail_after(15):
        async with on_air(server, "honest") as (host, listener, sid):
            async with steady_media(host, [listener], sid):
                abuser = await RawPeer.connect(server)
                while await abuser.write(FLOODS[flood]):
                    pass  # until the server closes: it must, and soon
                code, why = await abuser.close_frame()
    assert code == 1008, why
    assert "frames per second" in why or "fragments" in why


async def test_an_unmasked_frame_gets_close_1002_with_the_rule_it_broke(server: RunningServer) -> None:
    with trio.fail_after(5):
        abuser = await RawPeer.connect(server)
        await abuser.write(frame(0x2, b"abc", masked=False))
        assert await abuser.close_frame() == (1002, "a client's frames must be masked")
        async with open_wire(server.url) as honest:  # and the server serves the next client
            assert (await honest.request(Hello, version=limits.PROTOCOL_VERSION)).reason is Reason.CALL_FUNCTION_ERROR


async def test_a_member_who_floods_frames_leaves_rate_limited_not_held_for_resume(server: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(server.url) as watcher:
            assert (await watcher.request(Join, channel="room", user_id="watcher", role=HOST)).ok  # hosts see the audience come and go
            abuser = await RawPeer.connect(server)
            join = encode(Join(id=2, channel="room", user_id="flooder"))
            assert await abuser.write(frame(0x2, join))
            await next_push(watcher, ParticipantJoined)
            while await abuser.write(frame(0xA) * 5000):
                pass
            left = await next_push(watcher, ParticipantLeft, timeout=5)
    assert left.user_id == "flooder" and left.reason is Reason.RATE_LIMITED


# --- connections that never join -------------------------------------------------------------


@pytest.fixture
async def strict(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    """A server that closes a silent greeter after 0.3 s and keeps at most 3 connections
    outside a channel."""
    settings = attrs.evolve(fast_settings(data_dir, hello_timeout=0.3), max_unjoined=3)
    running: RunningServer = await nursery.start(serve, settings)
    yield running
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()


async def test_a_connection_that_never_says_hello_is_closed_though_it_answers_pings(strict: RunningServer) -> None:
    with trio.fail_after(5):
        async with open_wire(strict.url, hello=False) as silent:  # trio-websocket answers pings
            await silent.closed.wait()
            assert silent.ws.closed is not None and silent.ws.closed.code == 1008
            assert silent.ws.closed.reason == "no hello in time"


async def test_connections_outside_a_channel_are_capped_for_loopback_too(strict: RunningServer) -> None:
    with trio.fail_after(10):
        async with open_wire(strict.url) as a, open_wire(strict.url) as b, open_wire(strict.url):
            async with open_wire(strict.url, hello=False) as refused:
                error = await next_push(refused, Error)
                assert error.reason is Reason.RATE_LIMITED and "not in a channel" in error.message
                await refused.closed.wait()
                assert refused.ws.closed is not None and refused.ws.closed.code == 1008
            assert (await a.request(Join, channel="room", user_id="a")).ok
            assert (await b.request(Join, channel="room", user_id="b")).ok
            while True:  # once a heartbeat sweep has counted the joins, there is room again
                async with open_wire(strict.url, hello=False) as later:
                    with trio.move_on_after(0.2):
                        await later.closed.wait()
                    if not later.closed.is_set():
                        break


def test_a_stall_of_the_servers_own_never_refuses_an_honest_speaker() -> None:
    """Frames are judged when read: after the server stalls, a 20 ms speaker's frames of the
    stall arrive at once, and the default media limit must take all of them (up to 5 s)."""
    from airwave.actors.participant import SessionSettings
    from airwave.protocol.ratelimit import TokenBucket

    settings = SessionSettings()
    bucket = TokenBucket(settings.media_rate, settings.media_burst)
    now = 0.0
    for _ in range(500):  # ten seconds of speech, read as it was sent
        now += 0.02
        assert bucket.allow(now)
    now += 5.0  # the server reads nothing for 5 s, then the 250 frames sent meanwhile
    assert all(bucket.allow(now) for _ in range(250))
