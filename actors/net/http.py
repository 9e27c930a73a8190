"""Plain HTTP on the WebSocket's port: the browser client's page and its static files.

A browser that opens ``http://HOST:PORT/`` and a client that upgrades to a WebSocket reach
the same socket, so one address is all a user is given. `accept_websocket` reads the
request head, asks `route` what it is, and either hands the bytes on to trio-websocket
untouched (an upgrade) or writes the answer built here and closes (one request per
connection: after the head the transport meters bytes as WebSocket frames, so a second
request on the same connection would read as garbage frames).

The files are read once, at start-up, into a `Site`: a request names a key of that map,
never a filesystem path, so nothing outside the web folder can be reached however the
path is spelled (``..``, ``%2e%2e``, backslashes, absolute paths). The one exception is
HLS (``/hls/<channel>/<file>``, when the server streams to a CDN): its files change every
second, so they are read per request, by the caller, from a path built here out of the
channel id's file-name slug and a file name of a fixed pattern, never out of the URL's text.
Pure: no trio, no sockets; the request head is parsed by h11, the sans-IO HTTP/1.1 parser trio-websocket's
wsproto already uses.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

import attrs
import h11

from airwave.protocol.text import file_slug

__all__ = [
    "MAX_REQUEST_HEAD",
    "Answer",
    "DiskFile",
    "Site",
    "StaticFile",
    "Upgrade",
    "default_web_folder",
    "disk_answer",
    "end_of_head",
    "error_answer",
    "route",
]

# A browser's GET is well under 2 KiB; a longer head is refused with 431 before parsing.
MAX_REQUEST_HEAD = 8 * 1024
_END_OF_HEAD = b"\r\n\r\n"

# Content types by file suffix. Module scripts must be served as JavaScript (browsers refuse
# an ES module with another type), and nosniff below makes the browser hold us to it.
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

# The page loads only its own files; it can be framed by nobody and posts no forms. It
# talks to its own server ('self' covers the ws: URL of the same host and port) and, in a
# cluster without a load balancer, to the other nodes its ?servers= names: any ws:/wss:
# address (only the page's own scripts run, so nothing else can open one), each of which
# still checks the page's Origin (--allow-origin).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
# The URLs carry no version, so a browser keeps a copy but asks (If-None-Match) every time:
# a reload after an upgrade never runs an old script against a new server.
CACHE_CONTROL = "no-cache"
_COMMON_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("Connection", "close"),
)
_REASONS = {
    200: "OK", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported",
}
HLS_PREFIX = "/hls/"
# The only names in a channel's HLS folder that are served (media/cdn.py writes them).
HLS_FILE = re.compile(r"index\.m3u8|init\.mp4|seg-[0-9]{5,9}\.m4s")
HLS_CONTENT_TYPES: Mapping[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",  # RFC 8216's type
    ".mp4": "audio/mp4",
    ".m4s": "audio/mp4",
}
INDEX = "index.html"
STATIC_PREFIX = "/static/"
CHANNEL_PREFIX = "/c/"


def default_web_folder() -> Path:
    """The page's folder as installed: ``web/`` of the source tree, the ``airwave.web``
    package once installed (found by name, so the server imports nothing of it)."""
    return Path(str(importlib.resources.files("airwave.web")))


@attrs.frozen(slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str  # a strong validator: a hash of the body, quoted as RFC 9110 asks

    @classmethod
    def of(cls, body: bytes, suffix: str) -> StaticFile:
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, CONTENT_TYPES.get(suffix, "application/octet-stream"), f'"{digest}"')


@attrs.frozen(slots=True)
class Site:
    """Every file of the web folder by its path under ``/static/`` (``vendor/msgpack.mjs``),
    read once. ``/`` and ``/c/CHANNEL`` are the page itself (``index.html``)."""

    files: Mapping[str, StaticFile]
    hls_root: Path | None = None  # where channels' HLS folders are (the data dir's hls/)

    @classmethod
    def load(cls, folder: Path) -> Site:
        """Reads every regular file under ``folder`` (Python files and caches aside: the
        folder is a package so that it installs); a missing ``index.html`` is an error."""
        files: dict[str, StaticFile] = {}
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in relative.parts:
                continue
            files[relative.as_posix()] = StaticFile.of(path.read_bytes(), path.suffix)
        if INDEX not in files:
            raise FileNotFoundError(f"no {INDEX} in the web folder {folder}")
        return cls(files)

    def lookup(self, path: str) -> StaticFile | None:
        """The file a decoded URL path names, or None. Only the exact keys exist."""
        if path == "/" or (path.startswith(CHANNEL_PREFIX) and len(path) > len(CHANNEL_PREFIX)):
            return self.files[INDEX]
        if path.startswith(STATIC_PREFIX):
            return self.files.get(path[len(STATIC_PREFIX):])
        return None


@attrs.frozen(slots=True)
class DiskFile:
    """An HLS file to read and send (`disk_answer`): it changes while the server runs."""

    path: Path
    content_type: str
    method: bytes


@attrs.frozen(slots=True)
class Upgrade:
    """The request asks for a WebSocket: trio-websocket takes it from here, unchanged.
    ``host`` is its Host header (wsproto does not hand it on), for the Origin check."""

    host: str | None


@attrs.frozen(slots=True)
class Answer:
    """A complete HTTP response to write before closing, and a word for the log."""

    status: int
    data: bytes
    note: str


def end_of_head(buffer: bytes) -> int:
    """The offset just past the request head in ``buffer``, or -1 while it is incomplete."""
    found = buffer.find(_END_OF_HEAD)
    return -1 if found < 0 else found + len(_END_OF_HEAD)


def route(head: bytes, site: Site) -> Upgrade | Answer | DiskFile:
    """What to do with one request head (the bytes up to and including the blank line)."""
    if len(head) > MAX_REQUEST_HEAD:
        return error_answer(431, "request head too large")
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    try:
        parser.receive_data(head)
        request = parser.next_event()
    except h11.RemoteProtocolError as exc:
        return error_answer(400, f"bad request: {exc}")
    if not isinstance(request, h11.Request):
        return error_answer(400, "bad request: incomplete request head")
    headers = {name: value for name, value in request.headers}
    if any(token.strip() == b"websocket" for token in headers.get(b"upgrade", b"").lower().split(b",")):
        hosts = [value for name, value in request.headers if name == b"host"]
        return Upgrade(hosts[0].decode("latin-1") if len(hosts) == 1 else None)
    if request.http_version not in (b"1.0", b"1.1"):
        return error_answer(505, "only HTTP/1.0 and 1.1 are spoken here")
    method, target = request.method, request.target
    if method not in (b"GET", b"HEAD"):
        return _answer(405, "text/plain; charset=utf-8", b"only GET and HEAD are served here\n", method, extra=(("Allow", "GET, HEAD"),))
    if not target.startswith(b"/"):
        return error_answer(400, "bad request: the target must be a path")
    raw_path = target.split(b"?", 1)[0].decode("ascii", "replace")
    if site.hls_root is not None and raw_path.startswith(HLS_PREFIX):
        return _hls_file(raw_path, site.hls_root, method)
    path = unquote(raw_path, errors="replace")
    found = site.lookup(path)
    if found is None:
        return _answer(404, "text/plain; charset=utf-8", b"not found\n", method)
    if found.etag in (tag.strip() for tag in headers.get(b"if-none-match", b"").decode("latin-1").split(",")):
        return _answer(304, found.content_type, found.body, b"HEAD", etag=found.etag)  # headers only
    return _answer(200, found.content_type, found.body, method, etag=found.etag)


def _hls_file(raw_path: str, root: Path, method: bytes) -> DiskFile | Answer:
    """``/hls/<channel id, URL-quoted>/<file>``: split before unquoting (an id may hold a
    ``/``), the folder named by the id's slug (which has no ``/`` or ``.``), the file only one
    of HLS_FILE's names."""
    parts = raw_path[len(HLS_PREFIX):].split("/")
    if len(parts) != 2 or not parts[0]:
        return _answer(404, "text/plain; charset=utf-8", b"not found\n", method)
    channel, name = unquote(parts[0], errors="replace"), unquote(parts[1], errors="replace")
    if not HLS_FILE.fullmatch(name):
        return _answer(404, "text/plain; charset=utf-8", b"not found\n", method)
    suffix = name[name.rindex("."):]
    return DiskFile(root / file_slug(channel) / name, HLS_CONTENT_TYPES[suffix], method)


def disk_answer(file: DiskFile, body: bytes | None) -> Answer:
    """The answer for an HLS file read as ``body`` (None: it is not there, 404). Any origin
    may fetch it (a player on another site's page), and nobody may cache a playlist."""
    if body is None:
        return _answer(404, "text/plain; charset=utf-8", b"not found\n", file.method)
    return _answer(200, file.content_type, body, file.method, extra=(("Access-Control-Allow-Origin", "*"),))


def error_answer(status: int, why: str) -> Answer:
    """A plain-text refusal; ``why`` goes to the log and, briefly, to the client."""
    return _answer(status, "text/plain; charset=utf-8", f"{_REASONS[status].lower()}\n".encode(), b"GET", note=why)


def _answer(
    status: int, content_type: str, body: bytes, method: bytes, *,
    etag: str | None = None, extra: tuple[tuple[str, str], ...] = (), note: str = "",
) -> Answer:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", CACHE_CONTROL)]
    if etag is not None:
        headers.append(("ETag", etag))
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in (*headers, *extra, *_COMMON_HEADERS))]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if method == b"HEAD" else body)
    return Answer(status, data, note or _REASONS[status].lower())
