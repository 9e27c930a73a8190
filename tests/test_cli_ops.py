"""Operator-facing commands: `airwave token`, the open-mode guard of `airwave serve`, and a
short bounded soak run that must find no leak."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from airwave.protocol import CustomRole
from airwave.protocol.tokens import DEV_SECRET, verify_token

ROOT = Path(__file__).resolve().parent.parent


def airwave(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "airwave.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_token_command_mints_a_token_the_secret_verifies(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-a-file\n")
    minted = airwave("token", "room-*", "--pattern", "--user", "dj", "--role", "0,1", "--ttl", "60", "--secret-file", str(secret))
    assert minted.returncode == 0, minted.stderr
    claims = verify_token(b"s3cret-from-a-file", minted.stdout.strip(), now=time.time())
    assert (claims.user_id, claims.roles) == ("dj", frozenset({CustomRole.ROLE_0, CustomRole.ROLE_1}))
    assert claims.allows_channel("room-7") and 59 <= claims.expires_at - time.time() <= 61
    dev = airwave("token", "x", "--user", "u", "--role", "1", "--dev")
    assert verify_token(DEV_SECRET, dev.stdout.strip(), now=time.time()).user_id == "u"
    assert airwave("token", "x", "--user", "u", "--role", "1").returncode == 2  # no secret at all


def test_serve_refuses_open_mode_and_dev_mode_off_loopback(tmp_path: Path) -> None:
    open_mode = airwave("serve", "--host", "0.0.0.0", "--data", str(tmp_path / "a"))
    assert open_mode.returncode == 2 and "refusing to serve open mode" in open_mode.stderr
    dev_mode = airwave("serve", "--host", "0.0.0.0", "--dev", "--data", str(tmp_path / "b"))
    assert dev_mode.returncode == 2 and "loopback only" in dev_mode.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_soak_short_run_churns_without_leaking_tasks() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "17", "--cycle", "8", "--channels", "1",
         "--listeners", "3", "--json"],
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["verdict"]["tasks"] == "no leak", report["verdict"]
    clients = report["clients"]
    assert clients["joins"] == clients["leaves"] > 0 and not clients["errors"]
    assert clients["packets_received"] > 0
    assert report["server"]["exit_code"] == 0 and report["server"]["error_lines"] == 0


def test_serve_max_joining_lets_one_connection_join_at_a_time(tmp_path: Path) -> None:
    assert airwave("serve", "--max-joining", "0", "--data", str(tmp_path / "x")).returncode == 2
    server = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--port", "0", "--data", str(tmp_path / "data"),
         "--max-joining", "1", "--stats-interval", "0.1"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "listening on ws://" in line:
                port = int(line.rsplit(":", 1)[1].strip(" /\n"))
                break
        # Two connections that never say a word: the first holds the only slot for the
        # admission hold (0.5 s), the second waits for it, then holds it in turn.
        with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)):
            time.sleep(1.0)
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=15)
    joining = [int(m) for m in re.findall(r"stats .*\bjoining=(\d+)", rest)]
    assert server.returncode == 0
    assert max(joining) == 1 and joining.count(1) >= 5, joining  # never 2, and busy for ~1 s
