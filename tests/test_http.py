"""Plain HTTP on the WebSocket's port (issue 15): the web page and its files, 404 and 400,
no path outside the web folder, and the upgrade on the same port unchanged. Real server,
real sockets on 127.0.0.1, raw bytes on the wire as a browser or an attacker sends them."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket

from airwave.actors.net.http import Site, route
from airwave.actors.server import RunningServer, serve
from airwave.protocol import Ping
from airwave.wire import open_wire
from conftest import fast_settings

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert re.fullmatch(r"HTTP/1\.1 \d{3}( [A-Za-z ]*)?", status_line), status_line
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


async def exchange(port: int, request: bytes, *, head_only: bool = False) -> Response:
    """Sends ``request`` as is and reads until the server closes (one request a connection),
    or with ``head_only`` until the response head is complete (a 101 stays open)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            received = b""
            while not (head_only and b"\r\n\r\n" in received) and (data := await stream.receive_some(65536)):
                received += data
    return parse_response(received)


async def get(port: int, target: str, *extra: str, method: str = "GET") -> Response:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *extra]
    return await exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


async def test_http_root_and_channel_paths_serve_the_page(server: RunningServer) -> None:
    page = (WEB / "index.html").read_bytes()
    for target in ("/", "/c/radio", "/c/a%20room%2Fwith%20slash", "/?join=1"):
        answer = await get(server.port, target)
        assert (answer.status, answer.body) == (200, page), target
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert answer.headers["content-length"] == str(len(page))
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "connect-src 'self' ws: wss:;" in answer.headers["content-security-policy"]
        assert answer.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("msgpack.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("msgpack-LICENSE.txt", "text/plain; charset=utf-8"),
    ],
)
async def test_http_static_files_have_their_content_type_and_revalidate(server: RunningServer, name: str, content_type: str) -> None:
    answer = await get(server.port, f"/static/{name}")
    assert (answer.status, answer.headers["content-type"], answer.body) == (200, content_type, (WEB / name).read_bytes())
    assert answer.headers["cache-control"] == "no-cache"
    etag = answer.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = await get(server.port, f"/static/{name}", f"If-None-Match: {etag}")
    assert (again.status, again.body, again.headers["etag"]) == (304, b"", etag)
    stale = await get(server.port, f"/static/{name}", 'If-None-Match: "0000"')
    assert stale.status == 200 and stale.body == answer.body


async def test_http_head_sends_the_headers_without_the_body(server: RunningServer) -> None:
    answer = await get(server.port, "/static/app.js", method="HEAD")
    assert (answer.status, answer.body) == (200, b"")
    assert answer.headers["content-length"] == str(len((WEB / "app.js").read_bytes()))


