"""First contact: every mistake a newcomer makes with the `airwave` command is one line on
stderr that says what to do, and a non-zero exit; never a traceback, never a half-done join."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from airwave.actors.server import RunningServer


@pytest.fixture
def web_server() -> Iterator[str]:
    """A plain HTTP server on loopback: something is listening, and it is not Airwave."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    httpd.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_cli_errors_are_one_line_that_says_what_to_do(
    server: RunningServer, web_server: str, closed_port: int, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the sounds you are looking for\n")
    out = str(tmp_path / "heard.wav")
    cases: dict[str, tuple[list[str], int, str]] = {
        "no scheme": (["listen", "radio", "--output", out, "--url", "127.0.0.1:8765"],
                      2, "airwave: --url '127.0.0.1:8765' has no scheme: write it as ws://127.0.0.1:8765"),
        "http": (["host", "radio", "--tone", "440", "--url", "http://127.0.0.1:8765/"],
                 2, "airwave: --url http://127.0.0.1:8765/ is a web address: Airwave speaks WebSocket, use ws://127.0.0.1:8765/"),
        "garbage": (["stop", "radio", "--url", "not a url"], 2, "is not a URL: use ws://HOST:PORT/"),
        "no host": (["stop", "radio", "--url", "ws://"], 2, "is not a usable address"),
        "bad port": (["stop", "radio", "--url", "ws://127.0.0.1:99999/"], 2, "has a port that is not a number"),
        "no server": (["listen", "radio", "--output", out, "--url", f"ws://127.0.0.1:{closed_port}/"],
                      1, f"connection refused; is `airwave serve` running at 127.0.0.1:{closed_port}?"),
        "no node of a list": (["listen", "radio", "--output", out, "--url", f"ws://127.0.0.1:{closed_port}/,ws://127.0.0.1:{closed_port}/x"],
                              1, f"running at 127.0.0.1:{closed_port}? (and none of the 1 before it in --url)"),
        "bad node in a list": (["host", "radio", "--tone", "440", "--url", f"{server.url},127.0.0.1:9"],
                               2, "airwave: --url '127.0.0.1:9' has no scheme: write it as ws://127.0.0.1:9"),
        "admin asks one node": (["admin", "channels", "--url", f"{server.url},{server.url}"],
                                2, "airwave: --url takes one address here, not 2: this command asks one node"),
        "not airwave": (["listen", "radio", "--output", out, "--url", web_server],
                        1, f"airwave: {web_server} is not an Airwave server: it answered the WebSocket handshake with HTTP 200; check --url"),
        "input not audio": (["host", "radio", "--input", str(notes), "--url", server.url],
                            2, f"airwave: cannot read --input {notes} as audio: Invalid data found when processing input"),
        "input a directory": (["host", "radio", "--input", str(tmp_path), "--url", server.url],
                              2, f"airwave: --input {tmp_path} is a directory: give an audio file"),
        "output nowhere": (["listen", "radio", "--output", str(tmp_path / "missing" / "heard.wav"), "--url", server.url],
                           2, f"there is no directory {tmp_path / 'missing'} (create it first)"),
        "role 5": (["token", "radio", "--user", "dj", "--role", "5", "--dev"],
                   2, "airwave: --role 5: give role indexes 0 (host), 1 (audience), 2 or 3, comma-separated"),
        "secret file missing": (["token", "radio", "--user", "dj", "--role", "0", "--secret-file", str(tmp_path / "nope")],
                                2, f"airwave: cannot read the secret file {tmp_path / 'nope'}: No such file or directory"),
    }
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def run(name: str, args: list[str]) -> None:
        results[name] = await trio.run_process([sys.executable, "-m", "airwave.cli", *args],
                                               capture_stdout=True, capture_stderr=True, check=False)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name, (args, _, _) in cases.items():
                nursery.start_soon(run, name, args)
    wrong = []  # every case that fails, not just the first
    for name, (_, code, expected) in cases.items():
        stderr = results[name].stderr.decode()
        one_line = len(stderr.splitlines()) == 1 and "Traceback" not in stderr
        if not one_line or expected not in stderr or results[name].returncode != code:
            wrong.append(f"{name}: exit {results[name].returncode} (want {code}): {stderr[-300:]!r}")
    assert not wrong, "\n".join(wrong)
    assert server.registry.find("radio") is None, "nobody joined: every input was checked before connecting"
    assert not Path(out).exists()
