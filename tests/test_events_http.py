"""`GET /events` on the operator's port (issue 17 section 3, the pull form), over real
sockets: long-poll and Server-Sent Events, both in log order and equal to the replay JSON."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from airwave.actors.log.replay import event_json, replay_events
from airwave.actors.server import RunningServer, serve
from airwave.protocol import CustomRole, Join, Leave
from airwave.protocol.tokens import mint_admin_token, mint_token
from conftest import fast_settings
from helpers import ok

from airwave.wire import open_wire

SECRET = b"events are for operators"


async def start(nursery: trio.Nursery, data_dir: Path, secret: bytes | None = None) -> RunningServer:
    settings = attrs.evolve(fast_settings(data_dir, secret=secret), metrics_address=("127.0.0.1", 0))
    server: RunningServer = await nursery.start(serve, settings)
    return server


@pytest.fixture
async def operated(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    server = await start(nursery, data_dir)
    yield server
    server.shutdown()
    with trio.fail_after(10):
        await server.stopped.wait()


async def get(server: RunningServer, query: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A plain HTTP client (urllib on a worker thread): the answer's status and JSON body."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/events{query}", headers=headers or {})

    def fetch() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    return await trio.to_thread.run_sync(fetch)


def replayed(server: RunningServer) -> list[dict[str, Any]]:
    return [event_json(item) for item in replay_events(server.event_log.directory)]


async def test_long_poll_pages_through_the_log_and_waits_for_the_next_event(operated: RunningServer) -> None:
    with trio.fail_after(20):
        async with open_wire(operated.url) as host, open_wire(operated.url) as fan:
            ok(await host.request(Join, channel="c", user_id="dj", role=CustomRole.ROLE_0))
            ok(await fan.request(Join, channel="c", user_id="fan"))
            status, page = await get(operated, "?after=0")
            assert status == 200 and page["events"] == replayed(operated) and page["after"] == 3
            assert (await get(operated, "?after=1&limit=1"))[1] == {"events": replayed(operated)[1:2], "after": 2}
            assert (await get(operated, "?after=3"))[1] == {"events": [], "after": 3}

            answered: list[tuple[int, Any]] = []

            async def poll() -> None:
                answered.append(await get(operated, "?after=3&wait=10"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.3)  # the poll is waiting: nothing after seq 3 yet
                assert answered == []
                asked = trio.current_time()
                ok(await fan.request(Leave))
            assert trio.current_time() - asked < 2
            ((status, page),) = answered
            assert [e["type"] for e in page["events"]] == ["participant_left"] and page["after"] == 4
            assert page["events"] == replayed(operated)[3:]
            for query, error in (("?after=x", "after must be a number"), ("?limit=5000", "limit must be in 1..1000"),
                                 ("?since=3", "unknown parameter")):
                status, body = await get(operated, query)
                assert status == 400 and error in body["error"], query


def dechunked(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (as far as it has arrived)."""
    out = b""
    while b"\r\n" in body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


async def read_sse(port: int, after: int, last_event_id: int | None, count: int) -> list[dict[str, str]]:
    """``count`` Server-Sent Events read off a raw socket, each as its fields."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
    await stream.send_all(
        f"GET /events?after={after} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n".encode()
    )
    data = b""
    async with stream:
        while True:
            head, _, body = data.partition(b"\r\n\r\n")
            text = dechunked(body).decode()
            if text.count("\n\n") >= count:
                break
            data += await stream.receive_some(65536)
    assert b"200 OK" in head and b"text/event-stream" in head
    events = []
    for block in text.split("\n\n")[:count]:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        events.append(fields)
    return events


async def test_server_sent_events_stream_live_events_and_resume_from_last_event_id(operated: RunningServer) -> None:
    with trio.fail_after(20):
        async with open_wire(operated.url) as host:
            ok(await host.request(Join, channel="s", user_id="dj", role=CustomRole.ROLE_0))
            port = operated.metrics_port
            assert port is not None
            got: list[dict[str, str]] = []

            async def listen() -> None:
                got.extend(await read_sse(port, 0, None, 4))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                async with open_wire(operated.url) as fan:
                    ok(await fan.request(Join, channel="s", user_id="fan"))
                    ok(await fan.request(Leave))
            assert [(e["id"], e["event"]) for e in got] == [
                ("1", "channel_created"), ("2", "participant_joined"), ("3", "participant_joined"), ("4", "participant_left"),
            ]
            assert [json.loads(e["data"]) for e in got] == replayed(operated)
            # A reconnecting EventSource sends the last id it saw; the stream goes on from there.
            again = await read_sse(port, 0, 3, 1)
            assert [(e["id"], e["event"]) for e in again] == [("4", "participant_left")]


async def test_with_a_secret_events_need_an_admin_token(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start(nursery, data_dir, SECRET)
    member = mint_token(SECRET, channel="x", user_id="dj", roles=[CustomRole.ROLE_0], now=time.time(), ttl=60)
    admin = mint_admin_token(SECRET, user_id="ops", now=time.time(), ttl=60)
    with trio.fail_after(20):
        assert (await get(server, "?after=0"))[0] == 401
        assert (await get(server, "?after=0", {"Authorization": "Bearer not.a.token"}))[0] == 401
        assert (await get(server, "?after=0", {"Authorization": f"Bearer {member}"}))[0] == 403
        assert await get(server, "?after=0", {"Authorization": f"Bearer {admin}"}) == (200, {"events": [], "after": 0})
    server.shutdown()
