"""The network edge of the server: sockets, the accept loop, the WebSocket handshake, and
frames built once. Nothing here knows about channels or participants."""

from .connection import Connection, TransportSettings, TransportStatistics
from .frames import PING_FRAME, frame_of
from .http import Site, default_web_folder
from .listener import Handler, close_listener, open_listener, serve_connections
from .websocket import accept_websocket

__all__ = [
    "PING_FRAME",
    "Connection",
    "Handler",
    "Site",
    "TransportSettings",
    "TransportStatistics",
    "accept_websocket",
    "close_listener",
    "default_web_folder",
    "frame_of",
    "open_listener",
    "serve_connections",
]