@pytest.mark.parametrize(
    "target",
    [
        "/nope", "/c/", "/favicon.ico", "/static/", "/static/nope.js", "/index.html",
        "/static/__init__.py", "/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml",
        "/static/..%2f..%2fpyproject.toml", "/static/%2E%2E%2F%2E%2E%2Fpyproject.toml",
        "/static/..\\..\\pyproject.toml", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
        "/../../../../etc/passwd", "/static/./app.js", "/static/app.js%00.txt", "/static/%ff%fe",
    ],
)
async def test_http_unknown_paths_and_traversal_attempts_are_404(server: RunningServer, target: str) -> None:
    answer = await get(server.port, target)
    assert (answer.status, answer.body) == (404, b"not found\n"), target


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs a Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS where HTTP was due
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"x" * 9000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /static/app.js HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ],
)
async def test_http_bad_requests_get_a_plain_status_never_a_traceback(
    server: RunningServer, request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = await exchange(server.port, request_bytes)
    assert answer.status == status
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    async with open_wire(server.url) as wire:  # the server goes on as before
        assert (await wire.request(Ping)).ok


async def test_http_a_peer_that_leaves_mid_request_or_sends_nothing_is_dropped_quietly(
    nursery: trio.Nursery, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast_settings(data_dir)
    settings = attrs.evolve(settings, transport=attrs.evolve(settings.transport, handshake_timeout_seconds=0.3))
    running: RunningServer = await nursery.start(serve, settings)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and leaves
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            assert await stream.receive_some(100) == b""  # closed at the handshake timeout
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    running.shutdown()


async def test_http_the_websocket_upgrade_on_the_same_port_is_unchanged(server: RunningServer) -> None:
    assert (await get(server.port, "/")).status == 200
    async with open_wire(server.url) as wire:
        assert (await wire.request(Ping)).ok
    # Upgrade with a path, as browsers may, and a request line that wsproto refuses.
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}/c/radio"):
        pass
    refused = await exchange(server.port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n\r\n".encode())
    assert 400 <= refused.status < 500


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:{port}", "127.0.0.1:{port}", True),  # the page's own origin
        ("http://localhost:{port}", "localhost:{port}", True),
        ("HTTP://127.0.0.1:{port}/", "127.0.0.1:{port}", True),
        ("http://127.0.0.1:{port}", "127.0.0.1:1", False),  # another port: another site
        ("http://evil.example:{port}", "evil.example:{port}", False),  # DNS rebinding: a name
        ("https://127.0.0.1:{port}", "127.0.0.1:{port}", False),
        ("null", "127.0.0.1:{port}", False),
    ],
)
async def test_http_the_pages_own_origin_passes_the_origin_check(server: RunningServer, origin: str, host: str, allowed: bool) -> None:
    port = server.port
    answer = await exchange(port, (
        f"GET / HTTP/1.1\r\nHost: {host.format(port=port)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin.format(port=port)}\r\n\r\n"
    ).encode(), head_only=True)
    assert answer.status == (101 if allowed else 403)


def test_http_route_never_reads_outside_the_site(tmp_path: Path) -> None:
    """The site is a map of the folder's files read at start-up: a request can only name a key."""
    (tmp_path / "index.html").write_text("<p>page</p>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.js").write_text("export {}")
    (tmp_path / "helper.py").write_text("secret = 1")
    site = Site.load(tmp_path)
    assert sorted(site.files) == ["index.html", "sub/a.js"]
    (tmp_path / "late.js").write_text("added after start-up")
    assert site.lookup("/static/sub/a.js") is not None and site.lookup("/static/late.js") is None
    answer = route(b"GET /static/sub/a.js HTTP/1.1\r\nHost: a\r\n\r\n", site)
    assert answer.status == 200 and answer.data.endswith(b"\r\n\r\nexport {}")  # type: ignore[union-attr]
    with pytest.raises(FileNotFoundError, match="no index.html"):
        Site.load(tmp_path / "sub")


def test_http_serve_prints_the_page_url_and_serves_the_installed_page(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--port", "0", "--data", str(tmp_path / "data")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if (found := re.search(r"open (http://127\.0\.0\.1:(\d+)/) in a browser", line)):
                break
        else:
            raise AssertionError("no page URL printed")
        with socket.create_connection(("127.0.0.1", int(found.group(2))), timeout=5) as sock:
            sock.sendall(b"GET /c/radio HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            while data := sock.recv(65536):
                received += data
    finally:
        server.terminate()
        server.communicate(timeout=15)
    assert parse_response(received).status == 200 and b"<title>Airwave" in received


async def test_http_a_request_with_a_body_is_closed_not_answered_and_nothing_breaks(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After a request head the transport meters bytes as WebSocket frames, so a body in
    the same read ends the connection (docs/protocol.md 1.1); the server goes on."""
    caplog.set_level(logging.INFO)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            received = b""
            try:
                while data := await stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass  # a reset is a fine way to be refused
    assert not received.startswith(b"HTTP/1.1 200")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert (await get(server.port, "/")).status == 200
