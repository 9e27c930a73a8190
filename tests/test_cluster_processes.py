"""Cluster mode with real processes: three `airwave serve --cluster` nodes on loopback and
one real `nats-server -js`, started once for this module; clients are the airwave CLI
(real Opus through PyAV) and SDK wires over loopback WebSockets.

What is promised: a listener on one node hears a host on another; a join by id or by uri
on a node that does not own the channel is served as on one server; presence and a stop
cross nodes; a join storm spread over the nodes gets every join answered, and every node
counts the same members.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from airwave.protocol import Join, Left, MemberCount, ParticipantJoined, Query, Reason, Stop
from airwave.wire import Wire, open_wire

from audio_checks import dominant_frequency, read_wav, sounding_span
from helpers import HOST, next_push, ok
from natsserver import NatsServer, nats_server  # noqa: F401 (fixture)
from test_cluster_node import start_node_process


def _wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "a node process exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not listen within 20 s")


@pytest.fixture(scope="module")
def nodes(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """node-a, node-b, node-c as `airwave serve --cluster` processes: their URLs."""
    directory = tmp_path_factory.mktemp("nodes")
    started = [start_node_process(nats_server, f"node-{n}", directory) for n in "abc"]
    try:
        for process, url in started:
            _wait_listening(url, process)
        yield [url for _, url in started]
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def airwave(*args: str) -> subprocess.CompletedProcess[str]:
    done = await trio.run_process(
        [sys.executable, "-m", "airwave.cli", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_cluster_processes_listener_on_one_node_hears_a_host_on_another(nodes: list[str], tmp_path: Path) -> None:
    a, b, c = nodes
    output = tmp_path / "heard.wav"
    runs: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run(name: str, *args: str) -> None:
        runs[name] = await airwave(*args)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery, open_wire(c) as asker:
            nursery.start_soon(run, "host", "host", "radio", "--tone", "440", "--url", a, "--user", "dj", "--duration", "30")
            while not (await asker.request(Query, channel="radio")).ok:  # node-c asks the owner
                await trio.sleep(0.05)
            await run("listen", "listen", "radio", "--output", str(output), "--url", b, "--user", "fan", "--duration", "2.5")
            await run("stop", "stop", "radio", "--url", c, "--user", "boss")  # a third node stops it
    assert runs["listen"].returncode == 0, runs["listen"].stderr
    assert "joined 'radio' as fan (audience); hosts: dj" in runs["listen"].stdout
    assert runs["stop"].returncode == 0, runs["stop"].stderr
    assert runs["host"].returncode == 0 and "over [9]" in runs["host"].stdout, runs["host"]
    pcm = read_wav(output)
    first, last = sounding_span(pcm)
    assert last - first >= 50, "less than a second of tone"  # 20 ms frames
    assert abs(dominant_frequency(pcm[first * 960 : (last + 1) * 960]) - 440.0) < 3.0


async def test_cluster_processes_joins_presence_and_stop_cross_nodes(nodes: list[str]) -> None:
    a, b, c = nodes
    with trio.fail_after(15):
        async with open_wire(a) as host, open_wire(b) as cohost, open_wire(b) as fan, open_wire(a) as alice, open_wire(c) as by_uri:
            created = ok(await host.request(Join, channel="presence", user_id="host", role=HOST))
            ok(await cohost.request(Join, channel="presence", user_id="cohost", role=HOST))  # by id, on a non-owner
            ok(await fan.request(Join, channel="presence", user_id="fan"))
            joined = ok(await by_uri.request(Join, channel="airwave:presence", user_id="uri-fan", uri_mode=True))
            assert joined.result["channel_number"] == created.result["channel_number"]
            assert joined.result["member_count"] == 4
            ok(await alice.request(Join, channel="presence", user_id="alice"))  # on the owner's node
            seen = []
            while "alice" not in seen:
                seen.append((await next_push(cohost, ParticipantJoined)).participant.user_id)
            assert seen == ["fan", "uri-fan", "alice"]
            ok(await host.request(Stop))
            for wire in (cohost, fan, by_uri, alice):
                assert (await next_push(wire, Left)).reason is Reason.OVER


async def test_cluster_processes_join_storm_spread_over_three_nodes(nodes: list[str]) -> None:
    count = 60
    async with open_wire(nodes[0]) as host, trio.open_nursery() as nursery:
        ok(await host.request(Join, channel="storm", user_id="host", role=HOST))
        wires: list[Wire] = []

        async def join(n: int) -> None:
            wire = await nursery.start(_hold_wire, nodes[n % 3])
            wires.append(wire)
            reply = ok(await wire.request(Join, channel="storm", user_id=f"fan-{n}"))
            assert reply.result["channel_id"] == "storm"

        with trio.fail_after(30):
            async with trio.open_nursery() as joining:
                for n in range(count):
                    joining.start_soon(join, n)
        with trio.fail_after(10):
            for wire in wires:  # each node counts the members of every node
                while (await next_push(wire, MemberCount, timeout=5)).count != count + 1:
                    pass
            for url in nodes:
                async with open_wire(url) as asker:
                    assert ok(await asker.request(Query, channel="storm")).result["client_count"] == count + 1
        nursery.cancel_scope.cancel()


async def _hold_wire(url: str, *, task_status: trio.TaskStatus[Wire] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_wire(url) as wire:
        task_status.started(wire)
        await trio.sleep_forever()
