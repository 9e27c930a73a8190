"""Shared fixtures: a real server on a loopback port with a real on-disk event log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from airwave.actors.participant import SessionSettings
from airwave.actors.server import RunningServer, ServerSettings, serve

# The suite runs in two workers (scripts/test.sh: pytest-xdist, --dist loadgroup), one test file
# at a time each. These files load both cores by themselves (Chromium, several server
# processes, nats-server, the benchmark, the soak) and hold real-time bounds (speech heard,
# leases renewed within their TTL): they take turns in one worker, never two at once, while
# the other worker runs the rest.
TAKE_TURNS = ("test_browser.py", "test_cluster_", "test_bench_smoke.py", "test_cli_ops.py", "test_recording.py", "test_cdn.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        group = "take-turns" if name.startswith(TAKE_TURNS) else name
        item.add_marker(pytest.mark.xdist_group(group))


def fast_settings(data_dir: Path, **session: float | bytes | None) -> ServerSettings:
    """Short timers (design decision 16): heartbeats and the resume grace in tenths of a second.
    ``session`` overrides any SessionSettings field (``secret=b"..."`` for token mode)."""
    return ServerSettings(
        port=0,
        data_dir=data_dir,
        session=SessionSettings(**{"heartbeat_time": 0.2, "heartbeat_timeout": 0.6, "resume_grace": 0.5, "heartbeat_sweep": 0.05, **session}),
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir))
    yield running
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()
