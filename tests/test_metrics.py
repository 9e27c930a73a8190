"""/metrics: what a real session did, as Prometheus reads it over a real socket."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from airwave.actors.core.histogram import Histogram
from airwave.actors.server import RunningServer, serve
from airwave.protocol import CustomRole, Join, Leave, SetRole, channel_info_from_wire
from airwave.wire import open_wire
from conftest import fast_settings
from helpers import ok, steady_media, wait_until

HOST = int(CustomRole.ROLE_0)


@pytest.fixture
async def metered(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    settings = attrs.evolve(fast_settings(data_dir), metrics_address=("127.0.0.1", 0))
    server: RunningServer = await nursery.start(serve, settings)
    yield server
    server.shutdown()
    await server.stopped.wait()


async def http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(5):
            while data := await stream.receive_some():
                response += data
    return response


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"content-type: text/plain; version=" in head.lower()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_a_real_session(metered: RunningServer) -> None:
    port = metered.metrics_port
    assert port
    with trio.fail_after(20):
        async with open_wire(metered.url) as host, open_wire(metered.url) as fan, open_wire(metered.url) as idle:
            joined = ok(await host.request(Join, channel="live", user_id="host", role=HOST, upload=True))
            sid = channel_info_from_wire(joined.result).self_sid
            ok(await fan.request(Join, channel="live", user_id="fan"))
            assert (await fan.request(Join, channel="live", user_id="fan")).reason.reason_name == "already_joined"
            assert (await fan.request(SetRole, user_id="host", role=HOST)).reason.reason_name == "no_permission"
            async with steady_media(host, [fan], sid, min_frames=30) as flow:
                pass
            # The audience member may not upload: refused, and counted as such.
            from airwave.protocol import encode_client_media

            await fan.send_bytes(encode_client_media(0, 0, b"\xf8\x00", level=10))
            await wait_until(lambda: any(s.stats.media_refused for s in metered.gateway.sessions()), "the refusal")

            live = await scrape(port)
            assert value(live, "airwave_connections", state="joined") == 2
            assert value(live, "airwave_connections", state="idle") == 1
            assert value(live, "airwave_channels") == 1
            assert value(live, "airwave_members", role="custom_role_0") == 1
            assert value(live, "airwave_members", role="custom_role_1") == 1  # the audience
            assert value(live, "airwave_requests_total", type="join", outcome="none") == 2
            assert value(live, "airwave_requests_total", type="join", outcome="already_joined") == 1
            assert value(live, "airwave_requests_total", type="set_role", outcome="no_permission") == 1
            assert value(live, "airwave_requests_total", type="hello", outcome="none") == 3
            assert value(live, "airwave_joins_total") == 2
            assert value(live, "airwave_media_packets_in_total") >= flow.sent + 1
            assert value(live, "airwave_frames_out_total") >= flow.sent
            assert value(live, "airwave_drops_total", cause="no_permission") == 1
            # Every join waited for its log append: 3 join requests observed, 2 group fsyncs at least.
            assert value(live, "airwave_join_seconds_count") == 3
            assert value(live, "airwave_join_seconds_bucket", le="+Inf") == 3
            assert value(live, "airwave_log_fsync_seconds_count") >= 2
            assert value(live, "airwave_log_appends_total") >= 2
            assert value(live, "airwave_log_events_total", type="participant_joined", reason="") == 2

            ok(await fan.request(Leave))
            await idle.ws.aclose()
            await wait_until(lambda: metered.gateway.connections == 2, "the idle connection to end")
            after = await scrape(port)
            assert value(after, "airwave_leaves_total", reason="quit") == 1
            assert value(after, "airwave_connections", state="idle") == 1  # the fan, left
            # Counters of a connection that ended are kept, never going backwards.
            assert value(after, "airwave_requests_total", type="hello", outcome="none") == 3
            assert value(after, "airwave_media_packets_in_total") >= value(live, "airwave_media_packets_in_total")


async def test_the_metrics_endpoint_answers_only_get_metrics(metered: RunningServer) -> None:
    port = metered.metrics_port
    assert port
    assert (await http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert (await http(port, b"\x00\x01 not http\r\n\r\n")).startswith(b"HTTP/1.1 400")
    head = await http(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert await scrape(port)  # and it still serves


def test_histogram_buckets_are_cumulative_and_bounds_checked() -> None:
    histogram = Histogram((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [(0.01, 2), (0.1, 3), (float("inf"), 4)]
    assert histogram.count == 4 and histogram.total == pytest.approx(3.065)
    with pytest.raises(ValueError):
        Histogram((0.1, 0.01))


def test_a_server_without_metrics_does_not_load_prometheus() -> None:
    import subprocess

    code = "import sys, airwave.actors.server; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
