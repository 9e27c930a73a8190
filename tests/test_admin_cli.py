"""`airwave admin ...`, `airwave token --admin` and `airwave top` as an operator runs them:
real processes against a real server, `top` in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from airwave.actors.server import RunningServer, serve
from airwave.protocol import CustomRole, Join, Left, encode_client_media
from airwave.protocol.tokens import verify_admin_token
from conftest import fast_settings
from helpers import next_push, ok
from test_cli import airwave

from airwave.wire import open_wire

ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]|\x1b[()][A-Z0-9]")


async def test_admin_cli_lists_as_json_and_tables_and_kicks(server: RunningServer) -> None:
    with trio.fail_after(30):
        async with open_wire(server.url) as host, open_wire(server.url) as fan:
            ok(await host.request(Join, channel="show", user_id="dj", role=CustomRole.ROLE_0, upload=True, title="Late show"))
            ok(await fan.request(Join, channel="show", user_id="fan"))
            listed = await airwave("admin", "channels", "--json", "--url", server.url)
            assert listed.returncode == 0, listed.stderr
            (channel,) = json.loads(listed.stdout)
            assert (channel["channel_id"], channel["title"], channel["members"], channel["speakers"]) == ("show", "Late show", 2, 1)
            table = await airwave("admin", "members", "show", "--url", server.url)
            assert table.returncode == 0, table.stderr
            header, dj, listener = table.stdout.splitlines()
            assert header.split()[:4] == ["USER", "NAME", "ROLE", "UPLOAD"]
            assert dj.split()[:3] == ["dj", "0", "on"] and listener.split()[:3] == ["fan", "1", "off"]
            kicked = await airwave("admin", "kick", "show", "fan", "--url", server.url)
            assert (kicked.returncode, kicked.stdout) == (0, "kicked fan from show\n")
            assert (await next_push(fan, Left)).channel == "show"
            missing = await airwave("admin", "kick", "show", "fan", "--url", server.url)
            assert missing.returncode == 1 and missing.stderr.strip().endswith("not_found [200]")
            assert "Traceback" not in missing.stderr
            short = await airwave("admin", "mute", "show", "--url", server.url)
            assert (short.returncode, short.stderr.strip()) == (2, "airwave: usage: airwave admin mute CHANNEL USER")


async def test_admin_cli_with_a_secret_needs_an_admin_token(nursery: trio.Nursery, data_dir: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("operators-only\n")
    running: RunningServer = await nursery.start(serve, fast_settings(data_dir, secret=b"operators-only"))
    with trio.fail_after(30):
        minted = await airwave("token", "--admin", "--user", "ops", "--secret-file", str(secret_file))
        assert minted.returncode == 0, minted.stderr
        assert verify_admin_token(b"operators-only", minted.stdout.strip(), now=time.time()) == "ops"
        refused = await airwave("admin", "channels", "--url", running.url)
        assert refused.returncode == 1 and "no_permission [201]" in refused.stderr
        with_token = await airwave("admin", "channels", "--url", running.url, "--token", minted.stdout.strip())
        assert (with_token.returncode, with_token.stdout) == (0, "no live channels\n"), with_token.stderr
        from_secret = await airwave("admin", "channels", "--url", running.url, "--secret-file", str(secret_file))
        assert from_secret.returncode == 0, from_secret.stderr
        mixed = await airwave("token", "room", "--admin", "--user", "ops", "--secret-file", str(secret_file))
        assert mixed.returncode == 2 and "admin token opens no channel" in mixed.stderr
    running.shutdown()


def _start_top(url: str) -> tuple[subprocess.Popen[bytes], int]:
    master, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "30", "TERM": "xterm-256color"}
    top = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "top", "--url", url, "--interval", "0.2"],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True,
    )
    os.close(terminal)
    return top, master


async def _screen_until(master: int, pattern: re.Pattern[str], timeout: float = 10.0) -> str:
    """What the terminal showed (escape sequences removed) once ``pattern`` is on it."""
    shown = b""
    stream = trio.lowlevel.FdStream(os.dup(master))
    with trio.fail_after(timeout):
        while not pattern.search(ANSI.sub(b"", shown).decode(errors="replace")):
            shown += await stream.receive_some(65536)
    await stream.aclose()
    return ANSI.sub(b"", shown).decode(errors="replace")


@pytest.mark.parametrize("how", ["q", "ctrl-c"])
async def test_top_in_a_terminal_shows_the_live_channel_and_quits(server: RunningServer, how: str) -> None:
    with trio.fail_after(30):
        async with open_wire(server.url) as host, open_wire(server.url) as fan:
            ok(await host.request(Join, channel="live-room", user_id="dj", role=CustomRole.ROLE_0, upload=True))
            ok(await fan.request(Join, channel="live-room", user_id="fan"))
            top, master = _start_top(server.url)
            try:
                async def speak() -> None:
                    for seq in range(10_000):
                        await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8\xff\xfe"))
                        await trio.sleep(0.02)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(speak)
                    # The row of live-room: 2 members, 1 host, 1 speaker, then packets/s in
                    # (~50 from a 20 ms speaker) once two refreshes have been compared.
                    row = re.compile(r"live-room\D+\d+\D+2\D+1\D+1\D+([1-9]\d)\D+([1-9]\d)")
                    screen = await _screen_until(master, row)
                    assert "1 channel(s), 2 member(s), 1 speaking" in screen
                    if how == "q":
                        os.write(master, b"q")
                    else:
                        top.send_signal(signal.SIGINT)
                    with trio.fail_after(5):
                        while top.poll() is None:
                            await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
                assert top.returncode == 0
            finally:
                if top.poll() is None:
                    top.kill()
                os.close(master)
