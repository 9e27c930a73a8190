"""A real `nats-server -js` for the cluster tests: its own temp dir, 127.0.0.1, a free port.

One server per test module (the module's fixture), so the cluster tests pay its start-up
once; each test that needs a clean stream deletes it (`fresh_stream`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from airwave.actors.cluster import NatsBridge, ensure_stream, open_bridge
from airwave.actors.cluster.subjects import EVENT_STREAM, LEASE_BUCKET


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class NatsServer:
    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts (or restarts, same port and store) and waits until it accepts clients."""
        binary = shutil.which("nats-server")
        assert binary, "nats-server is not installed (scripts/test.sh installs the Debian package)"
        self.process = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store), "--no_advertise"],
            stdout=subprocess.DEVNULL, stderr=(self.store / "server.log").open("ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"nats-server exited: {(self.store / 'server.log').read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as probe:
                    if probe.recv(4) == b"INFO":
                        return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("nats-server did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def running_nats(directory: Path) -> Iterator[NatsServer]:
    directory.mkdir(parents=True, exist_ok=True)
    server = NatsServer(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server for the whole test module."""
    with running_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


# Everything Airwave keeps in JetStream: the event stream and the KV buckets' streams.
AIRWAVE_STREAMS = (EVENT_STREAM, f"KV_{LEASE_BUCKET}", "KV_airwave_counters")


async def reset_jetstream(bridge: NatsBridge) -> None:
    """Deletes Airwave's streams and buckets, so a test starts from an empty cluster."""

    async def reset() -> None:
        names = {info.config.name for info in await bridge.js.streams_info()}
        for name in AIRWAVE_STREAMS:
            if name in names:
                await bridge.js.delete_stream(name)

    await bridge.run(reset)


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[NatsBridge]:
    """A bridge to the module's NATS, Airwave's streams deleted and the event stream made anew."""
    async with open_bridge(nats_server.url, name="test") as opened:
        await reset_jetstream(opened)
        await ensure_stream(opened)
        yield opened
