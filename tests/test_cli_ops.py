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

import trio

from airwave.protocol import CustomRole, Join, Leave
from airwave.protocol.tokens import DEV_SECRET, verify_token
from airwave.wire import open_wire

ROOT = Path(__file__).resolve().parent.parent


def airwave(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "airwave.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_token_command_mints_a_token_the_secret_verifies(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-a-file\n")
    before = time.time()
    minted = airwave("token", "room-*", "--pattern", "--user", "dj", "--role", "0,1", "--ttl", "60", "--secret-file", str(secret))
    after = time.time()
    assert minted.returncode == 0, minted.stderr
    claims = verify_token(b"s3cret-from-a-file", minted.stdout.strip(), now=time.time())
    assert (claims.user_id, claims.roles) == ("dj", frozenset({CustomRole.ROLE_0, CustomRole.ROLE_1}))
    # exp is whole seconds, minted at some moment while the command ran (slow to start on a busy machine)
    assert claims.allows_channel("room-7") and int(before) + 60 <= claims.expires_at <= after + 60
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
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "10", "--cycle", "5", "--stay", "0.5", "2",
         "--channels", "1", "--listeners", "3", "--json"],
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


def readme_usage() -> dict[str, str]:
    """The README's usage block: each `airwave X` entry with its continuation lines, the
    CLIENT OPTIONS line where an entry refers to it, and the note on every command."""
    text = (ROOT / "README.md").read_text().split("## Using it", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    common = ""
    current = None
    for line in text.splitlines():
        if line.startswith("airwave "):
            current = line.split()[1]
            entries[current] = entries.get(current, "") + line  # a command may have two forms (token)
        elif line.startswith(" ") and current is not None:
            entries[current] += line
        else:
            current = None
            common += line + "\n"
    options = {kind: re.search(rf"^{kind} OPTIONS:.*$", common, re.M) for kind in ("CLIENT", "ADMIN")}
    for kind, found in options.items():
        entries = {name: entry.replace(f"[{kind} OPTIONS]", found.group(0) if found else "") for name, entry in entries.items()}
    return {name: entry + "\n" + common for name, entry in entries.items()}


def test_readme_usage_lists_every_flag_of_every_command() -> None:
    usage = readme_usage()
    top = airwave("--help").stdout
    commands = re.search(r"\{([a-z,]+)\}", top)
    assert commands is not None
    missing = []
    for command in commands.group(1).split(","):
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", airwave(command, "--help").stdout))
        missing += [f"{command} {flag}" for flag in sorted(flags) if flag not in usage.get(command, "")]
    missing += [f"airwave {flag}" for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", top) if flag not in usage.get("--version", "")]
    assert missing == []


def test_serve_help_explains_host_port_fsync_with_defaults_and_version_prints() -> None:
    text = " ".join(airwave("serve", "--help").stdout.split())  # argparse wraps lines
    assert "--host HOST the address to listen on;" in text and "(default 127.0.0.1)" in text
    assert "--port PORT the TCP port; 0 picks a free one (default 8765)" in text
    assert "--fsync {always,batch,never} the event log's durability:" in text and "(default batch)" in text
    from airwave import __version__

    version = airwave("--version")
    assert (version.returncode, version.stdout) == (0, f"airwave {__version__}\n")


def test_serve_allow_origin_lets_that_origin_in_and_log_level_works_after_the_subcommand(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--log-level", "debug", "--port", "0", "--data", str(tmp_path / "data"),
         "--allow-origin", "http://good.example", "--allow-origin", "https://also.example:8443/"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "listening on ws://" in line:
                port = int(line.rsplit(":", 1)[1].strip(" /\n"))
                break
        else:
            raise AssertionError("the server did not start")
        answers = {origin: handshake_status(port, origin)
                   for origin in ("http://good.example", "https://also.example:8443", "http://evil.example", None)}
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=15)
    assert answers == {"http://good.example": 101, "https://also.example:8443": 101, "http://evil.example": 403, None: 101}
    assert " DEBUG " in rest
    refused = airwave("serve", "--allow-origin", "localhost:3000", "--data", str(tmp_path / "x"))
    assert refused.returncode == 2 and refused.stderr.startswith("airwave: --allow-origin 'localhost:3000' is not an origin")


def handshake_status(port: int, origin: str | None) -> int:
    """The HTTP status a WebSocket upgrade from ``origin`` gets (what a browser would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        headers = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
        if origin is not None:
            headers.append(f"Origin: {origin}")
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        return int(sock.recv(200).split(b" ", 2)[1])


FAKE_PYTHON3 = """#!/usr/bin/env bash
# Stands in for python3 on a fresh clone: `python3 -m venv .venv` makes a venv whose python
# logs pip and pytest calls instead of running them (and runs `-c` code for real).
[ "$1 $2" = "-m venv" ] || exit 9
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'PY'
#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec {real} "$@"; fi
echo "python $* warnings=${{PYTHONWARNINGS:-}}" >> "$SCRIPT_LOG"
PY
printf '#!/usr/bin/env bash\\necho "airwave $*" >> "$SCRIPT_LOG"\\n' > "$3/bin/airwave"
chmod +x "$3/bin/python" "$3/bin/airwave"
echo "venv $3" >> "$SCRIPT_LOG"
"""


def test_quick_start_scripts_set_up_once_and_reinstall_only_when_pyproject_changes(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    for name in ("scripts/demo.sh", "scripts/test.sh", "pyproject.toml"):
        (clone / name).write_text((ROOT / name).read_text())
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(FAKE_PYTHON3.format(real=sys.executable))
    (fake_bin / "python3").chmod(0o755)
    log = tmp_path / "log"
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "SCRIPT_LOG": str(log), "HOME": str(tmp_path)}

    def run(script: str, *args: str) -> list[str]:
        log.write_text("")
        done = subprocess.run(["bash", str(clone / "scripts" / script), *args], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines()

    install = "python -m pip install --quiet -e {} warnings=ignore:Editable installation"
    upgrade = "python -m pip install --quiet --upgrade pip warnings="
    assert run("demo.sh", "--dir", "x") == ["venv .venv", upgrade, install.format("."), "airwave demo --dir x"]
    assert run("demo.sh") == ["airwave demo"]
    assert run("test.sh", "-q") == [install.format(".[test]"), "python -m pytest -n 2 --dist loadgroup -q warnings="]
    assert run("test.sh") == ["python -m pytest -n 2 --dist loadgroup warnings="]
    assert run("demo.sh") == ["airwave demo"]  # the test install has everything the demo needs
    with open(clone / "pyproject.toml", "a") as pyproject:
        pyproject.write("# a new dependency, say\n")
    assert run("demo.sh") == [install.format("."), "airwave demo"]
    assert run("test.sh") == [install.format(".[test]"), "python -m pytest -n 2 --dist loadgroup warnings="]


def test_serve_metrics_serves_prometheus_text_and_refuses_a_bad_address(tmp_path: Path) -> None:
    assert airwave("serve", "--metrics", "9464", "--data", str(tmp_path / "x")).stderr.startswith(
        "airwave: --metrics '9464' is not HOST:PORT"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--port", "0", "--data", str(tmp_path / "data"), "--metrics", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "metrics on http://" in line:
                port = int(line.rsplit(":", 1)[1].split("/")[0])
                break
        else:
            raise AssertionError("no metrics line")
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while data := conn.recv(65536):
                response += data
    finally:
        server.terminate()
        server.communicate(timeout=15)
    assert response.startswith(b"HTTP/1.1 200") and b"\nairwave_channels 0.0\n" in response
    assert server.returncode == 0


def test_serve_config_file_sets_every_flag_and_flags_override_it_and_json_logs_name_who(tmp_path: Path) -> None:
    """Issue 17 section 4: `serve --config airwave.toml` (flags win) and `--log-format json`."""
    config = tmp_path / "airwave.toml"
    config.write_text(
        f'port = 1\ndata = "{tmp_path / "data"}"\nfsync = "always"\nallow-origin = ["http://good.example"]\n'
        'log-format = "json"\nstats_interval = 60\ninsecure = false\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--config", str(config), "--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        lines = []
        for line in server.stderr:
            lines.append(json.loads(line))  # every line is one JSON object
            if "listening on ws://" in lines[-1]["event"]:
                port = int(lines[-1]["event"].rsplit(":", 1)[1].strip(" /"))
                break
        else:
            raise AssertionError("the server did not start")
        assert handshake_status(port, "http://good.example") == 101 and handshake_status(port, "http://evil.example") == 403

        async def session() -> None:
            async with open_wire(f"ws://127.0.0.1:{port}/") as wire:
                assert (await wire.request(Join, channel="news", user_id="anchor")).ok
                assert (await wire.request(Leave)).ok

        trio.run(session)
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=15)
    lines += [json.loads(line) for line in rest.splitlines()]
    assert all(set(line) >= {"time", "level", "logger", "event"} for line in lines)
    (join,) = [line for line in lines if line["event"].startswith("join news")]
    assert (join["channel"], join["user"]) == ("news", "anchor")
    (joined,) = [line for line in lines if " joined news as anchor" in line["event"]]
    assert (joined["channel"], joined["user"]) == ("news", "anchor") and joined["connection"].startswith("127.0.0.1:")
    for text, error in (("prot = 1", "unknown setting 'prot'"), ("port = [1", "is not valid TOML"), ("insecure = 1", "true or false")):
        config.write_text(text)
        refused = airwave("serve", "--config", str(config))
        assert refused.returncode == 2 and error in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
