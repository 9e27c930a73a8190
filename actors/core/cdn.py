"""Where a channel's CDN streams go, as pure functions of the channel id and the server's
settings, so the log's cdn_started event names them before anything is sent
(docs/operations.md, "CDN"). Credentials never leave `CdnSettings.source_url`: the log and
the clients get the listen URL."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import attrs

from airwave.protocol.text import file_slug

HLS_FOLDER = "hls"
PLAYLIST = "index.m3u8"
DEFAULT_SEGMENT_MS = 1_000


def icecast_mount(channel_id: str) -> str:
    """A channel's Icecast mount: ``/<channel slug>.opus`` (`file_slug`, URL-quoted), one per
    channel id."""
    return "/" + quote(file_slug(channel_id), safe="-_") + ".opus"


def hls_folder(channel_id: str) -> str:
    """A channel's HLS folder, relative to the data directory."""
    return f"{HLS_FOLDER}/{file_slug(channel_id)}"


def hls_path(channel_id: str) -> str:
    """The HTTP path of a channel's HLS playlist on the server's own port: the channel id
    URL-quoted (the HTTP route maps it back to `hls_folder`)."""
    return f"/{HLS_FOLDER}/{quote(channel_id, safe='')}/{PLAYLIST}"


def listen_url(icecast_url: str) -> str:
    """The http URL listeners use for an ``icecast://user:password@host:port/path``: no
    credentials, so it may be logged and told to clients."""
    parts = urlsplit(icecast_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"http://{host}{port}{parts.path}"


@attrs.frozen
class CdnSettings:
    """The server's CDN outputs (serve --icecast-url, --icecast-password-file, --hls).

    ``icecast_url`` is the Icecast server as a source connects to it,
    ``icecast://source:PASSWORD@host:port`` (a path there is a mount prefix); each channel
    streams to its own mount under it (`icecast_mount`). ``hls``: the server writes each
    streaming channel's HLS under ``<data dir>/hls/`` and serves it on its HTTP port.
    """

    icecast_url: str | None = attrs.field(default=None, repr=False)  # holds the password
    hls: bool = False
    segment_ms: int = DEFAULT_SEGMENT_MS

    @property
    def enabled(self) -> bool:
        return self.icecast_url is not None or self.hls

    def source_url(self, channel_id: str) -> str | None:
        """Where the channel's Icecast source connects (with the credentials), or None."""
        if self.icecast_url is None:
            return None
        return self.icecast_url.rstrip("/") + icecast_mount(channel_id)

    def listen_url(self, channel_id: str) -> str:
        """What listeners open for the channel's Icecast stream ("" without Icecast)."""
        source = self.source_url(channel_id)
        return "" if source is None else listen_url(source)

    def playlist(self, channel_id: str) -> str:
        """The HTTP path of the channel's HLS playlist ("" without HLS)."""
        return hls_path(channel_id) if self.hls else ""
